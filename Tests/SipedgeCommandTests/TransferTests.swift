import Foundation
import Glibc
import Testing

/// Transfers through the edge (RFC 3515 REFER, RFC 3891 Replaces) and other valid messages the
/// edge once refused (issue 13), over the wire against the real binary.
@Suite(.serialized) struct TransferTests {
    /// The messages of a SIPp `-trace_msg` file: (received, text), in order.
    static func messages(inTrace trace: String) -> [(received: Bool, text: String)] {
        trace.components(separatedBy: "-----------------------------------------------").compactMap { chunk in
            let lines = chunk.components(separatedBy: "\n")
            guard let kind = lines.dropFirst().first, kind.contains("message") else { return nil }
            let text = lines.dropFirst(2).joined(separator: "\n").trimmingCharacters(in: .whitespacesAndNewlines)
            return (kind.contains("received"), text.replacingOccurrences(of: "\r\n", with: "\n"))
        }
    }

    static func header(_ name: String, in message: String) -> String? {
        RawSIPPeer.header(name, in: message.replacingOccurrences(of: "\n", with: "\r\n"))
    }

    /// A callee that answers every call, accepts a REFER with 202 and answers the BYE.
    static let transferTarget = """
        <?xml version="1.0" encoding="ISO-8859-1" ?>
        <scenario name="answers, accepts a REFER">
          <recv request="INVITE"/>
          <send><![CDATA[

        SIP/2.0 200 OK
        [last_Via:]
        [last_From:]
        [last_To:];tag=uas[call_number]
        [last_Call-ID:]
        [last_CSeq:]
        Contact: <sip:uas@[local_ip]:[local_port]>
        Content-Type: application/sdp
        Content-Length: [len]

        v=0
        o=uas 1 1 IN IP4 [local_ip]
        s=-
        c=IN IP4 [local_ip]
        t=0 0
        m=audio [media_port] RTP/AVP 0

        ]]></send>
          <recv request="ACK"/>
          <recv request="REFER" optional="true" next="refer"/>
          <recv request="BYE" next="bye"/>
          <label id="refer"/>
          <send><![CDATA[

        SIP/2.0 202 Accepted
        [last_Via:]
        [last_From:]
        [last_To:]
        [last_Call-ID:]
        [last_CSeq:]
        Contact: <sip:uas@[local_ip]:[local_port]>
        Content-Length: 0

        ]]></send>
          <recv request="BYE"/>
          <label id="bye"/>
          <send><![CDATA[

        SIP/2.0 200 OK
        [last_Via:]
        [last_From:]
        [last_To:]
        [last_Call-ID:]
        [last_CSeq:]
        Content-Length: 0

        ]]></send>
        </scenario>
        """

    /// The caller's INVITE for call `n` (Call-ID `name-n`, From tag `caller<n>`).
    static func invite(_ n: Int, name: String, caller: RawSIPPeer, edgePort: Int) -> String {
        let sdp = HostileInputTests.sdp
        return "INVITE sip:service@127.0.0.1:\(edgePort) SIP/2.0\r\n"
            + "Via: SIP/2.0/UDP \(caller.ip):\(caller.port);branch=z9hG4bK\(name)\(n)\r\nMax-Forwards: 70\r\n"
            + "From: <sip:caller@\(caller.ip)>;tag=caller\(n)\r\nTo: <sip:service@127.0.0.1>\r\nCall-ID: \(name)-\(n)\r\n"
            + "CSeq: 1 INVITE\r\nContact: <sip:caller@\(caller.ip):\(caller.port)>\r\nContent-Type: application/sdp\r\n"
            + "Content-Length: \(sdp.utf8.count)\r\n\r\n" + sdp
    }

    /// A request of the caller in call `n`, whose edge tag is `toTag`.
    static func inCall(_ method: String, _ n: Int, name: String, toTag: String, cseq: Int, caller: RawSIPPeer, edgePort: Int,
                       extra: String = "") -> String {
        "\(method) sip:service@127.0.0.1:\(edgePort) SIP/2.0\r\n"
            + "Via: SIP/2.0/UDP \(caller.ip):\(caller.port);branch=z9hG4bK\(name)\(n)\(method)\(cseq)\r\nMax-Forwards: 70\r\n"
            + "From: <sip:caller@\(caller.ip)>;tag=caller\(n)\r\nTo: <sip:service@127.0.0.1>;tag=\(toTag)\r\nCall-ID: \(name)-\(n)\r\n"
            + "CSeq: \(cseq) \(method)\r\n\(extra)Content-Length: 0\r\n\r\n"
    }

    @Test(.needsSIPp) func rfc3515_rfc3891_an_attended_transfer_reaches_the_backend_with_refer_to_and_the_translated_replaces() throws {
        let sipp = try CallTests.requireSIPp()
        let base = Scratch.ports()
        let dir = try Scratch.directory("transfer")
        defer { Scratch.remove(dir) }
        let uasPort = base + 10
        try Self.transferTarget.write(to: dir.appendingPathComponent("uas.xml"), atomically: true, encoding: .utf8)
        let uas = try CallTests.process(sipp, ["-sf", "uas.xml", "-i", "127.0.0.1", "-p", "\(uasPort)", "-cp", "\(base + 1)", "-nostdin",
                                               "-trace_msg", "-message_file", "uas.msg"], in: dir)
        defer { if uas.isRunning { kill(uas.processIdentifier, SIGKILL) } }
        let caller = try RawSIPPeer(ip: "127.0.0.1", port: base + 20)
        let edge = try HostileInputTests.edge(callee: uasPort, base: base)
        defer { edge.stop() }
        try #require(edge.waitFor("listening udp"), "\(edge.output)")
        usleep(200_000)
        let name = "xfer\(getpid())"
        // Two calls from one caller (one socket: one worker holds both).
        var tags: [String] = []
        for n in 1...2 {
            caller.send(Self.invite(n, name: name, caller: caller, edgePort: base), to: base)
            let ok = try #require(caller.take("SIP/2.0 200", containing: "\(name)-\(n)"), "call \(n) answered; \(caller.inbox)")
            let tag = try #require(RawSIPPeer.tag(RawSIPPeer.header("To", in: ok)))
            tags.append(tag)
            caller.send(Self.inCall("ACK", n, name: name, toTag: tag, cseq: 1, caller: caller, edgePort: base), to: base)
        }
        // Call 1's far end is referred to call 2's, replacing call 2 as the caller knows it.
        let referTo = "<sip:service@127.0.0.1:\(base)?Replaces=\(name)-2%3Bto-tag%3D\(tags[1])%3Bfrom-tag%3Dcaller2>"
        caller.send(Self.inCall("REFER", 1, name: name, toTag: tags[0], cseq: 2, caller: caller, edgePort: base,
                                extra: "Refer-To: \(referTo)\r\nReferred-By: <sip:caller@127.0.0.1>\r\nContact: <sip:caller@127.0.0.1:\(caller.port)>\r\n"),
                    to: base)
        let accepted = try #require(caller.take("SIP/2.0 202", waiting: 3_000), "the REFER was accepted; \(caller.inbox)")
        #expect(RawSIPPeer.header("Contact", in: accepted) == "<sip:edge@127.0.0.1:\(base)>", "the 202 carries our Contact")
        for n in 1...2 {
            caller.send(Self.inCall("BYE", n, name: name, toTag: tags[n - 1], cseq: 3, caller: caller, edgePort: base), to: base)
            #expect(caller.take("SIP/2.0 200", containing: "Call-ID: \(name)-\(n)\r\nCSeq: 3 BYE") != nil, "call \(n) ended")
        }
        usleep(300_000)
        kill(uas.processIdentifier, SIGKILL)
        uas.waitUntilExit()
        let trace = Self.messages(inTrace: (try? String(contentsOf: dir.appendingPathComponent("uas.msg"), encoding: .utf8)) ?? "")
        let invites = trace.filter { $0.received && $0.text.hasPrefix("INVITE ") }.map(\.text)
        try #require(invites.count == 2, "the callee got both calls: \(trace.map { $0.text.prefix(40) })")
        let refer = try #require(trace.first { $0.received && $0.text.hasPrefix("REFER ") }?.text, "the REFER reached the callee")
        // Call 2 as the callee knows it: its Call-ID, its own tag (uas<n>), the edge's From tag.
        let second = invites[1]
        let callID = try #require(Self.header("Call-ID", in: second))
        let edgeTag = try #require(RawSIPPeer.tag(Self.header("From", in: second)))
        let answer = try #require(trace.first { !$0.received && $0.text.hasPrefix("SIP/2.0 200") && $0.text.contains(callID) }?.text)
        let calleeTag = try #require(RawSIPPeer.tag(Self.header("To", in: answer)))
        #expect(Self.header("Refer-To", in: refer) == "<sip:uas@127.0.0.1:\(uasPort)?Replaces=\(callID)%3Bto-tag%3D\(calleeTag)%3Bfrom-tag%3D\(edgeTag)>",
                "\(refer)")
        #expect(Self.header("Referred-By", in: refer) == "<sip:caller@127.0.0.1>")
        #expect(Self.header("Contact", in: refer) == "<sip:edge@127.0.0.1:\(base)>", "a REFER refreshes the target: our Contact")
        #expect(Self.header("Call-ID", in: refer) == Self.header("Call-ID", in: invites[0]), "in call 1's backend dialog")
        #expect(!refer.contains("\(name)-"), "nothing of the caller's side crosses")
    }

    @Test func a_callers_leg_speaks_with_the_address_of_the_listener_its_invite_arrived_on() throws {
        // Two UDP listeners with their own tags; a call that comes in on the second gets the
        // second's address in our Contact (before, always the first listener's).
        let base = Scratch.ports()
        let (caller, callee) = try HostileInputTests.peers(base)
        let edge = try CallTests.Edge(config: """
            workers = 2
            [dispatcher]
            probe_interval_seconds = 0
            destinations = ["127.0.0.1:\(callee.port)"]
            [[listener]]
            proto = "udp"
            address = "127.0.0.1"
            port = \(base)
            tag = "public"
            [[listener]]
            proto = "udp"
            address = "127.0.0.1"
            port = \(base + 1)
            tag = "partners"
            """)
        defer { edge.stop() }
        try #require(edge.waitFor("tag=partners"), "\(edge.output)")
        caller.send(Self.invite(1, name: "tag\(getpid())", caller: caller, edgePort: base + 1), to: base + 1)
        let invite = try #require(callee.take("INVITE "))
        callee.respond(to: invite, status: "200 OK", toTag: "callee1", body: HostileInputTests.sdp, to: base)
        let (ok, source) = try #require(Self.receive(on: caller, startingWith: "SIP/2.0 200"), "\(edge.output.suffix(300))")
        #expect(RawSIPPeer.header("Contact", in: ok) == "<sip:edge@127.0.0.1:\(base + 1)>", "\(ok)")
        #expect(source == base + 1, "and it comes from that listener's socket")
        // The edge's BYE toward the caller (the callee hangs up) leaves from it too.
        let bye = "BYE \(RawSIPPeer.uri(RawSIPPeer.header("Contact", in: invite)) ?? "") SIP/2.0\r\n"
            + "Via: SIP/2.0/UDP 127.0.0.1:\(callee.port);branch=z9hG4bKtagbye\r\nMax-Forwards: 70\r\n"
            + "From: \(RawSIPPeer.header("To", in: invite) ?? "");tag=callee1\r\nTo: \(RawSIPPeer.header("From", in: invite) ?? "")\r\n"
            + "Call-ID: \(RawSIPPeer.header("Call-ID", in: invite) ?? "")\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        callee.send(bye, to: base)
        let (byeToCaller, byeSource) = try #require(Self.receive(on: caller, startingWith: "BYE "), "\(edge.output.suffix(300))")
        #expect(byeSource == base + 1, "\(byeToCaller)")
    }

    /// The first datagram on `peer`'s socket that starts with `prefix`, with the port it came from
    /// (read directly, past the peer's inbox), waiting up to 3 s.
    static func receive(on peer: RawSIPPeer, startingWith prefix: String) -> (String, Int)? {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let end = Date().addingTimeInterval(3)
        while Date() < end {
            var from = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let n = withUnsafeMutablePointer(to: &from) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(peer.fd, &buffer, buffer.count, 0, $0, &length) }
            }
            if n > 0 {
                let text = String(decoding: buffer[0..<n], as: UTF8.self)
                if text.hasPrefix(prefix) { return (text, Int(UInt16(bigEndian: from.sin_port))) }
            } else {
                usleep(5_000)
            }
        }
        return nil
    }

    @Test func rfc5118_a_via_received_with_a_bare_ipv6_address_is_accepted_in_requests_and_responses() throws {
        let base = Scratch.ports()
        let (caller, callee) = try HostileInputTests.peers(base)
        let edge = try HostileInputTests.edge(callee: callee.port, base: base)
        defer { edge.stop() }
        try #require(edge.waitFor("listening udp"), "\(edge.output)")
        // A request that passed a proxy on IPv6 (RFC 5118 §4.5's form of the second Via).
        caller.send("OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\n"
                    + "Via: SIP/2.0/UDP 127.0.0.1:\(caller.port);branch=z9hG4bKv6a\r\n"
                    + "Via: SIP/2.0/UDP [2001:db8::9]:5060;received=2001:db8::9;branch=z9hG4bKv6b\r\n"
                    + "Max-Forwards: 70\r\nFrom: <sip:c@127.0.0.1>;tag=v6\r\nTo: <sip:edge@127.0.0.1>\r\nCall-ID: v6-\(getpid())\r\n"
                    + "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", to: base)
        let answer = caller.take("SIP/2.0 ", waiting: 3_000)
        #expect(answer?.hasPrefix("SIP/2.0 200") == true, "\(answer ?? "no answer")")
        // A callee that writes received= with an IPv6 address into our Via (as a proxy would).
        caller.send(Self.invite(1, name: "v6call\(getpid())", caller: caller, edgePort: base), to: base)
        let invite = try #require(callee.take("INVITE "))
        let marked = invite.replacingOccurrences(of: ";rport", with: ";received=::1;rport=\(base)")
        callee.respond(to: marked, status: "200 OK", toTag: "v6callee", body: HostileInputTests.sdp, to: base)
        #expect(caller.take("SIP/2.0 200", waiting: 3_000) != nil, "the answer crossed: \(edge.output.suffix(300))")
    }
}
