import Transport

/// One member of the cluster as every node's config lists it: its id and its end of the cluster link.
public struct ClusterMember: Sendable, Equatable {
    public let id: Int
    public let address: SocketAddress

    public init(id: Int, address: SocketAddress) {
        self.id = id
        self.address = address
    }
}

/// The `[cluster]` section: who this node is, who the others are, and the timing of the link.
public struct ClusterSettings: Sendable, Equatable {
    /// Ids are 1...64: a node's view of who is up travels as a 64-bit set.
    public static let nodeIDs = 1...64
    public static let defaultHeartbeatMilliseconds = 100
    public static let defaultDownAfterMilliseconds = 500
    public static let defaultRehomePerSecond = 1_000

    public var nodeID: Int
    public var address: SocketAddress
    /// Every member, this node too (static membership: a majority is a majority of these).
    public var members: [ClusterMember]
    /// The tag this node's new dialogs carry, claimed at start.
    public var sharingTag: String
    public var heartbeatMilliseconds: UInt64
    /// Silence after which a peer is down.
    public var downAfterMilliseconds: UInt64
    /// Dialogs taken over per second, at most.
    public var rehomePerSecond: Int
    /// The key datagrams are authenticated with (HMAC-SHA256); required off loopback.
    public var secret: String

    public init(nodeID: Int, address: SocketAddress, members: [ClusterMember], sharingTag: String,
                heartbeatMilliseconds: UInt64 = UInt64(Self.defaultHeartbeatMilliseconds),
                downAfterMilliseconds: UInt64 = UInt64(Self.defaultDownAfterMilliseconds),
                rehomePerSecond: Int = Self.defaultRehomePerSecond, secret: String = "") {
        self.nodeID = nodeID
        self.address = address
        self.members = members
        self.sharingTag = sharingTag
        self.heartbeatMilliseconds = heartbeatMilliseconds
        self.downAfterMilliseconds = downAfterMilliseconds
        self.rehomePerSecond = rehomePerSecond
        self.secret = secret
    }

    /// How many members make a majority (this node counted).
    public var majority: Int { members.count / 2 + 1 }

    /// How long a holder may act for its tags after it last saw a majority: half the silence that
    /// makes it down elsewhere, so its right has surely lapsed before anyone takes its tags.
    public var leaseMilliseconds: UInt64 { max(1, downAfterMilliseconds / 2) }

    /// The other members.
    public var peers: [ClusterMember] { members.filter { $0.id != nodeID } }

    /// What is wrong with these settings, if anything: (key, reason).
    public func problem() -> (key: String, reason: String)? {
        guard members.contains(where: { $0.id == nodeID }) else {
            return ("nodes", "node_id \(nodeID) is not in nodes (every member is listed, this one too)")
        }
        for (i, m) in members.enumerated() {
            if members[..<i].contains(where: { $0.id == m.id }) { return ("nodes", "node id \(m.id) is listed twice") }
            if members[..<i].contains(where: { $0.address == m.address }) { return ("nodes", "address \(m.address) is listed twice") }
        }
        if let me = members.first(where: { $0.id == nodeID }), me.address != address {
            return ("address", "\(address) is not the address nodes gives node \(nodeID) (\(me.address))")
        }
        if secret.isEmpty, let outside = members.first(where: { !$0.address.isLoopback }) {
            return ("secret", "a secret is required when a member is off loopback (\(outside.address)): links are authenticated")
        }
        if sharingTag.isEmpty || sharingTag.utf8.count > 64 { return ("sharing_tag", "must be 1 to 64 characters") }
        if downAfterMilliseconds < 2 * heartbeatMilliseconds {
            return ("down_after_milliseconds", "must be at least two heartbeats (\(2 * heartbeatMilliseconds))")
        }
        return nil
    }
}
