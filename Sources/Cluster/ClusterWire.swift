/// The cluster link's datagrams. Every one starts with the same header, in network byte order:
///
///     0  "SE"                magic
///     2  wire version        (ClusterWire.version; a node reads only its own)
///     3  kind                (ClusterMessage's case)
///     4  sender node id
///     5  0                   (reserved)
///     6  incarnation         8 bytes: when the sender started (ms); a restart is a new stream
///    14  body                by kind (below)
///     …  HMAC-SHA256         32 bytes over all of the above, when the cluster has a secret
///
/// Bodies (integers big-endian; `entries` are a count (2 bytes) then, each, a type byte and a
/// 4-byte length before the bytes; a dialog entry is `DialogRecord.encoded()`):
/// - heartbeat:        sees (8: bit n-1 = node n is up in the sender's view), last sequence (8),
///                     flags (1: 1 = synced), claims (1: count; each tag (1 + n), holder (1), epoch (8))
/// - records:          sequence (8), entries
/// - resend:           from (8), through (8)             — "send me these sequences again"
/// - gone:             from (8), through (8)             — "I no longer have them" (ask a snapshot)
/// - snapshotRequest:  request id (4), from chunk (4)
/// - snapshotChunk:    request id (4), index (4), last (1), positions (1: count; each node (1),
///                     incarnation (8), sequence (8)), entries
public enum ClusterWire {
    public static let version: UInt8 = 1
    static let magic: (UInt8, UInt8) = (0x53, 0x45)
    static let headerBytes = 14
    /// The largest datagram a node builds (records are packed up to this).
    static let maxDatagram = 60_000
    /// Entries one datagram may claim (a corrupt count must not allocate much).
    static let maxEntries = 4_096
}

/// Why a datagram was refused (counted, and logged once per source per interval).
public struct WireError: Error, Sendable, Equatable, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// A sharing tag's holder as a node announces it. `epoch` is the fencing number: a higher one wins
/// everywhere. It is `round << 8 | claimant id`, so no two claims ever carry the same epoch.
public struct TagClaim: Sendable, Equatable {
    public var tag: String
    public var holder: Int
    public var epoch: UInt64

    public init(tag: String, holder: Int, epoch: UInt64) {
        self.tag = tag
        self.holder = holder
        self.epoch = epoch
    }

    /// The epoch a node with `id` claims after having seen `highest`.
    public static func epoch(after highest: UInt64, by id: Int) -> UInt64 { ((highest >> 8) + 1) << 8 | UInt64(id & 0xFF) }
}

/// What one replicated item is.
public enum ReplicatedEntry: Sendable, Equatable {
    /// A dialog record (`DialogRecord.encoded()`).
    case dialog([UInt8])
    /// A registration: `RegistrationRecord.encoded()`.
    case registration([UInt8])

    var type: UInt8 {
        switch self {
        case .dialog: 1
        case .registration: 2
        }
    }

    var bytes: [UInt8] {
        switch self {
        case .dialog(let b), .registration(let b): b
        }
    }

    /// Bytes it takes in a datagram.
    var wireSize: Int { 5 + bytes.count }
}

/// Where a sender's stream stood: the last sequence of `node`'s incarnation that is included.
public struct StreamPosition: Sendable, Equatable {
    public var node: Int
    public var incarnation: UInt64
    public var sequence: UInt64
}

/// One datagram's header fields a receiver needs before the body.
public struct WireHeader: Sendable, Equatable {
    public var version: UInt8
    public var kind: UInt8
    public var sender: Int
    public var incarnation: UInt64
}

/// The messages of the cluster link (the Promela model, `Models/sharing-tags.pml`, has
/// `heartbeat` carrying `claims` too).
public enum ClusterMessage: Sendable, Equatable {
    case heartbeat(sees: UInt64, lastSequence: UInt64, synced: Bool, claims: [TagClaim])
    case records(sequence: UInt64, entries: [ReplicatedEntry])
    case resend(from: UInt64, through: UInt64)
    case gone(from: UInt64, through: UInt64)
    case snapshotRequest(id: UInt32, fromChunk: UInt32)
    case snapshotChunk(id: UInt32, index: UInt32, last: Bool, positions: [StreamPosition], entries: [ReplicatedEntry])

    var kind: UInt8 {
        switch self {
        case .heartbeat: 1
        case .records: 2
        case .resend: 3
        case .gone: 4
        case .snapshotRequest: 5
        case .snapshotChunk: 6
        }
    }

    /// The datagram (without its authentication tag).
    public func encoded(sender: Int, incarnation: UInt64) -> [UInt8] {
        var w = WireWriter()
        w.u8(ClusterWire.magic.0)
        w.u8(ClusterWire.magic.1)
        w.u8(ClusterWire.version)
        w.u8(kind)
        w.u8(UInt8(truncatingIfNeeded: sender))
        w.u8(0)
        w.u64(incarnation)
        switch self {
        case let .heartbeat(sees, last, synced, claims):
            w.u64(sees)
            w.u64(last)
            w.u8(synced ? 1 : 0)
            w.u8(UInt8(min(claims.count, 255)))
            for c in claims.prefix(255) {
                w.short(c.tag)
                w.u8(UInt8(truncatingIfNeeded: c.holder))
                w.u64(c.epoch)
            }
        case let .records(sequence, entries):
            w.u64(sequence)
            w.entries(entries)
        case let .resend(from, through), let .gone(from, through):
            w.u64(from)
            w.u64(through)
        case let .snapshotRequest(id, fromChunk):
            w.u32(id)
            w.u32(fromChunk)
        case let .snapshotChunk(id, index, last, positions, entries):
            w.u32(id)
            w.u32(index)
            w.u8(last ? 1 : 0)
            w.u8(UInt8(min(positions.count, 255)))
            for p in positions.prefix(255) {
                w.u8(UInt8(truncatingIfNeeded: p.node))
                w.u64(p.incarnation)
                w.u64(p.sequence)
            }
            w.entries(entries)
        }
        return w.bytes
    }

    /// The header alone: enough to tell who sent it and whether its version is one we read.
    public static func header(of bytes: ArraySlice<UInt8>) throws(WireError) -> WireHeader {
        var r = WireReader(bytes)
        guard try r.u8() == ClusterWire.magic.0, try r.u8() == ClusterWire.magic.1 else { throw WireError("not a cluster datagram") }
        let version = try r.u8(), kind = try r.u8(), sender = Int(try r.u8())
        _ = try r.u8()
        return WireHeader(version: version, kind: kind, sender: sender, incarnation: try r.u64())
    }

    /// The message in `bytes` (authentication already removed), whose header reads `header`.
    public static func decode(_ bytes: ArraySlice<UInt8>) throws(WireError) -> (WireHeader, ClusterMessage) {
        let header = try Self.header(of: bytes)
        guard header.version == ClusterWire.version else { throw WireError("wire version \(header.version) (this node reads \(ClusterWire.version))") }
        var r = WireReader(bytes.dropFirst(ClusterWire.headerBytes))
        let message: ClusterMessage
        switch header.kind {
        case 1:
            let sees = try r.u64(), last = try r.u64(), synced = try r.u8() & 1 == 1
            let count = Int(try r.u8())
            var claims: [TagClaim] = []
            for _ in 0..<count {
                claims.append(TagClaim(tag: try r.short(), holder: Int(try r.u8()), epoch: try r.u64()))
            }
            message = .heartbeat(sees: sees, lastSequence: last, synced: synced, claims: claims)
        case 2:
            message = .records(sequence: try r.u64(), entries: try r.entries())
        case 3:
            message = .resend(from: try r.u64(), through: try r.u64())
        case 4:
            message = .gone(from: try r.u64(), through: try r.u64())
        case 5:
            message = .snapshotRequest(id: try r.u32(), fromChunk: try r.u32())
        case 6:
            let id = try r.u32(), index = try r.u32(), last = try r.u8() & 1 == 1
            let count = Int(try r.u8())
            var positions: [StreamPosition] = []
            for _ in 0..<count {
                positions.append(StreamPosition(node: Int(try r.u8()), incarnation: try r.u64(), sequence: try r.u64()))
            }
            message = .snapshotChunk(id: id, index: index, last: last, positions: positions, entries: try r.entries())
        default:
            throw WireError("unknown kind \(header.kind)")
        }
        guard r.atEnd else { throw WireError("\(r.remaining) bytes after the message") }
        return (header, message)
    }
}

struct WireWriter {
    var bytes: [UInt8] = []

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u32(_ v: UInt32) { for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt32(shift))) } }
    mutating func u64(_ v: UInt64) { for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt64(shift))) } }
    mutating func short(_ s: String) {
        let b = Array(s.utf8.prefix(255))
        bytes.append(UInt8(b.count))
        bytes.append(contentsOf: b)
    }
    mutating func entries(_ entries: [ReplicatedEntry]) {
        bytes.append(UInt8(truncatingIfNeeded: entries.count >> 8))
        bytes.append(UInt8(truncatingIfNeeded: entries.count))
        for e in entries {
            u8(e.type)
            u32(UInt32(e.bytes.count))
            bytes.append(contentsOf: e.bytes)
        }
    }
}

struct WireReader {
    private let bytes: ArraySlice<UInt8>
    private var at: Int

    init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        at = bytes.startIndex
    }

    var atEnd: Bool { at == bytes.endIndex }
    var remaining: Int { bytes.endIndex - at }

    mutating func u8() throws(WireError) -> UInt8 {
        guard at < bytes.endIndex else { throw WireError("truncated") }
        defer { at += 1 }
        return bytes[at]
    }

    mutating func u32() throws(WireError) -> UInt32 {
        var v: UInt32 = 0
        for _ in 0..<4 { v = v << 8 | UInt32(try u8()) }
        return v
    }

    mutating func u64() throws(WireError) -> UInt64 {
        var v: UInt64 = 0
        for _ in 0..<8 { v = v << 8 | UInt64(try u8()) }
        return v
    }

    mutating func take(_ n: Int) throws(WireError) -> [UInt8] {
        guard n >= 0, n <= remaining else { throw WireError("truncated (a field claims \(n) bytes, \(remaining) left)") }
        defer { at += n }
        return Array(bytes[at..<(at + n)])
    }

    mutating func short() throws(WireError) -> String {
        String(decoding: try take(Int(try u8())), as: UTF8.self)
    }

    mutating func entries() throws(WireError) -> [ReplicatedEntry] {
        let count = Int(try u8()) << 8 | Int(try u8())
        guard count <= ClusterWire.maxEntries else { throw WireError("\(count) entries claimed") }
        var out: [ReplicatedEntry] = []
        out.reserveCapacity(min(count, remaining / 5))
        for _ in 0..<count {
            let type = try u8()
            let body = try take(Int(try u32()))
            switch type {
            case 1: out.append(.dialog(body))
            case 2: out.append(.registration(body))
            default: throw WireError("unknown entry type \(type)")
            }
        }
        return out
    }
}

/// A user's registrations as the cluster replicates them: the user, a version (the writer's
/// wall-clock milliseconds, shifted, with its node id in the low byte: the later write wins
/// everywhere), the sharing tag of the node it registered through (whoever acts for that tag keeps
/// its NAT bindings open), and the bindings as the registrar encodes them (empty: none left).
public struct RegistrationRecord: Sendable, Equatable {
    public var user: String
    public var version: UInt64
    public var tag: String
    public var bindings: [UInt8]

    public init(user: String, version: UInt64, tag: String, bindings: [UInt8]) {
        self.user = user
        self.version = version
        self.tag = tag
        self.bindings = bindings
    }

    func encoded() -> [UInt8] {
        var w = WireWriter()
        w.u64(version)
        let name = Array(user.utf8.prefix(1_024))
        w.u32(UInt32(name.count))
        w.bytes += name
        w.short(tag)
        w.u32(UInt32(bindings.count))
        w.bytes += bindings
        return w.bytes
    }

    init(decoding bytes: [UInt8]) throws(WireError) {
        var r = WireReader(bytes[...])
        version = try r.u64()
        user = String(decoding: try r.take(Int(try r.u32())), as: UTF8.self)
        tag = try r.short()
        bindings = try r.take(Int(try r.u32()))
        guard r.atEnd else { throw WireError("\(r.remaining) bytes after a registration") }
    }
}
