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
                } else if bytesEqualLowercase(base, ns, p.nameEnd, "received"), bareIPv6() {
                    // RFC 3261 §25.1 via-received: an IPv6address stands bare (RFC 5118 §4.5).
                } else {
                    guard token() != nil else { return false }
                }
                p.valueStart = vs
                p.valueEnd = pos
            }
            each(p)
        }
    }

    /// Consumes an IPv6 address written without brackets, when one is here (a run of hex digits,
    /// colons and dots with a colon in it); false, position unchanged, when none is (a run with a
    /// colon that is no IPv6 address then fails as a token would).
    private mutating func bareIPv6() -> Bool {
        var i = pos, colon = false
        while i < end, isHexDigit(byte(i)) || byte(i) == UInt8(ascii: ":") || byte(i) == UInt8(ascii: ".") {
            colon = colon || byte(i) == UInt8(ascii: ":")
            i += 1
        }
        guard colon else { return false }
        if !isIPv6Address(base, pos, i) { return false }
        pos = i
        return true
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

/// Whether bytes `start..<end` are an RFC 3986 IPv6address: up to eight groups of 1-4 hex digits,
/// at most one "::", optionally ending in a dotted IPv4 address that counts as two groups.
package func isIPv6Address(_ base: UnsafeRawPointer, _ start: Int, _ end: Int) -> Bool {
    @inline(__always) func byte(_ i: Int) -> UInt8 { base.load(fromByteOffset: i, as: UInt8.self) }
    var groups = 0, i = start
    var compressed = false
    if end - start >= 2, byte(start) == UInt8(ascii: ":"), byte(start + 1) == UInt8(ascii: ":") {
        compressed = true
        i = start + 2
        if i == end { return true }
    }
    while i < end {
        let s = i
        while i < end, isHexDigit(byte(i)) { i += 1 }
        if i < end, byte(i) == UInt8(ascii: ".") {
            // The last 32 bits as dotted decimal.
            var octets = 0, j = s
            while j <= end {
                let os = j
                var value = 0
                while j < end, isDigit(byte(j)) {
                    guard j - os < 3 else { return false }   // an octet has at most 3 digits (and no overflow)
                    value = value * 10 + Int(byte(j) - 0x30)
                    j += 1
                }
                guard j > os, value <= 255 else { return false }
                octets += 1
                if j == end { break }
                guard byte(j) == UInt8(ascii: "."), octets < 4 else { return false }
                j += 1
            }
            return octets == 4 && (compressed ? groups + 2 <= 7 : groups + 2 == 8)
        }
        guard i > s, i - s <= 4 else { return false }
        groups += 1
        if i == end { break }
        guard byte(i) == UInt8(ascii: ":") else { return false }
        i += 1
        if i < end, byte(i) == UInt8(ascii: ":") {
            guard !compressed else { return false }
            compressed = true
            i += 1
            if i == end { break }
        } else if i == end {
            return false
        }
    }
    return compressed ? groups <= 7 : groups == 8
}
