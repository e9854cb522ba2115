import CTransportShim
import Glibc

/// A node's worker loops, one per core, each owning its shard of transactions, dialogs and
/// connections. The layer above says which worker owns a message; `handOver` delivers it there.
public final class WorkerGroup: Sendable {
    public let loops: [EventLoop]

    public init(count: Int) throws(SystemError) {
        precondition(count >= 1, "at least one worker")
        var loops: [EventLoop] = []
        for i in 0..<count { loops.append(try EventLoop(index: i)) }
        self.loops = loops
    }

    public var count: Int { loops.count }

    public func start() throws(SystemError) {
        for loop in loops { try loop.start() }
    }

    public func stop() {
        for loop in loops { loop.stop() }
    }

    /// Runs `work` on worker `worker` (what it captures, received bytes included, moves with it:
    /// no copy). Run at once when already on that worker.
    public func handOver(to worker: Int, _ work: @escaping @Sendable () -> Void) {
        let loop = loops[worker]
        if loop.inLoop { work() } else { loop.execute(work) }
    }
}

/// Makes the identifiers a node generates (Via branches, tags, Call-IDs, Contact user parts) so
/// that they carry the worker that owns them: `s<worker>x<random>`. A response or an in-dialog
/// request then goes straight to its owner (DESIGN.md, Threads). One generator per loop; not
/// cryptographic, but unpredictable enough (seeded from the kernel, 60 random bits per id).
public struct ShardedIdentifiers: Sendable {
    public let worker: Int
    private var state: (UInt64, UInt64)

    public init(worker: Int) {
        self.worker = worker
        var seed: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &seed) { raw in
            _ = sipedge_random_bytes(raw.baseAddress, raw.count)
        }
        if seed == (0, 0) { seed = (0x9E37_79B9_7F4A_7C15, 0xBF58_476D_1CE4_E5B9) }
        state = seed
    }

    /// xorshift128+.
    private mutating func next64() -> UInt64 {
        var s1 = state.0
        let s0 = state.1
        state.0 = s0
        s1 ^= s1 << 23
        state.1 = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26)
        return state.1 &+ s0
    }

    /// A new identifier, e.g. `s3x9f2k1c8d0a7b`: 60 random bits in base 36, so that with fewer than
    /// ten workers it fits a small (unallocated) String.
    public mutating func make() -> String {
        var buffer: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        return withUnsafeMutableBytes(of: &buffer) { raw in
            let n = write(into: raw)
            return String(decoding: UnsafeRawBufferPointer(rebasing: raw[..<n]), as: UTF8.self)
        }
    }

    /// Appends a new identifier to `bytes` (a Via branch written straight into a message).
    public mutating func make(appendingTo bytes: inout [UInt8]) {
        var buffer: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        withUnsafeMutableBytes(of: &buffer) { raw in
            let n = write(into: raw)
            bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: raw[..<n]))
        }
    }

    /// Writes `s<worker>x<base 36>` at the start of `out` (32 bytes); returns its length.
    private mutating func write(into out: UnsafeMutableRawBufferPointer) -> Int {
        var n = 0
        out[n] = UInt8(ascii: "s"); n += 1
        n += Self.writeDecimal(UInt64(worker), into: UnsafeMutableRawBufferPointer(rebasing: out[n...]))
        out[n] = UInt8(ascii: "x"); n += 1
        var value = next64() >> 4
        var reversed: (UInt64, UInt64) = (0, 0)
        let count = withUnsafeMutableBytes(of: &reversed) { r -> Int in
            var k = 0
            repeat {
                let d = UInt8(value % 36)
                r[k] = d < 10 ? UInt8(ascii: "0") + d : UInt8(ascii: "a") + d - 10
                value /= 36
                k += 1
            } while value > 0
            for i in 0..<k { out[n + i] = r[k - 1 - i] }
            return k
        }
        return n + count
    }

    /// Writes `value` in decimal at the start of `out` (20 bytes suffice); returns the digits written.
    static func writeDecimal(_ value: UInt64, into out: UnsafeMutableRawBufferPointer) -> Int {
        var digits = 1, v = value
        while v >= 10 { v /= 10; digits += 1 }
        v = value
        for i in stride(from: digits - 1, through: 0, by: -1) {
            out[i] = UInt8(ascii: "0") + UInt8(v % 10)
            v /= 10
        }
        return digits
    }

    /// The worker an identifier of ours names, if it is one (any prefix such as `z9hG4bK` removed).
    public static func worker(of identifier: some Collection<UInt8>, workers: Int) -> Int? {
        var it = identifier.makeIterator()
        guard it.next() == UInt8(ascii: "s") else { return nil }
        var value = 0
        var digits = 0
        while let b = it.next() {
            if b == UInt8(ascii: "x") {
                guard digits > 0, value < workers else { return nil }
                return value
            }
            guard b &- 0x30 < 10, digits < 4 else { return nil }
            value = value * 10 + Int(b &- 0x30)
            digits += 1
        }
        return nil
    }
}

extension Array where Element == UInt8 {
    /// Appends `value` in decimal, without building a String (ports, CSeq numbers, lengths).
    public mutating func appendDecimal(_ value: some BinaryInteger) {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)
        Swift.withUnsafeMutableBytes(of: &digits) { raw in
            let n = ShardedIdentifiers.writeDecimal(UInt64(value), into: raw)
            append(contentsOf: UnsafeRawBufferPointer(rebasing: raw[..<n]))
        }
    }
}
