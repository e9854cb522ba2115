/// A read position over a range of message bytes, for the typed value parsers. Never reads at or
/// past `end`; every method is bounds-checked against it.
package struct Cursor {
    package let base: UnsafeRawPointer
    package var pos: Int
    package let end: Int

    package init(_ base: UnsafeRawPointer, _ start: Int, _ end: Int) {
        self.base = base
        self.pos = start
        self.end = end
    }

    @inline(__always) package var atEnd: Bool { pos >= end }

    @inline(__always) package func peek() -> UInt8? { pos < end ? base.load(fromByteOffset: pos, as: UInt8.self) : nil }

    @inline(__always) package func byte(_ i: Int) -> UInt8 { base.load(fromByteOffset: i, as: UInt8.self) }

    /// Skips SP, HTAB and folds (CRLF inside a value is always a fold: the indexer checked).
    @inline(__always) package mutating func skipLWS() {
        while pos < end, isLWSByte(byte(pos)) { pos &+= 1 }
    }

    @inline(__always) package mutating func skip(_ set: ByteClass) {
        while pos < end, set.contains(byte(pos)) { pos &+= 1 }
    }

    /// Consumes `b` if it is next.
    @inline(__always) package mutating func eat(_ b: UInt8) -> Bool {
        if pos < end && byte(pos) == b { pos &+= 1; return true }
        return false
    }

    /// Consumes `b` with optional LWS around it (the grammar's SEMI, COLON, EQUAL, SLASH...).
    @inline(__always) package mutating func eatSeparator(_ b: UInt8) -> Bool {
        let save = pos
        skipLWS()
        if eat(b) { skipLWS(); return true }
        pos = save
        return false
    }

    /// Consumes a token (RFC 3261 §25.1); returns its start, or nil if none is here.
    @inline(__always) package mutating func token() -> Int? {
        let s = pos
        skip(.token)
        return pos > s ? s : nil
    }

    /// Consumes a quoted-string including its quotes; false (position unchanged) if unterminated.
    package mutating func quotedString() -> Bool {
        guard pos < end, byte(pos) == UInt8(ascii: "\"") else { return false }
        var i = pos + 1
        while i < end {
            let b = byte(i)
            if b == UInt8(ascii: "\\") { i += 2; continue }
            if b == UInt8(ascii: "\"") { pos = i + 1; return true }
            i += 1
        }
        return false
    }

    /// Consumes a run of `set` bytes and `%HH` escapes; false if an escape is malformed.
    package mutating func escaped(_ set: ByteClass) -> Bool {
        while pos < end {
            let b = byte(pos)
            if b == UInt8(ascii: "%") {
                guard pos + 2 < end, isHexDigit(byte(pos + 1)), isHexDigit(byte(pos + 2)) else { return false }
                pos += 3
            } else if set.contains(b) {
                pos += 1
            } else {
                return true
            }
        }
        return true
    }

    /// Consumes a host: `[IPv6]`, IPv4 or hostname. Returns false if none is here.
    package mutating func host() -> Bool {
        guard pos < end else { return false }
        if byte(pos) == UInt8(ascii: "[") {
            var i = pos + 1
            while i < end, isHexDigit(byte(i)) || byte(i) == UInt8(ascii: ":") || byte(i) == UInt8(ascii: ".") { i += 1 }
            guard i < end, byte(i) == UInt8(ascii: "]"), i > pos + 2 else { return false }
            pos = i + 1
            return true
        }
        let s = pos
        skip(.hostChar)
        return pos > s
    }

    /// Consumes a decimal of at most `max`; nil (position unchanged) if none or out of range.
    package mutating func decimal(max: Int) -> Int? {
        let s = pos
        while pos < end, isDigit(byte(pos)) { pos += 1 }
        guard let v = SIPMessage.parseDecimal(base, s, pos, max: max) else { pos = s; return nil }
        return v
    }
}

/// A `;name[=value]` parameter found in a header or URI: its byte ranges.
package struct ParameterRange {
    package var nameStart: Int, nameEnd: Int
    /// -1 when the parameter has no `=value`.
    package var valueStart: Int, valueEnd: Int
}

extension Cursor {
    /// Consumes `*( SEMI generic-param )` of a header (RFC 3261 §25.1), calling `each` per
    /// parameter. Stops at the first byte that cannot continue the list; false on a malformed one.
    package mutating func headerParameters(_ each: (ParameterRange) -> Void) -> Bool {
        while true {
            let save = pos
            skipLWS()
            guard eat(UInt8(ascii: ";")) else { pos = save; return true }
            skipLWS()
            guard let ns = token() else { return false }
            var p = ParameterRange(nameStart: ns, nameEnd: pos, valueStart: -1, valueEnd: -1)
            if eatSeparator(UInt8(ascii: "=")) {
                let vs = pos
                if peek() == UInt8(ascii: "\"") {
                    guard quotedString() else { return false }
                } else if peek() == UInt8(ascii: "[") {
                    guard host() else { return false }
                } else {
                    guard token() != nil else { return false }
                }
                p.valueStart = vs
                p.valueEnd = pos
            }
            each(p)
        }
    }

    /// Consumes URI parameters `*( ";" pname [ "=" pvalue ] )` (no LWS allowed inside a URI).
    package mutating func uriParameters(_ each: (ParameterRange) -> Void) -> Bool {
        while eat(UInt8(ascii: ";")) {
            let ns = pos
            guard escaped(.paramChar), pos > ns else { return false }
            var p = ParameterRange(nameStart: ns, nameEnd: pos, valueStart: -1, valueEnd: -1)
            if eat(UInt8(ascii: "=")) {
                let vs = pos
                guard escaped(.paramChar), pos > vs else { return false }
                p.valueStart = vs
                p.valueEnd = pos
            }
            each(p)
        }
        return true
    }
}

/// Case-insensitive comparison of `base[start..<end]` with a lowercase ASCII name.
@inline(__always)
package func bytesEqualLowercase(_ base: UnsafeRawPointer, _ start: Int, _ end: Int, _ name: StaticString) -> Bool {
    guard end - start == name.utf8CodeUnitCount else { return false }
    let p = name.utf8Start
    var i = 0
    while i < end - start {
        if asciiLower(base.load(fromByteOffset: start + i, as: UInt8.self)) != p[i] { return false }
        i += 1
    }
    return true
}
