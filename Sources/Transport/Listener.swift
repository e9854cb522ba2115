/// The name of a listener's purpose ("public", "backend"...). Listeners with the same purpose carry
/// the same tag on every node, and a dialog stores the tag, never a node's address, so any node can
/// speak for it with its own socket (DESIGN.md, Cluster).
public struct ListenerTag: Hashable, Sendable, CustomStringConvertible {
    public let name: String

    /// Letters, digits, '-' and '_', 1 to 64 of them.
    public init?(_ name: String) {
        guard (1...64).contains(name.utf8.count),
              name.utf8.allSatisfy({ ($0 | 0x20) &- 0x61 < 26 || $0 &- 0x30 < 10 || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") })
        else { return nil }
        self.name = name
    }

    public var description: String { name }
}

/// The transport protocol of a listener.
public enum TransportProtocol: String, Sendable, Hashable, CaseIterable {
    case udp, tcp, tls, sctp

    /// Whether messages on it are framed from a byte stream.
    public var isStream: Bool { self == .tcp || self == .tls }
    /// Whether it is encrypted (what `sips:` requires).
    public var isSecure: Bool { self == .tls }
}

/// One configured listening socket: protocol, bound address, the address written into messages (behind
/// NAT or a cloud public IP), and its tag.
public struct ListenerSpec: Hashable, Sendable, CustomStringConvertible {
    public let proto: TransportProtocol
    public let address: SocketAddress
    /// Host (name or IP) and port to advertise in Via / Contact / Record-Route; nil: the bound address.
    public let advertisedHost: String?
    public let advertisedPort: UInt16?
    public let tag: ListenerTag
    /// UDP: worker N also has a socket of its own on `workerPorts + N` (nil: none).
    public let workerPorts: UInt16?
    /// New calls go to the worker their Call-ID hashes to, not the one that received them: one
    /// busy source (a carrier trunk) is spread over every worker, at a hand-over per message.
    public let spreadByCallID: Bool

    public init(proto: TransportProtocol, address: SocketAddress, advertisedHost: String? = nil, advertisedPort: UInt16? = nil, tag: ListenerTag,
                workerPorts: UInt16? = nil, spreadByCallID: Bool = false) {
        self.proto = proto
        self.address = address
        self.advertisedHost = advertisedHost
        self.advertisedPort = advertisedPort
        self.tag = tag
        self.workerPorts = workerPorts
        self.spreadByCallID = spreadByCallID
    }

    /// What to write as this listener's host:port in outgoing messages.
    public var advertised: (host: String, port: UInt16) {
        let host = advertisedHost ?? address.uriHost
        return (host, advertisedPort ?? address.port)
    }

    public var description: String { "\(proto.rawValue):\(address) tag=\(tag)" }
}

/// Picks the listener a message leaves through: the protocol the destination asks for (a
/// `transport` parameter, TLS for `sips:`), the destination's address family, and the listener tag
/// a dialog asks for. Among equals, the first configured wins.
public struct ListenerSelector: Sendable {
    public let listeners: [ListenerSpec]

    public init(_ listeners: [ListenerSpec]) {
        self.listeners = listeners
    }

    /// The best listener for `proto` toward `family`, preferring `tag`; nil if no listener can do it.
    /// A tag that no suitable listener carries falls back to any suitable listener only when
    /// `strictTag` is false (re-homing asks strictly: the tag is the whole point there).
    public func select(proto: TransportProtocol, family: SocketAddress.Family, tag: ListenerTag? = nil, strictTag: Bool = false) -> ListenerSpec? {
        let suitable = listeners.filter { $0.proto == proto && $0.address.family == family }
        if let tag {
            if let tagged = suitable.first(where: { $0.tag == tag }) { return tagged }
            if strictTag { return nil }
        }
        return suitable.first
    }
}
