import Foundation
import Glibc
import Testing

/// A SIP peer written by hand on a UDP socket: it sends exactly what a test says (forged tags,
/// missing ACKs) and reads every datagram the edge sends it.
final class RawSIPPeer {
    let fd: Int32
    let ip: String
    let port: Int
    /// Everything received and not yet taken, oldest first.
    private(set) var inbox: [String] = []

    init(ip: String, port: Int) throws {
        self.ip = ip
        self.port = port
        fd = Glibc.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, ip, &a.sin_addr)
        let bound = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0 else {
            close(fd)
            throw POSIXError(.EADDRINUSE)
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    deinit { close(fd) }

    func send(_ text: String, to port: Int) { ProtectionTests.send(fd, text, to: port) }

    /// Reads what has arrived, for up to `ms` milliseconds.
    func drain(for ms: Int) {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let end = Date().addingTimeInterval(Double(ms) / 1_000)
        repeat {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n > 0 { inbox.append(String(decoding: buffer[0..<n], as: UTF8.self)) } else { usleep(5_000) }
        } while Date() < end
    }

    /// The first message whose start line begins with `prefix` (and holds `containing`), taken
    /// from the inbox; waits up to `ms` milliseconds for it.
    func take(_ prefix: String, containing: String = "", waiting ms: Int = 3_000) -> String? {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let end = Date().addingTimeInterval(Double(ms) / 1_000)
        while true {
            if let i = inbox.firstIndex(where: { $0.hasPrefix(prefix) && (containing.isEmpty || $0.contains(containing)) }) { return inbox.remove(at: i) }
            if Date() >= end { return nil }
            let n = recv(fd, &buffer, buffer.count, 0)
            if n > 0 { inbox.append(String(decoding: buffer[0..<n], as: UTF8.self)) } else { usleep(5_000) }
        }
    }

    /// Forgets what was received.
    func clear() { inbox = [] }

    /// How many received messages start with `prefix`.
    func count(_ prefix: String) -> Int { inbox.filter { $0.hasPrefix(prefix) }.count }

    /// A header's value in `message` (first occurrence, full name).
    static func header(_ name: String, in message: String) -> String? {
        for line in message.split(separator: "\r\n") where line.lowercased().hasPrefix(name.lowercased() + ":") {
            return line.dropFirst(name.count + 1).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }

    /// The tag parameter of a From/To value.
    static func tag(_ value: String?) -> String? {
        value?.split(separator: ";").first { $0.hasPrefix("tag=") }.map { String($0.dropFirst(4)) }
    }

    /// The URI inside a Contact value's angle brackets.
    static func uri(_ value: String?) -> String? {
        guard let value, let open = value.firstIndex(of: "<"), let close = value.firstIndex(of: ">") else { return nil }
        return String(value[value.index(after: open)..<close])
    }

    /// A response to `request` (its Via, From, To, Call-ID and CSeq copied), with `toTag` added
    /// when its To has none, our Contact, and `body`.
    func respond(to request: String, status: String, toTag: String, body: String = "", to port: Int) {
        var lines = ["SIP/2.0 \(status)"]
        for line in request.split(separator: "\r\n") {
            let lower = line.lowercased()
            if lower.hasPrefix("via:") || lower.hasPrefix("from:") || lower.hasPrefix("call-id:") || lower.hasPrefix("cseq:") {
                lines.append(String(line))
            } else if lower.hasPrefix("to:") {
                lines.append(line.contains("tag=") ? String(line) : "\(line);tag=\(toTag)")
            }
        }
        lines.append("Contact: <sip:peer@\(ip):\(self.port)>")
        if !body.isEmpty { lines.append("Content-Type: application/sdp") }
        lines.append("Content-Length: \(body.utf8.count)")
        send(lines.joined(separator: "\r\n") + "\r\n\r\n" + body, to: port)
    }
}

/// What hostile peers found (issue 12), each over the wire against the real binary, with a caller
/// and a callee written by hand so that they can forge what a real phone never sends.
@Suite(.serialized) struct HostileInputTests {
    static let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"

    /// An edge whose one destination is `callee`, with `extra` config; probing off.
    static func edge(callee: Int, base: Int, extra: String = "") throws -> CallTests.Edge {
        try CallTests.Edge(config: """
            workers = 2
            \(extra)
            [dispatcher]
            probe_interval_seconds = 0
            destinations = ["127.0.0.1:\(callee)"]
            \(CallTests.listeners(port: base, tcp: false))
            """)
    }

    /// A call set up by hand: the caller's and callee's views of their dialogs.
    struct Call {
        let callID: String, callerTag: String, edgeTagToCaller: String
        let backendCallID: String, edgeTagToCallee: String, calleeTag: String
        let edgeContactToCallee: String
    }

    /// The caller INVITEs through the edge, the callee answers 200 with its tag, and the caller
    /// ACKs when `ack`.
    static func setUp(_ name: String, caller: RawSIPPeer, callee: RawSIPPeer, edgePort: Int, ack: Bool = true) throws -> Call {
        let callID = "\(name)-\(getpid())@\(caller.ip)"
        let invite = "INVITE sip:service@127.0.0.1:\(edgePort) SIP/2.0\r\n"
            + "Via: SIP/2.0/UDP \(caller.ip):\(caller.port);branch=z9hG4bK\(name)1\r\nMax-Forwards: 70\r\n"
            + "From: <sip:caller@\(caller.ip)>;tag=caller1\r\nTo: <sip:service@127.0.0.1>\r\nCall-ID: \(callID)\r\n"
            + "CSeq: 1 INVITE\r\nContact: <sip:caller@\(caller.ip):\(caller.port)>\r\nContent-Type: application/sdp\r\n"
            + "Content-Length: \(sdp.utf8.count)\r\n\r\n" + sdp
        caller.send(invite, to: edgePort)
        let backendInvite = try #require(callee.take("INVITE "), "the INVITE reached the callee; the caller got \(caller.inbox)")
        callee.respond(to: backendInvite, status: "200 OK", toTag: "callee1", body: sdp, to: edgePort)
        let answer = try #require(caller.take("SIP/2.0 200"), "the caller was answered")
        let toCaller = try #require(RawSIPPeer.tag(RawSIPPeer.header("To", in: answer)))
        _ = callee.take("ACK ")   // the edge's ACK of the callee's 200
        let call = Call(callID: callID, callerTag: "caller1", edgeTagToCaller: toCaller,
                        backendCallID: try #require(RawSIPPeer.header("Call-ID", in: backendInvite)),
                        edgeTagToCallee: try #require(RawSIPPeer.tag(RawSIPPeer.header("From", in: backendInvite))),
                        calleeTag: "callee1",
                        edgeContactToCallee: try #require(RawSIPPeer.uri(RawSIPPeer.header("Contact", in: backendInvite))))
        if ack { caller.send(request("ACK", call, peer: caller, cseq: 1, edgePort: edgePort, branch: "\(name)ack"), to: edgePort) }
        return call
    }

    /// Which side of a call a hand-written request comes from.
    enum Side { case caller, callee }

    /// An in-dialog request from `side` on its own leg; `toTag`/`fromTag` forge the dialog id when
    /// given ("" leaves the tag out).
    static func request(_ method: String, _ call: Call, from side: Side = .caller, peer: RawSIPPeer, cseq: Int, edgePort: Int,
                        branch: String, toTag: String? = nil, fromTag: String? = nil) -> String {
        let caller = side == .caller
        let to = toTag ?? (caller ? call.edgeTagToCaller : call.edgeTagToCallee)
        let from = fromTag ?? (caller ? call.callerTag : call.calleeTag)
        let (uri, fromURI, toURI) = caller ? ("sip:service@127.0.0.1:\(edgePort)", "sip:caller@\(peer.ip)", "sip:service@127.0.0.1")
                                           : (call.edgeContactToCallee, "sip:service@127.0.0.1", "sip:caller@127.0.0.1")
        return "\(method) \(uri) SIP/2.0\r\n"
            + "Via: SIP/2.0/UDP \(peer.ip):\(peer.port);branch=z9hG4bK\(branch)\r\nMax-Forwards: 70\r\n"
            + "From: <\(fromURI)>" + (from.isEmpty ? "" : ";tag=\(from)") + "\r\n"
            + "To: <\(toURI)>" + (to.isEmpty ? "" : ";tag=\(to)") + "\r\n"
            + "Call-ID: \(caller ? call.callID : call.backendCallID)\r\nCSeq: \(cseq) \(method)\r\nContent-Length: 0\r\n\r\n"
    }

    /// Ports for one test: the edge on `base`, the callee on `base + 10`, the caller on `base + 20`.
    static func peers(_ base: Int) throws -> (caller: RawSIPPeer, callee: RawSIPPeer) {
        (try RawSIPPeer(ip: "127.0.0.1", port: base + 20), try RawSIPPeer(ip: "127.0.0.1", port: base + 10))
    }

    @Test func rfc3261_12_2_2_an_in_dialog_request_must_match_the_whole_dialog_id_or_get_481() throws {
        let base = Scratch.ports()
        let (caller, callee) = try Self.peers(base)
        let edge = try Self.edge(callee: callee.port, base: base)
        defer { edge.stop() }
        try #require(edge.waitFor("listening udp"), "\(edge.output)")
        let setUp = try? Self.setUp("forged", caller: caller, callee: callee, edgePort: base)
        let call = try #require(setUp, "\(edge.output)")
        // Forgeries from the caller's side: a To tag that is not ours, no To tag, a From tag that is
        // not the caller's, none at all; for BYE and for the other in-dialog methods.
        var cseq = 2
        for method in ["BYE", "INFO", "UPDATE", "INVITE", "OPTIONS"] {
            for (to, from) in [("forged", nil), ("", nil), (nil, "forged"), (nil, "")] as [(String?, String?)] {
                if method == "INVITE" || method == "OPTIONS", to == "" { continue }   // without a To tag, a new request
                caller.send(Self.request(method, call, peer: caller, cseq: cseq, edgePort: base, branch: "f\(cseq)",
                                         toTag: to, fromTag: from), to: base)
                let answer = caller.take("SIP/2.0 ", containing: "CSeq: \(cseq) \(method)")
                #expect(answer?.hasPrefix("SIP/2.0 481") == true, "\(method) with To tag \(to ?? "ours"), From tag \(from ?? "the caller's"): \(answer ?? "no answer")")
                cseq += 1
            }
        }
        // From the callee's side too.
        for (to, from) in [("forged", nil), ("", nil), (nil, "forged")] as [(String?, String?)] {
            callee.send(Self.request("BYE", call, from: .callee, peer: callee, cseq: cseq, edgePort: base, branch: "g\(cseq)",
                                           toTag: to, fromTag: from), to: base)
            let answer = callee.take("SIP/2.0 ", containing: "CSeq: \(cseq) BYE")
            #expect(answer?.hasPrefix("SIP/2.0 481") == true, "callee's BYE with To tag \(to ?? "ours"), From tag \(from ?? "its own"): \(answer ?? "no answer")")
            cseq += 1
        }
        // None of that reached the other side, and the call is still up: the real BYE ends it.
        callee.drain(for: 200)
        #expect(callee.count("BYE") == 0 && callee.count("INFO") == 0 && callee.count("UPDATE") == 0, "nothing forged crossed: \(callee.inbox)")
        caller.send(Self.request("BYE", call, peer: caller, cseq: cseq, edgePort: base, branch: "real"), to: base)
        let bye = caller.take("SIP/2.0 ", containing: "CSeq: \(cseq) BYE")
        #expect(bye?.hasPrefix("SIP/2.0 200") == true, "the caller's real BYE: \(bye ?? "no answer")")
        #expect(callee.take("BYE ") != nil, "and it ended the callee's leg")
    }

    @Test func no_dialog_is_pinged_before_the_callers_ack_and_no_ping_outlives_its_dialog() throws {
        let base = Scratch.ports()
        let (caller, callee) = try Self.peers(base)
        let edge = try Self.edge(callee: callee.port, base: base, extra: "[calls]\nping_interval_seconds = 1")
        defer { edge.stop() }
        try #require(edge.waitFor("listening udp"), "\(edge.output)")
        // A caller that never ACKs (a forged source): it gets the 2xx retransmissions RFC 3261
        // requires, and nothing else; the callee hears nothing but its ACK.
        _ = try Self.setUp("unacked", caller: caller, callee: callee, edgePort: base, ack: false)
        caller.drain(for: 2_500)
        callee.drain(for: 100)
        #expect(caller.count("OPTIONS") == 0, "the unacknowledged caller was pinged: \(caller.inbox.map { $0.prefix(40) })")
        #expect(callee.count("OPTIONS") == 0, "the callee of an unacknowledged call was pinged")
        #expect(caller.count("SIP/2.0 200") >= 2, "the 2xx was retransmitted (RFC 3261 §13.3.1.4)")
        caller.clear()
        callee.clear()
        // An acknowledged call is pinged; neither peer answers; the caller hangs up: the pings'
        // retransmissions stop with the dialog.
        let call = try Self.setUp("pinged", caller: caller, callee: callee, edgePort: base)
        #expect(caller.take("OPTIONS ", containing: call.callID, waiting: 3_000) != nil, "an acknowledged dialog is pinged")
        caller.send(Self.request("BYE", call, peer: caller, cseq: 2, edgePort: base, branch: "pingedbye"), to: base)
        #expect(caller.take("SIP/2.0 200", containing: "BYE", waiting: 1_000) != nil, "the BYE was answered")
        caller.clear()
        callee.drain(for: 300)
        callee.clear()
        caller.drain(for: 3_000)
        callee.drain(for: 100)
        #expect(caller.inbox.filter { $0.hasPrefix("OPTIONS") && $0.contains(call.callID) }.isEmpty,
                "pings went on after the dialog ended: \(caller.inbox.map { $0.prefix(40) })")
        #expect(callee.count("OPTIONS") == 0, "pings toward the callee went on after the dialog ended")
    }

    @Test func rfc3261_16_3_a_call_that_comes_back_to_the_edge_gets_482_at_once() throws {
        let base = Scratch.ports()
        let caller = try RawSIPPeer(ip: "127.0.0.1", port: base + 20)
        // The edge's only destination is the edge itself.
        let edge = try Self.edge(callee: base, base: base)
        defer { edge.stop() }
        try #require(edge.waitFor("listening udp"), "\(edge.output)")
        let invite = "INVITE sip:service@127.0.0.1:\(base) SIP/2.0\r\n"
            + "Via: SIP/2.0/UDP 127.0.0.1:\(caller.port);branch=z9hG4bKloop1\r\nMax-Forwards: 70\r\n"
            + "From: <sip:caller@127.0.0.1>;tag=loop1\r\nTo: <sip:service@127.0.0.1>\r\nCall-ID: loop-\(getpid())\r\n"
            + "CSeq: 1 INVITE\r\nContact: <sip:caller@127.0.0.1:\(caller.port)>\r\nContent-Length: 0\r\n\r\n"
        caller.send(invite, to: base)
        let final = caller.take("SIP/2.0 4", waiting: 3_000)
        #expect(final?.hasPrefix("SIP/2.0 482") == true, "the caller learns of the loop: \(final ?? "no answer")")
        edge.stop()
        #expect(edge.output.contains("1 calls started"), "one call, not one per hop: \(edge.output.suffix(300))")
    }

    /// Starts `sipedge run` on `config` and waits (bounded) for it to exit: its status and output.
    static func runToExit(_ config: String) throws -> (status: Int32, output: String) {
        let (p, read) = try CommandTests.start(config)
        for _ in 0..<100 where p.isRunning { usleep(50_000) }
        if p.isRunning {
            p.terminate()
            p.waitUntilExit()
            return (-1, read())
        }
        p.waitUntilExit()
        usleep(50_000)
        return (p.terminationStatus, read())
    }

    @Test func a_second_instance_cannot_share_the_first_ones_listeners_mi_or_database() throws {
        let base = Scratch.ports()
        let dir = try Scratch.directory("second")
        defer { Scratch.remove(dir) }
        let db = dir.appendingPathComponent("sipedge.db").path
        func config(listeners port: Int, mi: Int) -> String {
            """
            workers = 2
            [dispatcher]
            probe_interval_seconds = 0
            destinations = ["127.0.0.1:\(base + 10)"]
            [mi]
            address = "127.0.0.1"
            port = \(mi)
            [database]
            path = "\(db)"
            \(CallTests.listeners(port: port))
            """
        }
        let first = try CallTests.Edge(config: config(listeners: base, mi: base + 1))
        defer { first.stop() }
        try #require(first.waitFor("mi listening"), "\(first.output)")
        // The same config again: its UDP listener is taken.
        let same = try Self.runToExit(config(listeners: base, mi: base + 1))
        #expect(same.status != 0 && same.status != -1, "a second edge on the same config did not stop: \(same.output)")
        #expect(same.output.contains("udp:127.0.0.1:\(base)") && same.output.contains("already in use by another process"), "\(same.output)")
        #expect(!same.output.contains("listening"), "\(same.output)")
        // Only TCP shared: the TCP listener is named.
        let tcpOnly = try Self.runToExit(config(listeners: base, mi: base + 1).replacingOccurrences(of: "proto = \"udp\"\naddress = \"127.0.0.1\"\nport = \(base)",
                                                                                                 with: "proto = \"udp\"\naddress = \"127.0.0.1\"\nport = \(base + 5)"))
        #expect(tcpOnly.status != 0 && tcpOnly.output.contains("tcp:127.0.0.1:\(base)") && tcpOnly.output.contains("already in use"), "\(tcpOnly.output)")
        // Other listeners, the same MI address: the MI is named.
        let mi = try Self.runToExit(config(listeners: base + 2, mi: base + 1).replacingOccurrences(of: db, with: db + "-other"))
        #expect(mi.status != 0 && mi.status != -1, "\(mi.output)")
        #expect(mi.output.contains("mi udp:127.0.0.1:\(base + 1)"), "\(mi.output)")
        // Other listeners and MI, the same database: refused, naming the holder.
        let database = try Self.runToExit(config(listeners: base + 3, mi: base + 4))
        #expect(database.status != 0 && database.status != -1, "\(database.output)")
        #expect(database.output.contains("\(db): in use by another process (pid \(first.process.processIdentifier))"), "\(database.output)")
        // The first one still serves alone.
        let fd = ProtectionTests.socket(from: "127.0.0.1")
        defer { close(fd) }
        ProtectionTests.send(fd, ProtectionTests.options(1, from: "127.0.0.1"), to: base)
        #expect(ProtectionTests.statuses(fd, waiting: 1_000) == [200])
        #expect(first.process.isRunning)
    }

    /// A blocking TCP connection to 127.0.0.1:`port` with a receive timeout of `ms`; -1 if refused.
    static func connectTCP(_ port: Int, timeout ms: Int = 2_000) -> Int32 {
        let fd = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr)
        let r = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard r == 0 else {
            close(fd)
            return -1
        }
        var tv = timeval(tv_sec: ms / 1_000, tv_usec: (ms % 1_000) * 1_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    /// Everything the peer sends until it closes (or `fd`'s receive timeout); and whether it closed.
    static func readToClose(_ fd: Int32) -> (text: String, closed: Bool) {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n > 0 { out += buffer[0..<n]; continue }
            return (String(decoding: out, as: UTF8.self), n == 0 || (n < 0 && errno == ECONNRESET))
        }
    }

    @Test func tcp_framing_faults_are_answered_before_the_connection_closes() throws {
        let base = Scratch.ports()
        let edge = try CallTests.Edge(config: "workers = 2\n" + CallTests.listeners(port: base))
        defer { edge.stop() }
        try #require(edge.waitFor("listening tcp"), "\(edge.output)")
        let cases = [("99999999", "413"), ("70000", "413"), ("18446744073709551616", "413"), ("-1", "400"), ("1x", "400")]
        for (length, expected) in cases {
            let fd = Self.connectTCP(base)
            try #require(fd >= 0)
            defer { close(fd) }
            let request = "OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKcl\(expected)\r\n"
                + "Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=a\r\nTo: <sip:edge@127.0.0.1>\r\nCall-ID: cl-\(length)\r\n"
                + "CSeq: 1 OPTIONS\r\nContent-Length: \(length)\r\n\r\n"
            _ = request.withCString { send(fd, $0, strlen($0), 0) }
            let (text, closed) = Self.readToClose(fd)
            #expect(text.hasPrefix("SIP/2.0 \(expected) "), "Content-Length \(length): \(text.prefix(200))")
            #expect(text.contains("Warning: 399 sipedge") && text.contains("Call-ID: cl-\(length)"), "\(text)")
            #expect(closed, "Content-Length \(length): the connection was closed after the answer")
        }
        #expect(edge.process.isRunning)
    }

    @Test func slow_and_silent_connections_are_closed_and_the_per_source_limit_is_the_edges() throws {
        let base = Scratch.ports()
        let edge = try CallTests.Edge(config: """
            workers = 2
            [log]
            summary_interval_seconds = 0
            [tcp]
            message_read_timeout_seconds = 2
            silent_timeout_seconds = 2
            max_connections_per_source = 30
            \(CallTests.listeners(port: base))
            """)
        defer { edge.stop() }
        try #require(edge.waitFor("listening tcp"), "\(edge.output)")
        let options = "OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKslow\r\n"
            + "Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=a\r\nTo: <sip:edge@127.0.0.1>\r\nCall-ID: slow\r\n"
            + "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        // 10 silent connections, 10 that trickle a byte every 300 ms, 1 that sends a whole request.
        let silent = (0..<10).map { _ in Self.connectTCP(base, timeout: 100) }
        let trickling = (0..<10).map { _ in Self.connectTCP(base, timeout: 100) }
        let honest = Self.connectTCP(base, timeout: 2_000)
        defer { for fd in silent + trickling + [honest] where fd >= 0 { close(fd) } }
        try #require((silent + trickling + [honest]).allSatisfy { $0 >= 0 })
        _ = options.withCString { send(honest, $0, strlen($0), 0) }
        #expect(Self.readSome(honest).hasPrefix("SIP/2.0 200"), "the honest connection is served")
        let bytes = Array(options.utf8)
        var closedAt: [Int: Int] = [:]   // trickling index -> the byte at which the edge closed it
        for step in 0..<14 {             // 14 x 300 ms: past the 2 s deadline (and its 1 s sweep)
            for (i, fd) in trickling.enumerated() where closedAt[i] == nil {
                if send(fd, [bytes[step]], 1, Int32(MSG_NOSIGNAL)) < 0 || Self.peerClosed(fd) { closedAt[i] = step }
            }
            usleep(300_000)
        }
        for (i, fd) in trickling.enumerated() where closedAt[i] == nil && Self.peerClosed(fd) { closedAt[i] = 14 }
        #expect(closedAt.count == 10, "every trickling connection was closed: \(closedAt)")
        #expect(silent.allSatisfy { Self.peerClosed($0) }, "every silent connection was closed")
        #expect(!Self.peerClosed(honest), "the connection that sent a whole request stays open")
        #expect(edge.output.contains("no complete message within 2 s of its first byte"))
        #expect(edge.output.contains("nothing received within 2 s"))
        // 40 more connections from this source, over 2 workers: 30 in all are let in, not 30 per worker.
        var more: [Int32] = []
        defer { for fd in more where fd >= 0 { close(fd) } }
        for _ in 0..<40 { more.append(Self.connectTCP(base, timeout: 300)) }
        usleep(300_000)
        let open = more.filter { $0 >= 0 && !Self.peerClosed($0) }.count
        #expect(open == 29, "the honest one and 29 of these are open: \(open)")
        #expect(edge.output.contains("30 connections from that source already"))
    }

    /// Whether the peer has closed `fd` (a read says end of stream or reset; nothing to read is open).
    static func peerClosed(_ fd: Int32) -> Bool {
        var byte: UInt8 = 0
        let n = recv(fd, &byte, 1, Int32(MSG_DONTWAIT | MSG_PEEK))
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
    }

    /// What arrives on `fd` within its receive timeout (one read).
    static func readSome(_ fd: Int32) -> String {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let n = recv(fd, &buffer, buffer.count, 0)
        return n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : ""
    }

    @Test func the_mi_answers_as_json_rpc_2_0_says_notifications_batches_bad_params_and_parse_errors() throws {
        let base = Scratch.ports()
        let edge = try CallTests.Edge(config: "workers = 1\n[mi]\naddress = \"127.0.0.1\"\nport = \(base + 1)\n" + CallTests.listeners(port: base, tcp: false))
        defer { edge.stop() }
        try #require(edge.waitFor("mi listening"), "\(edge.output)")
        let fd = ProtectionTests.socket(from: "127.0.0.1")
        defer { close(fd) }
        /// The answer to `text` as parsed JSON (nil: none within `ms`), and its size.
        func ask(_ text: String, waiting ms: Int = 1_000) -> (json: Any?, bytes: Int) {
            ProtectionTests.send(fd, text, to: base + 1)
            var buffer = [UInt8](repeating: 0, count: 65_536)
            for _ in 0..<(ms / 10) {
                let n = recv(fd, &buffer, buffer.count, 0)
                if n > 0 { return (try? JSONSerialization.jsonObject(with: Data(buffer[0..<n]), options: [.fragmentsAllowed]), n) }
                usleep(10_000)
            }
            return (nil, 0)
        }
        func code(_ answer: Any?) -> Int? { ((answer as? [String: Any])?["error"] as? [String: Any])?["code"] as? Int }
        // A request without an id is a notification: no answer, whether it works or not.
        #expect(ask(#"{"jsonrpc":"2.0","method":"version"}"#, waiting: 500).json == nil)
        #expect(ask(#"{"jsonrpc":"2.0","method":"no_such_command"}"#, waiting: 500).json == nil)
        // params of the wrong type.
        #expect(code(ask(#"{"jsonrpc":"2.0","method":"version","params":"x","id":1}"#).json) == -32600)
        #expect(code(ask(#"{"jsonrpc":"2.0","method":"ds_set_state","params":["a"],"id":2}"#).json) == -32602)
        #expect(code(ask(#"{"jsonrpc":"2.0","method":"version","id":{"a":1}}"#).json) == -32600)
        // Batches: empty, of non-requests, of a request and a notification, of notifications only.
        #expect(code(ask("[]").json) == -32600)
        let junk = ask("[1,2]").json as? [Any]
        #expect(junk?.count == 2 && junk?.allSatisfy { code($0) == -32600 } == true, "\(String(describing: junk))")
        let mixed = ask(#"[{"jsonrpc":"2.0","method":"version","id":7},{"jsonrpc":"2.0","method":"version"}]"#).json as? [[String: Any]]
        #expect(mixed?.count == 1 && mixed?.first?["id"] as? Int == 7 && mixed?.first?["result"] != nil, "\(String(describing: mixed))")
        #expect(ask(#"[{"jsonrpc":"2.0","method":"version"}]"#, waiting: 500).json == nil)
        // A parse error says so plainly, without Foundation's internals.
        let broken = ask(#"{"jsonrpc": "2.0", "method"#).json as? [String: Any]
        let message = (broken?["error"] as? [String: Any])?["message"] as? String ?? ""
        #expect(code(broken) == -32700 && broken?["id"] is NSNull, "\(String(describing: broken))")
        #expect(!message.contains("NSCocoaErrorDomain") && !message.contains("Error Domain"), "\(message)")
        // A 60 KB method name is not echoed back whole.
        let long = ask(#"{"jsonrpc":"2.0","id":3,"method":""# + String(repeating: "m", count: 60_000) + #""}"#)
        #expect(code(long.json) == -32601 && long.bytes < 1_000, "\(long.bytes) bytes")
        // And the MI still works.
        #expect(((ask(#"{"jsonrpc":"2.0","method":"version","id":9}"#).json as? [String: Any])?["result"]) != nil)
    }

    @Test func repeated_log_lines_from_one_source_are_summarised_once_per_interval() throws {
        let base = Scratch.ports()
        let edge = try CallTests.Edge(config: """
            workers = 2
            [log]
            summary_interval_seconds = 2
            [tcp]
            max_connections_per_source = 2
            \(CallTests.listeners(port: base))
            """)
        defer { edge.stop() }
        try #require(edge.waitFor("listening tcp"), "\(edge.output)")
        // 40 connections from one source, 38 of them refused; 300 invalid datagrams from another.
        let connections = (0..<40).map { _ in Self.connectTCP(base, timeout: 100) }
        defer { for fd in connections where fd >= 0 { close(fd) } }
        let fd = ProtectionTests.socket(from: "127.0.0.5")
        defer { close(fd) }
        for n in 0..<300 { ProtectionTests.send(fd, "NOT SIP \(n)\r\n\r\n", to: base) }
        usleep(500_000)
        func lines(_ needle: String) -> Int { edge.output.split(separator: "\n").filter { $0.contains(needle) }.count }
        #expect(lines("TCP: refused") >= 1 && lines("TCP: refused") <= 2, "\(lines("TCP: refused")) refusal lines")
        #expect(lines("udp from 127.0.0.5") >= 1 && lines("udp from 127.0.0.5") <= 2, "\(lines("udp from 127.0.0.5")) lines for invalid datagrams")
        // Once the interval is over, the counts are written.
        #expect(edge.waitFor("lines from 127.0.0.5 were not written"), "\(edge.output.suffix(600))")
        let counted = edge.output.split(separator: "\n").first { $0.contains("\"invalid SIP message\" lines from 127.0.0.5") }
        #expect(counted?.contains("299 more") == true || counted?.contains("298 more") == true, "\(String(describing: counted))")
        #expect(edge.output.contains("more \"tcp refused\" lines from 127.0.0.1 were not written"))
        #expect(edge.output.split(separator: "\n").count < 40, "the whole attack took \(edge.output.split(separator: "\n").count) lines")
    }

    @Test func a_tls_handshake_that_stalls_is_cut_off_after_the_silent_timeout() throws {
        let base = Scratch.ports()
        let dir = try Scratch.directory("tls-stall")
        defer { Scratch.remove(dir) }
        let (key, cert) = (dir.appendingPathComponent("k.pem").path, dir.appendingPathComponent("c.pem").path)
        let made = MISecretTests.sh(["/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                                     "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"])
        try #require(made.0 == 0, "openssl (make test installs it): \(made.1)")
        let edge = try CallTests.Edge(config: """
            workers = 2
            [tcp]
            silent_timeout_seconds = 2
            [tls]
            certificate = "\(cert)"
            private_key = "\(key)"
            [[listener]]
            proto = "tls"
            address = "127.0.0.1"
            port = \(base)
            """)
        defer { edge.stop() }
        try #require(edge.waitFor("listening tls"), "\(edge.output)")
        // The first bytes of a ClientHello's record, and then nothing.
        let fd = Self.connectTCP(base, timeout: 100)
        try #require(fd >= 0)
        defer { close(fd) }
        let start: [UInt8] = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01]
        _ = send(fd, start, start.count, Int32(MSG_NOSIGNAL))
        var closed = false
        for _ in 0..<50 where !closed {   // up to 5 s: the 2 s timeout and the 1 s sweep
            usleep(100_000)
            closed = Self.peerClosed(fd)
        }
        #expect(closed, "the stalled handshake's connection was closed")
        // (The log line may follow the close by a moment.)
        #expect(edge.waitFor("TLS handshake not finished within 2 s"), "\(edge.output.suffix(400))")
    }
}

