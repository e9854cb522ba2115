import Transport

/// What this node knows of another member: when it last heard from it, which run of it
/// (incarnation) and whether it counts as up.
public struct PeerState: Sendable, Equatable {
    public let member: ClusterMember
    /// Loop time (ms) of the last authenticated datagram from it (nil: never).
    public internal(set) var lastHeard: UInt64?
    /// Its start time as it announces it: a new one is a restart.
    public internal(set) var incarnation: UInt64 = 0
    public internal(set) var up = false
    /// The wire version it speaks (from its datagrams' headers; 0: not heard yet).
    public internal(set) var wireVersion: UInt8 = 0
    /// It has a full copy of the cluster's dialogs (it can serve a snapshot).
    public internal(set) var synced = false
    /// The nodes it sees up (bit n-1 for node n).
    public internal(set) var sees: UInt64 = 0
    /// The holders it announced in its last heartbeat, by tag: its confirmation of a holder's lease.
    public internal(set) var claims: [String: TagClaim] = [:]
}

/// Static membership (DESIGN.md, Cluster): every member is configured; a peer is up while it has
/// been heard within `down_after_milliseconds`. Time is the loop's (ms), handed in.
final class Membership {
    let settings: ClusterSettings
    private(set) var peers: [Int: PeerState]

    init(settings: ClusterSettings) {
        self.settings = settings
        var peers: [Int: PeerState] = [:]
        for m in settings.peers { peers[m.id] = PeerState(member: m) }
        self.peers = peers
    }

    /// The member whose cluster address is `address`, if any.
    func member(at address: SocketAddress) -> Int? { peers.values.first { $0.member.address == address }?.member.id }

    enum Heard: Equatable { case known, cameUp, restarted }

    /// An authenticated datagram from `id` (a member): it is up. Tells whether it just came up or
    /// restarted (a new incarnation).
    func heard(from id: Int, incarnation: UInt64, at now: UInt64) -> Heard {
        guard var peer = peers[id] else { return .known }
        let restarted = peer.incarnation != 0 && peer.incarnation != incarnation
        let cameUp = !peer.up
        peer.lastHeard = now
        peer.incarnation = incarnation
        peer.up = true
        peer.wireVersion = ClusterWire.version
        peers[id] = peer
        return restarted ? .restarted : cameUp ? .cameUp : .known
    }

    /// What a peer's heartbeat says of it.
    func status(of id: Int, sees: UInt64, synced: Bool, claims: [TagClaim]) {
        peers[id]?.sees = sees
        peers[id]?.synced = synced
        peers[id]?.claims = Dictionary(claims.map { ($0.tag, $0) }, uniquingKeysWith: { a, _ in a })
    }

    /// Whether a majority (this node counted) sees `id` down: this node, and each peer heard within
    /// `down_after` whose last heartbeat leaves `id` out of the nodes it sees. A node that has only
    /// just heard from one side of a healed partition does not count a holder down that the others
    /// still see.
    func majoritySeesDown(_ id: Int, now: UInt64) -> Bool {
        guard !isUp(id) else { return false }
        let bit = Self.bit(id)
        let agreeing = peers(heardWithin: settings.downAfterMilliseconds, now: now).filter { $0.sees & bit == 0 }.count
        return agreeing + 1 >= settings.majority
    }

    /// How many members confirm `claim` (this node, which holds it, and each peer heard within
    /// `window` ms whose last heartbeat names the same holder at the same epoch).
    func confirmations(of claim: TagClaim, now: UInt64, within window: UInt64) -> Int {
        1 + peers(heardWithin: window, now: now).filter { $0.claims[claim.tag] == claim }.count
    }

    /// A datagram from a member's address in a wire version this node cannot read.
    func speaks(_ version: UInt8, at id: Int) { peers[id]?.wireVersion = version }

    /// Peers silent for `down_after_milliseconds` go down; returns them.
    func tick(now: UInt64) -> [Int] {
        var down: [Int] = []
        for (id, peer) in peers where peer.up {
            if let last = peer.lastHeard, now &- last >= settings.downAfterMilliseconds {
                peers[id]?.up = false
                peers[id]?.synced = false
                down.append(id)
            }
        }
        return down.sorted()
    }

    /// The peers up and heard within the last `window` ms.
    private func peers(heardWithin window: UInt64, now: UInt64) -> [PeerState] {
        peers.values.filter { p in p.up && p.lastHeard.map { now &- $0 < window } == true }
    }

    /// Whether this node and the peers heard within `window` ms make a majority of the members.
    func seesMajority(now: UInt64, within window: UInt64) -> Bool {
        peers(heardWithin: window, now: now).count + 1 >= settings.majority
    }

    /// The nodes up in this node's view, itself included, as a bit set (bit n-1: node n).
    var upSet: UInt64 {
        peers.values.filter(\.up).reduce(Self.bit(settings.nodeID)) { $0 | Self.bit($1.member.id) }
    }

    static func bit(_ id: Int) -> UInt64 { id >= 1 && id <= 64 ? 1 << UInt64(id - 1) : 0 }

    func isUp(_ id: Int) -> Bool { id == settings.nodeID || peers[id]?.up == true }
}
