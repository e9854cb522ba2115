/// This node's replication stream: each datagram of records gets the next sequence number and is
/// kept (sealed, as sent) for a while, so that a peer that missed it can ask for it again. Bounded
/// in datagrams and bytes; what has fallen out is answered `gone` (the peer then pulls a snapshot).
struct OutgoingStream {
    static let keptDatagrams = 16_384
    static let keptBytes = 64 << 20

    private(set) var lastSequence: UInt64 = 0
    private var kept: [UInt64: [UInt8]] = [:]
    private var order: [UInt64] = []
    private var orderHead = 0
    private var bytes = 0

    /// The sequence the next datagram gets.
    mutating func next() -> UInt64 {
        lastSequence += 1
        return lastSequence
    }

    mutating func keep(_ datagram: [UInt8], as sequence: UInt64) {
        kept[sequence] = datagram
        order.append(sequence)
        bytes += datagram.count
        while order.count - orderHead > Self.keptDatagrams || bytes > Self.keptBytes {
            let old = order[orderHead]
            orderHead += 1
            bytes -= kept.removeValue(forKey: old)?.count ?? 0
        }
        if orderHead > 4_096 && orderHead * 2 > order.count {
            order.removeFirst(orderHead)
            orderHead = 0
        }
    }

    func datagram(_ sequence: UInt64) -> [UInt8]? { kept[sequence] }
}

/// What this node has received of one peer's stream: the highest sequence seen and the ones below
/// it still missing (asked again until they come, or the peer says they are gone). Bounded: past
/// `maxMissing` the stream is given up on and repaired by a snapshot instead.
struct IncomingStream {
    static let maxMissing = 50_000

    var incarnation: UInt64
    private(set) var highest: UInt64
    private(set) var missing: Set<UInt64> = []

    /// A stream known up to `highest` (0: from its start).
    init(incarnation: UInt64, highest: UInt64) {
        self.incarnation = incarnation
        self.highest = highest
    }

    /// `sequence` arrived; false when the gap it opened is too large to repair piecemeal.
    mutating func received(_ sequence: UInt64) -> Bool {
        if sequence > highest {
            return heardOf(upTo: sequence, arrived: true)
        }
        missing.remove(sequence)
        return true
    }

    /// The peer says it sent up to `last`: what is beyond `highest` is missing.
    mutating func heardOf(upTo last: UInt64, arrived: Bool = false) -> Bool {
        guard last > highest else { return true }
        let gap = last - highest - (arrived ? 1 : 0)
        guard gap <= UInt64(Self.maxMissing) - UInt64(missing.count) else {
            highest = last
            missing.removeAll()
            return false
        }
        var s = highest + 1
        while s < last || (!arrived && s == last) {
            missing.insert(s)
            s += 1
        }
        highest = last
        return true
    }

    mutating func forget(from: UInt64, through: UInt64) {
        guard from <= through else { return }
        if through - from < UInt64(missing.count) {
            for s in from...through { missing.remove(s) }
        } else {
            missing = missing.filter { $0 < from || $0 > through }
        }
    }

    /// The missing sequences as ranges (at most `limit` of them, lowest first).
    func missingRanges(limit: Int) -> [ClosedRange<UInt64>] {
        var out: [ClosedRange<UInt64>] = []
        for s in missing.sorted() {
            if let last = out.last, last.upperBound + 1 == s {
                out[out.count - 1] = last.lowerBound...s
            } else {
                if out.count == limit { break }
                out.append(s...s)
            }
        }
        return out
    }
}
