/// Which node holds each sharing tag, and at which epoch: the one gate for tag state. A claim
/// heard with a higher epoch replaces the one known (so loss, duplication and reordering of claims
/// are harmless); this node claims a tag only with an epoch above every one it knows for it. The
/// names match the Promela model (`Models/sharing-tags.pml`): `claims`, `learn`, `claim`.
final class SharingTags {
    let me: Int
    private(set) var claims: [String: TagClaim] = [:]
    /// Since when a majority has confirmed this node's claim on each tag it holds (loop ms).
    private(set) var confirmedSince: [String: UInt64] = [:]

    init(me: Int) { self.me = me }

    /// A claim heard from a peer (or gossiped on): kept if its epoch is higher than the known one.
    /// True when it changed the holder.
    @discardableResult
    func learn(_ claim: TagClaim) -> Bool {
        guard !claim.tag.isEmpty else { return false }
        if let known = claims[claim.tag], known.epoch >= claim.epoch { return false }
        let changed = claims[claim.tag]?.holder != claim.holder
        claims[claim.tag] = claim
        return changed
    }

    /// This node becomes `tag`'s holder, at an epoch above any known for it.
    @discardableResult
    func claim(_ tag: String) -> TagClaim {
        let claim = TagClaim(tag: tag, holder: me, epoch: TagClaim.epoch(after: claims[tag]?.epoch ?? 0, by: me))
        claims[tag] = claim
        return claim
    }

    func holder(of tag: String) -> Int? { claims[tag]?.holder }

    /// The tags this node holds (whether it may act for them is the lease's question).
    var held: [String] { claims.values.filter { $0.holder == me }.map(\.tag).sorted() }

    /// Every claim, in tag order (what a heartbeat carries).
    var all: [TagClaim] { claims.values.sorted { $0.tag < $1.tag } }
}

/// A claim this node made in `decide`, and why.
enum TagMove: Equatable {
    /// Its own tag, which nobody held.
    case ownTag(TagClaim)
    /// A tag whose holder is down, taken over.
    case takeOver(TagClaim, from: Int)
}

extension SharingTags {
    /// The rule, applied each heartbeat (the model's `decide`). A node that is settled (it has
    /// listened for a while since it started), synced and sees a majority claims its own tag if
    /// nobody holds it, and takes over the tags of holders a majority sees down if it has the
    /// lowest id among the synced nodes it sees up. It acts for a tag it holds only on a lease: a majority (itself
    /// counted) confirms its claim, each peer by its last heartbeat heard within
    /// `leaseMilliseconds`, and has done so for a whole lease. A holder cut off stops when its
    /// confirmations lapse; a new holder starts only a lease after its own came, by when every
    /// confirmation the old one held has lapsed (a node confirms one holder at a time).
    func decide(membership: Membership, now: UInt64, settled: Bool, synced: Bool, ownTag: String) -> (moves: [TagMove], acting: Set<String>) {
        let settings = membership.settings
        var moves: [TagMove] = []
        if settled && synced && membership.seesMajority(now: now, within: settings.downAfterMilliseconds) {
            if holder(of: ownTag) == nil { moves.append(.ownTag(claim(ownTag))) }
            let candidates = [me] + membership.peers.values.filter { $0.up && $0.synced }.map(\.member.id)
            if candidates.min() == me {
                for known in all where known.holder != me && membership.majoritySeesDown(known.holder, now: now) {
                    moves.append(.takeOver(claim(known.tag), from: known.holder))
                }
            }
        }
        var acting: Set<String> = []
        for tag in Array(confirmedSince.keys) where claims[tag]?.holder != me { confirmedSince[tag] = nil }
        for claim in claims.values where claim.holder == me {
            guard synced, membership.confirmations(of: claim, now: now, within: settings.leaseMilliseconds) >= settings.majority else {
                confirmedSince[claim.tag] = nil
                continue
            }
            let since = confirmedSince[claim.tag] ?? now
            confirmedSince[claim.tag] = since
            if now &- since >= settings.leaseMilliseconds { acting.insert(claim.tag) }
        }
        return (moves, acting)
    }
}
