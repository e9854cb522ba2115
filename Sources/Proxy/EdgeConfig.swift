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
    public var logSummarySeconds = 10
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
        let (logLevel, logSummary) = try reader.table("log") { (log: inout TableReader) throws(ConfigError) in
            let level = try log.string("level", default: "info")
            guard EdgeConfig.logLevels.contains(level) else {
                throw log.error("level", "must be one of \(EdgeConfig.logLevels.joined(separator: ", "))")
            }
            return (level, try log.int("summary_interval_seconds", default: 10, range: 0...3_600))
        } ?? ("info", 10)
        let limits = try reader.table("limits") { (t: inout TableReader) throws(ConfigError) in
            SIPParserLimits(
                maxMessageBytes: try t.int("max_message_bytes", default: 65_535, range: 512...SIPParserLimits.hardMaxMessageBytes),
                maxHeaders: try t.int("max_headers", default: 256, range: 8...4_096),
                maxHeaderBytes: try t.int("max_header_bytes", default: 8_192, range: 64...65_535),
                maxVias: try t.int("max_vias", default: 70, range: 1...1_000),
                maxBodyBytes: try t.int("max_body_bytes", default: 65_535, range: 0...SIPParserLimits.hardMaxMessageBytes))
        } ?? .default
        let streamLimits = try reader.table("tcp") { (t: inout TableReader) throws(ConfigError) in
            StreamLimits(
                maxConnections: try t.int("max_connections", default: 65_536, range: 1...1_000_000),
                maxConnectionsPerSource: try t.int("max_connections_per_source", default: 1_024, range: 1...1_000_000),
                maxBufferedBytes: try t.int("max_buffered_bytes", default: 131_072, range: 4_096...16_777_216),
                maxQueuedBytes: try t.int("max_queued_bytes", default: 1 << 20, range: 4_096...268_435_456),
                idleTimeoutMilliseconds: UInt64(try t.int("idle_timeout_seconds", default: 300, range: 0...86_400)) * 1_000,
                frameTimeoutMilliseconds: UInt64(try t.int("message_read_timeout_seconds", default: 10, range: 0...3_600)) * 1_000,
                silentTimeoutMilliseconds: UInt64(try t.int("silent_timeout_seconds", default: 10, range: 0...3_600)) * 1_000)
        } ?? StreamLimits()
        let (dispatcher, extraSets) = try reader.table("dispatcher") { (t: inout TableReader) throws(ConfigError) -> (DispatcherSettings, [DispatcherSettings]) in
            var d = DispatcherSettings()
            let algorithm = try t.string("algorithm", default: "round-robin")
            guard let a = DispatchAlgorithm(rawValue: algorithm) else {
                throw t.error("algorithm", "must be one of \(DispatchAlgorithm.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            d.algorithm = a
            d.probeIntervalSeconds = try t.int("probe_interval_seconds", default: 0, range: 0...3_600)
            d.probeFailures = try t.int("probe_failures", default: 1, range: 1...100)
            d.probeSuccesses = try t.int("probe_successes", default: 1, range: 1...100)
            func hop(_ text: String, _ key: String, _ t: TableReader) throws(ConfigError) -> Hop {
                guard let hop = Hop(destination: text), hop.transport != .sctp else {
                    throw t.error(key, "\"\(text)\" is not \"ip[:port]\" or \"sip:ip[:port][;transport=udp|tcp|tls]\"")
                }
                return hop
            }
            func destinations(_ t: inout TableReader, into d: inout DispatcherSettings) throws(ConfigError) {
                for text in try t.stringArray("destinations") {
                    d.destinations.append(DestinationSettings(hop: try hop(text, "destinations", t), uri: text))
                }
                d.destinations += try t.tableArray("destination") { (e: inout TableReader) throws(ConfigError) in
                    let uri = try e.string("uri", default: nil)
                    return DestinationSettings(hop: try hop(uri, "uri", e), uri: uri,
                                               weight: try e.int("weight", default: 1, range: 1...1_000),
                                               priority: try e.int("priority", default: 0, range: 0...1_000),
                                               attrs: try e.string("attrs", default: ""))
                }
            }
            try destinations(&t, into: &d)
            let base = d
            let extra = try t.tableArray("set") { (e: inout TableReader) throws(ConfigError) -> DispatcherSettings in
                var set = base
                set.destinations = []
                set.setID = try e.int("id", default: nil, range: 2...1_000_000)
                let name = try e.string("algorithm", default: base.algorithm.rawValue)
                guard let a = DispatchAlgorithm(rawValue: name) else {
                    throw e.error("algorithm", "must be one of \(DispatchAlgorithm.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                set.algorithm = a
                try destinations(&e, into: &set)
                guard !set.destinations.isEmpty else { throw e.error("id", "set \(set.setID) has no destinations") }
                return set
            }
            return (d, extra)
        } ?? (DispatcherSettings(), [])
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
        let calls = try reader.table("calls") { (t: inout TableReader) throws(ConfigError) in
            var c = CallSettings()
            c.maxCallSeconds = try t.int("max_duration_seconds", default: 43_200, range: 0...31_536_000)
            c.minSE = try t.int("min_session_expires", default: 90, range: 1...86_400)
            c.sessionExpires = try t.int("session_expires", default: 0, range: 0...86_400)
            if c.sessionExpires > 0 && c.sessionExpires < c.minSE {
                throw t.error("session_expires", "must be 0 or at least min_session_expires (\(c.minSE))")
            }
            c.pingSeconds = try t.int("ping_interval_seconds", default: 0, range: 0...86_400)
            return c
        } ?? CallSettings()
        let mi = try reader.table("mi") { (t: inout TableReader) throws(ConfigError) -> MISettings in
            let ip = try t.string("address", default: "127.0.0.1")
            let port = try t.int("port", default: 8888, range: 0...65_535)
            guard let address = SocketAddress(ip: ip, port: port) else {
                throw t.error("address", "must be a numeric IPv4 or IPv6 address, not \"\(ip)\"")
            }
            return MISettings(address: address, secret: try t.string("secret", default: ""))
        }
        let security = try reader.table("security") { (t: inout TableReader) throws(ConfigError) -> SecuritySettings in
            var c = SecuritySettings()
            let entries = try t.stringArray("trusted")
            do throws(NetworkListError) {
                c.trusted = try NetworkList(entries)
            } catch {
                throw t.error("trusted", "\"\(error.entry)\" is not an IP address or network (ip/prefix)")
            }
            c.maxRequests = try t.int("max_requests", default: 0, range: 0...1_000_000)
            c.windowMilliseconds = UInt64(try t.int("window_seconds", default: 1, range: 1...3_600)) * 1_000
            c.blockMilliseconds = UInt64(try t.int("block_seconds", default: 60, range: 1...86_400)) * 1_000
            c.maxSources = try t.int("max_sources", default: 100_000, range: 16...10_000_000)
            c.maxCallsPerSource = try t.int("max_calls_per_source", default: 0, range: 0...1_000_000)
            return c
        } ?? SecuritySettings()
        let registrar = try reader.table("registrar") { (t: inout TableReader) throws(ConfigError) -> RegistrarSettings in
            var r = RegistrarSettings()
            r.minExpires = try t.int("min_expires", default: 60, range: 1...86_400)
            r.maxExpires = try t.int("max_expires", default: 3_600, range: r.minExpires...604_800)
            r.defaultExpires = try t.int("default_expires", default: min(3_600, r.maxExpires), range: r.minExpires...r.maxExpires)
            r.maxContacts = try t.int("max_contacts", default: 10, range: 1...1_000)
            r.maxUsers = try t.int("max_users", default: 100_000, range: 1...10_000_000)
            r.keepaliveSeconds = try t.int("keepalive_seconds", default: 30, range: 0...3_600)
            if let text = try t.optionalString("upstream"), !text.isEmpty {
                guard let hop = Hop(destination: text), hop.transport != .sctp else {
                    throw t.error("upstream", "\"\(text)\" is not \"ip[:port]\" or \"sip:ip[:port][;transport=udp|tcp|tls]\"")
                }
                r.upstream = hop
            }
            r.upstreamIntervalSeconds = try t.int("upstream_interval_seconds", default: 600, range: 0...86_400)
            return r
        }
        let database = try reader.table("database") { (t: inout TableReader) throws(ConfigError) in
            let path = try t.string("path", default: "")
            let interval = try t.int("write_interval_milliseconds", default: Self.defaultDatabaseWriteIntervalMilliseconds, range: 1...60_000)
            return (path: path.isEmpty ? nil : path, interval: interval)
        }
        let databasePath = database?.path
        let tls = try reader.table("tls") { (t: inout TableReader) throws(ConfigError) in
            TLSFiles(
                certificate: try t.string("certificate", default: nil),
                privateKey: try t.string("private_key", default: nil),
                ca: try t.optionalString("ca"),
                verifyClients: try t.bool("verify_clients", default: false),
                verifyServers: try t.bool("verify_servers", default: true))
        }
        let listeners = try reader.tableArray("listener") { (t: inout TableReader) throws(ConfigError) in
            let protoText = try t.string("proto", default: nil)
            guard let proto = TransportProtocol(rawValue: protoText.lowercased()) else {
                throw t.error("proto", "must be one of udp, tcp, tls, sctp")
            }
            let ip = try t.string("address", default: nil)
            let port = try t.int("port", default: proto == .tls ? 5061 : 5060, range: 0...65_535)
            guard let address = SocketAddress(ip: ip, port: port) else {
                throw t.error("address", "must be a numeric IPv4 or IPv6 address, not \"\(ip)\"")
            }
            let tagText = try t.string("tag", default: "default")
            guard let tag = ListenerTag(tagText) else {
                throw t.error("tag", "must be 1-64 letters, digits, '-' or '_'")
            }
            var advertisedHost: String?, advertisedPort: UInt16?
            if let advertise = try t.optionalString("advertise") {
                guard let parsed = Self.hostPort(advertise) else {
                    throw t.error("advertise", "must be host or host:port (IPv6 in brackets), not \"\(advertise)\"")
                }
                (advertisedHost, advertisedPort) = parsed
            }
            let workerPorts = try t.int("worker_ports", default: 0, range: 0...65_535)
            if workerPorts > 0 && proto != .udp { throw t.error("worker_ports", "only a udp listener has ports per worker") }
            let spread = try t.string("spread_calls_by", default: "source")
            guard spread == "source" || spread == "call-id" else {
                throw t.error("spread_calls_by", "must be \"source\" or \"call-id\", not \"\(spread)\"")
            }
            return ListenerSpec(proto: proto, address: address, advertisedHost: advertisedHost, advertisedPort: advertisedPort, tag: tag,
                                workerPorts: workerPorts > 0 ? UInt16(workerPorts) : nil, spreadByCallID: spread == "call-id")
        }
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

/// Reads typed keys from a TOML table and notices the keys nobody read (typos are errors).
struct TableReader {
    let table: TOMLTable
    let path: String
    let text: String
    private var read: Set<String> = []

    init(_ table: TOMLTable, path: String, text: String) {
        self.table = table
        self.path = path
        self.text = text
    }

    func error(_ key: String, _ message: String) -> ConfigError {
        ConfigError(line: line(of: key), key: path.isEmpty ? key : "\(path).\(key)", message: message)
    }

    /// The line that assigns `key` in this reader's own section (or, failing that, the first line
    /// anywhere that assigns it or opens a table of that name), for error messages.
    func line(of key: String) -> Int? {
        Self.line(of: key, inSection: path, text: text)
    }

    /// The line of `key` in the section `path` ("" for the top, "mi", "listener[2]",
    /// "dispatcher.set[1]"): TOMLKit keeps no positions, so the text is read again, section by
    /// section, and a key that several sections use is found in the right one.
    static func line(of key: String, inSection path: String, text: String) -> Int? {
        var name = path, index = 0
        if path.hasSuffix("]"), let open = path.lastIndex(of: "[") {
            name = String(path[..<open])
            index = Int(path[path.index(after: open)..<path.index(before: path.endIndex)]) ?? 0
        }
        var inSection = path.isEmpty, seen = 0, fallback: Int?
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingPrefix(while: { $0 == " " || $0 == "\t" })
            if line.hasPrefix("[") {
                let isArray = line.hasPrefix("[[")
                let header = line.dropFirst(isArray ? 2 : 1).prefix { $0 != "]" }.trimmingPrefix(while: { $0 == " " })
                let headerName = String(header.reversed().drop { $0 == " " }.reversed())
                let full = path.isEmpty ? key : "\(name).\(key)"
                if headerName == full || headerName == key && path.isEmpty { fallback = fallback ?? i + 1 }
                if isArray && headerName == name && index > 0 {
                    seen += 1
                    inSection = seen == index
                } else {
                    inSection = !isArray && headerName == name && index == 0 && !path.isEmpty
                }
                if inSection && key.isEmpty { return i + 1 }
                continue
            }
            if line.hasPrefix("\(key) ") || line.hasPrefix("\(key)=") {
                if inSection { return i + 1 }
                fallback = fallback ?? i + 1
            }
        }
        return fallback
    }

    mutating func int(_ key: String, default value: Int?, range: ClosedRange<Int>) throws(ConfigError) -> Int {
        read.insert(key)
        guard let v = table[key] else {
            guard let value else { throw error(key, "is required") }
            return value
        }
        guard let n = v.tomlValue.int else { throw error(key, "must be an integer") }
        guard range.contains(n) else { throw error(key, "must be in \(range.lowerBound)...\(range.upperBound), not \(n)") }
        return n
    }

    mutating func stringArray(_ key: String) throws(ConfigError) -> [String] {
        read.insert(key)
        guard let v = table[key] else { return [] }
        guard let array = v.tomlValue.array else { throw error(key, "must be an array of strings") }
        var out: [String] = []
        for element in array {
            guard let s = element.tomlValue.string else { throw error(key, "must be an array of strings") }
            out.append(s)
        }
        return out
    }

    mutating func bool(_ key: String, default value: Bool) throws(ConfigError) -> Bool {
        read.insert(key)
        guard let v = table[key] else { return value }
        guard let b = v.tomlValue.bool else { throw error(key, "must be true or false") }
        return b
    }

    mutating func string(_ key: String, default value: String?) throws(ConfigError) -> String {
        guard let s = try optionalString(key) else {
            guard let value else { throw error(key, "is required") }
            return value
        }
        return s
    }

    mutating func optionalString(_ key: String) throws(ConfigError) -> String? {
        read.insert(key)
        guard let v = table[key] else { return nil }
        guard let s = v.tomlValue.string else { throw error(key, "must be a string") }
        return s
    }

    mutating func table<T>(_ key: String, _ body: (inout TableReader) throws(ConfigError) -> T) throws(ConfigError) -> T? {
        read.insert(key)
        guard let v = table[key] else { return nil }
        guard let t = v.tomlValue.table else { throw error(key, "must be a table ([\(key)])") }
        var sub = TableReader(t, path: path.isEmpty ? key : "\(path).\(key)", text: text)
        let result = try body(&sub)
        try sub.finish()
        return result
    }

    mutating func tableArray<T>(_ key: String, _ body: (inout TableReader) throws(ConfigError) -> T) throws(ConfigError) -> [T] {
        read.insert(key)
        guard let v = table[key] else { return [] }
        guard let array = v.tomlValue.array else { throw error(key, "must be an array of tables ([[\(key)]])") }
        var out: [T] = []
        for (i, element) in array.enumerated() {
            guard let t = element.tomlValue.table else { throw error(key, "element \(i + 1) must be a table") }
            var sub = TableReader(t, path: "\(path.isEmpty ? key : "\(path).\(key)")[\(i + 1)]", text: text)
            out.append(try body(&sub))
            try sub.finish()
        }
        return out
    }

    /// Fails on the first key that no reader asked for.
    func finish() throws(ConfigError) {
        for key in table.keys.sorted() where !read.contains(key) {
            throw error(key, "unknown key")
        }
    }
}
