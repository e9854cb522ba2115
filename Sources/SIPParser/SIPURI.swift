/// A SIP, SIPS or TEL URI (or any other absoluteURI, kept opaque) as ranges into message bytes.
public struct SIPURI: Sendable {
    /// The URI schemes SIPEdge routes on; anything else is `.other` (a proxy answers 416).
    public enum Scheme: Sendable, Equatable { case sip, sips, tel, other }

    package let base: [UInt8]
    public let scheme: Scheme
    package var start = 0, end = 0
    package var userStart = -1, userEnd = -1
    package var passwordStart = -1, passwordEnd = -1
    package var hostStart = 0, hostEnd = 0
    /// -1: absent.
    package var portValue = -1
    package var paramsStart = 0, paramsEnd = 0
    package var headersStart = -1, headersEnd = -1

    /// Parses `base[start..<end]`; the whole range must be one URI.
    package init(_ base: [UInt8], _ start: Int, _ end: Int) throws(SIPParseError) {
        self.base = base
        self.start = start
        self.end = end
        var parsed: (SIPURI.Scheme, SIPParseError?) = (.other, nil)
        var copy = Ranges()
        base.withUnsafeBytes { raw in
            parsed = Self.parse(raw.baseAddress!, start, end, &copy)
        }
        if let error = parsed.1 { throw error }
        self.scheme = parsed.0
        userStart = copy.userStart; userEnd = copy.userEnd
        passwordStart = copy.passwordStart; passwordEnd = copy.passwordEnd
        hostStart = copy.hostStart; hostEnd = copy.hostEnd
        portValue = copy.port
        paramsStart = copy.paramsStart; paramsEnd = copy.paramsEnd
        headersStart = copy.headersStart; headersEnd = copy.headersEnd
    }

    /// Parses a URI from text (for configuration and tests).
    public init(_ text: String) throws(SIPParseError) {
        let bytes = Array(text.utf8)
        try self.init(bytes, 0, bytes.count)
    }

    package struct Ranges {
        var userStart = -1, userEnd = -1, passwordStart = -1, passwordEnd = -1
        var hostStart = 0, hostEnd = 0, port = -1, paramsStart = 0, paramsEnd = 0
        var headersStart = -1, headersEnd = -1
    }

    private static func parse(_ base: UnsafeRawPointer, _ start: Int, _ end: Int, _ r: inout Ranges) -> (Scheme, SIPParseError?) {
        var c = Cursor(base, start, end)
        let bad = { (at: Int) in (Scheme.other, SIPParseError(.badURI, at: at)) }
        guard let first = c.peek(), (first | 0x20) &- 0x61 < 26 else { return bad(start) }
        while let b = c.peek(), isSchemeByte(b) { c.pos += 1 }
        let schemeEnd = c.pos
        guard c.eat(UInt8(ascii: ":")) else { return bad(c.pos) }
        let scheme: Scheme
        if bytesEqualLowercase(base, start, schemeEnd, "sip") { scheme = .sip }
        else if bytesEqualLowercase(base, start, schemeEnd, "sips") { scheme = .sips }
        else if bytesEqualLowercase(base, start, schemeEnd, "tel") { scheme = .tel }
        else { scheme = .other }
        switch scheme {
        case .other:
            // absoluteURI: opaque, but it must be non-empty and free of blanks and brackets.
            guard c.pos < end else { return bad(c.pos) }
            while let b = c.peek() {
                guard b > 0x20, b < 0x7F, b != UInt8(ascii: "<"), b != UInt8(ascii: ">"), b != UInt8(ascii: "\"") else { return bad(c.pos) }
                c.pos += 1
            }
            r.hostStart = schemeEnd + 1
            r.hostEnd = end
            r.paramsStart = end; r.paramsEnd = end
            return (scheme, nil)
        case .tel:
            // telephone-subscriber: the number (visual separators allowed), then ;params.
            let ns = c.pos
            while let b = c.peek(), isDigit(b) || isHexDigit(b) || b == UInt8(ascii: "+") || b == UInt8(ascii: "-")
                    || b == UInt8(ascii: ".") || b == UInt8(ascii: "(") || b == UInt8(ascii: ")") || b == UInt8(ascii: "*")
                    || b == UInt8(ascii: "#") { c.pos += 1 }
            guard c.pos > ns else { return bad(c.pos) }
            r.userStart = ns; r.userEnd = c.pos
            r.hostStart = c.pos; r.hostEnd = c.pos
            r.paramsStart = c.pos
            guard c.uriParameters({ _ in }) else { return bad(c.pos) }
            r.paramsEnd = c.pos
            guard c.atEnd else { return bad(c.pos) }
            return (scheme, nil)
        case .sip, .sips:
            // userinfo is present iff there is an '@': it cannot appear elsewhere in a valid SIP URI.
            let at = firstIndex(of: UInt8(ascii: "@"), base, from: c.pos, end: end)
            if at < end {
                let us = c.pos
                guard c.escaped(.user), c.pos > us else { return bad(c.pos) }
                r.userStart = us; r.userEnd = c.pos
                if c.eat(UInt8(ascii: ":")) {
                    let ps = c.pos
                    guard c.escaped(.password) else { return bad(c.pos) }
                    r.passwordStart = ps; r.passwordEnd = c.pos
                }
                guard c.pos == at else { return bad(c.pos) }
                c.pos += 1
            }
            let hs = c.pos
            guard c.host() else { return bad(c.pos) }
            r.hostStart = hs; r.hostEnd = c.pos
            if c.eat(UInt8(ascii: ":")) {
                guard let port = c.decimal(max: 65_535) else { return bad(c.pos) }
                r.port = port
            }
            r.paramsStart = c.pos
            guard c.uriParameters({ _ in }) else { return bad(c.pos) }
            r.paramsEnd = c.pos
            if c.eat(UInt8(ascii: "?")) {
                let hs = c.pos
                // hname "=" hvalue *( "&" hname "=" hvalue )
                repeat {
                    let n = c.pos
                    guard c.escaped(.headerChar), c.pos > n, c.eat(UInt8(ascii: "=")), c.escaped(.headerChar) else { return bad(c.pos) }
                } while c.eat(UInt8(ascii: "&"))
                r.headersStart = hs; r.headersEnd = c.pos
            }
            guard c.atEnd else { return bad(c.pos) }
            return (scheme, nil)
        }
    }

    // MARK: - Access

    /// The URI as written.
    public var text: ByteView { ByteView(base, start, end) }
    /// User part (TEL: the number), still escaped.
    public var user: ByteView? { userStart < 0 ? nil : ByteView(base, userStart, userEnd) }
    public var password: ByteView? { passwordStart < 0 ? nil : ByteView(base, passwordStart, passwordEnd) }
    /// Host, IPv6 references with their brackets. For `.other` schemes: everything after the colon.
    public var host: ByteView { ByteView(base, hostStart, hostEnd) }
    public var port: Int? { portValue < 0 ? nil : portValue }
    /// The raw `;params` section (with the leading ';'), empty if none.
    public var parametersText: ByteView { ByteView(base, paramsStart, paramsEnd) }
    /// The raw `?headers` section (without the '?'), nil if none.
    public var headersText: ByteView? { headersStart < 0 ? nil : ByteView(base, headersStart, headersEnd) }

    /// Every `;name[=value]` URI parameter, in order (values nil when absent).
    public var parameters: [(name: ByteView, value: ByteView?)] {
        var out: [(name: ByteView, value: ByteView?)] = []
        eachParameter { out.append(($0, $1)) }
        return out
    }

    /// The value of URI parameter `name` (case-insensitive): nil if absent, `.some(nil)` if it has no value.
    public func parameter(_ name: String) -> ByteView?? {
        var found: ByteView?? = nil
        eachParameter { n, v in if found == nil && n.equalsIgnoringCase(name) { found = .some(v) } }
        return found
    }

    private func eachParameter(_ body: (ByteView, ByteView?) -> Void) {
        guard paramsEnd > paramsStart else { return }
        var ranges: [ParameterRange] = []
        base.withUnsafeBytes { raw in
            var c = Cursor(raw.baseAddress!, paramsStart, paramsEnd)
            _ = c.uriParameters { ranges.append($0) }
        }
        for p in ranges {
            body(ByteView(base, p.nameStart, p.nameEnd), p.valueStart < 0 ? nil : ByteView(base, p.valueStart, p.valueEnd))
        }
    }

    /// `;lr` is present (RFC 3261 §16.12 loose routing).
    public var isLooseRouter: Bool { parameter("lr") != nil }
}
