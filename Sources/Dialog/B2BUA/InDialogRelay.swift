import SIPParser
import Transport

// In-dialog requests: matched to a leg by the whole dialog id, answered here (BYE, session
// refreshes) or relayed to the other leg as that leg's own request, their answers relayed back.
extension B2BUA {
    /// An in-dialog request (To has a tag): BYE ends the call on both legs; a session refresh is
    /// answered here; anything else crosses to the other leg.
    func inDialog(_ request: SIPMessage, _ tx: ServerTxRecord) {
        guard let (call, side) = table.call(ourTag: request.tag(of: .to), callID: request.callID),
              Self.belongs(request, to: call[side]) else {
            respond(tx, status: 481)
            return
        }
        guard call.active else {
            // A passive copy answers nothing: the peer retransmits until this node takes the call
            // over, or another node answers.
            transactions.finish(tx)
            return
        }
        guard let cseq = try? request.cseq().number else { return }
        let ordered = request.method != .prack || call.isConfirmed
        // §12.2.2: a request older than the last one from that peer is out of order.
        if ordered, cseq < call[side].remoteCSeq, request.method != .prack {
            respond(tx, status: 500, extra: [("Retry-After", "1")])
            return
        }
        // A new NAT binding or connection for the peer: later requests follow it.
        let newHop = tx.peer.transport == call[side].hop.transport && tx.peer != call[side].hop
        if (ordered && cseq > call[side].remoteCSeq) || newHop {
            table.update(call) { record in
                if ordered { record[side].remoteCSeq = max(cseq, record[side].remoteCSeq) }
                if newHop { record[side].hop = tx.peer }
            }
            // An endpoint that had to reconnect after a take-over: re-homed over its new connection.
            if newHop { reconnected(call, side) }
        }
        if request.method == .invite, call.edgeReinvites > 0 {
            // §14.2: a re-INVITE crossing one of ours in the dialog (glare): each side backs off.
            transactions.sendTrying(tx)
            respond(tx, status: 491)
            return
        }
        switch request.method {
        case .bye:
            respond(tx, status: 200)
            hangUp(call, reason: request.firstValue(.reason)?.string, except: side)
        case .ack, .cancel:
            break
        default:
            if isSessionRefresh(request, call: call, side: side) {
                answerRefresh(request, tx, call: call, side: side)
            } else {
                relay(request, tx, call: call, from: side)
            }
        }
    }

    /// §12.2.2: a request belongs to a leg's dialog only when its whole dialog id matches: the
    /// Call-ID (the caller looked the leg up by it), our tag in To and the peer's in From. Knowing
    /// a Call-ID and one tag is not enough to end or change someone's call.
    static func belongs(_ request: SIPMessage, to leg: LegRecord) -> Bool {
        guard let ours = request.tag(of: .to), ours.equals(leg.localTag) else { return false }
        guard let theirs = request.tag(of: .from) else { return leg.remoteTag.isEmpty }
        return theirs.equals(leg.remoteTag)
    }

    /// Requests that refresh the leg's remote target (RFC 3261 §12.2: INVITE, UPDATE; RFC 3515 and
    /// 6665: REFER, SUBSCRIBE and NOTIFY too): they carry our Contact, theirs replaces the target.
    static func refreshesTarget(_ method: SIPMethod) -> Bool {
        method == .invite || method == .update || method == .refer || method == .subscribe || method == .notify
    }

    /// Any other in-dialog request (re-INVITE, UPDATE, INFO, NOTIFY, MESSAGE, REFER, OPTIONS...)
    /// goes to the other leg as that leg's own request; its response comes back the same way.
    func relay(_ request: SIPMessage, _ tx: ServerTxRecord, call: Call, from side: DialogRecord.Side, body relayed: [UInt8]? = nil) {
        guard let method = request.method, let name = request.methodBytes?.string else { return }
        if relayed == nil, call.record.mediaAnchored {
            // With media anchored, an offer (re-INVITE, UPDATE) or answer (PRACK) goes through the relay.
            if call.mediaWaiting != nil { return afterMedia(call) { [weak self] in self?.relay(request, tx, call: call, from: side) } }
            if Self.isSDP(request), method == .invite || method == .update || method == .prack {
                if method == .invite { transactions.sendTrying(tx) }
                return throughMedia(call, request.body.bytes, offer: method != .prack, from: side) { [weak self] sdp in
                    self?.relay(request, tx, call: call, from: side, body: sdp)
                }
            }
        }
        let body = relayed ?? request.body.bytes
        if side == .backend { keepVariables(from: request, call: call) }
        let refreshesTarget = Self.refreshesTarget(method)
        let timed = method == .invite || method == .update
        if method == .invite {
            transactions.sendTrying(tx)
            guard call.record.reinvite == .none else {
                respond(tx, status: 491)
                return
            }
        }
        let other = side.other
        let target = refreshesTarget ? Self.contactURI(of: request) : nil
        let session = timed ? requestedSessionTimer(request) : nil
        table.update(call) { record in
            if let target { record[side].remoteTarget = target }   // §12.2.2 target refresh
            if let session {
                record[side].sessionInterval = session.interval
                record[side].refresher = session.refresher
            }
            if method == .invite { record.reinvite = .relayed(from: side) }
            record[other].localCSeq += 1
            if !body.isEmpty { record.carry(body, from: side) }
        }
        var extra: [(String, String)] = []
        if method == .prack, let rack = request.firstValue(.rack) {
            // RFC 3262 §7.2: RAck names the INVITE by its CSeq, which differs between the legs.
            let parts = rack.string.split(separator: " ", omittingEmptySubsequences: true)
            if parts.count == 3 { extra.append(("RAck", "\(parts[0]) \(call[other].inviteCSeq) \(parts[2])")) }
        }
        if timed { extra += sessionHeaders(call, other, inResponse: false) }
        var built = inDialogHead(name, call: call, side: other, cseq: call[other].localCSeq, contact: refreshesTarget, extra: extra)
        Self.copySessionHeaders(from: request, into: &built, addTimer: extra.contains { $0.0 == "Session-Expires" })
        if method == .refer {
            // RFC 3515: what to refer to, and who refers, cross as written; a Replaces in Refer-To
            // names a dialog by one leg's identifiers: the other side knows only the other leg's.
            for i in 0..<request.headerCount {
                let h = request.header(at: i)
                switch h.kind {
                case .referTo: built.header("Refer-To", translatedReferTo(h.value.bytes))
                case .referredBy: built.header("Referred-By", h.value)
                default: break
                }
            }
        }
        let bytes = built.finishRequest(contentType: request.contentType, body: body)
        transactions.startClient(bytes, to: call[other].hop, call: call, side: other, cseq: call[other].localCSeq, origin: tx)
    }

    /// The other leg answered a relayed request: the answer goes back to the leg that asked.
    func relayResponse(_ response: SIPMessage, clientTx: ClientTxRecord, origin: ServerTxRecord, body relayed: [UInt8]? = nil) {
        guard let status = response.statusCode, status > 100 else { return }
        let method = origin.request.method
        if relayed == nil, let call = clientTx.call, let answering = clientTx.side, call.record.mediaAnchored {
            if call.mediaWaiting != nil {
                return afterMedia(call) { [weak self] in self?.relayResponse(response, clientTx: clientTx, origin: origin) }
            }
            // The answer to an offer relayed (re-INVITE, UPDATE), or an offer in a reliable provisional.
            if Self.isSDP(response), status < 300, origin.machine.state == .proceeding || method != .invite,
               method == .invite || method == .update {
                return throughMedia(call, response.body.bytes, offer: false, from: answering) { [weak self] sdp in
                    self?.relayResponse(response, clientTx: clientTx, origin: origin, body: sdp)
                }
            }
        }
        let body = relayed ?? response.body.bytes
        let refreshes = method.map(Self.refreshesTarget) ?? false
        let timed = method == .invite || method == .update
        var extra: [(String, String)] = []
        var ourContact: MessageBuilder.OurContact?
        if let call = clientTx.call, let answering = clientTx.side {
            let asking = answering.other
            if method == .invite && status >= 200 && status < 300 {
                if origin.machine.state != .proceeding {
                    // A retransmitted 2xx: our ACK was lost.
                    if let ack = call.reinviteACK { _ = sender.send(ack, to: call[answering].hop) }
                    return
                }
                let ack = inDialogRequest("ACK", call: call, side: answering, cseq: clientTx.cseq).bytes
                call.reinviteACK = ack
                _ = sender.send(ack, to: call[answering].hop)
            }
            let success = status >= 200 && status < 300
            if answering == .backend { keepVariables(from: response, call: call) }
            let target = refreshes && success ? Self.contactURI(of: response) : nil
            let session = timed && success ? ((try? response.sessionExpires()) ?? nil) : nil
            if status >= 200 || !body.isEmpty {
                table.update(call) { record in
                    if method == .invite && status >= 200 { record.reinvite = .none }
                    if let target { record[answering].remoteTarget = target }
                    if let session {
                        record[answering].sessionInterval = session.seconds
                        record[answering].refresher = session.refresher == .uas ? .peer : .edge
                    }
                    if !body.isEmpty { record.carry(body, from: answering) }
                }
            }
            if timed && success {
                armSessionTimer(call, answering)
                armSessionTimer(call, asking)
                extra = sessionHeaders(call, asking, inResponse: true)
            }
            if refreshes && success { ourContact = contact(call[asking]) }
        }
        var b = MessageBuilder.responseHead(to: origin.request, status: status, relaying: response.reasonPhrase, toTag: nil,
                                            contact: ourContact, extraHeaders: extra)
        Self.copySessionHeaders(from: response, into: &b, addTimer: false)
        b.header("Server", "SIPEdge")
        transactions.respond(origin, status: status, bytes: b.finish(contentType: response.contentType, body: body))
    }

    /// The request line and dialog headers of a request within a leg's dialog, from the leg's own
    /// state (§12.2.1.1), for a caller that adds more before finishing it.
    func inDialogHead(_ method: String, call: Call, side: DialogRecord.Side, cseq: UInt32, contact withContact: Bool = false,
                      extra: [(String, String)] = []) -> MessageBuilder {
        // (The leg is lent from the record in place, not copied.)
        inDialogHead(method, leg: call[side], cseq: cseq, contact: withContact, extra: extra)
    }

    /// The head of a request within `leg`'s dialog (also one no call holds any more: a backend
    /// leg replaced by a recovery).
    func inDialogHead(_ method: String, leg: LegRecord, cseq: UInt32, contact withContact: Bool = false,
                      extra: [(String, String)] = []) -> MessageBuilder {
        var b = MessageBuilder(requestLine: method, uri: leg.remoteTarget)
        via(leg, into: &b)
        b.header("Max-Forwards", "70")
        for route in leg.routeSet { b.header("Route", route) }
        b.header("From", leg.localURI, tag: leg.localTag)
        b.header("To", leg.remoteURI, tag: leg.remoteTag)
        b.header("Call-ID", leg.callID)
        b.cseq(cseq, method)
        if withContact { contact(leg, into: &b) }
        for (name, value) in extra { b.header(name, value) }
        return b
    }

    /// A whole request within a leg's dialog.
    func inDialogRequest(_ method: String, call: Call, side: DialogRecord.Side, cseq: UInt32, contact withContact: Bool = false,
                         extra: [(String, String)] = [], contentType: ByteView? = nil, body: [UInt8] = []) -> BuiltRequest {
        var b = inDialogHead(method, call: call, side: side, cseq: cseq, contact: withContact, extra: extra)
        return b.finishRequest(contentType: contentType, body: body)
    }

    /// Sends a BYE on one leg (its own CSeq), answered or not.
    func sendBYE(_ call: Call, _ side: DialogRecord.Side, reason: String?) {
        table.update(call) { $0[side].localCSeq += 1 }
        let bytes = inDialogRequest("BYE", call: call, side: side, cseq: call[side].localCSeq, extra: reason.map { [("Reason", $0)] } ?? [])
        transactions.startClient(bytes, to: call[side].hop, call: nil, purpose: .fireAndForget)
    }
}
