import Dialog
import Transport

// What operators ask of a node (the MI, on the node's loop): its view of the members and tags, the
// cluster's dialogs, moving a tag or dialogs here, and the test-only fault switch.
extension ClusterNode {
    /// The other members as this node sees them.
    public func peers() -> [PeerState] {
        loop.assertInLoop()
        return membership.peers.values.sorted { $0.member.id < $1.member.id }
    }

    /// Every tag known, whether this node acts for it.
    public func tagStates() -> [(claim: TagClaim, active: Bool)] {
        loop.assertInLoop()
        return tags.all.map { ($0, acting.contains($0.tag)) }
    }

    /// Every dialog of the cluster this node knows (its own and its peers').
    public func dialogRecords() -> [DialogRecord] {
        loop.assertInLoop()
        return replicas.all
    }

    public enum CommandError: Error, CustomStringConvertible {
        case cannotAct(String)
        public var description: String {
            switch self {
            case .cannotAct(let why): why
            }
        }
    }

    /// `clusterer_shtag_set_active`: this node becomes `tag`'s holder at a higher epoch (the old
    /// holder steps down when it hears it) and takes the tag's dialogs over.
    public func setActive(tag: String) throws(CommandError) -> TagClaim {
        loop.assertInLoop()
        guard synced else { throw .cannotAct("node \(settings.nodeID) is not synced yet") }
        guard membership.seesMajority(now: loop.now, within: settings.leaseMilliseconds) else {
            throw .cannotAct("node \(settings.nodeID) does not see a majority of the \(settings.members.count) nodes")
        }
        // A tag nobody has claimed is a typo, not a new tag: it would stay in every node's list.
        guard tags.claims[tag] != nil || tag == settings.sharingTag else {
            throw .cannotAct("no tag \(tag) in the cluster (clusterer_list_shtags lists them)")
        }
        if tags.holder(of: tag) == settings.nodeID { return tags.claims[tag]! }
        let claim = tags.claim(tag)
        log("cluster: tag \(tag) set active on node \(settings.nodeID) at epoch \(claim.epoch) (mi)")
        sendHeartbeat()
        decideTags(now: loop.now)
        return claim
    }

    /// `dlg_rehome`: up to `count` dialogs of `tag` (oldest first), or the one whose client Call-ID
    /// or key is `callID`, move to this node's own tag and are carried here. Returns how many were
    /// queued.
    public func rehome(tag: String?, count: Int, callID: String?) throws(CommandError) -> Int {
        loop.assertInLoop()
        guard acting.contains(settings.sharingTag) else { throw .cannotAct("node \(settings.nodeID) does not act for its own tag \(settings.sharingTag)") }
        let chosen: [DialogRecord]
        if let callID {
            chosen = replicas.all.filter { ($0.client.callID == callID || $0.key == callID) && $0.state == .confirmed }
        } else {
            chosen = Array(replicas.records(tagged: tag ?? "").filter { $0.state == .confirmed && !carried.contains(DialogReplicas.key(of: $0)) }.prefix(count))
        }
        enqueueTakeOvers(chosen.map { ($0, settings.sharingTag) })
        return chosen.count
    }

    /// For `make bench-cluster` (behind the fault switch): `count` made-up confirmed dialogs of tag
    /// `synthetic` join this node's copy, as a peer's would, to measure a snapshot of that size.
    public func synthesize(_ count: Int) {
        loop.assertInLoop()
        let sdp = Array(("v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
            + "m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n").utf8)
        let hop = Hop(.udp, SocketAddress(ip: "192.0.2.10", port: 5060)!)
        for i in 0..<count {
            var client = LegRecord(callID: "synthetic-\(i)@192.0.2.10", localTag: "s0xsyn\(i)", remoteTag: "peer\(i)", localCSeq: 1, remoteCSeq: 1,
                                   localURI: Array("<sip:\(i)@edge.example>".utf8), remoteURI: Array("<sip:caller\(i)@192.0.2.10>".utf8),
                                   remoteTarget: Array("sip:caller\(i)@192.0.2.10:5060".utf8), hop: hop, listenerTag: "public")
            var backend = LegRecord(callID: "s0xsynb\(i)", localTag: "s0xsynt\(i)", remoteTag: "ast\(i)", localCSeq: 1, localURI: client.remoteURI,
                                    remoteURI: client.localURI, remoteTarget: Array("sip:\(i)@10.0.0.5:5060".utf8), hop: hop, listenerTag: "public")
            client.lastSDPReceived = sdp
            client.lastSDPSent = sdp
            backend.lastSDPReceived = sdp
            backend.lastSDPSent = sdp
            var record = DialogRecord(client: client, backend: backend, sharingTag: "synthetic", startedAt: 1)
            record.state = .confirmed
            replicas.apply(record, now: loop.now)
        }
    }

    /// The test-only fault switch: lose this share (%) of the record datagrams sent first-hand.
    public func drop(percent: Int) {
        loop.assertInLoop()
        dropPercent = max(0, min(100, percent))
        log("cluster: fault switch: \(dropPercent)% of record datagrams lost on the way out")
    }

    /// The test-only fault switch: drop every datagram to and from these peers.
    public func block(_ peers: Set<Int>) {
        loop.assertInLoop()
        blocked = peers
        log("cluster: fault switch: link to \(peers.isEmpty ? "no node" : peers.sorted().map(String.init).joined(separator: ",")) blocked")
    }
}
