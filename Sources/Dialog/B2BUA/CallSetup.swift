import SIPParser
import Transport

// Call set-up: the caller's INVITE becomes a backend leg of its own, sent to the destination the
// picker offers, failed over to the next on a timeout, 408 or 5xx; CANCEL; the ACKs of both legs.
extension B2BUA {
    /// §17.2.1: a 100 Trying quenches the caller's retransmissions, unless the TU answers within
    /// 200 ms. A new call's 100 waits that long: when the farm rings or answers first (the usual
    /// case), its 180 or final response does the job and the 100 is never built or sent.
    static let tryingDelayMilliseconds: UInt64 = 200

    func newCall(_ invite: SIPMessage, _ tx: ServerTxRecord, listenerTag: String) {
        guard let fromTag = invite.tag(of: .from), let callID = invite.callID?.string,
              let from = try? invite.from(), let to = try? invite.to(), let uri = try? invite.requestURI() else {
            respond(tx, status: 400)
            return
        }
        let maxForwards = (try? invite.maxForwards()) ?? 70
        guard maxForwards > 0 else {
            respond(tx, status: 483)
            return
        }
        // RFC 4028 §8: an interval below our minimum is refused with 422 and our Min-SE.
        let sessionExpires = (try? invite.sessionExpires()) ?? nil
        if let se = sessionExpires, se.seconds < config.minSE {
            respond(tx, status: 422, extra: [("Min-SE", "\(config.minSE)")])
            return
        }
        // A clustered node that may not act for its own tag (a backup, or cut off from the
        // majority) takes no new call: nobody could ping, refresh or take it over safely.
        if let reason = refusesNewCalls {
            respond(tx, status: 503, extra: [("Retry-After", "5"), ("Warning", "399 sipedge \"\(reason)\"")])
            return
        }
        if let admission = config.admission {
            guard admission.admit(tx.peer.address) else {
                respond(tx, status: 503, extra: [("Retry-After", "30"), ("Warning", "399 sipedge \"too many calls from this address\"")])
                return
            }
        }
        let clientHop = tx.peer
        let cseq = (try? invite.cseq().number) ?? 1
        // The leg belongs to the listener the INVITE arrived on: our Contact on it is that one's.
        var clientLeg = LegRecord(callID: callID, localTag: ids.make(), remoteTag: fromTag.string, localCSeq: 0,
                                  remoteCSeq: cseq, inviteCSeq: cseq, localURI: Self.addressPart(to), remoteURI: Self.addressPart(from),
                                  remoteTarget: Self.contactURI(of: invite) ?? from.uri.text.bytes,
                                  routeSet: invite.values(.recordRoute).map(\.bytes), hop: clientHop,
                                  listenerTag: addresses.address(for: clientHop.transport, tag: listenerTag.isEmpty ? nil : listenerTag).tag)
        let offer = invite.body.bytes   // one array, shared by both legs' records
        clientLeg.lastSDPReceived = offer
        clientLeg.peerAllowsUpdate = Self.allows(invite, "UPDATE")
        if let se = sessionExpires {
            clientLeg.sessionInterval = se.seconds
            // The caller refreshes unless it asked us to, or cannot (no "timer" in Supported).
            clientLeg.refresher = se.refresher == .uas || !Self.supports(invite, "timer") ? .edge : .peer
        }
        // The caller's identity goes on, but not its address: the From URI's host becomes ours.
        let local = addresses.address(for: .udp)
        let backendFrom = Array((from.displayName.map { $0.string + " " } ?? "").utf8)
            + Array("<sip:\(from.uri.user.map { String(decoding: $0.bytes, as: UTF8.self) + "@" } ?? "")\(local.host):\(local.port)>".utf8)
        var backendLeg = LegRecord(callID: "", localTag: "", localCSeq: 1, localURI: backendFrom, remoteURI: Self.addressPart(to),
                                   remoteTarget: [], hop: tx.peer.withoutWorker, listenerTag: local.tag)
        backendLeg.lastSDPSent = offer
        var record = DialogRecord(client: clientLeg, backend: backendLeg, sharingTag: config.sharingTag, startedAt: Self.wallClock())
        // In a cluster: should this node die before the call is answered, another answers the
        // caller's INVITE with these.
        if !config.sharingTag.isEmpty, invite.valueCount(.via) <= 64 { record.clientInviteVias = invite.values(.via).map(\.bytes) }
        let call = table.insert(record)
        call.admitted = config.admission != nil ? tx.peer.address : nil
        call.user = uri.user.map { String(decoding: $0.bytes, as: UTF8.self) } ?? ""
        call.request = CallRequest(callID: Array(callID.utf8), fromUser: from.uri.user?.bytes ?? [], source: tx.peer,
                                   listenerTag: listenerTag, requestURI: uri.text.bytes, requestUser: call.user,
                                   requestHost: uri.host.string, requestPort: uri.port ?? (uri.scheme == .sips ? 5061 : 5060))
        call.askedSessionExpires = config.sessionExpires > 0 ? max(config.sessionExpires, config.minSE) : 0
        call.clientInvite = tx
        tx.call = call
        callsStarted += 1
        if media != nil, Self.isSDP(invite) {
            // The backend is offered the relay's address for the caller's media; a call the
            // routing refuses never reaches the relay.
            var first: CallDestination?
            do throws(CallRefusal) {
                if let request = call.request { first = try picker.pick(request, excluding: []) }
            } catch {
                return sendOn(call, .refused(error))
            }
            guard let first else { return sendOn(call, .exhausted) }
            clock.schedule(atLeastMilliseconds: Self.tryingDelayMilliseconds, target: self, token: Self.token(.trying, call))
            throughMedia(call, offer, offer: true, from: .client) { [weak self] sdp in
                guard let self, !call.cancelled, call.clientInvite != nil else {
                    self?.picker.release(first.index)
                    return self?.endCall(call) ?? ()
                }
                self.table.update(call) { $0.backend.lastSDPSent = sdp }
                self.sendOn(call, self.tryNextBackend(call, picked: first))
            }
            return
        }
        sendOn(call, tryNextBackend(call))
    }

    /// The new call's first attempt went out, or the caller hears why not.
    private func sendOn(_ call: Call, _ attempt: Attempt) {
        guard let tx = call.clientInvite else { return }
        switch attempt {
        case .sent:
            // (A few milliseconds late does not matter here: the timers of many calls share a wake-up.)
            clock.schedule(atLeastMilliseconds: Self.tryingDelayMilliseconds, target: self, token: Self.token(.trying, call))
        case .exhausted:
            respond(tx, status: 503, extra: [("Retry-After", "30"), ("Warning", "399 sipedge \"no destination available\"")])
            call.clientInvite = nil
            endCall(call)
        case .refused(let refusal):
            respond(tx, status: refusal.status, extra: [("Warning", "399 sipedge \"\(refusal.reason)\"")])
            call.clientInvite = nil
            endCall(call)
        }
    }

    /// What became of an attempt to send a call on.
    enum Attempt: Equatable {
        case sent, exhausted
        case refused(CallRefusal)
    }

    /// Where a new backend INVITE goes: a dispatcher destination (an Asterisk) by this worker's own
    /// port, a phone or a trusted caller's target by the listener it knows; its Request-URI is the
    /// destination's own, or `user` at the destination's address.
    func route(_ choice: CallDestination, user: String) -> (hop: Hop, target: [UInt8]) {
        let destination = choice.index >= 0 ? byOwnPort(choice.hop) : choice.hop
        if let uri = choice.requestURI { return (destination, uri) }
        let transport = destination.transport == .udp ? "" : ";transport=\(destination.transport.rawValue)"
        let host = "\(destination.address.uriHost):\(destination.address.port)"
        return (destination, Array("sip:\(user.isEmpty ? "" : user + "@")\(host)\(transport)".utf8))
    }

    /// The call's backend leg starts afresh toward `destination`: its own Call-ID and tag, no
    /// dialog yet; `more` sets what else the attempt needs, in the same change of the record.
    func renewBackendLeg(_ call: Call, to destination: Hop, target: [UInt8], _ more: (inout DialogRecord) -> Void) {
        let (callID, localTag) = (ids.make(), ids.make())
        let listenerTag = addresses.address(for: destination.transport).tag
        table.update(call, newIdentifiers: true) { record in
            record.backend.callID = callID
            record.backend.localTag = localTag
            record.backend.remoteTag = ""
            record.backend.remoteTarget = target
            record.backend.routeSet = []
            record.backend.hop = destination
            record.backend.listenerTag = listenerTag
            more(&record)
        }
    }

    /// Sends the call's INVITE to the next destination the picker offers (or again to the same one,
    /// after a 422), as a fresh backend leg (own Call-ID, tag, branch).
    /// (`picked`: the destination already chosen for this attempt.)
    @discardableResult
    func tryNextBackend(_ call: Call, sameDestination: Bool = false, picked: CallDestination? = nil) -> Attempt {
        guard let tx = call.clientInvite, let request = call.request else { return .exhausted }
        let invite = tx.request
        let destination: Hop
        var target: [UInt8]
        if sameDestination, call.destination != nil {
            (destination, target) = (call.record.backend.hop, call.record.backend.remoteTarget)
        } else {
            if let previous = call.destination { picker.release(previous) }
            call.destination = nil
            var choice = picked
            if choice == nil {
                do throws(CallRefusal) {
                    choice = try picker.pick(request, excluding: call.tried)
                } catch {
                    return .refused(error)
                }
            }
            guard let choice else { return .exhausted }
            (destination, target) = route(choice, user: call.user)
            call.tried.append(choice.index)
            call.destination = choice.index
        }
        renewBackendLeg(call, to: destination, target: target) { record in
            record.backend.inviteCSeq = record.backend.localCSeq
            record.backendInviteURI = target
        }
        let leg = call.record.backend
        let maxForwards = (try? invite.maxForwards()) ?? 70
        var b = MessageBuilder(requestLine: "INVITE", uri: target)
        via(leg, into: &b)
        b.header("Max-Forwards", number: maxForwards - 1)
        b.header("From", leg.localURI, tag: leg.localTag)
        b.header("To", leg.remoteURI)
        b.header("Call-ID", leg.callID)
        b.cseq(leg.localCSeq, "INVITE")
        contact(leg, into: &b)
        b.header("Allow", Self.allow)
        if call.askedSessionExpires > 0 {
            b.header("Session-Expires", number: call.askedSessionExpires)
            b.header("Min-SE", number: config.minSE)
        }
        Self.copySessionHeaders(from: invite, into: &b, addTimer: call.askedSessionExpires > 0)
        if let replaces = invite.firstValue(.replaces) {
            // RFC 3891: the dialog to replace, named as the backend knows it when it is a call of
            // ours (attended transfer through the edge); else as written (the backend answers 481).
            b.header("Replaces", translatedReplaces(replaces.string)?.value ?? replaces.string)
        }
        // The built bytes go to the transaction as they are: no copy, no second parse. (The body
        // is the caller's, or the relay's in its place.)
        let built = b.finishRequest(contentType: invite.contentType, body: call.record.backend.lastSDPSent)
        table.update(call) { $0.backendInviteBranch = built.branch }
        transactions.startClient(built, to: destination, call: call, side: .backend, cseq: leg.localCSeq, purpose: .backendInvite)
        return .sent
    }

    /// §9.2: a CANCEL is answered 200 by itself; if its INVITE is still pending, the INVITE gets
    /// 487 and the backend gets its own CANCEL (§9.1: same branch and Request-URI as its INVITE).
    func cancel(_ request: SIPMessage, _ tx: ServerTxRecord, key: TransactionKey) {
        let inviteKey = TransactionKey(branch: key.branch, method: "INVITE", sentBy: key.sentBy)
        guard let inviteTx = transactions.server[inviteKey], let call = inviteTx.call, call.clientInvite === inviteTx else {
            respond(tx, status: 481)
            return
        }
        respond(tx, status: 200)
        guard call.record.state == .early else { return }   // answered already: the CANCEL changes nothing
        call.cancelled = true
        cancelBackendInvite(call.record, reason: request.firstValue(.reason)?.string)
        let bytes = MessageBuilder.response(to: inviteTx.request, status: 487, toTag: call.record.client.localTag)
        transactions.respond(inviteTx, status: 487, bytes: bytes)
        call.clientInvite = nil
    }

    /// §9.1: a CANCEL for the backend INVITE still unanswered, from what the record keeps of it
    /// (Request-URI and branch: the same transaction), with the INVITE's Call-ID, From, To and CSeq
    /// number. From this node or, for a node that died, from the one that took its tag.
    func cancelBackendInvite(_ record: DialogRecord, reason: String?) {
        guard !record.backendInviteBranch.isEmpty, !record.backendInviteURI.isEmpty else { return }
        let leg = record.backend
        let local = localAddress(leg)
        var b = MessageBuilder(requestLine: "CANCEL", uri: record.backendInviteURI)
        b.via(leg.hop.transport, host: local.host, port: local.port, branch: record.backendInviteBranch)
        b.header("Max-Forwards", "70")
        b.header("From", leg.localURI, tag: leg.localTag)
        b.header("To", leg.remoteURI)
        b.header("Call-ID", leg.callID)
        b.header("CSeq", "\(leg.inviteCSeq) CANCEL")
        if let reason { b.header("Reason", reason) }
        transactions.startClient(b.finishRequest(), to: leg.hop, call: nil, purpose: .fireAndForget)
    }

    /// Whether a failed attempt may go to another destination: the backend has not committed
    /// (no provisional with a To tag) and it failed with a timeout, 408 or 5xx.
    private func mayFailOver(_ call: Call, status: Int?) -> Bool {
        guard !call.committed, call.clientInvite != nil else { return false }
        guard let status else { return true }
        return status == 408 || (status >= 500 && status < 600)
    }

    /// The backend never answered (Timer B) or is unreachable: that counts against it at once; the
    /// call goes to the next one, or gets 408.
    func backendInviteTimedOut(_ call: Call) {
        if let d = call.destination, !call.committed { picker.failed(d) }
        if call.cancelled {
            endCall(call)
        } else if mayFailOver(call, status: nil) && tryNextBackend(call) == .sent {
            return
        } else if let server = call.clientInvite {
            respond(server, status: 408)
            call.clientInvite = nil
            endCall(call)
        }
    }

    /// A response to the backend INVITE, passed up by its client transaction. With media
    /// anchored, a description in it goes through the relay first (`body`: the relay's): the
    /// answer to the caller's offer, or, when the caller's INVITE had none (late offer), the
    /// backend's offer, which anchors the call.
    func backendInviteResponse(_ response: SIPMessage, call: Call, body relayed: [UInt8]? = nil) {
        let lateOffer = media != nil && call.clientInvite?.request.body.isEmpty == true
        if relayed == nil, call.record.mediaAnchored || lateOffer {
            if call.mediaWaiting != nil { return afterMedia(call) { [weak self] in self?.backendInviteResponse(response, call: call) } }
            if Self.isSDP(response), !call.cancelled, !call.isConfirmed, (response.statusCode ?? 0) < 300 {
                return throughMedia(call, response.body.bytes, offer: lateOffer, from: .backend) { [weak self] sdp in
                    self?.backendInviteResponse(response, call: call, body: sdp)
                }
            }
        }
        let body = relayed ?? response.body.bytes
        if call.cancelled {
            cancelledCallAnswered(response, call: call)
            return
        }
        guard let status = response.statusCode, status > 100 else { return }
        if status >= 200 && status < 300 && call.isConfirmed {
            // A retransmitted 2xx: our ACK was lost (or is still waiting for the caller's answer).
            if call.record.backendAcknowledged { sendBackendACK(call) }
            return
        }
        guard let tx = call.clientInvite else { return }
        if status == 422, !call.committed, let minSE = (try? response.minSE()) ?? nil, minSE > call.askedSessionExpires {
            // RFC 4028 §7.4: the backend wants a longer interval; ask again with it.
            call.askedSessionExpires = minSE
            table.update(call) { $0.backend.localCSeq += 1 }
            if tryNextBackend(call, sameDestination: true) == .sent { return }
        }
        if status >= 300 && mayFailOver(call, status: status) && tryNextBackend(call) == .sent {
            return
        }
        if status >= 200 || response.tag(of: .to) != nil { call.committed = true }
        let answered = status >= 200 && status < 300
        if status < 300 { keepVariables(from: response, call: call) }
        let tag = response.tag(of: .to)?.string
        if status < 300 && tag != nil || !body.isEmpty || answered {
            let target = Self.contactURI(of: response)
            let routeSet = response.values(.recordRoute).map(\.bytes).reversed() as [[UInt8]]
            let now = Self.wallClock()
            table.update(call) { record in
                if status < 300, let tag {
                    record.backend.remoteTag = tag
                    if let target { record.backend.remoteTarget = target }
                    record.backend.routeSet = routeSet
                }
                if !body.isEmpty { record.carry(body, from: .backend) }
                guard answered else { return }
                record.state = .confirmed
                record.answeredAt = now
                record.clientInviteVias = []
                record.backendInviteURI = []
                record.backendInviteBranch = []
                record.backend.peerAllowsUpdate = Self.allows(response, "UPDATE")
                if let se = (try? response.sessionExpires()) ?? nil {
                    record.backend.sessionInterval = se.seconds
                    // In a response to our request, "uac" is us.
                    record.backend.refresher = se.refresher == .uas ? .peer : .edge
                }
                if config.maxCallSeconds > 0 { record.endsAt = now + config.maxCallSeconds }
                // Late offer (the caller's INVITE had no SDP): the backend's ACK carries the
                // caller's answer, so it waits for the caller's ACK.
                record.lateOffer = tx.request.body.isEmpty && !body.isEmpty
            }
        }
        var extra: [(String, String)] = []
        if answered {
            if config.maxCallSeconds > 0 {
                call.lifetimeTimer = clock.schedule(afterMilliseconds: config.maxCallSeconds * 1_000, target: self, token: Self.token(.lifetime, call))
            }
            call.request = nil   // answered: no more destinations to choose
            if !call.record.lateOffer { sendBackendACK(call) }
            armSessionTimer(call, .backend)
            armSessionTimer(call, .client)
            // Pings wait for the caller's ACK (clientAcknowledged): a 2xx that is never
            // acknowledged (a forged source) must not make us send anything more than its
            // retransmissions.
            extra = sessionHeaders(call, .client, inResponse: true)
        }
        var b = MessageBuilder.responseHead(to: tx.request, status: status, relaying: response.reasonPhrase,
                                            toTag: call.record.client.localTag, contact: status < 300 ? contact(call.record.client) : nil,
                                            extraHeaders: extra)
        if status < 300 { b.header("Allow", Self.allow) }
        Self.copySessionHeaders(from: response, into: &b, addTimer: false)
        b.header("Server", "SIPEdge")
        let bytes = b.finish(contentType: response.contentType, body: body)
        transactions.respond(tx, status: status, bytes: bytes)
        if answered {
            call.answer = bytes
            call.answerInterval = config.timers.t1
            call.answerDeadline = clock.now + 64 * config.timers.t1
            if tx.peer.reliability == .unreliable {
                call.answerTimer = clock.schedule(afterMilliseconds: call.answerInterval, target: self, token: Self.token(.answer, call))
            }
        }
        if status >= 300 {
            call.clientInvite = nil
            endCall(call)
        }
    }

    /// The caller's 2xx again, until its ACK (§13.3.1.4); no ACK within 64*T1 ends the call.
    func answerTimerFired(_ call: Call) {
        guard let answer = call.answer else { return }
        if clock.now >= call.answerDeadline {
            call.answerTimer = nil
            hangUp(call, reason: "SIP;cause=408;text=\"No ACK\"", except: .client)
            return
        }
        _ = sender.send(answer, to: call.record.client.hop)
        call.answerInterval = min(call.answerInterval * 2, config.timers.t2)
        call.answerTimer = clock.schedule(afterMilliseconds: call.answerInterval, target: self, token: Self.token(.answer, call))
    }

    /// The ACK for the backend's 2xx (§13.2.2.4), with the caller's answer in a late-offer call.
    func sendBackendACK(_ call: Call) {
        let body = call.record.lateOffer ? call.record.client.lastSDPReceived : []
        let bytes = inDialogRequest("ACK", call: call, side: .backend, cseq: call.record.backend.inviteCSeq,
                                    contentType: body.isEmpty ? nil : Self.sdpType, body: body)
        if !call.record.backendAcknowledged { table.update(call) { $0.backendAcknowledged = true } }
        _ = sender.send(bytes.bytes, to: call.record.backend.hop)
    }

    /// After a CANCEL: the backend's final answer ends the call; a 2xx that crossed the CANCEL is
    /// ACKed and followed by a BYE (§9.1: the CANCEL came too late for it).
    private func cancelledCallAnswered(_ response: SIPMessage, call: Call) {
        guard let status = response.statusCode, status >= 200 else { return }
        if status < 300, !call.isEnded {
            let target = Self.contactURI(of: response)
            table.update(call) { record in
                record.backend.remoteTag = response.tag(of: .to)?.string ?? ""
                if let target { record.backend.remoteTarget = target }
            }
            _ = sender.send(inDialogRequest("ACK", call: call, side: .backend, cseq: call.record.backend.inviteCSeq).bytes,
                            to: call.record.backend.hop)
            sendBYE(call, .backend, reason: nil)
        }
        endCall(call)
    }

    func clientAcknowledged(_ call: Call, ack: SIPMessage) {
        // The INVITE is answered and the answer acknowledged: its server transaction has nothing
        // left to do (a late copy of the INVITE is recognised by its Call-ID), so it ends now
        // rather than after Timer L's 32 s.
        if let tx = call.clientInvite, tx.machine.state == .accepted { transactions.finish(tx) }
        if let t = call.answerTimer { clock.cancel(t) }
        call.answerTimer = nil
        if call.isConfirmed, call.pingTimer == nil, config.pingSeconds > 0 {
            // The dialog is confirmed by both sides now: from here on, it may be pinged.
            call.pingTimer = clock.schedule(afterMilliseconds: config.pingSeconds * 1_000, target: self, token: Self.token(.ping, call))
        }
        if call.answer != nil, !call.record.backendAcknowledged, call.isConfirmed {
            // Late offer: the caller's ACK carries the answer to the backend's offer (through the
            // relay when the offer went through it).
            if !ack.body.isEmpty, call.record.mediaAnchored, media != nil {
                throughMedia(call, ack.body.bytes, offer: false, from: .client) { [weak self] sdp in
                    guard let self else { return }
                    self.table.update(call) { $0.carry(sdp, from: .client) }
                    self.sendBackendACK(call)
                }
            } else {
                if !ack.body.isEmpty { table.update(call) { $0.carry(ack.body.bytes, from: .client) } }
                sendBackendACK(call)
            }
        }
        call.answer = nil
        call.clientInvite = nil
    }
}
