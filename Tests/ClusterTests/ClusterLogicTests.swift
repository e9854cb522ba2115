@testable import Cluster
import Dialog
import Testing
import Transport

/// The cluster's rules without sockets: time is handed in (ms), peers are heard by calling
/// `heard`, and what a node decides is read back.
@Suite struct ClusterLogicTests {
    static func settings(_ id: Int, members: Int = 3, heartbeat: UInt64 = 100, downAfter: UInt64 = 500) -> ClusterSettings {
        let all = (1...members).map { ClusterMember(id: $0, address: SocketAddress(ip: "127.0.0.\(10 + $0)", port: 5566)!) }
        return ClusterSettings(nodeID: id, address: all[id - 1].address, members: all, sharingTag: "node\(id)",
                               heartbeatMilliseconds: heartbeat, downAfterMilliseconds: downAfter)
    }

    /// A node's view: its membership and tags, and `hear` for a heartbeat from a peer.
    final class View {
        let membership: Membership
        let tags: SharingTags
        var synced = true
        var settled = true

        init(_ id: Int, members: Int = 3) {
            let s = ClusterLogicTests.settings(id, members: members)
            membership = Membership(settings: s)
            tags = SharingTags(me: id)
        }

        /// A heartbeat from `peer`, announcing `claims` (nil: the claims this node knows, as a
        /// peer that agrees would announce them).
        /// `sees`: the nodes the peer sees up (nil: the ones this node sees).
        func hear(_ peer: Int, at now: UInt64, synced: Bool = true, claims: [TagClaim]? = nil, sees: [Int]? = nil) {
            _ = membership.heard(from: peer, incarnation: 7, at: now)
            for c in claims ?? [] { tags.learn(c) }
            let bits = sees.map { $0.reduce(0) { $0 | Membership.bit($1) } } ?? membership.upSet
            membership.status(of: peer, sees: bits, synced: synced, claims: claims ?? tags.all)
        }

        @discardableResult
        func decide(at now: UInt64) -> (moves: [TagMove], acting: Set<String>) {
            _ = membership.tick(now: now)
            return tags.decide(membership: membership, now: now, settled: settled, synced: synced, ownTag: membership.settings.sharingTag)
        }
    }

    @Test func a_peer_is_down_after_down_after_milliseconds_of_silence_and_up_when_heard_again() {
        let m = Membership(settings: Self.settings(1))
        #expect(m.heard(from: 2, incarnation: 1, at: 1_000) == .cameUp)
        #expect(m.tick(now: 1_499).isEmpty, "499 ms of silence: still up")
        #expect(m.tick(now: 1_500) == [2], "500 ms: down")
        #expect(!m.isUp(2))
        #expect(m.heard(from: 2, incarnation: 1, at: 1_600) == .cameUp)
        #expect(m.heard(from: 2, incarnation: 2, at: 1_700) == .restarted, "a new incarnation is a restart")
        #expect(m.heard(from: 9, incarnation: 1, at: 1_700) == .known, "not a member: nothing changes")
        #expect(m.peers[9] == nil)
    }

    @Test func a_higher_epoch_wins_and_duplicated_or_reordered_claims_change_nothing() {
        let tags = SharingTags(me: 3)
        let e1 = TagClaim(tag: "node1", holder: 1, epoch: TagClaim.epoch(after: 0, by: 1))
        let e2 = TagClaim(tag: "node1", holder: 2, epoch: TagClaim.epoch(after: e1.epoch, by: 2))
        #expect(tags.learn(e2))
        #expect(!tags.learn(e1), "an older claim arriving late is ignored")
        #expect(!tags.learn(e2), "a duplicate is ignored")
        #expect(tags.holder(of: "node1") == 2)
        let mine = tags.claim("node1")
        #expect(mine.epoch > e2.epoch && mine.holder == 3)
        // Two nodes claiming after the same known epoch never produce the same epoch.
        #expect(TagClaim.epoch(after: e2.epoch, by: 1) != TagClaim.epoch(after: e2.epoch, by: 3))
    }

    @Test func a_node_claims_its_own_tag_only_once_settled_synced_and_seeing_a_majority() {
        let v = View(1)
        v.settled = false
        v.hear(2, at: 1_000)
        #expect(v.decide(at: 1_000).moves.isEmpty, "not settled: it only listens")
        v.settled = true
        v.synced = false
        #expect(v.decide(at: 1_000).moves.isEmpty, "not synced")
        v.synced = true
        let alone = View(1)
        #expect(alone.decide(at: 1_000).moves.isEmpty, "alone, one of three is no majority")
        let (moves, acting) = v.decide(at: 1_000)
        #expect(moves.count == 1 && acting.isEmpty, "claimed, but not confirmed yet")
        // Node 2 confirms the claim; after a whole lease (250 ms) of confirmation node 1 acts.
        v.hear(2, at: 1_100)
        #expect(v.decide(at: 1_100).acting.isEmpty)
        v.hear(2, at: 1_300)
        #expect(v.decide(at: 1_349).acting.isEmpty)
        #expect(v.decide(at: 1_350).acting == ["node1"])
        // A peer that names another holder at a higher epoch: node 1 steps down at once.
        v.hear(2, at: 1_500, claims: [TagClaim(tag: "node1", holder: 2, epoch: 9_999)])
        #expect(v.decide(at: 1_500).acting.isEmpty, "a higher epoch: node 1 steps down at once")
    }

    @Test func a_restarted_node_rejoins_as_backup_when_a_peer_holds_its_tag_at_a_higher_epoch() {
        // Node 2 took node1 over while node 1 was down; node 1 restarts and hears node 2.
        let taken = TagClaim(tag: "node1", holder: 2, epoch: TagClaim.epoch(after: TagClaim.epoch(after: 0, by: 1), by: 2))
        let v = View(1)
        v.hear(2, at: 1_000, claims: [taken])
        v.hear(3, at: 1_000)
        let (moves, acting) = v.decide(at: 1_050)
        #expect(moves.isEmpty, "it never takes its tag back by announcing itself")
        #expect(acting.isEmpty)
        #expect(v.tags.holder(of: "node1") == 2)
    }

    @Test func only_the_lowest_synced_survivor_takes_a_down_nodes_tag_over() {
        let claim1 = TagClaim(tag: "node1", holder: 1, epoch: TagClaim.epoch(after: 0, by: 1))
        let two = View(2), three = View(3)
        for v in [two, three] { v.hear(1, at: 1_000, claims: [claim1]) }
        two.hear(3, at: 1_000)
        three.hear(2, at: 1_000)
        two.decide(at: 1_000)   // each claims its own tag
        three.decide(at: 1_000)
        // Node 1 falls silent; 2 and 3 keep hearing each other.
        two.hear(3, at: 1_450)
        three.hear(2, at: 1_450)
        #expect(two.decide(at: 1_499).moves.isEmpty, "not down yet")
        // Down for node 2 at 1500; it takes over once node 3 too says it no longer sees node 1.
        #expect(two.decide(at: 1_500).moves.isEmpty, "node 3 still sees node 1 (its last heartbeat says so)")
        two.hear(3, at: 1_500, sees: [2, 3])
        three.hear(2, at: 1_500, sees: [2, 3])
        let (moves2, _) = two.decide(at: 1_500)
        let (moves3, _) = three.decide(at: 1_500)
        #expect(moves2 == [.takeOver(two.tags.claims["node1"]!, from: 1)])
        #expect(moves3.isEmpty, "node 3 leaves it to node 2, the lowest")
        // Node 3 hears the claim and confirms it; node 2 acts a lease later.
        three.hear(2, at: 1_510, claims: two.tags.all)
        two.hear(3, at: 1_520, claims: three.tags.all)
        #expect(!two.decide(at: 1_520).acting.contains("node1"))
        two.hear(3, at: 1_700, claims: three.tags.all)
        #expect(two.decide(at: 1_770).acting.contains("node1"))
        #expect(!three.decide(at: 1_770).acting.contains("node1"))
        // When node 2 is not synced, node 3 does it.
        let other = View(3)
        other.hear(1, at: 1_000, claims: [claim1])
        other.hear(2, at: 1_000)
        other.decide(at: 1_000)
        other.hear(2, at: 1_450, synced: false)
        other.hear(2, at: 1_500, synced: false, sees: [2, 3])
        #expect(other.decide(at: 1_500).moves == [.takeOver(other.tags.claims["node1"]!, from: 1)])
    }

    @Test func a_holder_cut_off_from_the_majority_stops_acting_before_anyone_can_take_over() {
        let one = View(1), two = View(2)
        one.hear(2, at: 500)
        one.decide(at: 500)
        one.hear(2, at: 600)
        one.decide(at: 600)
        one.hear(2, at: 800)
        one.hear(3, at: 800)
        one.decide(at: 800)
        one.hear(2, at: 1_000)
        one.hear(3, at: 1_000)
        #expect(one.decide(at: 1_000).acting == ["node1"])
        let claim1 = one.tags.claims["node1"]!
        two.hear(1, at: 1_000, claims: [claim1])
        two.hear(3, at: 1_000)
        two.decide(at: 1_000)
        // The link is cut at 1000. Node 1 stops acting when its lease (250 ms) runs out...
        #expect(one.decide(at: 1_249).acting == ["node1"])
        #expect(one.decide(at: 1_250).acting.isEmpty, "no majority heard within the lease: it steps down")
        #expect(one.decide(at: 5_000).moves.isEmpty, "and a minority never claims anything")
        // ...while the others take over only at 1500, after the lease surely ran out.
        two.hear(3, at: 1_490)
        #expect(two.decide(at: 1_490).moves.isEmpty)
        two.hear(3, at: 1_500, sees: [2, 3])
        #expect(two.decide(at: 1_500).moves.count == 1)
        two.hear(3, at: 1_600)
        #expect(!two.decide(at: 1_600).acting.contains("node1"), "confirmed, not yet for a whole lease")
        two.hear(3, at: 1_800)
        #expect(two.decide(at: 1_850).acting.contains("node1"))
        // Healed, and node 1 hears node 3 first, which names node 2 the holder and sees it up:
        // node 1 has not heard node 2 yet, but a majority does not see node 2 down, so node 1
        // does not take the tag back.
        one.hear(3, at: 6_000, claims: two.tags.all, sees: [2, 3])
        var (moves, acting) = one.decide(at: 6_000)
        #expect(moves.isEmpty && acting.isEmpty)
        one.hear(2, at: 6_050, claims: two.tags.all)
        (moves, acting) = one.decide(at: 6_050)
        #expect(moves.isEmpty && acting.isEmpty)
        #expect(one.tags.holder(of: "node1") == 2)
    }

    @Test func an_incoming_stream_asks_again_for_what_it_missed_and_gives_up_past_its_bound() {
        var s = IncomingStream(incarnation: 1, highest: 0)
        var ok = s.received(1)
        #expect(ok)
        ok = s.received(4)
        #expect(ok)
        #expect(s.missingRanges(limit: 8) == [2...3])
        ok = s.received(3)
        #expect(ok)
        ok = s.heardOf(upTo: 6)
        #expect(ok, "a heartbeat says 6 were sent")
        #expect(s.missingRanges(limit: 8) == [2...2, 5...6])
        s.forget(from: 5, through: 6)
        #expect(s.missingRanges(limit: 8) == [2...2])
        ok = s.received(6 + UInt64(IncomingStream.maxMissing) + 10)
        #expect(!ok, "too large a gap: repaired by a snapshot instead")
        #expect(s.missing.isEmpty)
    }

    @Test func the_outgoing_stream_keeps_what_it_sent_within_its_bound() {
        var o = OutgoingStream()
        for _ in 0..<(OutgoingStream.keptDatagrams + 10) {
            let s = o.next()
            o.keep([UInt8(truncatingIfNeeded: s)], as: s)
        }
        #expect(o.datagram(1) == nil && o.datagram(10) == nil, "the oldest fell out")
        #expect(o.datagram(11) != nil && o.datagram(o.lastSequence) != nil)
    }

    static func record(tag: String = "s0xabc", version: UInt64, state: DialogRecord.State = .confirmed) -> DialogRecord {
        let hop = Hop(.udp, SocketAddress(ip: "127.0.0.1", port: 5070)!)
        var r = DialogRecord(client: LegRecord(callID: "c1", localTag: tag, localCSeq: 1, localURI: [], remoteURI: [], remoteTarget: [], hop: hop, listenerTag: "public"),
                             backend: LegRecord(callID: "b1", localTag: "s1xdef", localCSeq: 1, localURI: [], remoteURI: [], remoteTarget: [], hop: hop, listenerTag: "public"),
                             sharingTag: "node1", startedAt: 1)
        r.version = version
        r.state = state
        return r
    }

    @Test func replicas_apply_only_newer_versions_and_an_ended_dialog_is_not_brought_back_by_an_older_copy() {
        let r = DialogReplicas()
        #expect(r.apply(Self.record(version: 2), now: 0))
        #expect(!r.apply(Self.record(version: 1), now: 0), "older")
        #expect(!r.apply(Self.record(version: 2), now: 0), "duplicate")
        #expect(r.apply(Self.record(version: 3, state: .ended), now: 0))
        #expect(r.count == 0)
        #expect(!r.apply(Self.record(version: 2), now: 10), "a snapshot's older copy arriving after the end")
        #expect(r.count == 0)
    }
}
