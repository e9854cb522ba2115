/// A received SIP request or response: its bytes, untouched, plus a flat index of where things are.
/// Header values are parsed on access, from the bytes, every time (so every access gives the same
/// answer); nothing is copied out of the message unless a caller asks for a `String`.
public struct SIPMessage: Sendable {
    /// The bytes the message was parsed from; the message is `bytes[0..<endOffset]`.
    public let bytes: [UInt8]
    /// Number of header lines.
    public package(set) var headerCount = 0
    package var inlineEntries: InlineHeaderEntries = SIPMessage.emptyInlineEntries
    package var firstOfKind: FirstOfKindTable = (0, 0, 0, 0, 0, 0, 0, 0)
    /// Header lines beyond the inline capacity (empty, and unallocated, for most messages).
    package var spill: [HeaderEntry] = []
    /// Request: method code (0 = extension). Response: unused.
    package var methodCode: UInt8 = 0
    package var isRequestFlag = false
    package var statusCodeValue: UInt16 = 0
    // Offsets are kept in 16 bits (messages are at most 65,535 bytes) so that the whole message
    // value stays small: it is returned, and so copied, by every parse.
    private var offsets = InlineArray<9, UInt16>(repeating: 0)
    /// Content-Length as declared, or -1 when the header is absent.
    package var declaredContentLength: Int32 = -1

    /// Request: end of the method. Response: unused.
    package var methodEnd: Int { get { Int(offsets[0]) } set { offsets[0] = UInt16(truncatingIfNeeded: newValue) } }
    /// Request: Request-URI range. Response: reason phrase range.
    package var uriStart: Int { get { Int(offsets[1]) } set { offsets[1] = UInt16(truncatingIfNeeded: newValue) } }
    package var uriEnd: Int { get { Int(offsets[2]) } set { offsets[2] = UInt16(truncatingIfNeeded: newValue) } }
    package var startLineStart: Int { get { Int(offsets[3]) } set { offsets[3] = UInt16(truncatingIfNeeded: newValue) } }
    package var startLineEnd: Int { get { Int(offsets[4]) } set { offsets[4] = UInt16(truncatingIfNeeded: newValue) } }
    /// Offset of the empty line that ends the headers.
    package var headersEnd: Int { get { Int(offsets[5]) } set { offsets[5] = UInt16(truncatingIfNeeded: newValue) } }
    package var bodyStart: Int { get { Int(offsets[6]) } set { offsets[6] = UInt16(truncatingIfNeeded: newValue) } }
    package var endOffset: Int { get { Int(offsets[7]) } set { offsets[7] = UInt16(truncatingIfNeeded: newValue) } }

    // MARK: - Parsing

    /// Parses one message from a datagram (or from bytes a stream framer cut out). Bytes after the
    /// message's body (RFC 3261 §18.3) are ignored; without Content-Length the body runs to the end.
    public init(parsing bytes: [UInt8], limits: SIPParserLimits = .default) throws(SIPParseError) {
        self.bytes = bytes
        guard bytes.count <= limits.maxMessageBytes else {
            throw SIPParseError(.messageTooLarge, at: limits.maxMessageBytes, status: 513)
        }
        let result: SIPParseError? = bytes.withUnsafeBytes { raw in
            guard let base = raw.baseAddress, raw.count > 0 else {
                return SIPParseError(.truncated, at: 0, status: nil)
            }
            return self.index(base, raw.count, limits)
        }
        if let result { throw result }
    }

    private mutating func index(_ base: UnsafeRawPointer, _ count: Int, _ limits: SIPParserLimits) -> SIPParseError? {
        @inline(__always) func byte(_ i: Int) -> UInt8 { base.load(fromByteOffset: i, as: UInt8.self) }
        var pos = 0
        // RFC 3261 §7.5: CRLFs before the start line are ignored.
        while pos + 1 < count && byte(pos) == 0x0D && byte(pos + 1) == 0x0A { pos += 2 }
        startLineStart = pos
        let lineEnd = firstControlByte(base, from: pos, end: count)
        guard lineEnd < count else { return SIPParseError(.truncated, at: lineEnd, status: nil) }
        guard byte(lineEnd) == 0x0D, lineEnd + 1 < count, byte(lineEnd + 1) == 0x0A else {
            return SIPParseError(.controlCharacter, at: lineEnd)
        }
        startLineEnd = lineEnd
        if let error = parseStartLine(base, pos, lineEnd) { return error }
        pos = lineEnd + 2

        // Header lines.
        var contentLength = -1
        var viaLines = 0
        while true {
            guard pos + 1 < count else { return SIPParseError(.truncated, at: pos, status: nil) }
            if byte(pos) == 0x0D {
                guard byte(pos + 1) == 0x0A else { return SIPParseError(.controlCharacter, at: pos) }
                headersEnd = pos
                pos += 2
                break
            }
            guard headerCount < limits.maxHeaders else {
                return SIPParseError(.tooManyHeaders, at: pos)
            }
            let lineStart = pos
            var i = pos
            while i < count && ByteClass.token.contains(byte(i)) { i += 1 }
            let nameEnd = i
            guard nameEnd > lineStart else { return SIPParseError(.malformedHeaderName, at: lineStart) }
            while i < count && isBlank(byte(i)) { i += 1 }
            guard i < count else { return SIPParseError(.truncated, at: i, status: nil) }
            guard byte(i) == UInt8(ascii: ":") else {
                return SIPParseError(byte(i) == 0x0D ? .missingColon : .malformedHeaderName, at: i)
            }
            i += 1
            let kind = HeaderKind.lookup(base, lineStart, nameEnd)
            // Value: up to a CRLF not followed by SP/HTAB (a fold continues the value).
            var valueStart = -1
            var scan = i
            var lineTerminator: Int
            while true {
                let c = firstControlByte(base, from: scan, end: count)
                guard c < count else { return SIPParseError(.truncated, at: c, status: nil) }
                if byte(c) == 0x0D {
                    guard c + 1 < count, byte(c + 1) == 0x0A else { return SIPParseError(.controlCharacter, at: c, header: kind) }
                    if c + 2 < count && isBlank(byte(c + 2)) {
                        scan = c + 3
                        continue
                    }
                    lineTerminator = c
                    break
                }
                // A control byte is only legal as a quoted-pair inside a quoted string.
                guard Self.isQuotedPair(base, from: i, at: c) else {
                    return SIPParseError(.controlCharacter, at: c, header: kind)
                }
                scan = c + 1
            }
            // Trim LWS (blanks and folds) on both sides of the value.
            var vs = i
            while vs < lineTerminator, isLWSByte(byte(vs)) { vs += 1 }
            var ve = lineTerminator
            while ve > vs, isLWSByte(byte(ve - 1)) { ve -= 1 }
            valueStart = vs
            let next = lineTerminator + 2
            guard next - lineStart <= limits.maxHeaderBytes else {
                return SIPParseError(.headerTooLong, at: lineStart, header: kind)
            }
            if kind == .contentLength {
                guard let value = Self.parseDecimal(base, valueStart, ve, max: limits.maxMessageBytes) else {
                    return SIPParseError(.badContentLength, at: valueStart, header: .contentLength)
                }
                if contentLength >= 0 && contentLength != value {
                    return SIPParseError(.conflictingContentLength, at: lineStart, header: .contentLength)
                }
                guard value <= limits.maxBodyBytes else {
                    return SIPParseError(.bodyTooLarge, at: valueStart, status: 413, header: .contentLength)
                }
                contentLength = value
            } else if kind == .via {
                viaLines += 1
                guard viaLines <= limits.maxVias else { return SIPParseError(.tooManyVias, at: lineStart, header: .via) }
            }
            appendEntry(HeaderEntry(lineStart: lineStart, nameEnd: nameEnd, valueStart: valueStart,
                                    valueEnd: ve, lineEnd: next, kind: kind))
            pos = next
        }
        bodyStart = pos
        declaredContentLength = Int32(contentLength)
        if contentLength >= 0 {
            guard bodyStart + contentLength <= count else {
                return SIPParseError(.bodyBeyondMessage, at: bodyStart, header: .contentLength)
            }
            endOffset = bodyStart + contentLength
        } else {
            endOffset = count
        }
        return nil
    }

    /// Start line: `Method SP Request-URI SP SIP-Version` or `SIP-Version SP Status-Code SP Reason`.
    /// Strict about single spaces (RFC 4475 §3.1.2.8-10: a liberal reading is allowed, a strict one safer).
    private mutating func parseStartLine(_ base: UnsafeRawPointer, _ start: Int, _ end: Int) -> SIPParseError? {
        @inline(__always) func byte(_ i: Int) -> UInt8 { base.load(fromByteOffset: i, as: UInt8.self) }
        if end - start >= 4, byte(start) | 0x20 == UInt8(ascii: "s"), byte(start + 1) | 0x20 == UInt8(ascii: "i"),
           byte(start + 2) | 0x20 == UInt8(ascii: "p"), byte(start + 3) == UInt8(ascii: "/") {
            // Response.
            let sp = firstIndex(of: 0x20, base, from: start, end: end)
            if let error = Self.checkVersion(base, start, sp, isResponse: true) { return error }
            guard sp + 4 <= end, isDigit(byte(sp + 1)), isDigit(byte(sp + 2)), isDigit(byte(sp + 3)) else {
                return SIPParseError(.malformedStatusCode, at: sp + 1, status: nil)
            }
            let code = Int(byte(sp + 1) - 0x30) * 100 + Int(byte(sp + 2) - 0x30) * 10 + Int(byte(sp + 3) - 0x30)
            guard code >= 100 && code <= 699 else { return SIPParseError(.malformedStatusCode, at: sp + 1, status: nil) }
            // Exactly three digits, then SP (the reason phrase may be empty: RFC 4475 §3.1.1.13).
            guard sp + 4 < end, byte(sp + 4) == 0x20 else {
                return SIPParseError(.malformedStatusCode, at: sp + 4, status: nil)
            }
            isRequestFlag = false
            statusCodeValue = UInt16(code)
            uriStart = sp + 5
            uriEnd = end
            return nil
        }
        // Request.
        var i = start
        while i < end && ByteClass.token.contains(byte(i)) { i += 1 }
        guard i > start, i < end, byte(i) == 0x20 else { return SIPParseError(.malformedStartLine, at: i) }
        methodEnd = i
        methodCode = SIPMethod.known(base, start, i)?.code ?? 0
        let us = i + 1
        let ue = firstIndex(of: 0x20, base, from: us, end: end)
        guard ue > us, ue < end else { return SIPParseError(.malformedStartLine, at: ue) }
        // The Request-URI must begin with a scheme: `<sip:...>` is refused (RFC 4475 §3.1.2.7).
        var s = us
        guard (byte(s) | 0x20) &- 0x61 < 26 else { return SIPParseError(.badRequestURI, at: us) }
        while s < ue, isSchemeByte(byte(s)) { s += 1 }
        guard s < ue, byte(s) == UInt8(ascii: ":") else { return SIPParseError(.badRequestURI, at: s) }
        if let error = Self.checkVersion(base, ue + 1, end, isResponse: false) { return error }
        isRequestFlag = true
        uriStart = us
        uriEnd = ue
        return nil
    }

    /// `SIP/2.0` (case-insensitive); any other `SIP/d.d` is a version we do not support (505).
    private static func checkVersion(_ base: UnsafeRawPointer, _ start: Int, _ end: Int, isResponse: Bool) -> SIPParseError? {
        @inline(__always) func byte(_ i: Int) -> UInt8 { base.load(fromByteOffset: i, as: UInt8.self) }
        let status: Int? = isResponse ? nil : 400
        guard end - start >= 7, byte(start) | 0x20 == UInt8(ascii: "s"), byte(start + 1) | 0x20 == UInt8(ascii: "i"),
              byte(start + 2) | 0x20 == UInt8(ascii: "p"), byte(start + 3) == UInt8(ascii: "/") else {
            return SIPParseError(.malformedStartLine, at: start, status: status)
        }
        // SIP/1*DIGIT.1*DIGIT
        var i = start + 4
        let majorStart = i
        while i < end, isDigit(byte(i)) { i += 1 }
        guard i > majorStart, i < end, byte(i) == UInt8(ascii: ".") else {
            return SIPParseError(.malformedStartLine, at: i, status: status)
        }
        i += 1
        let minorStart = i
        while i < end, isDigit(byte(i)) { i += 1 }
        guard i > minorStart, i == end else { return SIPParseError(.malformedStartLine, at: i, status: status) }
        guard end - start == 7, byte(start + 4) == UInt8(ascii: "2"), byte(start + 6) == UInt8(ascii: "0") else {
            return SIPParseError(.unsupportedVersion, at: start, status: isResponse ? nil : 505)
        }
        return nil
    }

    /// Whether the control byte at `at` is the second byte of a quoted-pair inside a quoted string,
    /// scanning the value from `from`. Only called on the rare values that hold control bytes.
    private static func isQuotedPair(_ base: UnsafeRawPointer, from: Int, at: Int) -> Bool {
        var inQuotes = false
        var i = from
        while i < at {
            let b = base.load(fromByteOffset: i, as: UInt8.self)
            if inQuotes {
                if b == UInt8(ascii: "\\") {
                    if i + 1 == at { return true }
                    i += 2
                    continue
                }
                if b == UInt8(ascii: "\"") { inQuotes = false }
            } else if b == UInt8(ascii: "\"") {
                inQuotes = true
            }
            i += 1
        }
        return false
    }

    /// A decimal made only of digits (leading zeros allowed), at most `max`. Nil on anything else.
    package static func parseDecimal(_ base: UnsafeRawPointer, _ start: Int, _ end: Int, max: Int) -> Int? {
        guard end > start else { return nil }
        var value = 0
        var i = start
        while i < end {
            let d = base.load(fromByteOffset: i, as: UInt8.self) &- 0x30
            guard d < 10 else { return nil }
            value = value * 10 + Int(d)
            // Checked every digit, so a 100-digit number can never wrap.
            guard value <= max else { return nil }
            i += 1
        }
        return value
    }
}

@inline(__always)
package func isLWSByte(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0D || b == 0x0A }

@inline(__always)
package func isSchemeByte(_ b: UInt8) -> Bool {
    (b | 0x20) &- 0x61 < 26 || isDigit(b) || b == UInt8(ascii: "+") || b == UInt8(ascii: "-") || b == UInt8(ascii: ".")
}

// MARK: - Start line and raw header access

extension SIPMessage {
    public var isRequest: Bool { isRequestFlag }

    /// The request method; nil for a response.
    public var method: SIPMethod? {
        guard isRequestFlag else { return nil }
        if let known = SIPMethod.fromCode(methodCode) { return known }
        return .other(ByteView(bytes, startLineStart, methodEnd).string)
    }

    /// The method's bytes (requests only), for cheap comparisons without building a `SIPMethod`.
    public var methodBytes: ByteView? { isRequestFlag ? ByteView(bytes, startLineStart, methodEnd) : nil }

    /// The status code; nil for a request.
    public var statusCode: Int? { isRequestFlag ? nil : Int(statusCodeValue) }

    /// The reason phrase of a response (may be empty).
    public var reasonPhrase: ByteView? { isRequestFlag ? nil : ByteView(bytes, uriStart, uriEnd) }

    /// The Request-URI as written.
    public var requestURIBytes: ByteView? { isRequestFlag ? ByteView(bytes, uriStart, uriEnd) : nil }

    /// The body (empty if there is none).
    public var body: ByteView { ByteView(bytes, bodyStart, endOffset) }

    /// Length of the message proper (start line to end of body); trailing datagram bytes excluded.
    public var messageLength: Int { endOffset }

    /// The declared Content-Length, if the header is present.
    public var contentLength: Int? { declaredContentLength >= 0 ? Int(declaredContentLength) : nil }

    /// Name, kind and value of header line `i` (0-based, in message order).
    public func header(at i: Int) -> (name: ByteView, kind: HeaderKind, value: ByteView) {
        let e = entry(i)
        return (ByteView(bytes, Int(e.lineStart), Int(e.nameEnd)), e.kind,
                ByteView(bytes, Int(e.valueStart), Int(e.valueEnd)))
    }

    /// The value of the first header of `kind` (the whole line's value, not split at commas).
    public func firstValue(_ kind: HeaderKind) -> ByteView? {
        guard let p = firstPosition(of: kind) else { return nil }
        let e = entry(p)
        return ByteView(bytes, Int(e.valueStart), Int(e.valueEnd))
    }

    /// The value of the first header called `name` (case-insensitive), known or not.
    public func firstValue(named name: String) -> ByteView? {
        for i in 0..<headerCount {
            let h = header(at: i)
            if h.name.equalsIgnoringCase(name) { return h.value }
        }
        return nil
    }

    /// How many header lines of `kind` the message has.
    public func lineCount(_ kind: HeaderKind) -> Int {
        guard let p = firstPosition(of: kind) else { return 0 }
        var n = 0
        for i in p..<headerCount where entry(i).kind == kind { n += 1 }
        return n
    }
}
