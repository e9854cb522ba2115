import Cluster
import Glibc
import Dialog
import Logging
import SIPParser
import Synchronization
import Transport

/// The running edge: one loop per worker, every configured listener opened on them (UDP and TCP/TLS
/// once per worker with SO_REUSEPORT, SCTP on the first worker), what arrives parsed and checked
/// (an invalid message is logged with its reason), a B2BUA per worker for calls over UDP, TCP and
/// TLS, and the dialog database (SQLite) its calls are kept in across restarts.
///
/// `@unchecked Sendable`: every stored property is a constant or thread-safe, except `mi`, which is
/// set once inside `init` (the MI server needs the finished server to answer from).
public final class EdgeServer: @unchecked Sendable {
    public let config: EdgeConfig
    public let workers: WorkerGroup
    /// What each listener ended up bound to (a configured port 0 becomes a real one).
    public let bound: [ListenerSpec]
    private let inbound: [InboundSIP]
    // The endpoints live as long as the server; each is confined to its loop.
    private let endpoints: [LoopBound<AnyObject>]

    public init(config: EdgeConfig, configPath: String = "", logger: Logger) throws(ListenerError) {
        self.config = config
        self.configPath = configPath
        do {
            workers = try WorkerGroup(count: config.workers)
        } catch {
            throw ListenerError(listener: "workers", reason: "cannot start event loops: \(error)", underlying: error)
        }
        let routing = CallRouting(workers: workers)
        // What peers can make us log, once per interval per kind and source.
        let summary = LogSummary(intervalMilliseconds: UInt64(config.logSummarySeconds) * 1_000, write: { logger.notice("\($0)") })
        self.summary = summary
        // A table's refusals and cut-offs go to the log through the summary.
        func summarised(_ table: TCPConnectionTable) -> TCPConnectionTable {
            table.log = { peer, kind, line in if summary.admit("tcp \(kind)", from: peer) { logger.warning("\(line)") } }
            return table
        }
        // TCP and TLS connections, counted for the whole node (not per worker).
        let connectionCounts = ConnectionCounts()
        var inbound: [InboundSIP] = []
        for loop in workers.loops {
            loop.coalesceMicroseconds = UInt32(config.coalesceMicroseconds)
            let log = logger
            loop.log = { line in log.warning("\(line)") }
            // The worker's receiver for its outgoing connections; listeners get their own (below).
            inbound.append(InboundSIP(worker: loop.index, loop: loop, summary: summary, listenerTag: config.listeners.first?.tag.name ?? "",
                                      limits: config.parserLimits, security: config.security, logger: logger, routing: routing))
        }
        var udpByWorker: [Int: [UDPEndpoint]] = [:], ownUDPByWorker: [Int: UDPEndpoint] = [:]
        var udpListeners = 0
        var workerUDP: [LocalAddress] = []
        var tcpByWorker: [Int: TCPConnectionTable] = [:], tlsByWorker: [Int: TCPConnectionTable] = [:]
        let tlsServer: TLSContext?
        if let files = config.tls, config.listeners.contains(where: { $0.proto == .tls }) {
            do {
                tlsServer = try TLSContext(role: .server, certificateFile: files.certificate, privateKeyFile: files.privateKey,
                                           caFile: files.ca, verifyPeer: files.verifyClients)
            } catch {
                throw ListenerError(listener: "tls", reason: "\(error)", underlying: nil)
            }
        } else {
            tlsServer = nil
        }
        var endpoints: [LoopBound<AnyObject>] = []
        var bound: [ListenerSpec] = []
        for spec in config.listeners {
            var address = spec.address
            let name = spec.description
            var udpGroup: [UDPEndpoint] = []
            if spec.proto == .udp || spec.proto == .tcp || spec.proto == .tls {
                // Our workers share the address (SO_REUSEPORT); no other process may.
                do {
                    try Socket.ensureNotHeld(address, stream: spec.proto != .udp)
                } catch {
                    let held = error.errno == EADDRINUSE
                    throw ListenerError(listener: name, reason: held ? "\(spec.address) is already in use by another process (another sipedge on this config?)" : "\(error)",
                                        underlying: error)
                }
            }
            for loop in workers.loops where spec.proto != .sctp || loop.index == 0 {
                // Each listener's own receiver, so a new call is known by the tag it came in on.
                let receiver = InboundSIP(worker: loop.index, loop: loop, summary: summary, listenerTag: spec.tag.name, limits: config.parserLimits,
                                          security: config.security, logger: logger, routing: routing, spreadByCallID: spec.spreadByCallID,
                                          udpListener: spec.proto == .udp ? udpListeners : nil)
                inbound.append(receiver)
                do {
                    switch spec.proto {
                    case .udp:
                        let e = try UDPEndpoint(loop: loop, bindTo: address, reusePort: true, receiver: receiver)
                        address = e.localAddress
                        udpGroup.append(e)
                        endpoints.append(LoopBound(e, on: loop))
                        udpByWorker[loop.index, default: []].append(e)
                        if let first = spec.workerPorts {
                            // The worker's own port: what its calls' backend legs use.
                            let own = InboundSIP(worker: loop.index, loop: loop, summary: summary, listenerTag: spec.tag.name, limits: config.parserLimits,
                                                 security: config.security, logger: logger, routing: routing, ownPort: true)
                            inbound.append(own)
                            let port = Int(first) + loop.index
                            let o = try UDPEndpoint(loop: loop, bindTo: address.with(port: UInt16(port)), reusePort: false, receiver: own)
                            endpoints.append(LoopBound(o, on: loop))
                            if ownUDPByWorker[loop.index] == nil {
                                ownUDPByWorker[loop.index] = o
                                let host = spec.advertisedHost ?? address.uriHost
                                workerUDP.append(LocalAddress(host: host, port: UInt16(port), tag: spec.tag.name))
                            }
                            logger.info("worker \(loop.index): own udp port \(o.localAddress)")
                        }
                    case .tcp, .tls:
                        let table = summarised(TCPConnectionTable(loop: loop, framer: SIPStreamFraming(limits: config.parserLimits),
                                                       limits: config.streamLimits, counts: connectionCounts, tls: spec.proto == .tls ? tlsServer : nil,
                                                       receiver: receiver))
                        let listener = try TCPListener(table: table, bindTo: address, reusePort: true)
                        address = listener.localAddress
                        endpoints.append(LoopBound(table, on: loop))
                        endpoints.append(LoopBound(listener, on: loop))
                        if spec.proto == .tcp, tcpByWorker[loop.index] == nil { tcpByWorker[loop.index] = table }
                        if spec.proto == .tls, tlsByWorker[loop.index] == nil { tlsByWorker[loop.index] = table }
                    case .sctp:
                        let e = try SCTPEndpoint(loop: loop, bindTo: address, name: name, receiver: receiver)
                        address = e.localAddress
                        endpoints.append(LoopBound(e, on: loop))
                    }
                } catch let error as ListenerError {
                    throw error
                } catch {
                    throw ListenerError(listener: name, reason: "\(error)", underlying: error as? SystemError)
                }
            }
            if spec.proto == .udp { udpListeners += 1 }
            if spec.proto == .udp, workers.count > 1, let first = udpGroup.first {
                // Responses go straight to the worker their branch names (the sockets above were
                // bound in worker order). Without it they still arrive, through a hand-over.
                do {
                    try first.attachGroupProgram(ResponseSteering.program())
                } catch {
                    logger.warning("\(name): responses not steered to their worker (\(error)); they are handed over")
                }
            }
            bound.append(ListenerSpec(proto: spec.proto, address: address, advertisedHost: spec.advertisedHost,
                                      advertisedPort: spec.advertisedPort, tag: spec.tag))
        }
        // Outgoing TLS (toward a backend reached over TLS) checks the server as [tls] says.
        var tlsClient: TLSContext?
        if let files = config.tls {
            tlsClient = try? TLSContext(role: .client, certificateFile: files.certificate, privateKeyFile: files.privateKey,
                                        caFile: files.ca, verifyPeer: files.verifyServers)
        }
        // One B2BUA per worker. It speaks through that worker's first UDP socket and its TCP/TLS
        // connection tables (a worker without a TCP listener gets a table for outgoing connections).
        var local: [TransportProtocol: [LocalAddress]] = [:]
        for spec in bound {
            let (host, port) = spec.advertised
            local[spec.proto, default: []].append(LocalAddress(host: host, port: port, tag: spec.tag.name))
        }
        // The database (dialogs and registrations), opened before anything that writes to it.
        let store: DialogStore?
        if let path = config.databasePath {
            do {
                store = try DialogStore(path: path, idleMilliseconds: UInt32(config.databaseWriteIntervalMilliseconds),
                                        log: { logger.error("\($0)") })
            } catch {
                throw ListenerError(listener: "database", reason: "\(error)", underlying: nil)
            }
        } else {
            store = nil
        }
        let registrar = config.registrar.map { Registrar($0, store: store, logger: logger) }
        if let registrar, let store {
            let saved = store.loadRegistrations()
            registrar.restore(saved)
            if !saved.isEmpty { logger.info("database \(store.path): \(saved.count) registered users restored") }
        }
        self.registrar = registrar
        let sets = config.sets.map { Dispatcher($0, logger: logger) }
        var localHosts = Set(bound.map { "\($0.advertised.host):\($0.advertised.port)" })
        for spec in bound {
            let ip = spec.address.uriHost
            localHosts.insert("\(ip):\(spec.address.port)")
        }
        let router = Router(sets: sets, routes: config.routes, trusted: config.security.trusted, localHosts: localHosts,
                            registrar: registrar)
        self.router = router
        // Always there (a reload may set a limit where there was none); no limit admits every call.
        let sourceLimit = SourceCallLimit(limit: config.security.maxCallsPerSource, trusted: config.security.trusted)
        self.sourceLimit = sourceLimit
        var b2buaConfig = B2BUAConfig(listeners: local, backends: config.destinations, maxCallSeconds: UInt64(config.calls.maxCallSeconds),
                                      sessionExpires: UInt32(config.calls.sessionExpires), minSE: UInt32(config.calls.minSE),
                                      pingSeconds: UInt64(config.calls.pingSeconds), picker: router,
                                      admission: sourceLimit, registrar: registrar)
        b2buaConfig.workerUDP = workerUDP.count == workers.count ? workerUDP : []
        // (Each worker recovers its own calls, from one budget: the pace holds wherever they are.)
        b2buaConfig.recoveryBudget = RecoveryBudget(perSecond: config.dispatcher.recoverPerSecond)
        b2buaConfig.log = { logger.notice("\($0)") }
        if let cluster = config.cluster { b2buaConfig.sharingTag = cluster.sharingTag }
        var senders: [LoopBound<EdgeSender>] = []
        // Media anchoring: each worker speaks to the rtpengines over a socket of its own.
        let engines = config.media.map { RTPEngines($0, log: { logger.notice("\($0)") }) }
        var mediaClients: [LoopBound<RTPEngineClient>] = []
        for loop in workers.loops {
            let receiver = inbound[loop.index]
            let tcp = tcpByWorker[loop.index] ?? summarised(TCPConnectionTable(loop: loop, framer: SIPStreamFraming(limits: config.parserLimits),
                                                                   limits: config.streamLimits, counts: connectionCounts, receiver: receiver))
            let tls = tlsByWorker[loop.index].map { _ in
                summarised(TCPConnectionTable(loop: loop, framer: SIPStreamFraming(limits: config.parserLimits), limits: config.streamLimits,
                                              counts: connectionCounts, tls: tlsClient, receiver: receiver))
            } ?? tlsClient.map {
                summarised(TCPConnectionTable(loop: loop, framer: SIPStreamFraming(limits: config.parserLimits), limits: config.streamLimits,
                                              counts: connectionCounts, tls: $0, receiver: receiver))
            }
            // Outgoing connections leave from the listeners' own addresses (not a wildcard's).
            tcp.sourceAddresses = Self.sourceAddresses(config.listeners, .tcp)
            tls?.sourceAddresses = Self.sourceAddresses(config.listeners, .tls)
            let sender = EdgeSender(worker: loop.index, udp: udpByWorker[loop.index] ?? [], ownUDP: ownUDPByWorker[loop.index], tcp: tcp, tlsAccepted: tlsByWorker[loop.index],
                                    tlsOutgoing: tls, workers: workers)
            senders.append(LoopBound(sender, on: loop))
            let b2bua = B2BUA(clock: loop, config: b2buaConfig, sender: sender)
            if let engines {
                do {
                    let client = try RTPEngineClient(loop: loop, engines: engines)
                    b2bua.media = client
                    mediaClients.append(LoopBound(client, on: loop))
                } catch {
                    throw ListenerError(listener: "media", reason: "cannot open a socket toward rtpengine: \(error)", underlying: error)
                }
            }
            b2bua.passOnCancel = { [routing, worker = loop.index] cancel, hop, tag, first in
                routing.passOnCancel(cancel, from: hop, listenerTag: tag, at: worker, firstWorker: first)
            }
            b2bua.userRegistered = { [routing] aor, hop in
                for b in routing.b2buas { b.loop.execute { b.value.registered(addressOfRecord: aor, over: hop) } }
            }
            routing.b2buas.append(LoopBound(b2bua, on: loop))
        }
        for s in senders { s.value.peers = senders }
        self.mediaClients = mediaClients
        if let engines {
            logger.info("media: anchored on rtpengine \(engines.instances.map { "\($0.address) (weight \($0.weight))" }.joined(separator: ", "))")
        }
        // A connection to a destination closed: probed at once (a dead Asterisk's are closed by its kernel).
        if let prober = routing.b2buas.first {
            routing.connectionClosed = { [router] hop in for set in router.sets { set.probeNow(hop, from: prober) } }
        }
        // A destination gone inactive: every worker recovers its calls there, where the set says so.
        router.onDestinationLost { [routing] index in
            for b in routing.b2buas { b.loop.execute { b.value.backendLost(index) } }
        }
        // The cluster link: every change of every worker's dialogs goes to it, and it says which
        // sharing tags this node acts for.
        if let settings = config.cluster {
            let node: ClusterNode
            do {
                node = try ClusterNode(settings: settings, loopIndex: workers.count + 1, log: { logger.notice("\($0)") },
                                       logPeer: { source, kind, line in if summary.admit(kind, from: source) { logger.warning("\(line)") } })
            } catch {
                throw ListenerError(listener: "cluster udp:\(settings.address)", reason: "\(error)", underlying: error)
            }
            let host = ClusteredWorkers(routing: routing, settings: settings, registrar: registrar)
            node.attach(host: host)
            registrar?.attach(ownTag: settings.sharingTag) { [node] user, bindings in node.registrationChanged(user: user, bindings: bindings) }
            for b2bua in routing.b2buas { b2bua.value.add(sink: node) }
            cluster = node
            clusteredWorkers = host
        } else {
            cluster = nil
            clusteredWorkers = nil
        }
        // Dialogs kept on disk: each goes back to the worker its identifiers name, before the
        // loops start, and every change from now on is written there.
        if let store {
            let records = store.loadAll { key, error in logger.warning("database: dialog \(key) skipped: \(error)") }
            for record in records {
                // The worker the client leg's requests will be routed to (its To tag is our tag).
                let owner = routing.owner(tag: ByteView(text: record.client.localTag), callID: ByteView(text: record.client.callID)) ?? 0
                let b2bua = routing.b2buas[owner]
                // In a cluster, a record waits passive until this node acts for its tag.
                let active = config.cluster == nil
                workers.handOver(to: owner) { b2bua.value.adopt(record, active: active) }
            }
            for b2bua in routing.b2buas { b2bua.value.add(sink: store) }
            // The cluster learns them as this node's: a peer that holds a newer version (it took
            // them over meanwhile) keeps it, and this node then lets them go.
            for record in records { cluster?.dialogChanged(record) }
            if !records.isEmpty { logger.info("database \(store.path): \(records.count) dialogs restored") }
        }
        self.store = store
        self.senders = senders
        endpoints += senders.map { LoopBound($0.value as AnyObject, on: $0.loop) }
        self.routing = routing
        self.inbound = inbound
        self.endpoints = endpoints
        self.bound = bound
        if let settings = config.mi {
            mi = try MIServer(settings: settings, edge: self, logger: logger, loopIndex: workers.count)
        }
    }

    private let routing: CallRouting
    /// Each worker's rtpengine client (none without `[media]`).
    private let mediaClients: [LoopBound<RTPEngineClient>]
    /// This node's part in a cluster (nil: it runs alone).
    public let cluster: ClusterNode?
    /// What the cluster drives the workers through (kept here: the node holds it weakly).
    private let clusteredWorkers: ClusteredWorkers?
    /// Lines peers can cause, summarised.
    let summary: LogSummary
    private let store: DialogStore?
    /// Concurrent calls per source.
    let sourceLimit: SourceCallLimit
    /// Where new calls go: routes and dispatcher sets.
    public let router: Router
    /// The location table (nil: no registrar configured).
    public let registrar: Registrar?
    private let senders: [LoopBound<EdgeSender>]
    /// The file the config came from (`ds_reload` reads it again).
    public let configPath: String
    /// The management interface, when `[mi]` is configured.
    public private(set) var mi: MIServer?

    public static let version = "0.1.0"

    /// Calls started and active over all workers (asked on each worker's loop).
    public func callCounts() -> (started: Int, active: Int) {
        routing.b2buas.reduce((0, 0)) { sum, b in
            let c = (try? b.loop.submitAndWait { (b.value.callsStarted, b.value.activeCalls) }) ?? (0, 0)
            return (sum.0 + c.0, sum.1 + c.1)
        }
    }

    public func start() throws(SystemError) {
        do {
            try store?.start()
        } catch {
            throw SystemError("database thread", errno: EAGAIN)
        }
        // Freed memory stays in the heaps between the 30 s trims (no give-back and take-again per
        // call), and each worker's heap starts with room for its first tens of thousands of calls.
        ProcessMemory.keepFreedMemory(upTo: 64 << 20)
        try workers.start()
        for loop in workers.loops { loop.execute { ProcessMemory.reserveHeap(48 << 20) } }
        try cluster?.start()
        try mi?.start()
        if let prober = routing.b2buas.first {
            for set in router.sets { set.startProbing(from: prober) }
        }
        let first = workers.loops[0]
        first.execute { Self.returnFreedMemory(every: 30_000, on: first) }
        // Every 5 s, each rtpengine is asked for a pong: one that gives none is skipped by new calls.
        if let client = mediaClients.first { first.execute { client.value.ping(every: 5) } }
        if summary.intervalMilliseconds > 0 { first.execute { [summary] in Self.flushSummary(summary, on: first) } }
        if let registrar, let sender = senders.first {
            first.execute { Self.tendLocations(registrar, sender: sender, every: UInt64(registrar.settings.keepaliveSeconds) * 1_000) }
        }
    }

    /// Every 10 s (or each keep-alive interval, if shorter), expired registrations go; every `keepalive` ms, each NATed UDP contact gets a
    /// CRLF datagram (RFC 5626 §4.4.1), which keeps its NAT binding open.
    private static func tendLocations(_ registrar: Registrar, sender: LoopBound<EdgeSender>, every keepalive: UInt64,
                                      sinceKeepalive: UInt64 = 0) {
        let tick = keepalive > 0 ? min(10_000, keepalive) : 10_000
        _ = sender.loop.schedule(afterMilliseconds: tick) {
            registrar.sweep()
            var elapsed = sinceKeepalive + tick
            if keepalive > 0 && elapsed >= keepalive {
                elapsed = 0
                for hop in registrar.nattedUDPTargets() { _ = sender.value.send(Self.keepalive, to: hop) }
            }
            tendLocations(registrar, sender: sender, every: keepalive, sinceKeepalive: elapsed)
        }
    }

    private static let keepalive = Array("\r\n\r\n".utf8)

    /// Every interval, the counts of lines not written in the last one.
    private static func flushSummary(_ summary: LogSummary, on loop: EventLoop) {
        _ = loop.schedule(afterMilliseconds: summary.intervalMilliseconds) {
            summary.flush()
            flushSummary(summary, on: loop)
        }
    }

    /// Transactions and retransmission buffers come and go by the thousand per second; glibc keeps
    /// what they freed in its arenas. Every 30 s worker 0 hands free pages back to the kernel
    /// (malloc_trim covers every thread's arena), so resident memory follows the calls that are up.
    private static func returnFreedMemory(every ms: UInt64, on loop: EventLoop) {
        _ = loop.schedule(afterMilliseconds: ms) {
            ProcessMemory.returnFreedPages()
            returnFreedMemory(every: ms, on: loop)
        }
    }

    /// Stops the loops, then writes what the database has pending.
    public func stop() {
        mi?.stop()
        cluster?.stop()
        workers.stop()
        store?.stop()
    }

    // MARK: - What the MI asks of the workers (each asked on its own loop)

    /// Every confirmed dialog on every worker; in a cluster, every confirmed dialog of every node
    /// (this node's copy of the cluster's dialogs).
    public func dialogRecords() -> [DialogRecord] {
        if let cluster {
            return (try? cluster.loop.submitAndWait { cluster.dialogRecords().filter { $0.state == .confirmed } }) ?? []
        }
        return routing.b2buas.flatMap { b in (try? b.loop.submitAndWait { b.value.dialogRecords() }) ?? [] }
    }

    /// `dlg_recover`: the dialog with this key (or client Call-ID), or every dialog on the
    /// destination `uri`, moves to another destination of its set; how many began to move.
    public func recover(key: String?, uri: String?) -> Int {
        let destinations = uri.map(router.indices(ofURI:)) ?? []
        return routing.b2buas.reduce(0) { sum, b in sum + ((try? b.loop.submitAndWait { b.value.recover(key: key, destinations: destinations) }) ?? 0) }
    }

    /// Ends the dialog with this key (or this client Call-ID) with a BYE on both legs.
    public func endDialog(key: String) -> Bool {
        routing.b2buas.contains { b in (try? b.loop.submitAndWait { b.value.endDialog(key: key) }) ?? false }
    }

    /// Per family, the address of the `proto` listeners when they all name that one address (with
    /// several addresses, or a wildcard, the kernel chooses by its routes).
    static func sourceAddresses(_ listeners: [ListenerSpec], _ proto: TransportProtocol) -> [SocketAddress] {
        var out: [SocketAddress] = []
        for family in Set(listeners.map(\.address.kernelFamily)) {
            let ips = Set(listeners.filter { $0.proto == proto && $0.address.kernelFamily == family }.map(\.address.ipString))
            guard ips.count == 1, let ip = ips.first, ip != "0.0.0.0", ip != "::",
                  let address = listeners.first(where: { $0.proto == proto && $0.address.ipString == ip })?.address else { continue }
            out.append(address)
        }
        return out
    }

    /// `dlg_send_sequential`: the request goes on the worker carrying the dialog, and the answer is
    /// waited for (at most Timer B). Nil when no worker here carries a dialog with that id (or a
    /// re-INVITE of its is under way); else the final status and reason (nil: no answer came).
    public func sendSequential(callID: String, to side: DialogRecord.Side, method: String, body: B2BUA.SequentialBody,
                               headers: [(String, String)]) -> (status: Int?, reason: String?)? {
        let answered = DispatchlessSemaphore()
        let result = Mutex<(Int?, String?)>((nil, nil))
        for b in routing.b2buas {
            let sent = (try? b.loop.submitAndWait {
                b.value.sendSequential(callID: callID, to: side, method: method, body: body, headers: headers) { status, reason in
                    result.withLock { $0 = (status, reason) }
                    answered.signal()
                }
            }) ?? false
            if sent {
                // (The transaction always ends, by Timer B or F at the latest; the bound is a guard.)
                _ = answered.wait(milliseconds: 40_000)
                return result.withLock { $0 }
            }
        }
        return nil
    }

    /// Counters summed over the workers.
    public struct Totals: Sendable {
        public var received = 0, invalid = 0, blocked = 0, refusedCalls = 0, callsStarted = 0, callsEnded = 0, activeCalls = 0
        public var serverTransactions = 0, clientTransactions = 0
        /// What only the node acting for a dialog's tag sends or does: pings, refreshes, time-outs.
        public var pingsSent = 0, sessionRefreshesSent = 0, callsTimedOut = 0
        /// Calls whose backend died: recoveries done, failed, and still under way (issue 16).
        public var recoveriesDone = 0, recoveriesFailed = 0, recoveriesPending = 0
        /// Messages a worker received for another worker's call and passed on.
        public var handedOver = 0
        public var requests: [String: Int] = [:], replies: [String: Int] = [:]
    }

    public func statistics() -> Totals {
        var t = Totals()
        (t.received, t.invalid) = counts
        t.blocked = blockedRequests
        t.handedOver = handedOver
        t.refusedCalls = sourceLimit.refused.load(ordering: .relaxed)
        for b in routing.b2buas {
            guard let part = try? b.loop.submitAndWait({ () -> (B2BUAStatistics, Int, Int, Int, Int, Int) in
                let v = b.value
                return (v.statistics, v.callsStarted, v.callsEnded, v.activeCalls, v.transactionCounts.server, v.transactionCounts.client)
            }) else { continue }
            t.requests.merge(part.0.requests, uniquingKeysWith: +)
            t.pingsSent += part.0.pingsSent
            t.sessionRefreshesSent += part.0.sessionRefreshesSent
            t.callsTimedOut += part.0.callsTimedOut
            t.recoveriesPending += part.0.recoveriesPending
            t.recoveriesDone += part.0.recoveriesDone
            t.recoveriesFailed += part.0.recoveriesFailed
            t.replies.merge(part.0.replies, uniquingKeysWith: +)
            t.callsStarted += part.1
            t.callsEnded += part.2
            t.activeCalls += part.3
            t.serverTransactions += part.4
            t.clientTransactions += part.5
        }
        return t
    }

    /// Applies new `[security]` settings (ACL, rate and call limits) on every worker; calls are untouched.
    public func reloadSecurity(_ settings: EdgeConfig.SecuritySettings) {
        for i in inbound { i.reload(settings) }
        sourceLimit.reload(limit: settings.maxCallsPerSource, trusted: settings.trusted)
        router.reloadTrusted(settings.trusted)
    }

    public func resetStatistics() {
        for b in routing.b2buas { _ = try? b.loop.submitAndWait { b.value.resetStatistics() } }
        for i in inbound {
            i.received.store(0, ordering: .relaxed)
            i.invalid.store(0, ordering: .relaxed)
            i.blocked.store(0, ordering: .relaxed)
            i.handedOver.store(0, ordering: .relaxed)
        }
    }

    /// Messages received and refused so far, over all workers.
    public var counts: (received: Int, invalid: Int) {
        inbound.reduce((0, 0)) { ($0.0 + $1.received.load(ordering: .relaxed), $0.1 + $1.invalid.load(ordering: .relaxed)) }
    }

    /// Messages a worker received for another worker's call and passed on to it, over all workers.
    public var handedOver: Int { inbound.reduce(0) { $0 + $1.handedOver.load(ordering: .relaxed) } }

    /// Requests refused or dropped because their source was over its rate.
    public var blockedRequests: Int { inbound.reduce(0) { $0 + $1.blocked.load(ordering: .relaxed) } }
}

/// Sends one worker's B2BUA messages: UDP through the worker's socket of the listener the hop
/// names (the first UDP listener's when it names none); TCP and TLS over the
/// connection the peer opened (handed to the worker that holds it) or one this worker opens.
///
/// `@unchecked Sendable`: `peers` is set while the server is built, before any loop runs; the rest
/// is used only on this worker's loop (other workers reach it through `handOver`).
final class EdgeSender: MessageSender, @unchecked Sendable {
    let worker: Int
    /// This worker's socket of each UDP listener, in the config's order.
    let udp: [UDPEndpoint]
    /// This worker's own UDP socket (`worker_ports`), for hops that name this worker.
    let ownUDP: UDPEndpoint?
    let tcp: TCPConnectionTable
    let tlsAccepted: TCPConnectionTable?
    let tlsOutgoing: TCPConnectionTable?
    let workers: WorkerGroup
    var peers: [LoopBound<EdgeSender>] = []

    init(worker: Int, udp: [UDPEndpoint], ownUDP: UDPEndpoint?, tcp: TCPConnectionTable, tlsAccepted: TCPConnectionTable?, tlsOutgoing: TCPConnectionTable?,
         workers: WorkerGroup) {
        self.worker = worker
        self.udp = udp
        self.ownUDP = ownUDP
        self.tcp = tcp
        self.tlsAccepted = tlsAccepted
        self.tlsOutgoing = tlsOutgoing
        self.workers = workers
    }

    func send(_ bytes: [UInt8], to hop: Hop) -> Bool {
        switch hop.transport {
        case .udp:
            if let owner = hop.worker, owner != worker, owner < peers.count {
                // By another worker's own port (a message it received, owned here).
                let peer = peers[owner]
                workers.handOver(to: owner) { _ = peer.value.sendHere(bytes, to: hop) }
                return true
            }
            return sendHere(bytes, to: hop)
        case .tcp, .tls:
            if let owner = hop.worker, owner != worker, owner < peers.count {
                let peer = peers[owner]
                workers.handOver(to: owner) { _ = peer.value.sendHere(bytes, to: hop) }
                return true
            }
            return sendHere(bytes, to: hop)
        case .sctp:
            return false
        }
    }

    /// On this worker: over an open connection to the peer, else over a new one (RFC 3261 §18.2.2:
    /// a response whose connection is gone goes over a new connection to the same address).
    func sendHere(_ bytes: [UInt8], to hop: Hop) -> Bool {
        if hop.transport == .udp {
            let listener = hop.listener.flatMap { udp.indices.contains($0) ? udp[$0] : nil } ?? udp.first
            guard let socket = hop.worker == worker ? ownUDP ?? listener : listener else { return false }
            socket.send(bytes, to: hop.address)
            return true
        }
        let tables = hop.transport == .tls ? [tlsAccepted, tlsOutgoing].compactMap { $0 } : [tcp]
        for table in tables {
            if let c = table.connection(to: hop.address), c.isOpen { return c.send(bytes) }
        }
        guard let table = hop.transport == .tls ? tlsOutgoing : tcp, let c = try? table.connect(to: hop.address) else { return false }
        return c.send(bytes)
    }
}
