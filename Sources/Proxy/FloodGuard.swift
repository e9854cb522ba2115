import Dialog
import Synchronization
import Transport

/// A set of IP networks ("10.0.0.0/8", "2001:db8::/32", "127.0.0.1"): the trusted backends of the ACL.
public struct NetworkList: Sendable, Equatable {
    struct Network: Sendable, Equatable {
        let bytes: [UInt8]
        let prefix: Int
    }

    private let networks: [Network]

    /// Nil (with the offending entry) when one is not "ip" or "ip/prefix".
    public init(_ entries: [String]) throws(NetworkListError) {
        var out: [Network] = []
        for entry in entries {
            let parts = entry.split(separator: "/", maxSplits: 1)
            guard let address = SocketAddress(ip: String(parts[0]), port: 0) else { throw NetworkListError(entry: entry) }
            let bytes = address.addressBytes
            let prefix = parts.count == 2 ? Int(parts[1]) : bytes.count * 8
            guard let prefix, (0...bytes.count * 8).contains(prefix) else { throw NetworkListError(entry: entry) }
            out.append(Network(bytes: bytes, prefix: prefix))
        }
        networks = out
    }

    public var isEmpty: Bool { networks.isEmpty }

    public func contains(_ address: SocketAddress) -> Bool {
        guard !networks.isEmpty else { return false }
        return address.withAddressBytes { bytes in networks.contains { n in
            guard n.bytes.count == bytes.count else { return false }
            var left = n.prefix
            for i in 0..<bytes.count where left > 0 {
                let bits = min(8, left)
                let mask: UInt8 = bits == 8 ? 0xFF : ~(0xFF >> UInt8(bits))
                if bytes[i] & mask != n.bytes[i] & mask { return false }
                left -= bits
            }
            return true
        } }
    }
}

/// An entry of `[security] trusted` that is not a network.
public struct NetworkListError: Error, Sendable {
    public let entry: String
}

/// Per-source request-rate limits with temporary blocking (like OpenSIPS's pike), on one worker:
/// a source (IP address, all ports) that sends more than `limit` requests within a window of
/// `windowMilliseconds` is blocked for `blockMilliseconds`. The table of sources is bounded: when
/// it is full, the oldest entry gives way, so a flood from forged addresses cannot grow it.
/// Loop-confined: each worker has its own (SO_REUSEPORT keeps a source address and port on one worker).
final class FloodGuard {
    enum Verdict: Equatable {
        case allow
        /// Blocked now (the request that crossed the limit): worth a log line.
        case blockedNow
        /// Still blocked; `answer` once per second so the peer learns why, silence otherwise.
        case blocked(answer: Bool)
    }

    struct Entry {
        var windowStart: UInt64
        var count: Int
        var blockedUntil: UInt64
        var lastAnswer: UInt64
    }

    var limit: Int
    var windowMilliseconds: UInt64
    var blockMilliseconds: UInt64
    let capacity: Int
    private var entries: [SocketAddress: Entry] = [:]
    /// Insertion order, for eviction: a ring of keys (a key may appear again after eviction).
    private var order: [SocketAddress] = []
    private var orderHead = 0
    private(set) var evictions = 0

    init(limit: Int, windowMilliseconds: UInt64, blockMilliseconds: UInt64, capacity: Int) {
        self.limit = limit
        self.windowMilliseconds = windowMilliseconds
        self.blockMilliseconds = blockMilliseconds
        self.capacity = capacity
        entries.reserveCapacity(min(capacity, 4_096))
    }

    var count: Int { entries.count }

    func check(_ peer: SocketAddress, now: UInt64) -> Verdict {
        let source = peer.with(port: 0)
        guard var e = entries[source] else {
            // Every tracked source sits in one slot of the ring, oldest at `orderHead` once full.
            if entries.count >= capacity {
                entries[order[orderHead]] = nil
                order[orderHead] = source
                orderHead = (orderHead + 1) % capacity
                evictions += 1
            } else {
                order.append(source)
            }
            entries[source] = Entry(windowStart: now, count: 1, blockedUntil: 0, lastAnswer: 0)
            return .allow
        }
        defer { entries[source] = e }
        if e.blockedUntil > now {
            let answer = now &- e.lastAnswer >= 1_000
            if answer { e.lastAnswer = now }
            return .blocked(answer: answer)
        }
        if now &- e.windowStart >= windowMilliseconds {
            e.windowStart = now
            e.count = 0
        }
        e.count += 1
        if e.count > limit {
            e.blockedUntil = now + blockMilliseconds
            e.lastAnswer = now
            e.count = 0
            return .blockedNow
        }
        return .allow
    }
}

/// Calls up at once per source address, across the workers (a short lock per new call and per
/// ended call, never per message). Holds only sources with calls up: bounded by the calls.
final class SourceCallLimit: CallAdmission, Sendable {
    private let rules: Mutex<(limit: Int, trusted: NetworkList)>
    private let active = Mutex<[SocketAddress: Int]>([:])
    /// Calls refused for being over the limit.
    let refused = Atomic<Int>(0)

    init(limit: Int, trusted: NetworkList) {
        rules = Mutex((limit, trusted))
    }

    /// New limit and trusted networks (a reload); calls already counted stay counted.
    func reload(limit: Int, trusted: NetworkList) {
        rules.withLock { $0 = (limit, trusted) }
    }

    func admit(_ source: SocketAddress) -> Bool {
        let (limit, trusted) = rules.withLock { $0 }
        if trusted.contains(source) { return true }
        // Counted even without a limit, so a limit set by a reload sees the calls already up.
        let key = source.with(port: 0)
        let ok = active.withLock { table in
            let n = table[key, default: 0]
            guard limit == 0 || n < limit else { return false }
            table[key] = n + 1
            return true
        }
        if !ok { refused.add(1, ordering: .relaxed) }
        return ok
    }

    func release(_ source: SocketAddress) {
        let key = source.with(port: 0)
        active.withLock { table in
            guard let n = table[key] else { return }   // a trusted source, never counted
            table[key] = n > 1 ? n - 1 : nil
        }
    }
}
