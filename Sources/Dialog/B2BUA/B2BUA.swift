import Glibc
import SIPParser
import Transport

/// The B2BUA of one worker: every call is split into a client leg and a backend leg that never
/// see each other's Via, Record-Route, Contact or Call-ID. It runs RFC 3261 transactions for both
/// legs (`TransactionLayer`) on the worker's clock, over UDP, TCP or TLS per leg; keeps each call
/// as a versioned `DialogRecord` whose every change passes one gate (`DialogTable.update`) to its
/// sinks; runs RFC 4028 session timers per leg, in-dialog OPTIONS pings and a maximum lifetime;
/// and fails an initial INVITE over to the next backend on a timeout, 408 or 5xx.
///
/// The work is spread by concern: call set-up and failover (CallSetup.swift), in-dialog requests
/// (InDialogRelay.swift), session timers and pings (SessionTimers.swift), our Via and Contact and
/// which headers cross (TopologyHiding.swift), requests the edge sends for itself (OwnRequests.swift).
public final class B2BUA: TimerTarget, IterationEndHandler {
    public let clock: any LoopClock
    public let config: B2BUAConfig
    unowned let sender: any MessageSender
    let picker: any DestinationPicker
    let transactions: TransactionLayer
    let table = DialogTable()
    /// A CANCEL whose INVITE is not on this worker (it came from another source port, so the
    /// kernel queued it on another worker's socket) is offered here with the worker it first
    /// reached; true when another worker takes it, false when every worker has looked (481).
    public var passOnCancel: ((_ cancel: SIPMessage, _ hop: Hop, _ listenerTag: String, _ firstWorker: Int) -> Bool)?
    /// A user registered (2xx) over a connection: every worker is told (`registered(addressOfRecord:over:)`),
    /// since a call waiting for that phone to reconnect may live on any of them.
    public var userRegistered: ((_ addressOfRecord: String, _ hop: Hop) -> Void)?
    /// Calls whose caller's leg waits for its phone to connect again, by its address of record.
    var awaitingReconnect: [String: [UInt32]] = [:]
    /// Recoveries waiting for their turn, and how many may start a second.
    var recoveryPace = RecoveryPace()
    let recoveryBudget: RecoveryBudget
    /// Where calls' media is anchored (rtpengine; nil: media flows end to end).
    public var media: (any MediaRelay)?
    var ids: ShardedIdentifiers
    /// Client Call-IDs of calls that ended in the last 64*T1 (as their hashes: the process's
    /// Hasher is seeded at random, so no one can make one collide), oldest first: a late copy of
    /// their INVITE (UDP can deliver one after the ACK and BYE) must not start a new call.
    /// Bounded: past `recentLimit` the oldest are forgotten early.
    private var recentlyEnded: Set<Int> = []
    private var recentOrder: [(id: Int, at: UInt64)] = []
    private var recentHead = 0
    private static let recentLimit = 131_072
    /// Calls set up and ended so far (statistics and tests).
    public internal(set) var callsStarted = 0
    public private(set) var callsEnded = 0
    /// What this worker's B2BUA has handled since the start or the last `resetStatistics`.
    public internal(set) var statistics = B2BUAStatistics()
    /// Why new calls are refused (503), when they are: set by the cluster while this node may not
    /// act for its own sharing tag.
    public var refusesNewCalls: String?
    public var activeCalls: Int { table.count }
    /// This worker's own UDP address, if it has one.
    let ownUDP: LocalAddress?
    /// Our addresses per transport and listener tag.
    let addresses: ListenerAddresses

    public init(clock: any LoopClock, config: B2BUAConfig, sender: any MessageSender) {
        self.clock = clock
        self.config = config
        self.ownUDP = config.workerUDP.indices.contains(clock.index) ? config.workerUDP[clock.index] : nil
        self.addresses = ListenerAddresses(config)
        self.sender = sender
        self.picker = config.picker ?? RoundRobinDestinations(config.backends)
        self.ids = ShardedIdentifiers(worker: clock.index)
        self.recoveryBudget = config.recoveryBudget ?? RecoveryBudget(perSecond: config.recoveriesPerSecond)
        self.transactions = TransactionLayer(clock: clock, timers: config.timers, sender: sender)
        transactions.user = self
        table.firstChange = { [unowned self] in self.clock.atEndOfIteration(self) }
    }

    /// The loop's iteration is over: the dialogs it changed go to the sinks, one record each.
    public func iterationEnded() { table.flush() }

    /// Every new version of every dialog record goes to `sink` too (the database, the cluster).
    public func add(sink: any DialogStateSink) { table.add(sink: sink) }

    static func wallClock() -> UInt64 { UInt64(max(0, time(nil))) }

    // MARK: - Receiving

    /// A parsed, validated message that came along `hop`, on the listener tagged `listenerTag`.
    /// `firstWorker`: the worker a CANCEL passed on by `passOnCancel` first reached.
    public func receive(_ message: SIPMessage, from hop: Hop, listenerTag: String = "", firstWorker: Int? = nil) {
        clock.assertInLoop()
        // (A CANCEL passed on from another worker was counted there.)
        if firstWorker == nil, let method = message.method {
            statistics.requestCounts[method, default: 0] += 1
        } else if let status = message.statusCode, (100...699).contains(status) {
            statistics.replyCounts[status / 100] += 1
        }
        if message.isRequest {
            receiveRequest(message, from: hop, listenerTag: listenerTag, firstWorker: firstWorker ?? clock.index)
        } else if let tx = transactions.client(forResponse: message) {
            transactions.receive(message, for: tx)
        } else if let status = message.statusCode, status >= 200, status < 300,
                  let (call, side) = table.call(ourTag: message.tag(of: .from), callID: message.callID), side == .backend,
                  call.record.backendAcknowledged, (try? message.cseq().number) == call.record.backend.inviteCSeq {
            // A retransmitted 2xx for a backend INVITE whose transaction ended once it was ACKed:
            // the ACK was lost, so it goes again (RFC 6026 §7.2 gives 2xx retransmissions to the TU).
            sendBackendACK(call)
        }
        // Any other response matching no transaction is dropped (§17.1.3).
    }

    private func receiveRequest(_ request: SIPMessage, from hop: Hop, listenerTag: String, firstWorker: Int) {
        let key = TransactionKey.server(forRequest: request)
        if request.method == .ack {
            if let key, let tx = transactions.server[key] { transactions.handle(.ack, tx) }
            if let (call, side) = table.call(ourTag: request.tag(of: .to), callID: request.callID), side == .client, call.active,
               Self.belongs(request, to: call.record.client) {
                clientAcknowledged(call, ack: request)
            }
            return
        }
        if let key, let tx = transactions.server[key] {
            if tx.machine.isInvite, !tx.machine.hasResponded {
                transactions.sendTrying(tx)   // the caller retransmits before the 100 was due: it goes now
            } else {
                transactions.handle(.retransmission, tx)
            }
            return
        }
        guard let key, let method = request.method else { return }
        if method == .cancel, request.tag(of: .to) == nil,
           transactions.server[TransactionKey(branch: key.branch, method: "INVITE", sentBy: key.sentBy)] == nil,
           passOnCancel?(request, hop, listenerTag, firstWorker) == true {
            return   // another worker may hold its INVITE
        }
        if method == .invite, request.tag(of: .to) == nil, let id = request.callID {
            if recentlyEnded.contains(id.hashValue) { return }   // a late copy of the INVITE of a call that is over
            if let call = table[id.string], call.side(ofCallID: id) == .client {
                // The INVITE of a call we already carry, whose transaction ended with the caller's
                // ACK (or a copy that took another path, §8.2.2.2): it changes nothing; a 2xx not
                // yet acknowledged goes again.
                if let answer = call.answer { _ = sender.send(answer, to: call.record.client.hop) }
                return
            }
        }
        let tx = transactions.newServer(request, method: method, from: hop, key: key)
        if request.tag(of: .to) != nil {
            inDialog(request, tx)
            return
        }
        switch method {
        case .invite where isOurOwn(request):
            // §16.3 item 4: our own request has come back to us (a destination that is this edge,
            // or a route through it): a loop, ended at once rather than after Max-Forwards hops.
            respond(tx, status: 482)
        case .invite:
            newCall(request, tx, listenerTag: listenerTag)
        case .cancel:
            cancel(request, tx, key: key)
        case .options:
            respond(tx, status: 200, extra: [("Allow", Self.allow), ("Accept", "application/sdp")])
        case .register:
            register(request, tx)
        case .bye, .prack, .update, .info, .refer:
            // Requests that exist only inside a dialog, sent without a To tag: no dialog of ours
            // (RFC 3261 §15.1.2 for BYE; RFC 3262, 3311, 6086 and 3515 likewise).
            respond(tx, status: 481)
        default:
            respond(tx, status: 501)
        }
    }

    static let allow = "INVITE, ACK, BYE, CANCEL, OPTIONS, PRACK, UPDATE, INFO, NOTIFY, REFER, MESSAGE"

    /// Answers a server transaction from its own request (a new To tag where it has none).
    func respond(_ tx: ServerTxRecord, status: Int, extra: [(String, String)] = []) {
        let tag = tx.request.tag(of: .to) == nil ? ids.make() : nil
        transactions.respond(tx, status: status, bytes: MessageBuilder.response(to: tx.request, status: status, toTag: tag, extraHeaders: extra))
    }

    // MARK: - Ending calls

    func endCall(_ call: Call) {
        guard !call.isEnded else { return }
        abandonRehoming(call, .interrupted)
        releaseMedia(call)
        if let recovery = call.recovery {
            // Ended before a new backend answered: its INVITE is cancelled (§9.1), and the leg it
            // was to replace ends too (alive, when the move was planned).
            cancelBackendInvite(call.record, reason: "SIP;cause=487;text=\"Call ended\"")
            endLostLeg(recovery, reason: nil)
            call.recovery = nil
            statistics.recoveriesFailed += 1
            logRecoveryProgress(finished: true)
        }
        // Its pings and refreshes are about a dialog that is gone: no retransmission of them may
        // go on (toward a forged source that would make us a reflector). A re-INVITE of ours runs
        // on: its 2xx must be ACKed.
        stopCarrying(call, keepingInvites: true)
        table.end(call)
        callsEnded += 1
        var callID = call.record.client.callID
        rememberEnded(callID.withUTF8 { utf8 in
            var hasher = Hasher()   // as ByteView hashes the same bytes
            hasher.combine(bytes: UnsafeRawBufferPointer(utf8))
            return hasher.finalize()
        })
        if let d = call.destination { picker.release(d) }
        call.destination = nil
        if let source = call.admitted { config.admission?.release(source) }
        call.admitted = nil
    }

    /// Ends a confirmed call with a BYE on each leg but `except` (the one that hung up).
    func hangUp(_ call: Call, reason: String?, except: DialogRecord.Side? = nil) {
        guard !call.isEnded else { return }
        // (A backend leg being rebuilt has no dialog yet: `endCall` cancels its INVITE.)
        for side in [DialogRecord.Side.backend, .client] where side != except && !(side == .backend && call.recovery != nil) {
            sendBYE(call, side, reason: reason)
        }
        endCall(call)
    }

    /// The call's timers stop and its own requests (pings, refreshes) end: nothing more is sent
    /// for it from here.
    func stopCarrying(_ call: Call, keepingInvites: Bool = false) {
        if let t = call.answerTimer { clock.cancel(t) }
        if let t = call.lifetimeTimer { clock.cancel(t) }
        if let t = call.sessionTimers.client { clock.cancel(t) }
        if let t = call.sessionTimers.backend { clock.cancel(t) }
        if let t = call.pingTimer { clock.cancel(t) }
        call.answerTimer = nil
        call.pingTimer = nil
        call.lifetimeTimer = nil
        call.sessionTimers = (nil, nil)
        for tx in call.ownRequests where !tx.finished && !(keepingInvites && tx.machine.isInvite) {
            // Whoever waits for its answer (an operator's `dlg_send_sequential`) is told there is none.
            let onFinal = tx.onFinal
            tx.onFinal = nil
            transactions.finish(tx)
            onFinal?(nil)
        }
        call.ownRequests = []
    }

    private func rememberEnded(_ callID: Int) {
        let now = clock.now
        let horizon = 64 * config.timers.t1
        while recentHead < recentOrder.count,
              now &- recentOrder[recentHead].at > horizon || recentOrder.count - recentHead >= Self.recentLimit {
            recentlyEnded.remove(recentOrder[recentHead].id)
            recentHead += 1
        }
        if recentHead > 4_096 && recentHead * 2 > recentOrder.count {
            recentOrder.removeFirst(recentHead)
            recentHead = 0
        }
        if recentlyEnded.insert(callID).inserted { recentOrder.append((callID, now)) }
    }

    // MARK: - Records from elsewhere (a restart, another node)

    /// Takes a dialog over from its record (loaded from disk or replicated), both legs as they
    /// were; an early or ended one is ignored. Passive (`active: false`): kept and listed, no timer
    /// armed, nothing sent, until `activate`. Its transactions are not carried over: requests from
    /// either side start new ones.
    public func adopt(_ record: DialogRecord, active: Bool) {
        clock.assertInLoop()
        guard record.state == .confirmed else { return }
        if let known = table[record.backend.callID] {
            if !known.active { table.replace(known, with: record) }
            if active { activate(key: record.key) }
            return
        }
        var record = record
        record.client.hop = record.client.hop.withoutWorker
        record.backend.hop = record.backend.hop.withoutWorker
        let call = table.adopt(record, active: false)
        callsStarted += 1
        if active { activate(call) }
    }

    /// A passive dialog becomes this node's to carry: its lifetime, session timers and pings are
    /// armed from their wall-clock deadlines. False when no such dialog is here.
    @discardableResult
    public func activate(key: String) -> Bool {
        clock.assertInLoop()
        guard let call = table[key], !call.isEnded else { return false }
        if !call.active { activate(call) }
        return true
    }

    func activate(_ call: Call) {
        table.activate(call)
        if let index = picker.index(of: call.record.backend.hop) {
            picker.claim(index)
            call.destination = index
        }
        if call.record.endsAt > 0 {
            let now = Self.wallClock()
            let ms = call.record.endsAt > now ? (call.record.endsAt - now) * 1_000 : 1
            call.lifetimeTimer = clock.schedule(afterMilliseconds: ms, target: self, token: Self.token(.lifetime, call))
        }
        armSessionTimer(call, .client)
        armSessionTimer(call, .backend)
        if config.pingSeconds > 0 {
            call.pingTimer = clock.schedule(afterMilliseconds: config.pingSeconds * 1_000, target: self, token: Self.token(.ping, call))
        }
        resumeRecovery(call)
    }

    /// A restart's dialogs: each is adopted and carried at once.
    public func restore(_ record: DialogRecord) { adopt(record, active: true) }

    // MARK: - Operations

    /// Transactions in progress on this worker, server and client.
    public var transactionCounts: (server: Int, client: Int) { (transactions.server.count, transactions.clientCount) }

    public func resetStatistics() {
        clock.assertInLoop()
        statistics = B2BUAStatistics()
    }

    /// The records of every confirmed call on this worker, active or passive (`dlg_list`).
    public func dialogRecords() -> [DialogRecord] {
        clock.assertInLoop()
        return table.byNumber.values.filter(\.isConfirmed).map(\.record)
    }

    /// Whether this worker carries (actively) the dialog with `key`: nil when it has none.
    public func isActive(key: String) -> Bool? { table[key].map(\.active) }

    /// Ends the call whose record has `key` with a BYE on both legs (`dlg_end_dlg`); false if none.
    public func endDialog(key: String, reason: String = "SIP;cause=200;text=\"Ended by the operator\"") -> Bool {
        clock.assertInLoop()
        guard let call = table[key], call.isConfirmed, call.active else { return false }
        hangUp(call, reason: reason)
        return true
    }

    /// The transport says `hop` refused what we sent (ICMP unreachable, a refused or broken
    /// connection): every client transaction toward it fails at once, not after Timer B or F.
    public func unreachable(_ hop: Hop) {
        clock.assertInLoop()
        transactions.unreachable(hop)
    }

    // MARK: - Call timers

    /// The timers a call arms, told apart by the token's top byte; the rest is the call's number.
    enum CallTimer: UInt64 {
        case answer = 1, lifetime, sessionClient, sessionBackend, ping, trying, rehomeClient, rehomeBackend
    }

    static func token(_ kind: CallTimer, _ call: Call) -> UInt64 { kind.rawValue << 56 | UInt64(call.number) }

    public func timerFired(_ token: UInt64) {
        if token == Self.recoveryPaceToken { return recoveryPaceFired() }
        guard let kind = CallTimer(rawValue: token >> 56), let call = table.byNumber[UInt32(truncatingIfNeeded: token)] else { return }
        switch kind {
        case .lifetime:
            call.lifetimeTimer = nil
            guard call.isConfirmed else { return }
            statistics.callsTimedOut += 1
            hangUp(call, reason: "SIP;cause=200;text=\"Call lifetime reached\"")
        case .sessionClient: sessionTimerFired(call, .client)
        case .sessionBackend: sessionTimerFired(call, .backend)
        case .ping: ping(call)
        case .trying:
            if let tx = call.clientInvite, !tx.finished, !tx.machine.hasResponded { transactions.sendTrying(tx) }
        case .answer: answerTimerFired(call)
        case .rehomeClient: rehomeTimerFired(call, .client)
        case .rehomeBackend: rehomeTimerFired(call, .backend)
        }
    }
}

extension B2BUA: TransactionUser {
    func response(_ response: SIPMessage, for tx: ClientTxRecord) {
        if let onFinal = tx.onFinal, let status = response.statusCode, status >= 200 {
            tx.onFinal = nil
            onFinal(response)
        } else if let origin = tx.origin {
            relayResponse(response, clientTx: tx, origin: origin)
        } else if let call = tx.call {
            switch tx.purpose {
            case .backendInvite:
                backendInviteResponse(response, call: call)
                // Answered and ACKed: a retransmitted 2xx is recognised by its Call-ID and CSeq,
                // so the transaction need not wait out Timer M.
                if call.record.backendAcknowledged, let status = response.statusCode, status >= 200, status < 300 {
                    transactions.finish(tx)
                }
            case .refresh(let side): refreshAnswered(response, tx: tx, call: call, side: side)
            case .ping(let side): pingAnswered(response, call: call, side: side)
            case .ownRequest:
                if tx.machine.isInvite, let status = response.statusCode, status >= 200, status < 300, let side = tx.side {
                    edgeReinviteAnsweredAgain(call, side)
                }
            case .relay, .fireAndForget: break
            }
        }
    }

    func timedOut(_ tx: ClientTxRecord) {
        // A request in a call toward its backend that got no answer (Timer B or F, or the
        // transport's refusal: ICMP, a refused or reset connection) counts against that
        // destination, as a failed probe would (the INVITE that sets a call up counts in
        // `backendInviteTimedOut`).
        if tx.side == .backend, let call = tx.call, let d = call.destination {
            if case .backendInvite = tx.purpose {} else { picker.failed(d) }
        }
        if let onFinal = tx.onFinal {
            tx.onFinal = nil
            onFinal(nil)
            return
        }
        if let origin = tx.origin {
            // The other leg did not answer a relayed request.
            if tx.machine.isInvite, let call = tx.call { table.update(call) { $0.reinvite = .none } }
            respond(origin, status: 408)
            return
        }
        guard let call = tx.call else { return }
        switch tx.purpose {
        case .backendInvite: backendInviteTimedOut(call)
        case .refresh(let side):
            if tx.machine.isInvite { table.update(call) { $0.reinvite = .none } }
            if side == .backend && startRecovery(call) { return }
            hangUp(call, reason: "SIP;cause=408;text=\"Session refresh failed\"")
        case .ping(let side):
            // A dead backend's calls are recovered where their set says so (issue 16).
            if side == .backend && startRecovery(call) { return }
            hangUp(call, reason: "SIP;cause=408;text=\"Dialog ping failed\"")
        case .relay, .fireAndForget, .ownRequest:
            break
        }
    }

    func timedOut(_ tx: ServerTxRecord) {
        // No ACK for our final response: the client is gone.
        guard let call = tx.call, call.clientInvite === tx || call.answer != nil else { return }
        if call.isConfirmed { hangUp(call, reason: "SIP;cause=408;text=\"No ACK\"", except: .client) } else { endCall(call) }
    }
}
