import Foundation
import Glibc
import Testing

/// The edge as registrar: SIPp registers users through it (UDP and TCP), the farm's calls reach
/// each user where it registered, and the location table survives a restart.
@Suite(.serialized) struct RegistrarTests {
    static func registerScenario(contactPort: Int, prefix: String) -> String {
        Scenarios.scenario("register", ["""
              <send retrans="500"><![CDATA[
            REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
            Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
            From: <sip:\(prefix)[call_number]@[remote_ip]>;tag=[pid]reg[call_number]
            To: <sip:\(prefix)[call_number]@[remote_ip]>
            Call-ID: [call_id]
            CSeq: 1 REGISTER
            Contact: <sip:\(prefix)[call_number]@127.0.0.1:\(contactPort);transport=[transport]>
            Expires: 300
            User-Agent: sipp-phone
            Max-Forwards: 70
            Content-Length: 0

              ]]></send>
            """, #"<recv response="200"/>"#])
    }

    @Test(.needsSIPp) func a_thousand_users_register_over_udp_and_tcp_and_the_farm_reaches_each_one_even_after_a_restart() throws {
        guard let sipp = try? CallTests.requireSIPp() else { return }
        let dir = try Scratch.directory("reg")
        defer { Scratch.remove(dir) }
        let db = dir.appendingPathComponent("edge.db").path
        let base = Scratch.ports()
        let (edgePort, phonePort, farmPort) = (base, base + 10, base + 20)
        let edge = try CallTests.Edge(config: """
            workers = 2
            [registrar]
            min_expires = 60
            [security]
            trusted = ["127.0.0.1/32"]
            [mi]
            port = 0
            [database]
            path = "\(db)"
            \(CallTests.listeners(port: edgePort))
            """)
        defer { edge.stop() }
        #expect(edge.waitFor("mi listening udp"))
        let run = { (args: [String]) throws -> Process in
            let p = try CallTests.process(sipp, args, in: dir)
            for _ in 0..<300 where p.isRunning { usleep(100_000) }
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
            return p
        }
        // 1,000 users over UDP from the port the phones will answer on, 1,000 more over TCP.
        try Self.registerScenario(contactPort: phonePort, prefix: "u").write(to: dir.appendingPathComponent("reg.xml"), atomically: true, encoding: .utf8)
        try Self.registerScenario(contactPort: phonePort, prefix: "t").write(to: dir.appendingPathComponent("regtcp.xml"), atomically: true, encoding: .utf8)
        let udp = try run(["-sf", "reg.xml", "127.0.0.1:\(edgePort)", "-i", "127.0.0.1", "-p", "\(phonePort)", "-cp", "\(base + 1)",
                           "-m", "1000", "-r", "500", "-nostdin", "-timeout", "20s"])
        #expect(udp.terminationStatus == 0, "every UDP REGISTER got 200")
        let tcp = try run(["-sf", "regtcp.xml", "127.0.0.1:\(edgePort)", "-t", "t1", "-i", "127.0.0.1", "-p", "\(base + 30)", "-cp", "\(base + 2)",
                           "-m", "1000", "-r", "500", "-nostdin", "-timeout", "20s"])
        #expect(tcp.terminationStatus == 0, "every TCP REGISTER got 200")
        let mi = { (args: [String]) -> String in
            MISecretTests.sh([CommandTests.binary.path, "mi", "--address", edge.bound("mi listening udp")!] + args).1
        }
        // Too many users for one datagram: the MI says so, and pages are asked for.
        #expect(mi(["ul_dump", "limit=5000"]).contains("does not fit in one datagram"))
        let dump = try JSONSerialization.jsonObject(with: Data(mi(["ul_dump", "limit=10"]).utf8)) as? [String: Any]
        #expect(dump?["total"] as? Int == 2_000 && (dump?["AORs"] as? [Any])?.count == 10, "ul_dump counts every user")
        let one = try JSONSerialization.jsonObject(with: Data(mi(["ul_dump", "aor=t7"]).utf8)) as? [String: Any]
        let tcpUser = (one?["AORs"] as? [[String: Any]])?.first?["Contacts"] as? [[String: Any]]
        #expect((tcpUser?.first?["Received"] as? String)?.hasPrefix("tcp:127.0.0.1:") == true && tcpUser?.first?["NAT"] as? Bool == true,
                "a TCP registration is reached over its connection: \(String(describing: tcpUser))")
        // The registrations are in the database: the edge is killed and comes back with them.
        usleep(300_000)
        try edge.killAndRestart()
        #expect(edge.waitFor("mi listening udp"))
        #expect(edge.output.contains("2000 registered users restored"), "\(edge.output)")
        // The phones answer on the port they registered from; the farm (trusted) calls each UDP user.
        let phones = try CallTests.process(sipp, ["-sn", "uas", "-i", "127.0.0.1", "-p", "\(phonePort)", "-cp", "\(base + 3)", "-nostdin",
                                                  "-trace_msg", "-message_file", "phones.msg"], in: dir)
        defer { if phones.isRunning { kill(phones.processIdentifier, SIGKILL) } }
        usleep(300_000)
        var users = "SEQUENTIAL\n"
        for n in 1...1_000 { users += "u\(n);\n" }
        try users.write(to: dir.appendingPathComponent("users.csv"), atomically: true, encoding: .utf8)
        let farm = Scenarios.patientCaller.replacingOccurrences(of: "pause milliseconds=\"4000\"", with: "pause milliseconds=\"10\"")
            .replacingOccurrences(of: "sip:service@[remote_ip]:[remote_port]", with: "sip:[field0]@[remote_ip]:[remote_port]")
        try farm.write(to: dir.appendingPathComponent("farm.xml"), atomically: true, encoding: .utf8)
        let calls = try run(["-sf", "farm.xml", "127.0.0.1:\(edgePort)", "-inf", "users.csv", "-i", "127.0.0.1", "-p", "\(farmPort)",
                             "-cp", "\(base + 4)", "-m", "1000", "-r", "200", "-nostdin", "-timeout", "25s"])
        #expect(calls.terminationStatus == 0, "every call from the farm reached its user\n\(edge.output.suffix(2_000))")
        kill(phones.processIdentifier, SIGKILL)
        phones.waitUntilExit()
        let trace = (try? String(contentsOf: dir.appendingPathComponent("phones.msg"), encoding: .utf8)) ?? ""
        let reached = Set((1...1_000).filter { trace.contains("INVITE sip:u\($0)@127.0.0.1:\(phonePort)") })
        #expect(reached.count == 1_000, "each user got its own call: \(reached.count)")
    }
    /// A phone on one TCP connection: it registers over it and takes its calls over it.
    final class TCPPhone {
        let fd: Int32
        var buffer: [UInt8] = []

        init?(port: Int, host: String = "127.0.0.1") {
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET, host, &a.sin_addr)
            let ok = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            } }
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            if ok != 0 { close(fd); return nil }
        }

        deinit { close(fd) }

        func send(_ text: String) {
            let bytes = Array(text.utf8)
            _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
        }

        /// The next whole message on the connection (headers and Content-Length body), or nil.
        func receive() -> String? {
            while true {
                let text = String(decoding: buffer, as: UTF8.self)
                if let end = text.range(of: "\r\n\r\n") {
                    let head = String(text[..<end.lowerBound])
                    let length = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
                        .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
                    let total = head.utf8.count + 4 + length
                    if buffer.count >= total {
                        let message = String(decoding: buffer[0..<total], as: UTF8.self)
                        buffer.removeFirst(total)
                        return message
                    }
                }
                var chunk = [UInt8](repeating: 0, count: 8_192)
                let n = recv(fd, &chunk, chunk.count, 0)
                guard n > 0 else { return nil }
                buffer += chunk[0..<n]
            }
        }

        /// A response to `request`: its Via, From, To (tagged), Call-ID and CSeq.
        static func answer(_ request: String, _ status: String, body: String = "") -> String {
            var out = "SIP/2.0 \(status)\r\n"
            for line in request.split(separator: "\r\n") {
                let lower = line.lowercased()
                if lower.hasPrefix("via:") || lower.hasPrefix("from:") || lower.hasPrefix("call-id:") || lower.hasPrefix("cseq:") {
                    out += line + "\r\n"
                } else if lower.hasPrefix("to:") {
                    out += line + (line.contains("tag=") ? "" : ";tag=phone1") + "\r\n"
                }
            }
            out += "Contact: <sip:tcpuser@127.0.0.1:9;transport=tcp>\r\n"
            if !body.isEmpty { out += "Content-Type: application/sdp\r\n" }
            return out + "Content-Length: \(body.utf8.count)\r\n\r\n" + body
        }
    }

    @Test(.needsSIPp) func a_call_reaches_a_tcp_user_over_the_connection_it_registered_on() throws {
        guard let sipp = try? CallTests.requireSIPp() else { return }
        let dir = try Scratch.directory("tcpreg")
        defer { Scratch.remove(dir) }
        let base = Scratch.ports()
        let edge = try CallTests.Edge(config: """
            workers = 2
            [registrar]
            [security]
            trusted = ["127.0.0.1/32"]
            \(CallTests.listeners(port: base))
            """)
        defer { edge.stop() }
        #expect(edge.waitFor("listening tcp"))
        let phone = try #require(TCPPhone(port: base))
        // Its Contact names a port nobody listens on: only its own connection reaches it.
        phone.send("REGISTER sip:127.0.0.1:\(base) SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKtcpreg1\r\n"
            + "From: <sip:tcpuser@127.0.0.1>;tag=r1\r\nTo: <sip:tcpuser@127.0.0.1>\r\nCall-ID: tcpreg-1\r\nCSeq: 1 REGISTER\r\n"
            + "Contact: <sip:tcpuser@127.0.0.1:9;transport=tcp>\r\nExpires: 300\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        let registered = phone.receive() ?? ""
        #expect(registered.hasPrefix("SIP/2.0 200 OK"), "\(registered)")
        // The farm (trusted, over UDP) calls the user; the phone answers on its connection.
        let farm = Scenarios.patientCaller.replacingOccurrences(of: "pause milliseconds=\"4000\"", with: "pause milliseconds=\"200\"")
            .replacingOccurrences(of: "sip:service@[remote_ip]:[remote_port]", with: "sip:tcpuser@[remote_ip]:[remote_port]")
        try farm.write(to: dir.appendingPathComponent("farm.xml"), atomically: true, encoding: .utf8)
        let caller = try CallTests.process(sipp, ["-sf", "farm.xml", "127.0.0.1:\(base)", "-i", "127.0.0.1", "-p", "\(base + 20)",
                                                  "-cp", "\(base + 21)", "-m", "1", "-nostdin", "-timeout", "15s"], in: dir)
        defer { if caller.isRunning { kill(caller.processIdentifier, SIGKILL) } }
        let invite = phone.receive() ?? ""
        #expect(invite.hasPrefix("INVITE sip:tcpuser@127.0.0.1:9;transport=tcp SIP/2.0"), "\(invite)")
        #expect(invite.contains("Via: SIP/2.0/TCP"), "the edge's Via names TCP")
        phone.send(TCPPhone.answer(invite, "200 OK", body: "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\n"))
        let ack = phone.receive() ?? ""
        #expect(ack.hasPrefix("ACK "), "\(ack)")
        let bye = phone.receive() ?? ""
        #expect(bye.hasPrefix("BYE "), "\(bye)")
        phone.send(TCPPhone.answer(bye, "200 OK"))
        for _ in 0..<100 where caller.isRunning { usleep(100_000) }
        #expect(caller.terminationStatus == 0, "the caller's call was answered and ended\n\(edge.output)")
    }
    @Test(.needsSIPp) func registrations_go_to_the_asterisk_once_per_interval_with_the_edge_as_contact_and_challenges_come_back() throws {
        guard let sipp = try? CallTests.requireSIPp() else { return }
        let dir = try Scratch.directory("midreg")
        defer { Scratch.remove(dir) }
        let base = Scratch.ports()
        let (edgePort, asteriskPort, phonePort) = (base, base + 10, base + 20)
        let edge = try CallTests.Edge(config: """
            workers = 2
            [registrar]
            upstream = "127.0.0.1:\(asteriskPort)"
            upstream_interval_seconds = 600
            keepalive_seconds = 1
            \(CallTests.listeners(port: edgePort, tcp: false))
            """)
        defer { edge.stop() }
        #expect(edge.waitFor("listening udp"))
        // The Asterisk stand-in: it challenges each user once, then accepts. It insists that the
        // Contact names the edge, not the phone, and that the second REGISTER has credentials.
        let asterisk = Scenarios.scenario("asterisk registrar", [
            """
              <recv request="REGISTER">
                <action><ereg regexp="@127.0.0.1:\(edgePort)" search_in="hdr" header="Contact:" check_it="true" assign_to="c1"/></action>
              </recv>
            """,
            Scenarios.calleeAnswers("401 Unauthorized", tag: true)
                .replacingOccurrences(of: "Content-Length: 0", with: "WWW-Authenticate: Digest realm=\"farm\", nonce=\"n0nce\"\nX-C: [$c1]\nContent-Length: 0"),
            """
              <recv request="REGISTER">
                <action><ereg regexp="Digest" search_in="hdr" header="Authorization:" check_it="true" assign_to="a2"/></action>
              </recv>
            """,
            Scenarios.calleeAnswers("200 OK", tag: true)
                .replacingOccurrences(of: "Content-Length: 0", with: "Expires: 660\nX-A: [$a2]\nContent-Length: 0"),
        ])
        try asterisk.write(to: dir.appendingPathComponent("asterisk.xml"), atomically: true, encoding: .utf8)
        let upstream = try CallTests.process(sipp, ["-sf", "asterisk.xml", "-i", "127.0.0.1", "-p", "\(asteriskPort)", "-cp", "\(base + 11)",
                                                    "-nostdin", "-trace_msg", "-message_file", "asterisk.msg"], in: dir)
        defer { if upstream.isRunning { kill(upstream.processIdentifier, SIGKILL) } }
        // Phones: REGISTER, 401, REGISTER with credentials, 200, then a refresh (with them) the edge answers.
        func register(cseq: Int, credentials: Bool) -> String {
            """
              <send retrans="500"><![CDATA[
            REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
            Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
            From: <sip:p[call_number]@[remote_ip]>;tag=[pid]reg[call_number]
            To: <sip:p[call_number]@[remote_ip]>
            Call-ID: [call_id]
            CSeq: \(cseq) REGISTER
            Contact: <sip:p[call_number]@[local_ip]:[local_port]>
            \(credentials ? "Authorization: Digest username=\"p[call_number]\", realm=\"farm\", nonce=\"n0nce\", uri=\"sip:[remote_ip]\", response=\"0123456789abcdef0123456789abcdef\"" : "X-First: 1")
            Expires: 300
            Max-Forwards: 70
            Content-Length: 0

              ]]></send>
            """
        }
        let phones = Scenarios.scenario("phone", [
            register(cseq: 1, credentials: false),
            """
              <recv response="401">
                <action><ereg regexp="realm=.farm." search_in="hdr" header="WWW-Authenticate:" check_it="true" assign_to="w"/></action>
              </recv>
            """,
            register(cseq: 2, credentials: true).replacingOccurrences(of: "Max-Forwards: 70", with: "Max-Forwards: 70\nX-W: [$w]"),
            #"<recv response="200"/>"#,
            #"<pause milliseconds="200"/>"#,
            register(cseq: 3, credentials: true),
            #"<recv response="200"/>"#,
        ])
        try phones.write(to: dir.appendingPathComponent("phones.xml"), atomically: true, encoding: .utf8)
        let p = try CallTests.process(sipp, ["-sf", "phones.xml", "127.0.0.1:\(edgePort)", "-i", "127.0.0.1", "-p", "\(phonePort)",
                                             "-cp", "\(base + 21)", "-m", "10", "-r", "20", "-nostdin", "-timeout", "15s"], in: dir)
        for _ in 0..<200 where p.isRunning { usleep(100_000) }
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "each phone was challenged through the edge, then registered and refreshed\n\(edge.output)")
        kill(upstream.processIdentifier, SIGKILL)
        upstream.waitUntilExit()
        let seen = (try? String(contentsOf: dir.appendingPathComponent("asterisk.msg"), encoding: .utf8)) ?? ""
        // Two REGISTERs per phone reached the Asterisk (challenge, credentials); the refreshes did not.
        #expect(CallTests.CallRun.count("REGISTER sip:", in: seen) == 20, "\(CallTests.CallRun.count("REGISTER sip:", in: seen)) upstream")
        #expect(!seen.contains("127.0.0.1:\(phonePort)"), "the phones' address never reached the Asterisk")
    }

    @Test func a_phone_behind_nat_gets_keepalives_on_the_address_it_registered_from() throws {
        let base = Scratch.ports()
        let edge = try CallTests.Edge(config: """
            workers = 2
            [registrar]
            keepalive_seconds = 1
            \(CallTests.listeners(port: base, tcp: false))
            """)
        defer { edge.stop() }
        #expect(edge.waitFor("listening udp"))
        // Its Contact names a private address it cannot be reached at: the edge sees the NAT.
        let fd = ProtectionTests.socket(from: "127.0.0.1")
        defer { close(fd) }
        ProtectionTests.send(fd, "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bKnat1\r\n"
            + "From: <sip:natted@127.0.0.1>;tag=n1\r\nTo: <sip:natted@127.0.0.1>\r\nCall-ID: nat-1\r\nCSeq: 1 REGISTER\r\n"
            + "Contact: <sip:natted@192.168.1.20:5060>\r\nExpires: 300\r\nContent-Length: 0\r\n\r\n", to: base)
        #expect(ProtectionTests.statuses(fd, waiting: 1_000) == [200])
        // Within about two seconds, a CRLF keep-alive arrives on the socket it registered from.
        var buffer = [UInt8](repeating: 0, count: 64)
        var keepalive = false
        for _ in 0..<300 where !keepalive {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n > 0 { keepalive = buffer[0..<n].allSatisfy { $0 == 0x0D || $0 == 0x0A } } else { usleep(10_000) }
        }
        #expect(keepalive, "a CRLF keep-alive reached the NATed phone")
    }
}
