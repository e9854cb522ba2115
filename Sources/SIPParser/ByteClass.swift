// Character classes of the RFC 3261 grammar as 256-bit sets, and the word-at-a-time scans the
// header indexer runs on. Everything here is branch-light and allocation-free.

/// A set of bytes kept as four 64-bit words; membership is one shift and one mask.
package struct ByteClass: Sendable {
    package let w0: UInt64, w1: UInt64

    @inline(__always)
    package func contains(_ byte: UInt8) -> Bool {
        // Every class in SIP's grammar is ASCII-only (bytes >= 0x80 are handled by the callers).
        if byte >= 0x80 { return false }
        let word = byte < 0x40 ? w0 : w1
        return (word >> UInt64(byte & 63)) & 1 == 1
    }

    /// RFC 3261 `token`: alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~".
    package static let token = ByteClass(w0: 0x03FF_6CA2_0000_0000, w1: 0x47FF_FFFF_87FF_FFFE)
    /// RFC 3261 `word` (Call-ID): token plus ( ) < > : \ " / [ ] ? { }.
    package static let word = ByteClass(w0: 0xD7FF_EFA6_0000_0000, w1: 0x6FFF_FFFF_BFFF_FFFE)
    /// RFC 3261 `user`: unreserved / escaped / user-unreserved.
    package static let user = ByteClass(w0: 0xABFF_FFF2_0000_0000, w1: 0x47FF_FFFE_87FF_FFFE)
    /// RFC 3261 `password`: unreserved / escaped / & = + $ ,.
    package static let password = ByteClass(w0: 0x23FF_7FF2_0000_0000, w1: 0x47FF_FFFE_87FF_FFFE)
    /// RFC 3261 `paramchar`: param-unreserved / unreserved / escaped.
    package static let paramChar = ByteClass(w0: 0x07FF_EFF2_0000_0000, w1: 0x47FF_FFFE_AFFF_FFFE)
    /// RFC 3261 `hname`/`hvalue` characters: hnv-unreserved / unreserved / escaped.
    package static let headerChar = ByteClass(w0: 0x87FF_EFB2_0000_0000, w1: 0x47FF_FFFE_AFFF_FFFE)
    /// What a header parameter's unquoted value may hold: token and host characters ("[", "]", ":").
    package static let paramValue = ByteClass(w0: 0x07FF_6CA2_0000_0000, w1: 0x47FF_FFFF_AFFF_FFFE)
    /// Hostname characters: alphanum / "-" / ".".
    package static let hostChar = ByteClass(w0: 0x03FF_6000_0000_0000, w1: 0x07FF_FFFE_07FF_FFFE)
}

@inline(__always)
package func isDigit(_ b: UInt8) -> Bool { b &- 0x30 < 10 }

@inline(__always)
package func isHexDigit(_ b: UInt8) -> Bool { b &- 0x30 < 10 || (b | 0x20) &- 0x61 < 6 }

@inline(__always)
package func hexValue(_ b: UInt8) -> UInt8 { b <= 0x39 ? b &- 0x30 : (b | 0x20) &- 0x61 &+ 10 }

/// SP or HTAB.
@inline(__always)
package func isBlank(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 }

@inline(__always)
package func asciiLower(_ b: UInt8) -> UInt8 { b &- 0x41 < 26 ? b | 0x20 : b }

// MARK: - Word-at-a-time scanning

private let lowBits: UInt64 = 0x0101_0101_0101_0101
private let highBits: UInt64 = 0x8080_8080_8080_8080

/// The first offset in `from..<end` whose byte is a control character (< 0x20, HTAB excluded) or
/// DEL (0x7F), or `end` if there is none. Eight bytes per step: this is what finds line ends.
///
/// Why it is exact: the "has a byte below n" and "has a zero byte" tricks can flag false positives
/// only *above* a true match (borrows run upward), so the lowest flagged byte is always a real one.
@inline(__always)
package func firstControlByte(_ base: UnsafeRawPointer, from: Int, end: Int) -> Int {
    var i = from
    // Sixteen bytes per step (SSE2 on x86-64); the lane mask, seen as two words, gives the offset.
    let del = SIMD16<UInt8>(repeating: 0x7F), space = SIMD16<UInt8>(repeating: 0x20)
    let tab = SIMD16<UInt8>(repeating: 0x09)
    while i &+ 16 <= end {
        let v = base.loadUnaligned(fromByteOffset: i, as: SIMD16<UInt8>.self)
        let hit = ((v .< space) .& (v .!= tab)) .| (v .== del)
        if any(hit) {
            let lanes = SIMD16<UInt8>(repeating: 0).replacing(with: 0xFF, where: hit)
            let words = unsafeBitCast(lanes, to: SIMD2<UInt64>.self)
            let low = UInt64(littleEndian: words[0])
            if low != 0 { return i &+ low.trailingZeroBitCount >> 3 }
            return i &+ 8 &+ UInt64(littleEndian: words[1]).trailingZeroBitCount >> 3
        }
        i &+= 16
    }
    while i &+ 8 <= end {
        let w = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: i, as: UInt64.self))
        let below20 = (w &- lowBits &* 0x20) & ~w & highBits
        let x7f = w ^ (lowBits &* 0x7F)
        let isDel = (x7f &- lowBits) & ~x7f & highBits
        let x09 = w ^ (lowBits &* 0x09)
        var hits = below20 | isDel
        if hits != 0 {
            // Horizontal tabs are allowed LWS: clear their flags, then check again.
            let isTab = (x09 &- lowBits) & ~x09 & highBits
            let firstHit = hits.trailingZeroBitCount >> 3
            let tabBelowFirst = isTab & ((1 << UInt64((firstHit << 3) + 8)) &- 1)
            if tabBelowFirst == 0 || tabBelowFirst.trailingZeroBitCount >> 3 != firstHit {
                return i &+ firstHit
            }
            // The first hit is a tab: fall back to bytes for the rest of this word.
            hits = 0
            var j = i &+ firstHit &+ 1
            let stop = i &+ 8
            while j < stop {
                let b = base.load(fromByteOffset: j, as: UInt8.self)
                if (b < 0x20 && b != 0x09) || b == 0x7F { return j }
                j &+= 1
            }
        }
        i &+= 8
    }
    while i < end {
        let b = base.load(fromByteOffset: i, as: UInt8.self)
        if (b < 0x20 && b != 0x09) || b == 0x7F { return i }
        i &+= 1
    }
    return end
}

/// The first offset in `from..<end` holding `byte`, or `end`. `readable` (at least `end`) is how
/// far the buffer may be read: the last word is then loaded whole and its extra bytes ignored,
/// which keeps short ranges (a header's parameters) off the byte-at-a-time tail.
@inline(__always)
package func firstIndex(of byte: UInt8, _ base: UnsafeRawPointer, from: Int, end: Int, readable: Int = 0) -> Int {
    var i = from
    let pattern = lowBits &* UInt64(byte)
    while i &+ 8 <= end {
        let w = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: i, as: UInt64.self)) ^ pattern
        let hits = (w &- lowBits) & ~w & highBits
        if hits != 0 { return i &+ hits.trailingZeroBitCount >> 3 }
        i &+= 8
    }
    if i < end && i &+ 8 <= readable {
        let w = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: i, as: UInt64.self)) ^ pattern
        let hits = (w &- lowBits) & ~w & highBits
        // Only the lowest flagged byte is exact; it counts if it lies before `end`.
        if hits != 0 {
            let at = i &+ hits.trailingZeroBitCount >> 3
            return at < end ? at : end
        }
        return end
    }
    while i < end {
        if base.load(fromByteOffset: i, as: UInt8.self) == byte { return i }
        i &+= 1
    }
    return end
}

/// The first offset in `from..<end` holding `a` or `b`, or `end`; `readable` as for `firstIndex`.
@inline(__always)
package func firstIndex(of a: UInt8, or b: UInt8, _ base: UnsafeRawPointer, from: Int, end: Int, readable: Int) -> Int {
    var i = from
    let pa = lowBits &* UInt64(a), pb = lowBits &* UInt64(b)
    while i < end {
        let w: UInt64
        if i &+ 8 <= readable {
            w = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: i, as: UInt64.self))
        } else {
            return Swift.min(firstIndex(of: a, base, from: i, end: end), firstIndex(of: b, base, from: i, end: end))
        }
        let xa = w ^ pa, xb = w ^ pb
        let hits = ((xa &- lowBits) & ~xa | (xb &- lowBits) & ~xb) & highBits
        if hits != 0 {
            let at = i &+ hits.trailingZeroBitCount >> 3
            return at < end ? at : end
        }
        i &+= 8
    }
    return end
}
