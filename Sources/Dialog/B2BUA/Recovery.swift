import SIPParser
import Synchronization
import Transport

// Recovery off a dead backend (issue 16, DESIGN.md point 4): the caller's leg never moves; only
// the backend leg is rebuilt. A new INVITE (new Call-ID, tags, CSeq) goes to another destination of
// the set with the lost leg's From and To URIs, the caller's last SDP and headers naming the call
// recovered, so the new Asterisk's dialplan can resume it. Its 2xx is ACKed; when the media it
// answers with differs from what the caller has, the caller gets one re-INVITE in its same dialog.
// With no destination left, the caller gets a BYE with `Reason: SIP;cause=503;text="backend lost"`.
extension B2BUA {
    /// The destination `index` died: this worker's confirmed calls on it are recovered when its set
    /// says so.
    public func backendLost(_ index: Int) {
        clock.assertInLoop()
        guard picker.recovers(index) else { return }
        for call in table.byNumber.values where call.destination == index { startRecovery(call, paced: false) }
        if recoveryPace.timer == nil { recoveryPaceFired() }
    }

    /// `dlg_recover` (planned maintenance of a backend): the confirmed call whose record key or
    /// client Call-ID is `key`, or every confirmed call on one of `destinations`, moves to another
    /// destination of its set now, whatever the set's `recover_calls`. The backend it leaves is
    /// alive: its leg gets a BYE once the new one answered; if no other destination answers, the
    /// call stays where it was. How many calls began to move.
    public func recover(key: String?, destinations: [Int]) -> Int {
        clock.assertInLoop()
        let calls = key.map { table[$0].map { [$0] } ?? [] } ?? table.byNumber.values.filter { c in c.destination.map(destinations.contains) ?? false }
        let started = calls.filter { startRecovery($0, planned: true, paced: false) }.count
        if started > 0, recoveryPace.timer == nil { recoveryPaceFired() }
        return started
    }

    /// The call's backend failed it (no answer, a refusal by the transport, a 481 or 408 to a
    /// request within the call): recovered onto another destination when its set says so. False
    /// when it is not (the caller decides what then).
    /// (`planned`: asked by the operator, the backend alive; `paced` false: the caller starts the
    /// pace once it has queued all its calls.)
    @discardableResult
    func startRecovery(_ call: Call, planned: Bool = false, paced: Bool = true) -> Bool {
        guard call.active, call.isConfirmed, !call.isEnded else { return false }
        if call.recovery != nil { return !planned }
        guard let index = call.destination, planned || picker.recovers(index) else { return false }
        picker.release(index)
        call.destination = nil
        call.recovery = Recovery(tried: [index], lostCallID: call.record.backend.callID, lost: call.record.backend, planned: planned)
        // The lost leg's session timer stays quiet while its replacement is built: a dead backend
        // never ends the caller's call by itself (the caller's leg keeps its own timers).
        if let t = call.sessionTimers.backend { clock.cancel(t); call.sessionTimers.backend = nil }
        statistics.recoveriesStarted += 1
        recoveryPace.waiting.append(call.number)
        if paced && recoveryPace.timer == nil { recoveryPaceFired() }
        return true
    }

    /// A call whose new backend leg another process was building when it died (a take-over, a
    /// restart): that INVITE is cancelled (§9.1: its branch is on the record) and the leg is built
    /// again, first toward the destination it went to, naming the call it recovers as before.
    func resumeRecovery(_ call: Call) {
        guard call.isConfirmed, call.recovery == nil, !call.record.recoveringFrom.isEmpty, call.record.backend.remoteTag.isEmpty else { return }
        cancelBackendInvite(call.record, reason: "SIP;cause=487;text=\"Recovery resumed\"")
        statistics.recoveriesStarted += 1
        // (The destination it went to was claimed for the call on activation.)
        guard let index = call.destination else {
            // Not one of our destinations any more: nowhere to begin.
            statistics.recoveriesFailed += 1
            hangUp(call, reason: "SIP;cause=503;text=\"backend lost\"", except: .backend)
            return
        }
        let uri = call.record.backendInviteURI
        call.recovery = Recovery(tried: [index], lostCallID: call.record.recoveringFrom, lost: nil,
                                 first: CallDestination(index: index, hop: call.record.backend.hop, requestURI: uri.isEmpty ? nil : uri))
        recoveryPace.waiting.append(call.number)
        if recoveryPace.timer == nil { recoveryPaceFired() }
    }

    /// Another node carries the call now (its tag moved): a recovery under way here stops; the
    /// record tells the new holder where it stands (`resumeRecovery`).
    func handOverRecovery(_ call: Call) {
        guard call.recovery != nil else { return }
        call.recovery = nil
        statistics.recoveriesHandedOver += 1
        logRecoveryProgress(finished: true)
    }

    static let recoveryPaceToken: UInt64 = .max

    /// A slice of 10 ms: as many waiting recoveries start as the budget allows (the first slice
    /// at once); a line a second in the log while any is under way.
    func recoveryPaceFired() {
        recoveryPace.timer = nil
        let idle = recoveryPace.head == recoveryPace.waiting.count
        var allowed = recoveryBudget.take(recoveryPace.waiting.count - recoveryPace.head, now: clock.now)
        while recoveryPace.head < recoveryPace.waiting.count, allowed > 0 {
            let number = recoveryPace.waiting[recoveryPace.head]
            recoveryPace.head += 1
            allowed -= 1
            if let call = table.byNumber[number], call.recovery != nil { recoverBackend(call) }
        }
        if recoveryPace.head == recoveryPace.waiting.count {
            recoveryPace.waiting.removeAll(keepingCapacity: false)
            recoveryPace.head = 0
        }
        // The slices go on while they have work, and one more (what comes meanwhile waits its turn).
        if !idle { recoveryPace.timer = clock.schedule(afterMilliseconds: 10, target: self, token: Self.recoveryPaceToken) }
        logRecoveryProgress()
    }

    /// "recovery: worker W: D recovered, F failed, P pending", at most once a second while recoveries
    /// are pending here, and once when the last ends.
    func logRecoveryProgress(finished: Bool = false) {
        guard let log = config.log else { return }
        let pending = statistics.recoveriesPending
        let now = clock.now
        guard (pending == 0 && finished) || (pending > 0 && now >= recoveryPace.lastLog + 1_000) else { return }
        recoveryPace.lastLog = now
        log("recovery: worker \(clock.index): \(statistics.recoveriesDone) recovered, \(statistics.recoveriesFailed) failed, \(pending) pending"
            + (pending == 0 ? " (done)" : ""))
    }

    private func recoverBackend(_ call: Call) {
        guard var recovery = call.recovery, !call.isEnded else { return }
        guard let next = recovery.first.take() ?? picker.replacement(for: recovery.tried[0], callID: Array(recovery.lostCallID.utf8), excluding: recovery.tried) else {
            call.recovery = nil
            statistics.recoveriesFailed += 1
            if recovery.planned, let lost = recovery.lost {
                // Planned, and no other destination took it: it stays on the backend it has.
                table.update(call, newIdentifiers: true) { record in
                    record.backend = lost
                    record.recoveringFrom = ""
                    record.backendInviteURI = []
                    record.backendInviteBranch = []
                }
                picker.claim(recovery.tried[0])
                call.destination = recovery.tried[0]
                armSessionTimer(call, .backend)
            } else {
                hangUp(call, reason: "SIP;cause=503;text=\"backend lost\"", except: .backend)
            }
            logRecoveryProgress(finished: true)
            return
        }
        recovery.tried.append(next.index)
        call.recovery = recovery
        call.destination = next.index
        let toURI = Self.uriBytes(of: call.record.backend.remoteURI)
        let user = (try? SIPURI(toURI, 0, toURI.count))?.user.map { String(decoding: $0.bytes, as: UTF8.self) } ?? ""
        let (destination, target) = route(next, user: user)
        renewBackendLeg(call, to: destination, target: target) { record in
            record.recoveringFrom = recovery.lostCallID
            record.backend.localCSeq = 1
            record.backend.inviteCSeq = 1
            record.backend.remoteCSeq = 0
            // (With media anchored, the relay's side of it, as the lost backend had it.)
            if !record.mediaAnchored { record.backend.lastSDPSent = record.client.lastSDPReceived }
            record.backend.sessionInterval = 0
            record.backend.refresher = .none
            record.backend.peerAllowsUpdate = false
            record.backendAcknowledged = false
        }
        let leg = call.record.backend
        var b = MessageBuilder(requestLine: "INVITE", uri: target)
        via(leg, into: &b)
        b.header("Max-Forwards", "70")
        b.header("From", leg.localURI, tag: leg.localTag)
        b.header("To", leg.remoteURI)
        b.header("Call-ID", leg.callID)
        b.cseq(1, "INVITE")
        contact(leg, into: &b)
        b.header("Allow", Self.allow)
        b.header("X-SIPEdge-Recovery-Call-ID", recovery.lostCallID)
        let age = call.record.answeredAt > 0 ? Self.wallClock() &- call.record.answeredAt : 0
        b.header("X-SIPEdge-Recovery-Age", "\(age)")
        // What the lost backend asked the edge to keep, so the new one can resume the call.
        for v in call.record.variables { b.header("X-SIPEdge-Var-\(v.name)", v.value) }
        let built = b.finishRequest(contentType: leg.lastSDPSent.isEmpty ? nil : Self.sdpType, body: leg.lastSDPSent)
        // (What a CANCEL needs, should the call end before the new backend answers.)
        table.update(call) { record in
            record.backendInviteURI = target
            record.backendInviteBranch = built.branch
        }
        let tx = transactions.startClient(built, to: destination, call: call, side: .backend, cseq: 1, purpose: .ownRequest) { [weak self] response in
            guard let self else { return }
            self.recoveryAnswered(response, call: call)
        }
        // (One of the call's own requests: it stops with the call's carriage, when another node
        // takes the call; an ended call's runs on, for a 2xx crossing its CANCEL.)
        if let tx {
            call.ownRequests.removeAll { $0.finished }
            call.ownRequests.append(tx)
        }
    }

    private func recoveryAnswered(_ response: SIPMessage?, call: Call) {
        guard call.recovery != nil, !call.isEnded else {
            if call.isEnded, let response { recoveryAnsweredTooLate(response, leg: call.record.backend) }
            return
        }
        guard let response, let status = response.statusCode, status >= 200, status < 300, let tag = response.tag(of: .to) else {
            // (No answer at all has already counted against it, in `timedOut`; a refusal says it is alive.)
            if let d = call.destination { picker.release(d) }
            call.destination = nil
            recoverBackend(call)
            return
        }
        let target = Self.contactURI(of: response)
        let routeSet = response.values(.recordRoute).map(\.bytes).reversed() as [[UInt8]]
        let answer = response.body.bytes
        table.update(call) { record in
            record.backend.remoteTag = tag.string
            if let target { record.backend.remoteTarget = target }
            record.backend.routeSet = routeSet
            record.backend.lastSDPReceived = answer
            record.backend.peerAllowsUpdate = Self.allows(response, "UPDATE")
            record.recoveries &+= 1
            record.recoveringFrom = ""
            record.backendInviteURI = []
            record.backendInviteBranch = []
        }
        sendBackendACK(call)
        keepVariables(from: response, call: call)
        if let recovery = call.recovery {
            endLostLeg(recovery, reason: recovery.planned ? "SIP;cause=200;text=\"Call moved\"" : "SIP;cause=503;text=\"backend lost\"")
        }
        call.recovery = nil
        statistics.recoveriesDone += 1
        logRecoveryProgress(finished: true)
        guard !answer.isEmpty else { return }
        if call.record.mediaAnchored {
            // Only the relay's backend side changes: what the caller sends to stays.
            throughMedia(call, answer, offer: false, from: .backend) { [weak self] sdp in self?.tellCallerOfMedia(call, sdp) }
        } else {
            tellCallerOfMedia(call, answer)
        }
    }

    /// The leg a recovery left gets a BYE nobody waits for: a backend moved from on purpose
    /// (`dlg_recover`) ends its channel; one thought dead that was not (a lost probe, a network
    /// split) keeps no channel the call has left.
    func endLostLeg(_ recovery: Recovery, reason: String?) {
        guard let old = recovery.lost else { return }
        var bye = inDialogHead("BYE", leg: old, cseq: old.localCSeq &+ 1, extra: reason.map { [("Reason", $0)] } ?? [])
        transactions.startClient(bye.finishRequest(), to: old.hop, call: nil, purpose: .fireAndForget)
    }

    /// A 2xx that crossed the CANCEL sent when the caller hung up (§9.1: the CANCEL came too
    /// late for it): ACKed and followed by a BYE, so the new backend keeps no channel.
    private func recoveryAnsweredTooLate(_ response: SIPMessage, leg new: LegRecord) {
        guard let status = response.statusCode, status >= 200, status < 300, let tag = response.tag(of: .to) else { return }
        var leg = new
        leg.remoteTag = tag.string
        if let target = Self.contactURI(of: response) { leg.remoteTarget = target }
        leg.routeSet = response.values(.recordRoute).map(\.bytes).reversed()
        var ack = inDialogHead("ACK", leg: leg, cseq: leg.inviteCSeq)
        _ = sender.send(ack.finishRequest().bytes, to: leg.hop)
        var bye = inDialogHead("BYE", leg: leg, cseq: leg.localCSeq &+ 1)
        transactions.startClient(bye.finishRequest(), to: leg.hop, call: nil, purpose: .fireAndForget)
    }

    /// The caller keeps its dialog; it hears of the new backend (one re-INVITE) only if the media
    /// it should send to moved.
    private func tellCallerOfMedia(_ call: Call, _ sdp: [UInt8]) {
        guard Self.mediaAddress(sdp) != Self.mediaAddress(call.record.client.lastSDPSent) else { return }
        table.update(call) { $0.client.lastSDPSent = sdp }
        sendSequential(call, .client, method: "INVITE", body: sdp, contentType: "application/sdp") { _ in }
    }

    static let variablePrefix = Array("x-sipedge-var-".utf8)

    /// `X-SIPEdge-Var-NAME: value` headers in a message from the backend (its answer, its requests
    /// in the dialog) are kept on the dialog, the last value of a name winning (an empty one
    /// removes it), at most `DialogVariable.maxCount` of them; they cross to no one else.
    func keepVariables(from message: SIPMessage, call: Call) {
        var found: [DialogVariable] = []
        for i in 0..<message.headerCount {
            let (name, _, value) = message.header(at: i)
            guard name.count > Self.variablePrefix.count, name.count - Self.variablePrefix.count <= DialogVariable.maxNameBytes,
                  value.count <= DialogVariable.maxValueBytes,
                  name.withUnsafeBytes({ b in Self.variablePrefix.indices.allSatisfy { b[$0] | 0x20 == Self.variablePrefix[$0] | 0x20 } }) else { continue }
            found.append(DialogVariable(name: String(name.string.dropFirst(Self.variablePrefix.count)), value: value.string))
        }
        guard !found.isEmpty else { return }
        table.update(call) { record in
            for v in found {
                record.variables.removeAll { $0.name.lowercased() == v.name.lowercased() }
                if !v.value.isEmpty, record.variables.count < DialogVariable.maxCount { record.variables.append(v) }
            }
        }
    }

    /// The connection address and first media port of a session description (what a caller's
    /// media goes to): "c=" and "m=" lines, as written.
    static func mediaAddress(_ sdp: [UInt8]) -> [Substring] {
        // (A "\r\n" is one Character: split on newlines, not on "\r" or "\n".)
        String(decoding: sdp, as: UTF8.self).split(whereSeparator: \.isNewline)
            .filter { $0.hasPrefix("c=") || $0.hasPrefix("m=") }
            .map { $0.hasPrefix("m=") ? Substring($0.split(separator: " ").prefix(2).joined(separator: " ")) : $0 }
    }

    /// The addr-spec inside a name-addr (between < and >), or the value as it is.
    static func uriBytes(of nameAddress: [UInt8]) -> [UInt8] {
        guard let open = nameAddress.firstIndex(of: UInt8(ascii: "<")),
              let close = nameAddress[open...].firstIndex(of: UInt8(ascii: ">")) else { return nameAddress }
        return Array(nameAddress[(open + 1)..<close])
    }
}

/// Recoveries waiting for their slice of `recoveriesPerSecond`, by call number, in order.
struct RecoveryPace {
    var waiting: [UInt32] = []
    var head = 0
    var timer: TimerID?
    /// When the last progress line was written (loop milliseconds).
    var lastLog: UInt64 = 0
}

/// How many new backend legs may start a second, over every worker that shares it: each takes
/// what it starts from one budget, so the edge keeps its pace wherever the calls are.
public final class RecoveryBudget: Sendable {
    public let perSecond: Int
    /// Thousandths of a recovery that may start, and when (loop milliseconds) it was last earned.
    private let credit = Mutex<(thousandths: Int, at: UInt64)>((0, 0))

    /// `perSecond` 0: no limit.
    public init(perSecond: Int) { self.perSecond = perSecond }

    /// How many of `wanted` recoveries may start at `now`: each millisecond earns `perSecond`
    /// thousandths, up to 10 ms worth (at least one recovery) saved.
    public func take(_ wanted: Int, now: UInt64) -> Int {
        guard perSecond > 0 else { return wanted }
        return credit.withLock { c in
            let earned = now > c.at ? Int(min(now - c.at, 1_000)) * perSecond : 0
            c.thousandths = min(c.thousandths + earned, max(1_000, perSecond * 10))
            c.at = max(c.at, now)
            let granted = min(wanted, c.thousandths / 1_000)
            c.thousandths -= granted * 1_000
            return granted
        }
    }
}

/// A backend leg being rebuilt: the destinations tried, the lost one first, and the leg lost (its
/// Call-ID is named to the new backend).
struct Recovery {
    var tried: [Int]
    let lostCallID: String
    /// The leg replaced, when this node knew it: it gets a BYE once the new one answered. (A
    /// recovery resumed after a take-over or a restart knows only its Call-ID.)
    let lost: LegRecord?
    /// Asked by the operator (`dlg_recover`), the backend alive: when no other destination
    /// answers, the lost leg comes back.
    var planned = false
    /// Where to try first (a resumed recovery: where the INVITE of the node that began it went).
    var first: CallDestination? = nil
}
