import SIPParser

/// Writes SIP messages a B2BUA generates, header by header, into one byte array. Each leg's
/// messages are written from the leg's own state, which is what hides one side's topology (Via,
/// Record-Route, Contact, Call-ID) from the other: nothing of it is copied across.
public struct MessageBuilder {
    public private(set) var bytes: [UInt8] = []

    public init(requestLine method: String, uri: [UInt8]) {
        bytes.reserveCapacity(1_024)
        append(method)
        append(" ")
        bytes.append(contentsOf: uri)
        append(" SIP/2.0\r\n")
    }

    public init(status: Int, reason: some Collection<UInt8>) {
        bytes.reserveCapacity(1_024)
        append("SIP/2.0 \(status) ")
        bytes.append(contentsOf: reason)
        append("\r\n")
    }

    public mutating func header(_ name: String, _ value: some Collection<UInt8>) {
        append(name)
        append(": ")
        bytes.append(contentsOf: value)
        append("\r\n")
    }

    public mutating func header(_ name: String, _ value: String) {
        header(name, value.utf8)
    }

    /// Headers that describe the session rather than the hop, so a B2BUA carries them from one
    /// leg to the other (RFC 3262 reliability, RFC 4028 timers, capabilities, events, the body's
    /// disposition, the reason of a BYE or CANCEL). Nothing that names a peer's address or dialog.
    public static let endToEnd: [HeaderKind] = [
        .supported, .require, .rseq, .allow, .allowEvents, .event, .subscriptionState, .sessionExpires,
        .minSE, .contentDisposition, .reason, .accept, .privacy,
    ]

    /// Copies every line of these kinds from `message`, names and values as written.
    public mutating func copy(_ kinds: [HeaderKind], from message: SIPMessage) {
        for i in 0..<message.headerCount {
            let h = message.header(at: i)
            if kinds.contains(h.kind) { header(h.name.string, h.value.bytes) }
        }
    }

    /// Ends the headers with Content-Length (and Content-Type when there is a body), then the body.
    public mutating func finish(contentType: ByteView? = nil, body: some Collection<UInt8> = EmptyCollection<UInt8>()) -> [UInt8] {
        if let contentType, !body.isEmpty { header("Content-Type", contentType.bytes) }
        header("Content-Length", "\(body.count)")
        append("\r\n")
        bytes.append(contentsOf: body)
        return bytes
    }

    private mutating func append(_ text: String) {
        bytes.append(contentsOf: text.utf8)
    }

    /// The standard reason phrase for a status code.
    public static func reason(_ status: Int) -> String {
        switch status {
        case 100: return "Trying"
        case 180: return "Ringing"
        case 183: return "Session Progress"
        case 200: return "OK"
        case 400: return "Bad Request"
        case 404: return "Not Found"
        case 408: return "Request Timeout"
        case 416: return "Unsupported URI Scheme"
        case 422: return "Session Interval Too Small"
        case 491: return "Request Pending"
        case 481: return "Call/Transaction Does Not Exist"
        case 483: return "Too Many Hops"
        case 486: return "Busy Here"
        case 487: return "Request Terminated"
        case 500: return "Server Internal Error"
        case 501: return "Not Implemented"
        case 503: return "Service Unavailable"
        case 505: return "Version Not Supported"
        case 513: return "Message Too Large"
        default: return status < 300 ? "OK" : "Error"
        }
    }

    /// A response to `request` built from its own Via, From, To, Call-ID and CSeq (§8.2.6.2), with
    /// `toTag` added to To when it has none (a stateless error or a B2BUA leg's answer).
    public static func response(to request: SIPMessage, status: Int, reason: String? = nil, toTag: String?,
                                contact: String? = nil, extraHeaders: [(String, String)] = [],
                                contentType: ByteView? = nil, body: [UInt8] = []) -> [UInt8] {
        var b = responseHead(to: request, status: status, reason: reason, toTag: toTag, contact: contact, extraHeaders: extraHeaders)
        b.header("Server", "SIPEdge")
        return b.finish(contentType: contentType, body: body)
    }

    /// The status line and headers of such a response, for a caller that adds more before `finish`.
    public static func responseHead(to request: SIPMessage, status: Int, reason: String? = nil, toTag: String?,
                                    contact: String? = nil, extraHeaders: [(String, String)] = []) -> MessageBuilder {
        var b = MessageBuilder(status: status, reason: (reason ?? Self.reason(status)).utf8)
        for i in 0..<request.headerCount {
            let h = request.header(at: i)
            if h.kind == .via { b.header("Via", h.value.bytes) }
        }
        if let from = request.firstValue(.from) { b.header("From", from.bytes) }
        if let to = request.firstValue(.to) {
            if let toTag, request.tag(of: .to) == nil {
                b.header("To", to.bytes + Array(";tag=\(toTag)".utf8))
            } else {
                b.header("To", to.bytes)
            }
        }
        if let callID = request.callID { b.header("Call-ID", callID.bytes) }
        if let cseq = request.firstValue(.cseq) { b.header("CSeq", cseq.bytes) }
        if let contact { b.header("Contact", contact) }
        for (name, value) in extraHeaders { b.header(name, value) }
        return b
    }
}
