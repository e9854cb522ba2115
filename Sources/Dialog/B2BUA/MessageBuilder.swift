import SIPParser
import Transport

/// Writes SIP messages a B2BUA generates, header by header, into one byte array. Each leg's
/// messages are written from the leg's own state, which is what hides one side's topology (Via,
/// Record-Route, Contact, Call-ID) from the other: nothing of it is copied across.
public struct MessageBuilder {
    public private(set) var bytes: [UInt8] = []
    /// A request's method, and where its Via branch was written (`via`).
    private var method = ""
    private var branch: Range<Int>?

    public init(requestLine method: String, uri: [UInt8]) {
        bytes.reserveCapacity(1_024)
        self.method = method
        append(method)
        append(" ")
        bytes.append(contentsOf: uri)
        append(" SIP/2.0\r\n")
    }

    public init(status: Int, reason: some Collection<UInt8>) {
        bytes.reserveCapacity(1_024)
        append("SIP/2.0 ")
        appendDecimal(status)
        append(" ")
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

    /// A header whose value is a run of a received message, copied straight from it.
    public mutating func header(_ name: String, _ value: ByteView) {
        value.withUnsafeBytes { header(name, $0) }
    }

    /// A header line of a received message, name and value as written, copied straight from it.
    public mutating func header(copying name: ByteView, _ value: ByteView) {
        name.withUnsafeBytes { bytes.append(contentsOf: $0) }
        append(": ")
        value.withUnsafeBytes { bytes.append(contentsOf: $0) }
        append("\r\n")
    }

    /// A From or To value followed by `;tag=` and the tag (none when `tag` is empty).
    public mutating func header(_ name: String, _ value: some Collection<UInt8>, tag: String) {
        append(name)
        append(": ")
        bytes.append(contentsOf: value)
        if !tag.isEmpty {
            append(";tag=")
            append(tag)
        }
        append("\r\n")
    }

    /// The same for a value read from a received message.
    public mutating func header(_ name: String, _ value: ByteView, tag: String) {
        value.withUnsafeBytes { header(name, $0, tag: tag) }
    }

    /// A header whose value is a number.
    public mutating func header(_ name: String, number: some BinaryInteger) {
        append(name)
        append(": ")
        appendDecimal(number)
        append("\r\n")
    }

    /// `CSeq: <number> <method>`.
    public mutating func cseq(_ number: UInt32, _ method: String) {
        append("CSeq: ")
        appendDecimal(number)
        append(" ")
        append(method)
        append("\r\n")
    }

    /// Our Via on a request we send: `SIP/2.0/<transport> host:port;branch=z9hG4bK<new id>;rport`,
    /// with `.<slot>` after the id when the request's client transaction will take that slot (its
    /// responses then find it by index).
    public mutating func via(_ transport: TransportProtocol, host: String, port: UInt16, ids: inout ShardedIdentifiers, slot: Int? = nil) {
        append("Via: SIP/2.0/")
        switch transport {
        case .udp: append("UDP ")
        case .tcp: append("TCP ")
        case .tls: append("TLS ")
        case .sctp: append("SCTP ")
        }
        append(host)
        append(":")
        appendDecimal(port)
        let start = bytes.count + 8
        append(";branch=z9hG4bK")
        ids.make(appendingTo: &bytes)
        if let slot {
            append(".")
            appendDecimal(slot)
        }
        branch = start..<bytes.count
        append(";rport\r\n")
    }

    /// Our Via again with a branch already made (a CANCEL repeats its INVITE's, §9.1).
    public mutating func via(_ transport: TransportProtocol, host: String, port: UInt16, branch value: [UInt8]) {
        append("Via: SIP/2.0/")
        append(transport.viaName)
        append(" ")
        append(host)
        append(":")
        appendDecimal(port)
        append(";branch=")
        let start = bytes.count
        bytes.append(contentsOf: value)
        branch = start..<bytes.count
        append(";rport\r\n")
    }

    /// The Contact the edge puts on one leg's messages: `<sip:user@host:port[;transport=x]>`.
    public struct OurContact {
        public var user: String
        public var host: String
        public var port: UInt16
        public var transport: TransportProtocol

        public init(user: String, host: String, port: UInt16, transport: TransportProtocol) {
            self.user = user
            self.host = host
            self.port = port
            self.transport = transport
        }
    }

    /// Writes our Contact header.
    public mutating func contact(_ c: OurContact) {
        append("Contact: <sip:")
        append(c.user)
        append("@")
        append(c.host)
        append(":")
        appendDecimal(c.port)
        if c.transport != .udp {
            append(";transport=")
            append(c.transport.rawValue)
        }
        append(">\r\n")
    }

    private mutating func appendDecimal(_ value: some BinaryInteger) { bytes.appendDecimal(value) }

    /// Headers that describe the session rather than the hop, so a B2BUA carries them from one
    /// leg to the other (RFC 3262 reliability, RFC 4028 timers, capabilities, events, the body's
    /// disposition, the reason of a BYE or CANCEL). Nothing that names a peer's address or dialog.
    public static let endToEnd: [HeaderKind] = [
        .supported, .require, .rseq, .allow, .allowEvents, .event, .subscriptionState, .sessionExpires,
        .minSE, .contentDisposition, .reason, .accept, .privacy,
    ]

    /// Ends the headers with Content-Length (and Content-Type when there is a body), then the body.
    public mutating func finish(contentType: ByteView? = nil, body: some Collection<UInt8> = EmptyCollection<UInt8>()) -> [UInt8] {
        if let contentType, !body.isEmpty { header("Content-Type", contentType) }
        header("Content-Length", number: body.count)
        append("\r\n")
        bytes.append(contentsOf: body)
        return bytes
    }

    /// Ends a request (as `finish`) whose Via this builder wrote: the bytes, with the key its
    /// client transaction is found by, taken from what was written rather than parsed back.
    public mutating func finishRequest(contentType: ByteView? = nil, body: some Collection<UInt8> = EmptyCollection<UInt8>()) -> BuiltRequest {
        let bytes = finish(contentType: contentType, body: body)
        return BuiltRequest(bytes: bytes, method: method, branch: branch.map { Array(bytes[$0]) } ?? [])
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
                                contact: OurContact? = nil, extraHeaders: [(String, String)] = [],
                                contentType: ByteView? = nil, body: [UInt8] = []) -> [UInt8] {
        var b = responseHead(to: request, status: status, reason: reason, toTag: toTag, contact: contact, extraHeaders: extraHeaders)
        b.header("Server", "SIPEdge")
        return b.finish(contentType: contentType, body: body)
    }

    /// The status line and headers of such a response, for a caller that adds more before `finish`.
    public static func responseHead(to request: SIPMessage, status: Int, reason: String? = nil, toTag: String?,
                                    contact: OurContact? = nil, extraHeaders: [(String, String)] = []) -> MessageBuilder {
        var b = MessageBuilder(status: status, reason: (reason ?? Self.reason(status)).utf8)
        b.responseHeaders(of: request, toTag: toTag, contact: contact, extraHeaders: extraHeaders)
        return b
    }

    /// The same with the reason phrase of a response being relayed, copied as it came.
    public static func responseHead(to request: SIPMessage, status: Int, relaying reason: ByteView?, toTag: String?,
                                    contact: OurContact? = nil, extraHeaders: [(String, String)] = []) -> MessageBuilder {
        var b = reason.map { r in r.withUnsafeBytes { MessageBuilder(status: status, reason: $0) } }
            ?? MessageBuilder(status: status, reason: Self.reason(status).utf8)
        b.responseHeaders(of: request, toTag: toTag, contact: contact, extraHeaders: extraHeaders)
        return b
    }

    private mutating func responseHeaders(of request: SIPMessage, toTag: String?, contact: OurContact?, extraHeaders: [(String, String)]) {
        for i in 0..<request.headerCount {
            let h = request.header(at: i)
            if h.kind == .via { header("Via", h.value) }
        }
        if let from = request.firstValue(.from) { header("From", from) }
        if let to = request.firstValue(.to) {
            header("To", to, tag: request.tag(of: .to) == nil ? toTag ?? "" : "")
        }
        if let callID = request.callID { header("Call-ID", callID) }
        if let cseq = request.firstValue(.cseq) { header("CSeq", cseq) }
        if let contact { self.contact(contact) }
        for (name, value) in extraHeaders { header(name, value) }
    }
}

/// A request the edge built and is about to send: its bytes, its method and its Via branch (what
/// its client transaction is keyed by; RFC 3261 §17.1.3).
public struct BuiltRequest: Sendable {
    public let bytes: [UInt8]
    public let method: String
    public let branch: [UInt8]

    public init(bytes: [UInt8], method: String, branch: [UInt8]) {
        self.bytes = bytes
        self.method = method
        self.branch = branch
    }

    public var isInvite: Bool { method == "INVITE" }
}

extension MessageBuilder {
    /// A response built from the raw lines of a request that did not parse (or a stream that could
    /// not be framed): the Via lines (at least one), From, To (tagged), Call-ID and CSeq copied as
    /// written, the reason in a Warning; nil for a response, an ACK, or a request without a Via
    /// (nowhere to answer along). Reads only the header section, at most 64 KiB. For errors only.
    public static func salvagedResponse(_ bytes: some Collection<UInt8>, status: Int, toTag: String, warning: String) -> [UInt8]? {
        let text = String(decoding: bytes.prefix(65_536), as: UTF8.self)
        var lines: [Substring] = []
        // "\r\n" is one Character in Swift: split on any newline.
        for line in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline) {
            if line.isEmpty { break }
            lines.append(line)
        }
        guard let first = lines.first, !first.hasPrefix("SIP/"), !first.uppercased().hasPrefix("ACK ") else { return nil }
        func trimmed(_ text: Substring) -> Substring {
            var s = text
            while let c = s.first, c == " " || c == "\t" { s.removeFirst() }
            while let c = s.last, c == " " || c == "\t" { s.removeLast() }
            return s
        }
        var headers: [(String, String)] = []
        for line in lines.dropFirst() {
            if line.first == " " || line.first == "\t", !headers.isEmpty {
                headers[headers.count - 1].1 += " " + trimmed(line)
                continue
            }
            guard let colon = line.firstIndex(of: ":") else { continue }
            let value = String(trimmed(line[line.index(after: colon)...]))
            switch trimmed(line[..<colon]).lowercased() {
            case "via", "v": headers.append(("Via", value))
            case "from", "f": headers.append(("From", value))
            case "to", "t": headers.append(("To", value))
            case "call-id", "i": headers.append(("Call-ID", value))
            case "cseq": headers.append(("CSeq", value))
            default: continue
            }
        }
        guard headers.contains(where: { $0.0 == "Via" }) else { return nil }
        var b = MessageBuilder(status: status, reason: reason(status).utf8)
        for (name, value) in headers where name == "Via" { b.header(name, value) }
        for name in ["From", "To", "Call-ID", "CSeq"] {
            guard let value = headers.first(where: { $0.0 == name })?.1 else { continue }
            b.header(name, name == "To" && !value.lowercased().contains("tag=") ? value + ";tag=\(toTag)" : value)
        }
        b.header("Warning", "399 sipedge \"\(warning)\"")
        b.header("Server", "SIPEdge")
        return b.finish()
    }
}
