import Dialog
import Glibc
import Synchronization
import Transport

/// What the cluster asks of the node it runs in (the edge's workers): carry a tag's calls actively
/// or passively, take a replicated dialog over, let one go that another node has taken.
public protocol ClusterHost: AnyObject, Sendable {
    /// This node now acts for `tag`: its calls with that tag get their timers again.
    func startActing(for tag: String)
    /// This node must not act for `tag`: its calls with that tag go passive (no timer, nothing sent).
    func stopActing(for tag: String)
    /// Carry `record` actively from now on (adopted on the worker its identifiers name), under
    /// `retag` when given (a new version, replicated), and re-home it to this node (an early one is
    /// ended on both sides). `done` is told how that ended.
    func takeOver(_ record: DialogRecord, retag: String?, done: @escaping @Sendable (TakeOverOutcome) -> Void)
    /// Another node carries this dialog now (its newer version says so): stop carrying it here.
    func release(_ record: DialogRecord)
    /// A user's registrations as another node wrote them (`bindings` as the registrar encodes
    /// them), registered through the node with sharing tag `tag`.
    func registrationReplicated(user: String, bindings: [UInt8], tag: String)
}

/// Counters for `get_statistics statistics=cluster:`.
public struct ClusterStatistics: Sendable, Equatable {
    /// Dialogs handed to the workers to take over; of those, re-homed (both legs answered), ended
    /// because a leg failed, early ones ended on both sides, and still under way.
    public var takenOverDialogs = 0, rehomedDialogs = 0, rehomeFailures = 0, rehomeInterrupted = 0, earlyDialogsEnded = 0
    public var rehomePending: Int { takenOverDialogs - rehomedDialogs - rehomeFailures - rehomeInterrupted - earlyDialogsEnded - notCarried }
    var notCarried = 0
    public var replicationSent = 0, replicationReceived = 0, syncDialogsReceived = 0
    public var heartbeatsSent = 0, resendRequests = 0, resentDatagrams = 0, snapshotsServed = 0
    public var droppedDatagrams = 0, unauthenticated = 0, unknownWireVersion = 0
}

/// This node in the cluster: its end of the cluster link (one UDP socket on its own loop), the
/// membership, the sharing tags and the replicas. Records from the workers' dialog gates arrive
/// through `dialogChanged` (any worker thread) and leave in one datagram batch per loop turn;
/// peers' records are applied by version. DESIGN.md, Cluster, says how loss is repaired and how a
/// starting node syncs.
///
/// `@unchecked Sendable`: everything but `pending` (a Mutex) is used on `loop` only.
public final class ClusterNode: DialogStateSink, DatagramReceiver, @unchecked Sendable {
    public let settings: ClusterSettings
    public let loop: EventLoop
    /// Wall-clock ms when this run started: a peer that sees it change knows this node restarted.
    public let incarnation: UInt64
    private var endpoint: UDPEndpoint?
    private let authentication: MessageAuthentication?
    let membership: Membership
    let tags: SharingTags
    let replicas = DialogReplicas()
    var outgoing = OutgoingStream()
    var incoming: [Int: IncomingStream] = [:]
    private let pending = Mutex<[String: DialogRecord]>([:])
    private let pendingRegistrations = Mutex<[String: RegistrationRecord]>([:])
    /// A send of what is pending is scheduled: later changes join it without waking the loop.
    private let sendScheduled = Atomic<Bool>(false)
    /// How long changes gather before they go (ms): one wake-up and one batch for many loop turns
    /// of the workers, at the cost of this much replication delay.
    static let gatherMilliseconds: UInt64 = 10
    /// Every user's registrations known in the cluster, at the newest version seen (for snapshots).
    var registrations: [String: RegistrationRecord] = [:]
    /// Keys of the dialogs this node's workers carry (their newest version came from here).
    var carried: Set<String> = []
    private weak var host: (any ClusterHost)?
    let log: @Sendable (String) -> Void
    /// A line a peer (or a stranger) caused: logged once per source and kind per interval by the caller.
    private let logPeer: @Sendable (_ source: SocketAddress, _ kind: String, _ line: String) -> Void

    private var startedAt: UInt64 = 0
    /// A heartbeat period has passed since start: claims heard by now are known.
    var settled = false
    public internal(set) var synced = false
    var sync: SnapshotPull?
    var serving: [SnapshotServe] = []
    /// A paced send of snapshot chunks is scheduled.
    var snapshotTimer = false
    var acting: Set<String> = []
    /// Tags this node claimed because their holder was down, until it acts for them.
    private var claimedFromDead: Set<String> = []
    private var takeOvers: [(record: DialogRecord, retag: String?)] = []
    private var takeOverHead = 0
    private var pacing = false
    /// A line per second tells how a take-over goes while one is under way.
    private var progressLogging = false
    /// Of the datagrams of records this node sends first-hand, the share (%) it drops: the
    /// test-only fault switch (`cluster_fault drop_percent=N`), to exercise the repair.
    var dropPercent = 0
    /// Peers whose datagrams are dropped both ways: the test-only fault switch (`cluster_fault`).
    var blocked: Set<Int> = []
    public internal(set) var statistics = ClusterStatistics()

    public init(settings: ClusterSettings, loopIndex: Int, log: @escaping @Sendable (String) -> Void,
                logPeer: @escaping @Sendable (SocketAddress, String, String) -> Void) throws(SystemError) {
        self.settings = settings
        loop = try EventLoop(index: loopIndex)
        var t = timespec()
        clock_gettime(CLOCK_REALTIME, &t)
        incarnation = UInt64(t.tv_sec) * 1_000 + UInt64(t.tv_nsec) / 1_000_000
        authentication = settings.secret.isEmpty ? nil : MessageAuthentication(key: settings.secret)
        membership = Membership(settings: settings)
        tags = SharingTags(me: settings.nodeID)
        self.log = log
        self.logPeer = logPeer
        endpoint = try UDPEndpoint(loop: loop, bindTo: settings.address, reusePort: false, receiver: self)
    }

    public func attach(host: any ClusterHost) { self.host = host }

    public func start() throws(SystemError) {
        try loop.start()
        loop.execute { [self] in
            startedAt = loop.now
            tick()
        }
    }

    public func stop() { loop.stop() }

    // MARK: - Records from this node's workers (any worker thread)

    public func dialogChanged(_ record: DialogRecord) {
        pending.withLock { $0[DialogReplicas.key(of: record)] = record }
        scheduleSend()
    }

    private func scheduleSend() {
        guard !sendScheduled.exchange(true, ordering: .acquiringAndReleasing) else { return }
        loop.execute { [self] in
            _ = loop.schedule(afterMilliseconds: Self.gatherMilliseconds) { [self] in
                sendScheduled.store(false, ordering: .releasing)
                sendPending()
            }
        }
    }

    /// A user's registrations changed on this node (any thread): replicated with the next batch.
    public func registrationChanged(user: String, bindings: [UInt8]) {
        var t = timespec()
        clock_gettime(CLOCK_REALTIME, &t)
        let version = (UInt64(t.tv_sec) * 1_000 + UInt64(t.tv_nsec) / 1_000_000) << 8 | UInt64(settings.nodeID & 0xFF)
        pendingRegistrations.withLock { $0[user] = RegistrationRecord(user: user, version: version, tag: settings.sharingTag, bindings: bindings) }
        scheduleSend()
    }

    /// What the workers changed since the last turn: applied here, then sent to every peer in as
    /// few datagrams as fit, each the stream's next sequence.
    private func sendPending() {
        let batch = pending.withLock { p -> [String: DialogRecord] in
            defer { p.removeAll(keepingCapacity: true) }
            return p
        }
        let users = pendingRegistrations.withLock { p -> [RegistrationRecord] in
            defer { p.removeAll(keepingCapacity: true) }
            return Array(p.values)
        }
        var entries: [ReplicatedEntry] = []
        var size = 0
        func add(_ entry: ReplicatedEntry) {
            if size + entry.wireSize > ClusterWire.maxDatagram && !entries.isEmpty {
                sendRecords(entries)
                entries.removeAll(keepingCapacity: true)
                size = 0
            }
            entries.append(entry)
            size += entry.wireSize
        }
        for record in users where registrations[record.user].map({ $0.version < record.version }) ?? true {
            registrations[record.user] = record
            add(.registration(record.encoded()))
        }
        for (key, var record) in batch {
            if record.state == .ended {
                // An end needs only who and which version: its session descriptions stay home.
                record.client.lastSDPSent = []
                record.client.lastSDPReceived = []
                record.backend.lastSDPSent = []
                record.backend.lastSDPReceived = []
            }
            replicas.apply(record, now: loop.now)
            if record.state == .ended { carried.remove(key) } else { carried.insert(key) }
            add(.dialog(record.encoded()))
        }
        if !entries.isEmpty { sendRecords(entries) }
    }

    private func sendRecords(_ entries: [ReplicatedEntry]) {
        let sequence = outgoing.next()
        let datagram = seal(.records(sequence: sequence, entries: entries))
        outgoing.keep(datagram, as: sequence)
        statistics.replicationSent += entries.count
        for peer in settings.peers where !blocked.contains(peer.id) {
            // The fault switch's loss: the datagram is kept for resends, but not sent this time.
            if dropPercent > 0 && Int.random(in: 0..<100) < dropPercent { continue }
            endpoint?.send(datagram, to: peer.address)
        }
    }

    private func seal(_ message: ClusterMessage) -> [UInt8] {
        let bytes = message.encoded(sender: settings.nodeID, incarnation: incarnation)
        return authentication?.sealed(bytes) ?? bytes
    }

    func send(_ message: ClusterMessage, to id: Int) {
        guard !blocked.contains(id), let peer = membership.peers[id] else { return }
        endpoint?.send(seal(message), to: peer.member.address)
    }

    // MARK: - The heartbeat: membership, sync, tags, repair

    private func tick() {
        let now = loop.now
        for id in membership.tick(now: now) {
            log("cluster: node \(id) is down (silent for \(settings.downAfterMilliseconds) ms)")
            if sync?.peer == id { sync = nil }
        }
        if !settled && now &- startedAt >= settings.downAfterMilliseconds { settled = true }
        if !synced && sync == nil {
            if let source = membership.peers.values.filter({ $0.up && $0.synced }).map(\.member.id).min() {
                pullSnapshot(from: source, repair: false)
            } else if settled {
                synced = true
                log("cluster: no synced peer is up; node \(settings.nodeID) starts with what it has")
            }
        }
        if let pull = sync, now &- pull.lastProgress > 1_000 {
            // No chunk for a second: ask again from the first one missing (or the source is gone).
            if membership.isUp(pull.peer) {
                sync?.lastProgress = now
                send(.snapshotRequest(id: pull.id, fromChunk: pull.firstMissing), to: pull.peer)
            } else {
                sync = nil
            }
        }
        decideTags(now: now)
        sendHeartbeat()
        askForMissing()
        serving.removeAll { now &- $0.lastAsked > 30_000 }
        _ = loop.schedule(afterMilliseconds: settings.heartbeatMilliseconds) { [self] in tick() }
    }

    /// Who this node sees, where its stream stands, and every claim it knows (its confirmations).
    func sendHeartbeat() {
        let heartbeat = seal(.heartbeat(sees: membership.upSet, lastSequence: outgoing.lastSequence, synced: synced, claims: tags.all))
        for peer in settings.peers where !blocked.contains(peer.id) {
            endpoint?.send(heartbeat, to: peer.address)
            statistics.heartbeatsSent += 1
        }
    }

    /// Claims and take-overs (`SharingTags.decide`), then the workers are told which tags they
    /// act for now: those lost go passive, those gained take their replicated dialogs over.
    func decideTags(now: UInt64) {
        let (moves, nowActing) = tags.decide(membership: membership, now: now, settled: settled, synced: synced, ownTag: settings.sharingTag)
        for move in moves {
            switch move {
            case .ownTag(let claim):
                log("cluster: node \(settings.nodeID) claims its tag \(claim.tag) at epoch \(claim.epoch)")
            case let .takeOver(claim, from):
                log("cluster: node \(from) is down; node \(settings.nodeID) takes tag \(claim.tag) over at epoch \(claim.epoch)")
            }
        }
        // A claim is told at once: the others confirm it (and an old holder steps down) sooner.
        if !moves.isEmpty { sendHeartbeat() }
        // Tags taken from a dead node: once acting for one, its early dialogs are taken too (to end
        // them cleanly on both sides).
        for move in moves {
            if case let .takeOver(claim, _) = move { claimedFromDead.insert(claim.tag) }
        }
        for tag in acting.subtracting(nowActing).sorted() {
            log(tags.holder(of: tag) == settings.nodeID
                ? "cluster: no majority in sight; node \(settings.nodeID) stops acting for tag \(tag)"
                : "cluster: tag \(tag) is node \(tags.holder(of: tag) ?? 0)'s now (epoch \(tags.claims[tag]?.epoch ?? 0)); node \(settings.nodeID) steps down")
            host?.stopActing(for: tag)
        }
        let gained = nowActing.subtracting(acting).sorted()
        acting = nowActing
        for tag in gained {
            host?.startActing(for: tag)
            let fromDead = claimedFromDead.remove(tag) != nil
            let theirs = replicas.records(tagged: tag).filter {
                ($0.state == .confirmed || ($0.state == .early && fromDead)) && !carried.contains(DialogReplicas.key(of: $0))
            }
            if !theirs.isEmpty { log("cluster: acting for tag \(tag): taking \(theirs.count) dialogs over") }
            enqueueTakeOvers(theirs.map { ($0, nil) })
        }
    }

    /// Take-overs go at `rehome_per_second` at most: a tick every 10 ms hands a slice on.
    func enqueueTakeOvers(_ items: [(record: DialogRecord, retag: String?)]) {
        takeOvers += items
        guard !pacing, !takeOvers.isEmpty else { return }
        pacing = true
        paceTakeOvers()
    }

    private func paceTakeOvers() {
        let slice = max(1, settings.rehomePerSecond / 100)
        let end = min(takeOvers.count, takeOverHead + slice)
        for (queued, retag) in takeOvers[takeOverHead..<end] {
            // The newest version known now (it may have changed while it waited), if it is still up.
            guard let record = replicas.records[DialogReplicas.key(of: queued)] else { continue }
            let tag = retag ?? record.sharingTag
            guard acting.contains(tag) || retag != nil else { continue }
            carried.insert(DialogReplicas.key(of: record))
            statistics.takenOverDialogs += 1
            host?.takeOver(record, retag: retag) { [self] outcome in
                loop.execute { [self] in
                    switch outcome {
                    case .rehomed: statistics.rehomedDialogs += 1
                    case .failed: statistics.rehomeFailures += 1
                    case .interrupted: statistics.rehomeInterrupted += 1
                    case .endedEarly: statistics.earlyDialogsEnded += 1
                    case .notCarried: statistics.notCarried += 1
                    }
                }
            }
        }
        if !progressLogging {
            progressLogging = true
            _ = loop.schedule(afterMilliseconds: 1_000) { [self] in logProgress() }
        }
        takeOverHead = end
        if takeOverHead == takeOvers.count {
            takeOvers.removeAll()
            takeOverHead = 0
            pacing = false
            return
        }
        _ = loop.schedule(afterMilliseconds: 10) { [self] in paceTakeOvers() }
    }

    /// While dialogs are being taken over: a line a second, the last when none is left.
    private func logProgress() {
        let s = statistics
        let left = s.rehomePending + (takeOvers.count - takeOverHead)
        log("cluster: re-homing: \(s.rehomedDialogs) done, \(s.rehomeFailures) failed, \(s.rehomeInterrupted) hung up meanwhile, \(s.earlyDialogsEnded) early ended, \(left) left")
        if left > 0 {
            _ = loop.schedule(afterMilliseconds: 1_000) { [self] in logProgress() }
        } else {
            progressLogging = false
        }
    }

    /// Every heartbeat, the sequences still missing from each peer's stream are asked for again.
    private func askForMissing() {
        for (id, stream) in incoming where membership.isUp(id) {
            for range in stream.missingRanges(limit: 64) {
                statistics.resendRequests += 1
                send(.resend(from: range.lowerBound, through: range.upperBound), to: id)
            }
        }
    }

    // MARK: - Datagrams from peers

    public func received(_ datagram: [UInt8], from source: SocketAddress, on endpoint: UDPEndpoint) {
        guard let id = membership.member(at: source) else {
            drop(from: source, "stranger", "cluster: a datagram from \(source), which is not a member, dropped")
            return
        }
        guard !blocked.contains(id) else { return }
        // The version first (its byte is where every version keeps it): a peer on a wire version
        // this node cannot read is told apart from garbage, and shown in `clusterer_list`.
        if datagram.count > 3, datagram[0] == ClusterWire.magic.0, datagram[1] == ClusterWire.magic.1, datagram[2] != ClusterWire.version {
            membership.speaks(datagram[2], at: id)
            statistics.unknownWireVersion += 1
            drop(from: source, "wire version", "cluster: node \(id) (\(source)) speaks cluster wire version \(datagram[2]); this node reads \(ClusterWire.version) only: dropped")
            return
        }
        let body: ArraySlice<UInt8>
        if let authentication {
            guard let opened = authentication.opened(datagram) else {
                statistics.unauthenticated += 1
                drop(from: source, "authentication", "cluster: a datagram from \(source) failed authentication (wrong secret?): dropped")
                return
            }
            body = opened
        } else {
            body = datagram[...]
        }
        let header: WireHeader, message: ClusterMessage
        do {
            (header, message) = try ClusterMessage.decode(body)
        } catch {
            drop(from: source, "malformed", "cluster: a datagram from node \(id) (\(source)) dropped: \(error)")
            return
        }
        guard header.sender == id else {
            drop(from: source, "impostor", "cluster: a datagram from \(source) (node \(id)) says it is node \(header.sender): dropped")
            return
        }
        let now = loop.now
        switch membership.heard(from: id, incarnation: header.incarnation, at: now) {
        case .cameUp:
            log("cluster: node \(id) is up")
        case .restarted:
            log("cluster: node \(id) restarted")
            incoming[id] = nil
        case .known:
            break
        }
        handle(message, from: id, incarnation: header.incarnation, now: now)
    }

    private func drop(from source: SocketAddress, _ kind: String, _ line: String) {
        statistics.droppedDatagrams += 1
        logPeer(source, "cluster \(kind)", line)
    }

    private func handle(_ message: ClusterMessage, from id: Int, incarnation: UInt64, now: UInt64) {
        switch message {
        case let .heartbeat(sees, lastSequence, synced, claims):
            membership.status(of: id, sees: sees, synced: synced, claims: claims)
            for claim in claims { tags.learn(claim) }
            decideTags(now: now)
            if self.synced {
                var stream = incoming[id] ?? IncomingStream(incarnation: incarnation, highest: 0)
                if !stream.heardOf(upTo: lastSequence) { pullSnapshot(from: id, repair: true) }
                incoming[id] = stream
            }
        case let .records(sequence, entries):
            if synced {
                var stream = incoming[id] ?? IncomingStream(incarnation: incarnation, highest: 0)
                if !stream.received(sequence) { pullSnapshot(from: id, repair: true) }
                incoming[id] = stream
            } else {
                sync?.heard(sequence, from: id, incarnation: incarnation)
            }
            apply(entries, from: id, now: now)
            statistics.replicationReceived += entries.count
        case let .resend(from, through):
            guard from <= through else { return }
            var gone: ClosedRange<UInt64>?
            for s in from...min(through, from + 4_095) {
                if let datagram = outgoing.datagram(s) {
                    statistics.resentDatagrams += 1
                    if let peer = membership.peers[id] { endpoint?.send(datagram, to: peer.member.address) }
                } else {
                    gone = gone.map { $0.lowerBound...s } ?? s...s
                }
            }
            if let gone { send(.gone(from: gone.lowerBound, through: gone.upperBound), to: id) }
        case let .gone(from, through):
            incoming[id]?.forget(from: from, through: through)
            pullSnapshot(from: id, repair: true)
        case let .snapshotRequest(requestID, fromChunk):
            serveSnapshot(to: id, id: requestID, fromChunk: Int(fromChunk), now: now)
        case let .snapshotChunk(requestID, index, last, positions, entries):
            guard var pull = sync, pull.peer == id, pull.id == requestID else { return }
            apply(entries, from: id, now: now)
            statistics.syncDialogsReceived += entries.count
            pull.received(chunk: index, last: last, positions: positions, now: now)
            sync = pull
            if pull.complete { finishSync(pull) }
        }
    }

    func apply(_ entries: [ReplicatedEntry], from id: Int, now: UInt64) {
        for entry in entries {
            if case .registration(let bytes) = entry {
                guard let record = try? RegistrationRecord(decoding: bytes) else {
                    statistics.droppedDatagrams += 1
                    if let peer = membership.peers[id] { logPeer(peer.member.address, "cluster record", "cluster: a registration from node \(id) does not decode: skipped") }
                    continue
                }
                guard registrations[record.user].map({ $0.version < record.version }) ?? true else { continue }
                registrations[record.user] = record
                host?.registrationReplicated(user: record.user, bindings: record.bindings, tag: record.tag)
                continue
            }
            guard case .dialog(let bytes) = entry else { continue }
            guard let record = try? DialogRecord(decoding: bytes) else {
                statistics.droppedDatagrams += 1
                if let peer = membership.peers[id] { logPeer(peer.member.address, "cluster record", "cluster: a dialog record from node \(id) does not decode: skipped") }
                continue
            }
            guard replicas.apply(record, now: now) else { continue }
            let key = DialogReplicas.key(of: record)
            if carried.contains(key) {
                // A peer wrote a newer version of a dialog this node carried: it is the peer's now.
                carried.remove(key)
                host?.release(record)
            }
        }
    }
}
