/// A bencoded value (BitTorrent's encoding, which rtpengine's ng control protocol speaks):
/// integers, byte strings, lists and dictionaries with byte-string keys.
public enum Bencode: Equatable, Sendable {
    case int(Int)
    case bytes([UInt8])
    case list([Bencode])
    case dict([(key: String, value: Bencode)])

    public static func string(_ text: String) -> Bencode { .bytes(Array(text.utf8)) }

    public static func == (a: Bencode, b: Bencode) -> Bool {
        switch (a, b) {
        case let (.int(x), .int(y)): x == y
        case let (.bytes(x), .bytes(y)): x == y
        case let (.list(x), .list(y)): x == y
        case let (.dict(x), .dict(y)): x.count == y.count && zip(x, y).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        default: false
        }
    }

    /// The value under `key` of a dictionary (nil for other values or a missing key).
    public subscript(key: String) -> Bencode? {
        guard case .dict(let entries) = self else { return nil }
        return entries.first { $0.key == key }?.value
    }

    /// A byte string as text (nil for other values).
    public var text: String? {
        guard case .bytes(let b) = self else { return nil }
        return String(decoding: b, as: UTF8.self)
    }

    public var integer: Int? {
        guard case .int(let i) = self else { return nil }
        return i
    }

    public var items: [Bencode] {
        guard case .list(let l) = self else { return [] }
        return l
    }

    /// The encoding; a dictionary's keys sorted as the format asks.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        encode(into: &out)
        return out
    }

    private func encode(into out: inout [UInt8]) {
        switch self {
        case .int(let i):
            out.append(UInt8(ascii: "i"))
            out += Array(String(i).utf8)
            out.append(UInt8(ascii: "e"))
        case .bytes(let b):
            out += Array(String(b.count).utf8)
            out.append(UInt8(ascii: ":"))
            out += b
        case .list(let l):
            out.append(UInt8(ascii: "l"))
            for v in l { v.encode(into: &out) }
            out.append(UInt8(ascii: "e"))
        case .dict(let entries):
            out.append(UInt8(ascii: "d"))
            for (key, value) in entries.sorted(by: { Array($0.key.utf8).lexicographicallyPrecedes(Array($1.key.utf8)) }) {
                Bencode.bytes(Array(key.utf8)).encode(into: &out)
                value.encode(into: &out)
            }
            out.append(UInt8(ascii: "e"))
        }
    }

    /// Decodes one value taking all of `bytes`; what a peer can make us build is bounded (nesting
    /// depth, element count) by the input's own size.
    public init(decoding bytes: ArraySlice<UInt8>) throws(BencodeError) {
        var reader = Reader(bytes: bytes, offset: bytes.startIndex)
        self = try reader.value(depth: 0)
        guard reader.offset == bytes.endIndex else { throw BencodeError(reason: "\(bytes.endIndex - reader.offset) bytes after the value") }
    }

    private struct Reader {
        let bytes: ArraySlice<UInt8>
        var offset: Int
        static let maxDepth = 32

        mutating func byte() throws(BencodeError) -> UInt8 {
            guard offset < bytes.endIndex else { throw BencodeError(reason: "ends early") }
            defer { offset += 1 }
            return bytes[offset]
        }

        /// Decimal digits (with a leading "-" if `signed`) up to `end`.
        mutating func number(until end: UInt8, signed: Bool) throws(BencodeError) -> Int {
            var value = 0, negative = false, digits = 0
            while true {
                let c = try byte()
                if c == end { break }
                if c == UInt8(ascii: "-"), signed, digits == 0, !negative { negative = true; continue }
                guard c >= 0x30, c <= 0x39, digits < 18 else { throw BencodeError(reason: "bad number") }
                value = value * 10 + Int(c - 0x30)
                digits += 1
            }
            guard digits > 0 else { throw BencodeError(reason: "empty number") }
            return negative ? -value : value
        }

        mutating func value(depth: Int) throws(BencodeError) -> Bencode {
            guard depth < Self.maxDepth else { throw BencodeError(reason: "nested too deep") }
            guard offset < bytes.endIndex else { throw BencodeError(reason: "ends early") }
            switch bytes[offset] {
            case UInt8(ascii: "i"):
                offset += 1
                return .int(try number(until: UInt8(ascii: "e"), signed: true))
            case UInt8(ascii: "l"):
                offset += 1
                var list: [Bencode] = []
                while try peek() != UInt8(ascii: "e") { list.append(try value(depth: depth + 1)) }
                offset += 1
                return .list(list)
            case UInt8(ascii: "d"):
                offset += 1
                var entries: [(key: String, value: Bencode)] = []
                while try peek() != UInt8(ascii: "e") {
                    guard case .bytes(let key) = try value(depth: depth + 1) else { throw BencodeError(reason: "a key that is not a string") }
                    entries.append((String(decoding: key, as: UTF8.self), try value(depth: depth + 1)))
                }
                offset += 1
                return .dict(entries)
            default:
                let count = try number(until: UInt8(ascii: ":"), signed: false)
                guard count <= bytes.endIndex - offset else { throw BencodeError(reason: "a string of \(count) bytes runs past the end") }
                defer { offset += count }
                return .bytes(Array(bytes[offset..<(offset + count)]))
            }
        }

        func peek() throws(BencodeError) -> UInt8 {
            guard offset < bytes.endIndex else { throw BencodeError(reason: "ends early") }
            return bytes[offset]
        }
    }
}

/// Why bytes are not one bencoded value.
public struct BencodeError: Error, Equatable, CustomStringConvertible {
    public let reason: String
    public var description: String { "bencode: \(reason)" }
}
