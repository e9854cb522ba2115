import Cluster
import Dialog
import SIPParser
import Transport

// Each section's settings type reads its own section. A key's default is the value its settings
// type declares (`Self()`), read where the key is read; a section the file leaves out is read as
// an empty table, so it gets the same defaults by the same code.

extension EdgeConfig {
    static let defaultLogLevel = "info"

    /// `[log]`: level and the summary interval of lines a peer can cause.
    static func readLog(_ t: inout TableReader) throws(ConfigError) -> (level: String, summarySeconds: Int) {
        let level = try t.string("level", default: defaultLogLevel)
        guard logLevels.contains(level) else { throw t.error("level", "must be one of \(logLevels.joined(separator: ", "))") }
        return (level, try t.int("summary_interval_seconds", default: EdgeConfig.defaultLogSummarySeconds, range: 0...3_600))
    }

    /// `[database]`: the file (empty: none) and how often its thread writes.
    static func readDatabase(_ t: inout TableReader) throws(ConfigError) -> (path: String?, interval: Int) {
        let path = try t.string("path", default: "")
        let interval = try t.int("write_interval_milliseconds", default: defaultDatabaseWriteIntervalMilliseconds, range: 1...60_000)
        return (path.isEmpty ? nil : path, interval)
    }
}

extension SIPParserLimits {
    /// `[limits]`.
    init(reading t: inout TableReader) throws(ConfigError) {
        let d = SIPParserLimits.default
        self.init(maxMessageBytes: try t.int("max_message_bytes", default: d.maxMessageBytes, range: 512...Self.hardMaxMessageBytes),
                  maxHeaders: try t.int("max_headers", default: d.maxHeaders, range: 8...4_096),
                  maxHeaderBytes: try t.int("max_header_bytes", default: d.maxHeaderBytes, range: 64...65_535),
                  maxVias: try t.int("max_vias", default: d.maxVias, range: 1...1_000),
                  maxBodyBytes: try t.int("max_body_bytes", default: d.maxBodyBytes, range: 0...Self.hardMaxMessageBytes))
    }
}

extension StreamLimits {
    /// `[tcp]`: bounds on TCP/TLS peers (times in the file are seconds).
    init(reading t: inout TableReader) throws(ConfigError) {
        self.init()
        maxConnections = try t.int("max_connections", default: maxConnections, range: 1...1_000_000)
        maxConnectionsPerSource = try t.int("max_connections_per_source", default: maxConnectionsPerSource, range: 1...1_000_000)
        maxBufferedBytes = try t.int("max_buffered_bytes", default: maxBufferedBytes, range: 4_096...16_777_216)
        maxQueuedBytes = try t.int("max_queued_bytes", default: maxQueuedBytes, range: 4_096...268_435_456)
        idleTimeoutMilliseconds = try Self.seconds(&t, "idle_timeout_seconds", idleTimeoutMilliseconds, upTo: 86_400)
        frameTimeoutMilliseconds = try Self.seconds(&t, "message_read_timeout_seconds", frameTimeoutMilliseconds, upTo: 3_600)
        silentTimeoutMilliseconds = try Self.seconds(&t, "silent_timeout_seconds", silentTimeoutMilliseconds, upTo: 3_600)
    }

    private static func seconds(_ t: inout TableReader, _ key: String, _ milliseconds: UInt64, upTo limit: Int) throws(ConfigError) -> UInt64 {
        UInt64(try t.int(key, default: Int(milliseconds / 1_000), range: 0...limit)) * 1_000
    }
}

extension DispatcherSettings {
    /// `[dispatcher]` (set 1) and its `[[dispatcher.set]]`s, which take set 1's algorithm and
    /// probing unless they say otherwise.
    static func readSets(_ t: inout TableReader) throws(ConfigError) -> (DispatcherSettings, [DispatcherSettings]) {
        var d = DispatcherSettings()
        d.algorithm = try algorithm(&t, default: d.algorithm)
        d.probeIntervalSeconds = try t.int("probe_interval_seconds", default: d.probeIntervalSeconds, range: 0...3_600)
        d.probeFailures = try t.int("probe_failures", default: d.probeFailures, range: 1...100)
        d.probeSuccesses = try t.int("probe_successes", default: d.probeSuccesses, range: 1...100)
        d.recoverCalls = try t.bool("recover_calls", default: d.recoverCalls)
        d.recoverPerSecond = try t.int("recover_per_second", default: d.recoverPerSecond, range: 1...100_000)
        d.destinations = try destinations(&t)
        let base = d
        let extra = try t.tableArray("set") { (e: inout TableReader) throws(ConfigError) -> DispatcherSettings in
            var set = base
            set.setID = try e.int("id", default: nil, range: 2...1_000_000)
            set.algorithm = try algorithm(&e, default: base.algorithm)
            set.recoverCalls = try e.bool("recover_calls", default: base.recoverCalls)
            set.destinations = try destinations(&e)
            guard !set.destinations.isEmpty else { throw e.error("id", "set \(set.setID) has no destinations") }
            return set
        }
        return (d, extra)
    }

    private static func algorithm(_ t: inout TableReader, default value: DispatchAlgorithm) throws(ConfigError) -> DispatchAlgorithm {
        let name = try t.string("algorithm", default: value.rawValue)
        guard let a = DispatchAlgorithm(rawValue: name) else {
            throw t.error("algorithm", "must be one of \(DispatchAlgorithm.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return a
    }

    /// `destinations = [...]` and `[[...destination]]` tables.
    private static func destinations(_ t: inout TableReader) throws(ConfigError) -> [DestinationSettings] {
        var out: [DestinationSettings] = []
        for text in try t.stringArray("destinations") {
            out.append(DestinationSettings(hop: try hop(text, "destinations", t), uri: text))
        }
        out += try t.tableArray("destination") { (e: inout TableReader) throws(ConfigError) in
            let uri = try e.string("uri", default: nil)
            return DestinationSettings(hop: try hop(uri, "uri", e), uri: uri,
                                       weight: try e.int("weight", default: 1, range: 1...1_000),
                                       priority: try e.int("priority", default: 0, range: 0...1_000),
                                       attrs: try e.string("attrs", default: ""))
        }
        return out
    }

    static func hop(_ text: String, _ key: String, _ t: TableReader) throws(ConfigError) -> Hop {
        guard let hop = Hop(destination: text), hop.transport != .sctp else {
            throw t.error(key, "\"\(text)\" is not \"ip[:port]\" or \"sip:ip[:port][;transport=udp|tcp|tls]\"")
        }
        return hop
    }
}

extension EdgeConfig.CallSettings {
    /// `[calls]`.
    init(reading t: inout TableReader) throws(ConfigError) {
        self.init()
        maxCallSeconds = try t.int("max_duration_seconds", default: maxCallSeconds, range: 0...31_536_000)
        minSE = try t.int("min_session_expires", default: minSE, range: 1...86_400)
        sessionExpires = try t.int("session_expires", default: sessionExpires, range: 0...86_400)
        if sessionExpires > 0 && sessionExpires < minSE {
            throw t.error("session_expires", "must be 0 or at least min_session_expires (\(minSE))")
        }
        pingSeconds = try t.int("ping_interval_seconds", default: pingSeconds, range: 0...86_400)
    }
}

extension EdgeConfig.MISettings {
    /// `[mi]`.
    init(reading t: inout TableReader) throws(ConfigError) {
        let ip = try t.string("address", default: Self.defaultAddress.ipString)
        let port = try t.int("port", default: Int(Self.defaultAddress.port), range: 0...65_535)
        guard let address = SocketAddress(ip: ip, port: port) else {
            throw t.error("address", "must be a numeric IPv4 or IPv6 address, not \"\(ip)\"")
        }
        self.init(address: address, secret: try t.string("secret", default: ""))
    }
}

extension EdgeConfig.SecuritySettings {
    /// `[security]` (times in the file are seconds).
    init(reading t: inout TableReader) throws(ConfigError) {
        self.init()
        let entries = try t.stringArray("trusted")
        do throws(NetworkListError) {
            trusted = try NetworkList(entries)
        } catch {
            throw t.error("trusted", "\"\(error.entry)\" is not an IP address or network (ip/prefix)")
        }
        maxRequests = try t.int("max_requests", default: maxRequests, range: 0...1_000_000)
        windowMilliseconds = UInt64(try t.int("window_seconds", default: Int(windowMilliseconds / 1_000), range: 1...3_600)) * 1_000
        blockMilliseconds = UInt64(try t.int("block_seconds", default: Int(blockMilliseconds / 1_000), range: 1...86_400)) * 1_000
        maxSources = try t.int("max_sources", default: maxSources, range: 16...10_000_000)
        maxCallsPerSource = try t.int("max_calls_per_source", default: maxCallsPerSource, range: 0...1_000_000)
    }
}

extension RegistrarSettings {
    /// `[registrar]`.
    init(reading t: inout TableReader) throws(ConfigError) {
        self.init()
        minExpires = try t.int("min_expires", default: minExpires, range: 1...86_400)
        maxExpires = try t.int("max_expires", default: maxExpires, range: minExpires...604_800)
        defaultExpires = try t.int("default_expires", default: min(defaultExpires, maxExpires), range: minExpires...maxExpires)
        maxContacts = try t.int("max_contacts", default: maxContacts, range: 1...1_000)
        maxUsers = try t.int("max_users", default: maxUsers, range: 1...10_000_000)
        keepaliveSeconds = try t.int("keepalive_seconds", default: keepaliveSeconds, range: 0...3_600)
        if let text = try t.optionalString("upstream"), !text.isEmpty {
            upstream = try DispatcherSettings.hop(text, "upstream", t)
        }
        upstreamIntervalSeconds = try t.int("upstream_interval_seconds", default: upstreamIntervalSeconds, range: 0...86_400)
    }
}

extension EdgeConfig.TLSFiles {
    /// `[tls]`.
    init(reading t: inout TableReader) throws(ConfigError) {
        self.init(certificate: try t.string("certificate", default: nil), privateKey: try t.string("private_key", default: nil),
                  ca: try t.optionalString("ca"), verifyClients: try t.bool("verify_clients", default: false),
                  verifyServers: try t.bool("verify_servers", default: true))
    }
}

extension ListenerSpec {
    /// One `[[listener]]`.
    init(reading t: inout TableReader) throws(ConfigError) {
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
            guard let parsed = EdgeConfig.hostPort(advertise) else {
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
        self.init(proto: proto, address: address, advertisedHost: advertisedHost, advertisedPort: advertisedPort, tag: tag,
                  workerPorts: workerPorts > 0 ? UInt16(workerPorts) : nil, spreadByCallID: spread == "call-id")
    }
}

extension ClusterSettings {
    /// `[cluster]`: this node's id and link address, every member as `"ID@IP:PORT"`, the node's
    /// sharing tag, and the link's timing and secret.
    init(reading t: inout TableReader) throws(ConfigError) {
        let id = try t.int("node_id", default: nil, range: Self.nodeIDs)
        let addressText = try t.string("address", default: nil)
        guard let address = Self.address(addressText) else {
            throw t.error("address", "must be IP:PORT with a numeric IP and a port, not \"\(addressText)\"")
        }
        var members: [ClusterMember] = []
        for entry in try t.stringArray("nodes") {
            let parts = entry.split(separator: "@", maxSplits: 1).map(String.init)
            guard parts.count == 2, let member = Int(parts[0]), Self.nodeIDs.contains(member), let at = Self.address(parts[1]) else {
                throw t.error("nodes", "each member is \"ID@IP:PORT\" with an id in 1...64, not \"\(entry)\"")
            }
            members.append(ClusterMember(id: member, address: at))
        }
        guard !members.isEmpty else { throw t.error("nodes", "is required: every member, this one too") }
        self.init(nodeID: id, address: address, members: members, sharingTag: try t.string("sharing_tag", default: nil),
                  heartbeatMilliseconds: UInt64(try t.int("heartbeat_milliseconds", default: Self.defaultHeartbeatMilliseconds, range: 10...10_000)),
                  downAfterMilliseconds: UInt64(try t.int("down_after_milliseconds", default: Self.defaultDownAfterMilliseconds, range: 20...60_000)),
                  rehomePerSecond: try t.int("rehome_per_second", default: Self.defaultRehomePerSecond, range: 1...100_000),
                  secret: try t.string("secret", default: ""))
        if let (key, reason) = problem() { throw t.error(key, reason) }
    }

    private static func address(_ text: String) -> SocketAddress? {
        guard let (host, port) = EdgeConfig.hostPort(text), let port, port != 0 else { return nil }
        let ip = host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host
        return SocketAddress(ip: ip, port: Int(port))
    }
}

extension EdgeConfig.MediaSettings {
    /// `rtpengine = ["127.0.0.1:2223", "udp:10.0.0.7:2223=2"]`: each instance's ng address (IP:PORT,
    /// an optional "udp:" as Kamailio writes it) and an optional "=WEIGHT" (1 by default).
    init(reading t: inout TableReader) throws(ConfigError) {
        rtpengines = []
        for entry in try t.stringArray("rtpengine") {
            var text = Substring(entry)
            if text.hasPrefix("udp:") { text = text.dropFirst(4) }
            var weight = 1
            if let eq = text.lastIndex(of: "=") {
                guard let w = Int(text[text.index(after: eq)...]), (1...1_000).contains(w) else {
                    throw t.error("rtpengine", "\"\(entry)\": the weight after = is a number in 1...1000")
                }
                weight = w
                text = text[..<eq]
            }
            guard let (host, port) = EdgeConfig.hostPort(String(text)), let port, port != 0,
                  let address = SocketAddress(ip: host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host, port: Int(port)) else {
                throw t.error("rtpengine", "\"\(entry)\" is not IP:PORT (an rtpengine's --listen-ng address), with an optional =WEIGHT")
            }
            rtpengines.append((address, weight))
        }
        guard !rtpengines.isEmpty else { throw t.error("rtpengine", "lists at least one rtpengine (IP:PORT of its --listen-ng)") }
    }
}
