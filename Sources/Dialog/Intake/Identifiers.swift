import Transport

// The one definition of the identifiers a node generates, and of the socket filter program that
// reads the worker back out of a Via branch (built here, next to the format it reads; Transport
// only attaches it).

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
        withUnsafeMutableBytes(of: &seed) { _ = KernelRandom.fill($0) }
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
    public static func writeDecimal(_ value: UInt64, into out: UnsafeMutableRawBufferPointer) -> Int {
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

/// The classic BPF program that queues each SIP response reaching a UDP SO_REUSEPORT group on the
/// socket of the worker its top Via branch names (`;branch=z9hG4bKs<worker>x`; the group's n-th
/// socket is worker n's), so that the answer reaches the thread owning its transaction without a
/// hand-over. Requests, compact Via headers, other branches and short datagrams are left to the
/// kernel's hash (the program returns an index past the group).
///
/// Classic BPF has no loops and only short forward conditional jumps, so the searches are unrolled
/// and every failed check has its own "not steered" return right after it.
public enum ResponseSteering {
    /// The status line's end is looked for in bytes 12..75; ";branch=" this far into the Via line.
    static let statusScan = 64, viaScan = 128
    /// Every load stays below this, which the first check demands of the datagram.
    static let minimumLength = 12 + statusScan + 5 + viaScan + 24
    static let notSteered: UInt32 = 0xFFFF_FFFF

    public static func program() -> [SocketFilterInstruction] {
        typealias I = SocketFilterInstruction
        var p: [I] = []
        func emit(_ i: I) { p.append(i) }
        func leave() { emit(.statement(I.ret | I.constant, notSteered)) }   // to the kernel's hash
        func word(_ s: StaticString) -> UInt32 {
            s.withUTF8Buffer { b in UInt32(b[0]) << 24 | UInt32(b[1]) << 16 | UInt32(b[2]) << 8 | UInt32(b[3]) }
        }
        /// Continues when A == value, returns "not steered" otherwise.
        func expectEqual(_ value: UInt32) {
            emit(.jump(I.jmp | I.jeq | I.constant, value, ifTrue: 1, ifFalse: 0))
            leave()
        }
        /// Continues when A is an ASCII digit (leaving A - '0'), returns "not steered" otherwise.
        func expectDigit() {
            emit(.jump(I.jmp | I.jge | I.constant, 0x30, ifTrue: 1, ifFalse: 0))
            leave()
            emit(.jump(I.jmp | I.jgt | I.constant, 0x39, ifTrue: 0, ifFalse: 1))
            leave()
            emit(.statement(I.alu | I.sub | I.constant, 0x30))
        }
        // Long enough for every load below, and a response ("SIP/2.0 ").
        emit(.statement(I.ld | I.word | I.len))
        emit(.jump(I.jmp | I.jge | I.constant, UInt32(minimumLength), ifTrue: 1, ifFalse: 0))
        leave()
        emit(.statement(I.ld | I.word | I.abs, 0))
        expectEqual(word("SIP/"))
        emit(.statement(I.ld | I.word | I.abs, 4))
        expectEqual(word("2.0 "))
        // X = the start of the second line (after the status line's LF). Each position: load,
        // compare, and on a match set X and jump (unconditionally: a 32-bit offset) past the scan
        // and the "not steered" after it (a jump's offset counts from the next instruction).
        let statusEnd = p.count + 4 * statusScan
        for k in 12..<(12 + statusScan) {
            emit(.statement(I.ld | I.byte | I.abs, UInt32(k)))
            emit(.jump(I.jmp | I.jeq | I.constant, 0x0A, ifTrue: 0, ifFalse: 2))
            emit(.statement(I.ldx | I.word | I.imm, UInt32(k + 1)))
            emit(.statement(I.jmp | I.ja, UInt32(statusEnd - p.count)))
        }
        leave()   // no LF: not steered
        // The second line is the top Via, written out ("Via: "; compact "v:" is not steered).
        emit(.statement(I.ld | I.word | I.ind, 0))
        expectEqual(word("Via:"))
        // Its ";branch=" (PJSIP writes rport and received first): X moves to it.
        let viaEnd = p.count + 6 * viaScan
        for k in 5..<(5 + viaScan) {
            emit(.statement(I.ld | I.word | I.ind, UInt32(k)))
            emit(.jump(I.jmp | I.jeq | I.constant, word(";bra"), ifTrue: 0, ifFalse: 4))
            emit(.statement(I.misc | I.txa))
            emit(.statement(I.alu | I.add | I.constant, UInt32(k)))
            emit(.statement(I.misc | I.tax))
            emit(.statement(I.jmp | I.ja, UInt32(viaEnd - p.count)))
        }
        leave()
        // ";branch=z9hG4bKs", then one or two digits, then "x".
        emit(.statement(I.ld | I.word | I.ind, 4))
        expectEqual(word("nch="))
        emit(.statement(I.ld | I.word | I.ind, 8))
        expectEqual(word("z9hG"))
        emit(.statement(I.ld | I.word | I.ind, 12))
        expectEqual(word("4bKs"))
        emit(.statement(I.ld | I.byte | I.ind, 16))
        expectDigit()
        emit(.statement(I.st, 0))                                   // M[0] = the first digit
        emit(.statement(I.ld | I.byte | I.ind, 17))
        emit(.jump(I.jmp | I.jeq | I.constant, 0x78, ifTrue: 0, ifFalse: 2))
        emit(.statement(I.ld | I.mem, 0))
        emit(.statement(I.ret | I.accumulator))                     // s<d>x: worker d
        expectDigit()
        emit(.statement(I.st, 1))                                   // M[1] = the second digit
        emit(.statement(I.ld | I.byte | I.ind, 18))
        expectEqual(0x78)
        emit(.statement(I.ld | I.mem, 0))
        emit(.statement(I.alu | I.mul | I.constant, 10))
        emit(.statement(I.ldx | I.word | I.mem, 1))
        emit(.statement(I.alu | I.add | I.indexRegister))
        emit(.statement(I.ret | I.accumulator))                     // s<dd>x: worker dd
        return p
    }
}
