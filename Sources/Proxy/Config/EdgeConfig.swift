import Cluster
import SIPParser
import Dialog
import TOMLKit
import Transport

/// SIPEdge's configuration, read from one TOML file (`conf/sipedge.toml`).
public struct EdgeConfig: Sendable, Equatable {
    /// Certificates for TLS listeners and outgoing TLS.
    public struct TLSFiles: Sendable, Equatable {
        public var certificate: String
        public var privateKey: String
        /// CA bundle that peers' certificates are checked against.
        public var ca: String?
        /// Ask clients of TLS listeners for a certificate and check it (mutual TLS).
        public var verifyClients: Bool
        /// Check the certificate of servers SIPEdge connects to.
        public var verifyServers: Bool
    }

    public var workers: Int
    /// Wake-up coalescing of the worker loops, in microseconds (0: off); see EventLoop.
    public var coalesceMicroseconds = Self.defaultCoalesceMicroseconds
    public static let defaultCoalesceMicroseconds = 2_000
    public var listeners: [ListenerSpec]
    public var tls: TLSFiles?
    public var parserLimits: SIPParserLimits
    public var logLevel: String
    /// Lines a peer can cause (refusals, invalid messages) are written once per this interval per
    /// kind and source, then counted (seconds; 0: every line).
    public var logSummarySeconds = Self.defaultLogSummarySeconds
    public static let defaultLogSummarySeconds = 10
    /// Per-loop bounds on TCP/TLS peers.
    public var streamLimits: StreamLimits
    /// Where new calls go: the dispatcher set, its algorithm and probing.
    public var dispatcher: DispatcherSettings
    /// Further dispatcher sets (`[[dispatcher.set]]`), with ids other than 1.
    public var extraSets: [DispatcherSettings]
    /// Which set a call from outside goes to (`[[route]]`); unmatched calls go to the first set.
    public var routes: [RouteSettings]
    /// Every dispatcher set: `[dispatcher]`'s own (id 1) when it has destinations, then the others.
    public var sets: [DispatcherSettings] { (dispatcher.destinations.isEmpty ? [] : [dispatcher]) + extraSets }
    /// The dispatcher's destinations.
    public var destinations: [Hop] { dispatcher.destinations.map(\.hop) }
    /// Dialog lifetime: maximum duration, session timers, in-dialog pings.
    public var calls: CallSettings
    /// The SQLite file dialogs are kept in across restarts (nil: not kept).
    public var databasePath: String?
    /// How often the database thread writes what changed, in one transaction (milliseconds).
    public var databaseWriteIntervalMilliseconds = Self.defaultDatabaseWriteIntervalMilliseconds
    public static let defaultDatabaseWriteIntervalMilliseconds = 100
    /// The management interface (nil: none).
    public var mi: MISettings?
    /// ACL and flood limits.
    public var security: SecuritySettings
    /// The registrar (nil: REGISTER is answered 501).
    public var registrar: RegistrarSettings?
    /// Membership of a cluster of edges (nil: this node runs alone).
    public var cluster: ClusterSettings?
    /// Media anchoring through rtpengine (nil: media flows end to end).
    public var media: MediaSettings?

    /// The `[media]` section: the rtpengine instances calls' media is anchored on.
    public struct MediaSettings: Sendable, Equatable {
        /// Each instance's ng control address and weight (new calls spread in proportion).
        public var rtpengines: [(address: SocketAddress, weight: Int)]

        public static func == (a: MediaSettings, b: MediaSettings) -> Bool {
            a.rtpengines.count == b.rtpengines.count && zip(a.rtpengines, b.rtpengines).allSatisfy { $0.address == $1.address && $0.weight == $1.weight }
        }
    }

    /// The `[security]` section.
    public struct SecuritySettings: Sendable, Equatable {
        /// Networks of trusted peers (the backends): no rate or call limits apply to them.
        public var trusted = try! NetworkList([])
        /// Requests one source address may send per window before it is blocked (0: no limit).
        public var maxRequests = 0
        public var windowMilliseconds: UInt64 = 1_000
        public var blockMilliseconds: UInt64 = 60_000
        /// Sources tracked per worker; past it the oldest is forgotten (a flood of forged addresses stays bounded).
        public var maxSources = 100_000
        /// Calls up at once from one source address (0: no limit); more are answered 503.
        public var maxCallsPerSource = 0

        public init() {}
    }

    /// The `[mi]` section: JSON-RPC 2.0 over UDP.
    public struct MISettings: Sendable, Equatable {
        /// Where the MI listens when `[mi]` names no address and port, and where `sipedge mi` asks
        /// when it has no config.
        public static let defaultAddress = SocketAddress(ip: "127.0.0.1", port: 8888)!
        public var address: SocketAddress
        /// Required in every request from an address outside 127.0.0.0/8 and ::1 (empty: such
        /// requests are all refused).
        public var secret: String
    }

    /// The `[calls]` section.
    public struct CallSettings: Sendable, Equatable {
        /// A call up longer than this is ended with a BYE on both legs (0: never).
        public var maxCallSeconds: Int = 43_200
        /// RFC 4028 session interval asked of backends (0: none) and the smallest accepted from anyone.
        public var sessionExpires: Int = 0
        public var minSE: Int = 90
        /// In-dialog OPTIONS toward both legs every this many seconds (0: never).
        public var pingSeconds: Int = 0

        public init() {}
    }

    public static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
}

/// A configuration problem, with the file's line and the key it concerns.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public let line: Int?
    public let key: String
    public let message: String

    public var description: String {
        let place = line.map { "line \($0)" } ?? "file"
        return key.isEmpty ? "\(place): \(message)" : "\(place): \(key): \(message)"
    }
}

extension EdgeConfig {
    /// Parses and checks `text`; every key is known, typed and in range, or this throws.
    /// `checkingHost`: also every listener and MI address is one this host has (`check-config`
    /// and `run` ask for it, so that the first finds what would stop the second).
    public static func parse(_ text: String, checkingHost: Bool = false) throws(ConfigError) -> EdgeConfig {
        let root: TOMLTable
        do {
            root = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigError(line: Int(error.source.begin.line), key: "", message: error.description)
        } catch {
            throw ConfigError(line: nil, key: "", message: "\(error)")
        }
        var reader = TableReader(root, path: "", text: text)
        let workers = try reader.int("workers", default: 2, range: 1...256)
        let coalesce = try reader.int("coalesce_microseconds", default: Self.defaultCoalesceMicroseconds, range: 0...20_000)
        let (logLevel, logSummary) = try reader.section("log", EdgeConfig.readLog)
        let limits = try reader.section("limits", SIPParserLimits.init(reading:))
        let streamLimits = try reader.section("tcp", StreamLimits.init(reading:))
        let (dispatcher, extraSets) = try reader.section("dispatcher", DispatcherSettings.readSets)
        let setIDs = (dispatcher.destinations.isEmpty ? [] : [1]) + extraSets.map(\.setID)
        guard Set(setIDs).count == setIDs.count else {
            throw ConfigError(line: reader.line(of: "dispatcher.set"), key: "dispatcher.set", message: "two sets have the same id")
        }
        let routes = try reader.tableArray("route") { (t: inout TableReader) throws(ConfigError) -> RouteSettings in
            let route = RouteSettings(listenerTag: try t.optionalString("listener_tag"), domain: try t.optionalString("domain"),
                                      prefix: try t.optionalString("prefix"), set: try t.int("set", default: nil, range: 1...1_000_000))
            guard setIDs.contains(route.set) else { throw t.error("set", "there is no dispatcher set \(route.set)") }
            return route
        }
        let calls = try reader.section("calls", CallSettings.init(reading:))
        let mi = try reader.table("mi", MISettings.init(reading:))
        let security = try reader.section("security", SecuritySettings.init(reading:))
        let registrar = try reader.table("registrar", RegistrarSettings.init(reading:))
        let database = try reader.table("database", EdgeConfig.readDatabase)
        let databasePath = database?.path
        let tls = try reader.table("tls", TLSFiles.init(reading:))
        let cluster = try reader.table("cluster", ClusterSettings.init(reading:))
        let media = try reader.table("media", MediaSettings.init(reading:))
        let listeners = try reader.tableArray("listener", ListenerSpec.init(reading:))
        guard !listeners.isEmpty else { throw ConfigError(line: nil, key: "listener", message: "at least one [[listener]] is required") }
        for (j, spec) in listeners.enumerated() where spec.address.port != 0 {
            let wildcard = ["0.0.0.0", "::"]
            guard let i = listeners[..<j].firstIndex(where: {
                $0.proto == spec.proto && $0.address.port == spec.address.port && $0.address.family == spec.address.family
                    && ($0.address == spec.address || wildcard.contains($0.address.ipString) || wildcard.contains(spec.address.ipString))
            }) else { continue }
            throw ConfigError(line: TableReader.line(of: "", inSection: "listener[\(j + 1)]", text: text), key: "listener[\(j + 1)]",
                              message: "\(spec.proto.rawValue) \(spec.address) is already listener[\(i + 1)]'s (\(listeners[i].address))")
        }
        if checkingHost {
            for (i, spec) in listeners.enumerated() where !Socket.isLocal(spec.address) {
                throw ConfigError(line: TableReader.line(of: "address", inSection: "listener[\(i + 1)]", text: text), key: "listener[\(i + 1)].address",
                                  message: "\(spec.address.ipString) is not an address of this host")
            }
            if let cluster, !Socket.isLocal(cluster.address) {
                throw ConfigError(line: TableReader.line(of: "address", inSection: "cluster", text: text), key: "cluster.address",
                                  message: "\(cluster.address.ipString) is not an address of this host")
            }
            if let mi, !Socket.isLocal(mi.address) {
                throw ConfigError(line: TableReader.line(of: "address", inSection: "mi", text: text), key: "mi.address",
                                  message: "\(mi.address.ipString) is not an address of this host")
            }
        }
        if listeners.contains(where: { $0.proto == .tls }) && tls == nil {
            throw ConfigError(line: reader.line(of: "listener"), key: "tls", message: "a TLS listener needs a [tls] section with certificate and private_key")
        }
        for (i, spec) in listeners.enumerated() {
            guard let first = spec.workerPorts.map(Int.init) else { continue }
            let range = first..<(first + workers)
            if range.upperBound > 65_536 {
                throw ConfigError(line: reader.line(of: "listener"), key: "listener[\(i + 1)].worker_ports",
                                  message: "\(workers) workers need ports \(first)-\(first + workers - 1), past 65535")
            }
            if let clash = listeners.first(where: { $0.proto == .udp && range.contains(Int($0.address.port)) && $0.address.port != 0 }) {
                throw ConfigError(line: reader.line(of: "listener"), key: "listener[\(i + 1)].worker_ports",
                                  message: "ports \(first)-\(first + workers - 1) include the listener port \(clash.address.port)")
            }
        }
        try reader.finish()
        var config = EdgeConfig(workers: workers, listeners: listeners, tls: tls, parserLimits: limits, logLevel: logLevel,
                          streamLimits: streamLimits, dispatcher: dispatcher, extraSets: extraSets, routes: routes, calls: calls, databasePath: databasePath, mi: mi, security: security, registrar: registrar)
        config.coalesceMicroseconds = coalesce
        config.cluster = cluster
        config.media = media
        config.logSummarySeconds = logSummary
        if let database { config.databaseWriteIntervalMilliseconds = database.interval }
        return config
    }

    /// `host`, `host:port`, `[v6]` or `[v6]:port`.
    static func hostPort(_ text: String) -> (String, UInt16?)? {
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            let host = String(text[...close])
            let rest = text[text.index(after: close)...]
            if rest.isEmpty { return (host, nil) }
            guard rest.hasPrefix(":"), let port = UInt16(rest.dropFirst()) else { return nil }
            return (host, port)
        }
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard let first = parts.first, !first.isEmpty, parts.count <= 2 else { return nil }
        if parts.count == 2 {
            guard let port = UInt16(parts[1]) else { return nil }
            return (String(first), port)
        }
        return (String(first), nil)
    }
}
