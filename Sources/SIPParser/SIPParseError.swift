/// Why a message was refused: a stable code, the byte offset where it went wrong, and the status
/// a server should answer with (nil where SIP says to drop silently, e.g. a bad response).
public struct SIPParseError: Error, Sendable, CustomStringConvertible {
    /// An extensible error code; equality of errors compares the code only.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let name: String
        public init(_ name: String) { self.name = name }
        public var description: String { name }

        public static let messageTooLarge = Code("message too large")
        public static let truncated = Code("message truncated before the end of its headers")
        public static let malformedStartLine = Code("malformed start line")
        public static let unsupportedVersion = Code("unsupported SIP version")
        public static let malformedStatusCode = Code("malformed status code")
        public static let malformedHeaderName = Code("malformed header name")
        public static let missingColon = Code("header line without colon")
        public static let controlCharacter = Code("control character where the grammar forbids it")
        public static let tooManyHeaders = Code("too many headers")
        public static let headerTooLong = Code("header too long")
        public static let tooManyVias = Code("too many Via values")
        public static let badContentLength = Code("bad Content-Length")
        public static let conflictingContentLength = Code("conflicting Content-Length values")
        public static let bodyTooLarge = Code("body too large")
        public static let bodyBeyondMessage = Code("Content-Length beyond the end of the message")
        public static let missingContentLength = Code("Content-Length required on a stream")
        public static let missingHeader = Code("missing mandatory header")
        public static let duplicateHeader = Code("header may appear only once")
        public static let badCSeq = Code("bad CSeq")
        public static let cseqMethodMismatch = Code("CSeq method differs from the request method")
        public static let badMaxForwards = Code("bad Max-Forwards")
        public static let badExpires = Code("bad Expires")
        public static let badCallID = Code("bad Call-ID")
        public static let badVia = Code("bad Via")
        public static let badNameAddress = Code("bad name-addr or addr-spec")
        public static let badURI = Code("bad URI")
        public static let badRequestURI = Code("bad Request-URI")
        public static let unsupportedURIScheme = Code("unsupported URI scheme")
        public static let badParameter = Code("bad parameter")
        public static let badNumber = Code("bad number")
        public static let badOptionTag = Code("bad option tag")
        public static let streamGarbage = Code("bytes that cannot start a SIP message")
    }

    public let code: Code
    /// Byte offset into the message (or stream) where the problem was found.
    public let offset: Int
    /// The status code a server should answer a request with; nil when it should stay silent.
    public let status: Int?
    /// Which header it concerns, when it concerns one.
    public let header: HeaderKind?

    public init(_ code: Code, at offset: Int, status: Int? = 400, header: HeaderKind? = nil) {
        self.code = code
        self.offset = offset
        self.status = status
        self.header = header
    }

    public var description: String {
        var text = code.name
        if let header, header != .other { text += " (\(header.canonicalName))" }
        text += " at byte \(offset)"
        return text
    }
}

extension SIPParseError: Equatable {
    public static func == (a: SIPParseError, b: SIPParseError) -> Bool { a.code == b.code }
}

/// Bounds on what a peer can make the parser accept; checked before anything is sized by them.
public struct SIPParserLimits: Sendable, Equatable {
    /// Largest message, headers and body together. Never above 65,535 (offsets are 16-bit).
    public var maxMessageBytes: Int
    /// Most header lines in one message.
    public var maxHeaders: Int
    /// Longest header line, folded continuation lines included.
    public var maxHeaderBytes: Int
    /// Most Via values (across all Via lines).
    public var maxVias: Int
    /// Largest body (Content-Length); a larger one is refused with 413.
    public var maxBodyBytes: Int

    /// Absolute ceiling of `maxMessageBytes`: header offsets are kept in 16 bits.
    public static let hardMaxMessageBytes = 65_535

    public init(maxMessageBytes: Int = 65_535, maxHeaders: Int = 256, maxHeaderBytes: Int = 8_192, maxVias: Int = 70,
                maxBodyBytes: Int = 65_535) {
        self.maxMessageBytes = min(max(maxMessageBytes, 64), Self.hardMaxMessageBytes)
        self.maxHeaders = min(max(maxHeaders, 8), 4_096)
        self.maxHeaderBytes = max(maxHeaderBytes, 64)
        self.maxVias = max(maxVias, 1)
        self.maxBodyBytes = max(maxBodyBytes, 0)
    }

    public static let `default` = SIPParserLimits()
}
