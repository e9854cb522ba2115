import SIPParser
import Transport

/// Where one leg's messages go: the transport, the peer's address and, for a connection the peer
/// opened to us, the worker whose loop holds that connection (responses and requests toward that
/// peer must use it: a phone behind NAT or a TCP client cannot be reached any other way). Over UDP,
/// a worker is named when the leg uses that worker's own port (`worker_ports`) rather than the
/// listener's shared one.
public struct Hop: Sendable, Hashable, CustomStringConvertible {
    public var transport: TransportProtocol
    public var address: SocketAddress
    /// The worker holding the peer's connection, or whose own UDP port the leg uses; nil: the
    /// shared UDP socket, or a connection the sending worker opens.
    public var worker: Int?
    /// Over UDP, the listener (by its place in the config) the peer's messages arrive on: what we
    /// send it leaves from that listener's socket, so that its source is the address our Via and
    /// Contact name. Nil: the first UDP listener. Like `worker`, this node's business only.
    public var listener: Int?

    public init(_ transport: TransportProtocol, _ address: SocketAddress, worker: Int? = nil, listener: Int? = nil) {
        self.transport = transport
        self.address = address
        self.worker = worker
        self.listener = listener
    }

    public var description: String { "\(transport.rawValue):\(address)" }

    /// "sip:host:port[;transport=x]": how `ds_list` names a destination.
    public var sipURI: String {
        "sip:\(address.uriHost):\(address.port)" + (transport == .udp ? "" : ";transport=\(transport.rawValue)")
    }

    /// Whether the transport itself retransmits (RFC 3261 §17: no Timer A/E/G over it).
    public var reliability: TransportReliability { transport == .udp ? .unreliable : .reliable }

    /// The same peer reached the way a sending worker would reach it afresh (the record of a
    /// dialog keeps no worker: after a restart or on another node, connections are new), from the
    /// same listener.
    public var withoutWorker: Hop { Hop(transport, address, listener: listener) }
}

extension TransportProtocol {
    /// How a Via header names it (RFC 3261 §20.42).
    public var viaName: String { rawValue.uppercased() }
}

extension Hop {
    /// A destination written "ip[:port]", "[v6]:port" or as a SIP URI with a numeric host
    /// ("sip:10.0.0.5:5080;transport=tcp"), as dispatcher lists write them.
    public init?(destination text: String) {
        var rest = Substring(text)
        var transport = TransportProtocol.udp
        if let uri = try? SIPURI(text), uri.scheme == .sip || uri.scheme == .sips {
            guard let t = TransportProtocol(toward: uri) else { return nil }
            transport = t
            let host = uri.host.string
            rest = Substring(uri.port.map { "\(host):\($0)" } ?? host)
        }
        let host: Substring, port: Int
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return nil }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if after.isEmpty { port = transport == .tls ? 5061 : 5060 }
            else if after.hasPrefix(":"), let p = Int(after.dropFirst()) { port = p } else { return nil }
        } else if let colon = rest.lastIndex(of: ":"), rest.firstIndex(of: ":") == colon {
            host = rest[..<colon]
            guard let p = Int(rest[rest.index(after: colon)...]) else { return nil }
            port = p
        } else {
            host = rest
            port = transport == .tls ? 5061 : 5060
        }
        guard (1...65_535).contains(port), let address = SocketAddress(ip: String(host), port: port) else { return nil }
        self.init(transport, address)
    }
}
