import Dialog
import SIPParser
import Testing
import Transport

/// Records what the B2BUA sends, parsed, with the hop it went to.
final class RecordingSender: MessageSender {
    private(set) var log: [(message: SIPMessage, hop: Hop)] = []

    func send(_ bytes: [UInt8], to hop: Hop) -> Bool {
        guard let message = try? SIPMessage(parsing: bytes) else {
            Issue.record("the B2BUA sent what does not parse: \(String(decoding: bytes, as: UTF8.self))")
            return true
        }
        log.append((message, hop))
        return true
    }
}

/// Records every version of every dialog record the gate emits.
final class RecordingSink: DialogStateSink {
    private(set) var records: [DialogRecord] = []
    func dialogChanged(_ record: DialogRecord) { records.append(record) }
}

/// One B2BUA on a manual clock between a caller and up to two backends, with nothing but a
/// recording sender around it: messages go in with `fromCaller`/`fromBackend`, come out of
/// `next(to:)`, and time moves with `wait`. No socket, no thread.
final class B2BUAStage {
    static let caller = Hop(.udp, SocketAddress(ip: "192.0.2.10", port: 5060)!)
    static let backends = [Hop(.udp, SocketAddress(ip: "127.0.0.1", port: 5080)!), Hop(.udp, SocketAddress(ip: "127.0.0.1", port: 5082)!)]
    static let listeners: [TransportProtocol: [LocalAddress]] = [
        .udp: [LocalAddress(host: "198.51.100.1", port: 5060, tag: "public"), LocalAddress(host: "10.0.0.1", port: 5060, tag: "farm")],
    ]

    let clock = ManualClock()
    let sender = RecordingSender()
    let sink = RecordingSink()
    let b2bua: B2BUA
    private var read: [Int: Int] = [:]   // messages read so far, per destination port
    private var branches = 0

    init(_ tweak: (inout B2BUAConfig) -> Void = { _ in }) {
        var config = B2BUAConfig(listeners: Self.listeners, backends: Self.backends)
        tweak(&config)
        b2bua = B2BUA(clock: clock, config: config, sender: sender)
        b2bua.add(sink: sink)
    }

    /// A message from text written with "\n" line ends; Content-Length is added.
    static func message(_ head: String, body: String = "") -> SIPMessage {
        let text = head.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.isEmpty }.joined(separator: "\r\n")
            + "\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body
        do {
            let m = try SIPMessage(parsing: Array(text.utf8))
            try m.validate()
            return m
        } catch {
            fatalError("test message does not parse (\(error)): \(text)")
        }
    }

    /// A message in, handled as one loop iteration.
    func fromCaller(_ m: SIPMessage, hop: Hop = caller, listenerTag: String = "public") {
        b2bua.receive(m, from: hop, listenerTag: listenerTag)
        clock.endIteration()
    }

    func fromBackend(_ m: SIPMessage, hop: Hop = backends[0]) {
        b2bua.receive(m, from: hop, listenerTag: "farm")
        clock.endIteration()
    }
    func wait(_ milliseconds: UInt64) { clock.advance(byMilliseconds: milliseconds) }

    /// What went to `hop` and was not read yet, oldest first; reading it marks it read.
    func unread(to hop: Hop) -> [SIPMessage] {
        let all = sender.log.filter { $0.hop.address == hop.address }.map(\.message)
        let from = read[Int(hop.address.port), default: 0]
        read[Int(hop.address.port)] = all.count
        return Array(all[from...])
    }

    /// The next message to `hop`; records an issue (and returns nil) when there is none.
    func next(to hop: Hop, sourceLocation: SourceLocation = #_sourceLocation) -> SIPMessage? {
        let all = sender.log.filter { $0.hop.address == hop.address }.map(\.message)
        let from = read[Int(hop.address.port), default: 0]
        guard from < all.count else {
            Issue.record("nothing (more) was sent to \(hop)", sourceLocation: sourceLocation)
            return nil
        }
        read[Int(hop.address.port)] = from + 1
        return all[from]
    }

    func newBranch() -> String {
        branches += 1
        return "z9hG4bK-test\(branches)"
    }

    // MARK: - The caller's messages

    static let sdp = "v=0\r\no=alice 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
    static let answerSDP = "v=0\r\no=ast 7 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 10000 RTP/AVP 0\r\n"

    func invite(callID: String = "call-1@192.0.2.10", branch: String? = nil, extra: String = "", body: String = sdp) -> SIPMessage {
        Self.message("""
            INVITE sip:100@198.51.100.1 SIP/2.0
            Via: SIP/2.0/UDP 192.0.2.10:5060;branch=\(branch ?? newBranch())
            Max-Forwards: 70
            From: "Alice" <sip:alice@192.0.2.10>;tag=a1
            To: <sip:100@198.51.100.1>
            Call-ID: \(callID)
            CSeq: 1 INVITE
            Contact: <sip:alice@192.0.2.10:5060>
            Record-Route: <sip:proxy.example.com;lr>
            \(extra)
            \(body.isEmpty ? "" : "Content-Type: application/sdp")
            """, body: body)
    }

    /// The caller's CANCEL of its INVITE with `branch` (§9.1: the INVITE's branch, Call-ID, tags, CSeq).
    func cancel(branch: String) -> SIPMessage {
        Self.message("""
            CANCEL sip:100@198.51.100.1 SIP/2.0
            Via: SIP/2.0/UDP 192.0.2.10:5060;branch=\(branch)
            Max-Forwards: 70
            From: "Alice" <sip:alice@192.0.2.10>;tag=a1
            To: <sip:100@198.51.100.1>
            Call-ID: call-1@192.0.2.10
            CSeq: 1 CANCEL
            """)
    }

    /// A request from the caller inside its dialog (To carries the edge's tag).
    func callerRequest(_ method: String, cseq: UInt32, toTag: String, callID: String = "call-1@192.0.2.10", branch: String? = nil,
                       extra: String = "", body: String = "") -> SIPMessage {
        Self.message("""
            \(method) sip:edge@198.51.100.1:5060 SIP/2.0
            Via: SIP/2.0/UDP 192.0.2.10:5060;branch=\(branch ?? newBranch())
            Max-Forwards: 70
            From: "Alice" <sip:alice@192.0.2.10>;tag=a1
            To: <sip:100@198.51.100.1>;tag=\(toTag)
            Call-ID: \(callID)
            CSeq: \(cseq) \(method)
            \(extra)
            \(body.isEmpty ? "" : "Content-Type: application/sdp")
            """, body: body)
    }

    /// A request from the backend inside the backend leg's dialog, answering `invite` (as sent to it).
    func backendRequest(_ method: String, cseq: UInt32, on invite: SIPMessage, extra: String = "", body: String = "") -> SIPMessage {
        let from = invite.firstValue(.from)!.string, to = invite.firstValue(.to)!.string
        return Self.message("""
            \(method) \(invite.firstValue(.contact).map { Self.uri(of: $0.string) } ?? "sip:edge@10.0.0.1") SIP/2.0
            Via: SIP/2.0/UDP 127.0.0.1:5080;branch=\(newBranch())
            Max-Forwards: 70
            From: \(to);tag=b1
            To: \(from)
            Call-ID: \(invite.callID!.string)
            CSeq: \(cseq) \(method)
            \(extra)
            \(body.isEmpty ? "" : "Content-Type: application/sdp")
            """, body: body)
    }

    /// A response to `request` (as it reached its peer), with a To tag when it has none.
    static func response(to request: SIPMessage, _ status: Int, toTag: String? = "b1", contact: String? = "<sip:ast@127.0.0.1:5080>",
                         extra: [(String, String)] = [], body: String = "") -> SIPMessage {
        var b = MessageBuilder.responseHead(to: request, status: status, toTag: toTag, extraHeaders: extra)
        if let contact, status < 300 { b.header("Contact", contact) }
        let bytes = b.finish(contentType: body.isEmpty ? nil : ByteView(text: "application/sdp"), body: Array(body.utf8))
        return try! SIPMessage(parsing: bytes)
    }

    static func uri(of nameAddress: String) -> String {
        guard let open = nameAddress.firstIndex(of: "<"), let close = nameAddress.firstIndex(of: ">") else { return nameAddress }
        return String(nameAddress[nameAddress.index(after: open)..<close])
    }

    /// A call set up end to end: the caller's INVITE, the backend's 180 and 200, the caller's ACK.
    /// Returns the edge's To tag toward the caller and the INVITE as the backend got it.
    @discardableResult
    func establish(callID: String = "call-1@192.0.2.10", inviteExtra: String = "", answerExtra: [(String, String)] = [],
                   sourceLocation: SourceLocation = #_sourceLocation) -> (toTag: String, backendInvite: SIPMessage)? {
        fromCaller(invite(callID: callID, extra: inviteExtra))
        guard let forwarded = next(to: Self.backends[0], sourceLocation: sourceLocation) else { return nil }
        fromBackend(Self.response(to: forwarded, 180))
        fromBackend(Self.response(to: forwarded, 200, extra: answerExtra, body: Self.answerSDP))
        let toCaller = unread(to: Self.caller).filter { $0.statusCode != 100 }
        guard let ok = toCaller.last, ok.statusCode == 200, let tag = ok.tag(of: .to)?.string else {
            Issue.record("the caller got no 200: \(toCaller.map { $0.statusCode ?? 0 })", sourceLocation: sourceLocation)
            return nil
        }
        fromCaller(callerRequest("ACK", cseq: 1, toTag: tag, callID: callID))
        _ = unread(to: Self.backends[0])   // the edge's ACK to the backend
        return (tag, forwarded)
    }
}

extension SIPMessage {
    var text: String { String(decoding: bytes[0..<messageLength], as: UTF8.self) }
    func value(_ kind: HeaderKind) -> String? { firstValue(kind)?.string }
}
