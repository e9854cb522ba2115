/// Which node holds each sharing tag, and at which epoch: the one gate for tag state. A claim
/// heard with a higher epoch replaces the one known (so loss, duplication and reordering of claims
/// are harmless); this node claims a tag only with an epoch above every one it knows for it. The
/// names match the Promela model (`Cluster/model/sharing-tags.pml`): `claims`, `learn`, `claim`.
final class SharingTags {
    let me: Int
    private(set) var claims: [String: TagClaim] = [:]

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
