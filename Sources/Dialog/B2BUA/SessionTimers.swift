import SIPParser
import Transport

// RFC 4028 session timers, per leg (each leg has its own interval and refresher; a refresh on one
// leg never crosses to the other), and in-dialog OPTIONS pings.
extension B2BUA {
    /// An UPDATE without a body, or a re-INVITE offering the session the peer already has: it only
    /// refreshes that leg's session timer, so the edge answers it and the other leg never hears of it.
    func isSessionRefresh(_ request: SIPMessage, call: Call, side: DialogRecord.Side) -> Bool {
        guard call.isConfirmed, call[side].sessionInterval > 0 else { return false }
        if request.method == .update { return request.body.isEmpty }
        if request.method == .invite {
            return request.body.isEmpty ? false : request.body.bytes.elementsEqual(call[side].lastSDPReceived)
        }
        return false
    }

    func answerRefresh(_ request: SIPMessage, _ tx: ServerTxRecord, call: Call, side: DialogRecord.Side) {
        if request.method == .invite { transactions.sendTrying(tx) }
        let session = requestedSessionTimer(request)
        let target = Self.contactURI(of: request)
        table.update(call) { record in
            if let session {
                record[side].sessionInterval = session.interval
                record[side].refresher = session.refresher
            }
            if let target { record[side].remoteTarget = target }
        }
        let leg = call[side]
        let body = request.method == .invite ? leg.lastSDPSent : []
        var b = MessageBuilder.responseHead(to: request, status: 200, toTag: nil, contact: contact(leg),
                                            extraHeaders: sessionHeaders(call, side, inResponse: true) + [("Allow", Self.allow)])
        b.header("Server", "SIPEdge")
        transactions.respond(tx, status: 200, bytes: b.finish(contentType: body.isEmpty ? nil : Self.sdpType, body: body))
        armSessionTimer(call, side)
    }

    /// The interval and refresher a refresh request from the peer asks for (RFC 4028 §9), if any
    /// and not below our minimum. In a request from the peer, "uac" is the peer.
    func requestedSessionTimer(_ request: SIPMessage) -> (interval: UInt32, refresher: SessionRefresher)? {
        guard let se = (try? request.sessionExpires()) ?? nil, se.seconds >= config.minSE else { return nil }
        return (se.seconds, se.refresher == .uas || !Self.supports(request, "timer") ? .edge : .peer)
    }

    /// Session-Expires (and Require: timer) for a leg's message, when that leg has a session timer.
    func sessionHeaders(_ call: Call, _ side: DialogRecord.Side, inResponse: Bool) -> [(String, String)] {
        let leg = call[side]
        guard leg.sessionInterval > 0 else { return [] }
        // "uac" names the sender of the request: the peer when we answer, us when we ask.
        let peerRefreshes = leg.refresher == .peer
        let refresher = inResponse ? (peerRefreshes ? "uac" : "uas") : (peerRefreshes ? "uas" : "uac")
        var out = [("Session-Expires", "\(leg.sessionInterval);refresher=\(refresher)")]
        if inResponse && peerRefreshes { out.append(("Require", "timer")) }
        if !inResponse { out.append(("Min-SE", "\(config.minSE)")) }
        return out
    }

    /// (Re)starts a leg's session timer: at half the interval when we refresh, shortly before the
    /// end (§10: interval - min(32, interval/3)) when the peer does. Not for a passive copy.
    func armSessionTimer(_ call: Call, _ side: DialogRecord.Side) {
        let old = side == .client ? call.sessionTimers.client : call.sessionTimers.backend
        if let old { clock.cancel(old) }
        let leg = call[side]
        var timer: TimerID?
        if leg.sessionInterval > 0 && leg.refresher != .none && !call.isEnded && call.active {
            let interval = UInt64(leg.sessionInterval)
            let ms = leg.refresher == .edge ? interval * 500 : (interval - min(32, interval / 3)) * 1_000
            timer = clock.schedule(afterMilliseconds: max(ms, 100), target: self, token: Self.token(side == .client ? .sessionClient : .sessionBackend, call))
        }
        if side == .client { call.sessionTimers.client = timer } else { call.sessionTimers.backend = timer }
    }

    func sessionTimerFired(_ call: Call, _ side: DialogRecord.Side) {
        if side == .client { call.sessionTimers.client = nil } else { call.sessionTimers.backend = nil }
        guard call.isConfirmed else { return }
        let leg = call[side]
        if leg.refresher == .peer {
            // No refresh came in time: the session is over on that leg, so on both (§10).
            statistics.callsTimedOut += 1
            hangUp(call, reason: "SIP;cause=408;text=\"Session timer expired\"")
            return
        }
        guard call.record.reinvite == .none else {
            // A re-INVITE is crossing: try again shortly.
            let t = clock.schedule(afterMilliseconds: 1_000, target: self, token: Self.token(side == .client ? .sessionClient : .sessionBackend, call))
            if side == .client { call.sessionTimers.client = t } else { call.sessionTimers.backend = t }
            return
        }
        // Our turn to refresh: UPDATE without a body where the peer takes it, else a re-INVITE
        // offering the session as it stands.
        let method = leg.peerAllowsUpdate ? "UPDATE" : "INVITE"
        table.update(call) { record in
            record[side].localCSeq += 1
            if method == "INVITE" { record.reinvite = .refresh(side) }
        }
        let body = method == "INVITE" ? leg.lastSDPSent : []
        let bytes = inDialogRequest(method, call: call, side: side, cseq: call[side].localCSeq, contact: true,
                                    extra: sessionHeaders(call, side, inResponse: false) + [("Supported", "timer")],
                                    contentType: body.isEmpty ? nil : Self.sdpType, body: body)
        statistics.sessionRefreshesSent += 1
        startOwnRequest(bytes, call: call, side: side, purpose: .refresh(side))
    }

    /// A ping or refresh of a call's own: ended with the call if still under way.
    private func startOwnRequest(_ request: BuiltRequest, call: Call, side: DialogRecord.Side, purpose: ClientTxRecord.Purpose) {
        guard let tx = transactions.startClient(request, to: call[side].hop, call: call, side: side, cseq: call[side].localCSeq,
                                                purpose: purpose) else { return }
        call.ownRequests.removeAll { $0.finished }
        call.ownRequests.append(tx)
    }

    /// The answer to a session refresh we sent on `side`.
    func refreshAnswered(_ response: SIPMessage, tx: ClientTxRecord, call: Call, side: DialogRecord.Side) {
        guard let status = response.statusCode, status >= 200 else { return }
        if tx.machine.isInvite, status < 300 {
            _ = sender.send(inDialogRequest("ACK", call: call, side: side, cseq: tx.cseq).bytes, to: call[side].hop)
        }
        let session = status < 300 ? ((try? response.sessionExpires()) ?? nil) : nil
        table.update(call) { record in
            if tx.machine.isInvite {
                if status < 300, !response.body.isEmpty { record[side].lastSDPReceived = response.body.bytes }
                record.reinvite = .none
            }
            if let session {
                record[side].sessionInterval = session.seconds
                record[side].refresher = session.refresher == .uas ? .peer : .edge
            }
        }
        if status < 300 || status == 491 {
            armSessionTimer(call, side)
        } else {
            hangUp(call, reason: "SIP;cause=\(status);text=\"Session refresh failed\"")
        }
    }

    /// The peer is there if it answers at all, unless it no longer knows the dialog.
    func pingAnswered(_ response: SIPMessage, call: Call, side: DialogRecord.Side) {
        guard let status = response.statusCode, status == 408 || status == 481 else { return }
        // A backend that no longer knows the call (restarted): recovered where its set says so.
        if side == .backend && startRecovery(call) { return }
        hangUp(call, reason: "SIP;cause=\(status);text=\"Dialog ping failed\"")
    }

    func ping(_ call: Call) {
        call.pingTimer = nil
        guard call.isConfirmed, call.active else { return }
        if call.recovery != nil {
            // Its backend leg is being rebuilt: the next round.
            call.pingTimer = clock.schedule(afterMilliseconds: config.pingSeconds * 1_000, target: self, token: Self.token(.ping, call))
            return
        }
        table.update(call) { record in
            record.client.localCSeq += 1
            record.backend.localCSeq += 1
        }
        for side in [DialogRecord.Side.client, .backend] {
            statistics.pingsSent += 1
            startOwnRequest(inDialogRequest("OPTIONS", call: call, side: side, cseq: call[side].localCSeq), call: call, side: side, purpose: .ping(side))
        }
        if call.isConfirmed {
            call.pingTimer = clock.schedule(afterMilliseconds: config.pingSeconds * 1_000, target: self, token: Self.token(.ping, call))
        }
    }
}
