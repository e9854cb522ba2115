/// A run of bytes inside a received message, compared and printed without copying them out.
public struct ByteView: Sendable, Hashable, CustomStringConvertible {
    package let base: [UInt8]
    package let start: Int
    package let end: Int

    package init(_ base: [UInt8], _ start: Int, _ end: Int) {
        self.base = base
        self.start = start
        self.end = end
    }

    /// A view of the whole of `text` (for values SIPEdge writes itself).
    public init(text: String) {
        let bytes = Array(text.utf8)
        self.init(bytes, 0, bytes.count)
    }

    public var count: Int { end - start }
    public var isEmpty: Bool { end == start }

    /// The bytes as a String (invalid UTF-8 is repaired). Allocates: for logs, tests and tools.
    public var string: String {
        base.withUnsafeBufferPointer { String(decoding: UnsafeBufferPointer(rebasing: $0[start..<end]), as: UTF8.self) }
    }

    public var description: String { string }

    /// A copy of the bytes.
    public var bytes: [UInt8] { Array(base[start..<end]) }

    /// Calls `body` with the bytes, without copying them.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try base.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[start..<end])) }
    }

    /// Exact, byte-for-byte equality with `text`.
    public func equals(_ text: StaticString) -> Bool {
        guard text.utf8CodeUnitCount == count else { return false }
        return base.withUnsafeBufferPointer { p in
            let t = text.utf8Start
            for i in 0..<count where p[start + i] != t[i] { return false }
            return true
        }
    }

    /// Exact, byte-for-byte equality with `text` (tags and Call-IDs compare this way, RFC 3261 §19.3).
    public func equals(_ text: String) -> Bool {
        var other = text.utf8.makeIterator()
        return base.withUnsafeBufferPointer { p in
            for i in start..<end {
                guard let b = other.next(), b == p[i] else { return false }
            }
            return other.next() == nil
        }
    }

    /// ASCII case-insensitive equality with `text`.
    public func equalsIgnoringCase(_ text: String) -> Bool {
        var other = text.utf8.makeIterator()
        return base.withUnsafeBufferPointer { p in
            for i in start..<end {
                guard let b = other.next(), asciiLower(b) == asciiLower(p[i]) else { return false }
            }
            return other.next() == nil
        }
    }

    public static func == (a: ByteView, b: ByteView) -> Bool {
        guard a.count == b.count else { return false }
        return a.base.withUnsafeBufferPointer { pa in
            b.base.withUnsafeBufferPointer { pb in
                for i in 0..<a.count where pa[a.start + i] != pb[b.start + i] { return false }
                return true
            }
        }
    }

    public func hash(into hasher: inout Hasher) {
        base.withUnsafeBytes { hasher.combine(bytes: UnsafeRawBufferPointer(rebasing: $0[start..<end])) }
    }

    public static func == (a: ByteView, b: String) -> Bool {
        var it = b.utf8.makeIterator()
        return a.base.withUnsafeBufferPointer { p in
            for i in a.start..<a.end {
                guard let c = it.next(), c == p[i] else { return false }
            }
            return it.next() == nil
        }
    }

    /// The bytes with `%HH` escapes decoded once (RFC 3261 §19.1.2, RFC 4475 §3.1.1.3).
    public var unescaped: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        base.withUnsafeBufferPointer { p in
            var i = start
            while i < end {
                if p[i] == UInt8(ascii: "%"), i + 2 < end, isHexDigit(p[i + 1]), isHexDigit(p[i + 2]) {
                    out.append(hexValue(p[i + 1]) << 4 | hexValue(p[i + 2]))
                    i += 3
                } else {
                    out.append(p[i])
                    i += 1
                }
            }
        }
        return out
    }
}

/// An absent view equals no string.
public func == (a: ByteView?, b: String) -> Bool {
    guard let a else { return false }
    return a == b
}
