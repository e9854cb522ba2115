import SIPParser
import Transport

/// What became of a dialog a node took over, told once when it is settled: both legs accepted
/// the re-homing request (`rehomed`), a leg failed it (`failed`: ended on a 481, 408 or silence;
/// kept on another refusal, that leg unchanged), the call ended otherwise before both legs
/// answered (`interrupted`: a BYE), an early dialog was ended on both sides (`endedEarly`), or
/// the dialog was not carried here after all.
public enum TakeOverOutcome: Sendable, Equatable {
    case rehomed, failed, interrupted, endedEarly, notCarried
}

/// Re-homing of one call, leg by leg: what is left to do on each, the attempts made, and whom to
/// tell when it is over.
struct Rehoming {
    enum LegState { case sent, backingOff(TimerID), awaitingReconnect(TimerID), done }
    var client = LegState.sent
    var backend = LegState.sent
    var attempts: (client: Int, backend: Int) = (0, 0)
    /// A leg refused the request (other than 481/408): the call goes on, that leg as it was.
    var refused = false
    var done: ((TakeOverOutcome) -> Void)?

    subscript(side: DialogRecord.Side) -> LegState {
        get { side == .client ? client : backend }
        set { if side == .client { client = newValue } else { backend = newValue } }
    }

    func attemptsMade(_ side: DialogRecord.Side) -> Int { side == .client ? attempts.client : attempts.backend }
    mutating func attempted(_ side: DialogRecord.Side) { if side == .client { attempts.client += 1 } else { attempts.backend += 1 } }
}

// Re-homing (DESIGN.md, Cluster): the node that takes a dialog over tells both endpoints its own
// address, with a target-refreshing request on each leg (RFC 3261 §12.2): an UPDATE without a body
// where the leg allows it, else a re-INVITE offering the session description last sent on that
// leg, as it stands (no media change). Our Contact is this node's address for the leg's listener
// tag, the CSeq continues the replicated one (past a gap), the route set is untouched. A 491 is
// tried again after the §14.1 back-off; a 481, a 408 or no answer ends the call on the other leg.
// An early dialog whose node died is ended on both sides. The same path sends the requests of
// `dlg_send_sequential`.
extension B2BUA {
    /// How many times a leg's re-homing request is tried again after a 491.
    static let rehomeRetries = 4
    /// How long a leg toward an endpoint that reached the dead node over its own connection (a
    /// phone behind NAT over TCP/TLS) waits for it to reconnect before the call is ended.
    static let reconnectWaitMilliseconds: UInt64 = 60_000
    /// How far a taken-over leg's CSeq jumps: the node that had it may have sent a request or two
    /// in its last milliseconds that never reached the replicas, and a CSeq below what the
    /// endpoint saw gets 500 (§12.2.2); one above it by more than one is fine (same section).
    static let takeOverCSeqGap: UInt32 = 20

    /// Carries a replicated (or restored) dialog from now on, under the sharing tag `retag` when
    /// given, and re-homes it to this node; `done` is told how it ended. An early dialog cannot be
    /// carried on (the caller's INVITE transaction died with its node): it is ended on both sides.
    public func takeOver(_ record: DialogRecord, retag: String? = nil, done: ((TakeOverOutcome) -> Void)? = nil) {
        clock.assertInLoop()
        if record.state == .early {
            endInheritedEarly(record)
            done?(.endedEarly)
            return
        }
        adopt(record, active: true)
        // (Else by the caller's Call-ID: a recovery resumed on activation gives the backend leg a
        // new one.)
        guard let call = table[record.key] ?? table[record.client.callID], call.active, !call.isEnded else {
            done?(.notCarried)
            return
        }
        if call.rehoming != nil {
            // Already being re-homed here: the first take-over tells how it ends.
            if let retag, call.record.sharingTag != retag { table.update(call) { $0.sharingTag = retag } }
            done?(.notCarried)
            return
        }
        // (A backend leg the dead node was rebuilding is being built afresh from here: it has no
        // dialog to re-home.)
        let rebuilding = call.recovery != nil
        let fresh = (client: freshHop(call[.client]), backend: freshHop(call[.backend]))
        table.update(call) { record in
            if let retag { record.sharingTag = retag }
            // The transactions of the node that had it are gone with it.
            record.reinvite = .none
            record.client.localCSeq &+= Self.takeOverCSeqGap
            record.client.hop = fresh.client
            if !rebuilding {
                record.backend.localCSeq &+= Self.takeOverCSeqGap
                record.backend.hop = fresh.backend
            }
        }
        call.rehoming = Rehoming(done: done)
        rehomeLeg(call, .client)
        if rebuilding { legRehomed(call, .backend) } else { rehomeLeg(call, .backend) }
    }

    /// The hop toward a leg's endpoint from this node: over UDP as it was; over a connection, a new
    /// one to the endpoint's Contact (the address it listens on) when that names an IP address
    /// (the connection it had to the old node is gone).
    func freshHop(_ leg: LegRecord) -> Hop {
        guard leg.hop.transport != .udp, let uri = try? SIPURI(leg.remoteTarget, 0, leg.remoteTarget.count),
              let address = SocketAddress(ip: uri.host.string.trimmingBrackets, port: uri.port ?? (leg.hop.transport == .tls ? 5061 : 5060))
        else { return leg.hop.withoutWorker }
        return Hop(leg.hop.transport, address, listener: leg.hop.listener)
    }

    private func rehomeLeg(_ call: Call, _ side: DialogRecord.Side, preferInvite: Bool = false) {
        guard var rehoming = call.rehoming, !call.isEnded else { return }
        rehoming.attempted(side)
        rehoming[side] = .sent
        call.rehoming = rehoming
        let leg = call[side]
        let method = leg.peerAllowsUpdate && !preferInvite ? "UPDATE" : "INVITE"
        let body = method == "INVITE" ? leg.lastSDPSent : []
        let sent = sendSequential(call, side, method: method, body: body, contentType: body.isEmpty ? nil : "application/sdp") { [weak self, weak call] response in
            guard let self, let call else { return }
            self.rehomeAnswered(response, call: call, side: side, method: method)
        }
        if !sent {
            // Our own re-INVITE cannot go while another is under way in the dialog: soon.
            backOff(call, side, milliseconds: 200)
        }
    }

    private func rehomeAnswered(_ response: SIPMessage?, call: Call, side: DialogRecord.Side, method: String) {
        guard let rehoming = call.rehoming, !call.isEnded else { return }
        let status = response?.statusCode
        switch status {
        case .some(200..<300):
            legRehomed(call, side)
        case .some(491) where rehoming.attemptsMade(side) <= Self.rehomeRetries:
            // §14.1: the owner of the Call-ID (we made the backend leg's) waits 2.1 to 4 s, the
            // other side 0 to 2 s, in units of 10 ms.
            let ms = side == .backend ? UInt64.random(in: 210...400) * 10 : UInt64.random(in: 0...200) * 10
            backOff(call, side, milliseconds: ms)
        case .some(405) where method == "UPDATE", .some(501) where method == "UPDATE":
            rehomeLeg(call, side, preferInvite: true)
        case nil where call[side].hop.transport != .udp && side == .client:
            // An endpoint that had connected to the old node (a phone behind NAT over TCP or TLS)
            // cannot be reached until it connects again: its next request, or its registration,
            // on this node re-homes the leg over that connection.
            let timer = clock.schedule(afterMilliseconds: Self.reconnectWaitMilliseconds, target: self, token: rehomeToken(call, side))
            call.rehoming?[side] = .awaitingReconnect(timer)
            if let aor = Self.addressOfRecord(call[side].remoteURI) { awaitingReconnect[aor, default: []].append(call.number) }
        case nil, .some(408), .some(481):
            // The endpoint is gone or no longer knows the dialog: the call ends on the other leg.
            rehomeFailed(call, except: side, status: status ?? 408)
        default:
            // Refused otherwise (a 488, a 500, 491s without end): the dialog stands as it was on
            // that leg; the endpoint still knows it, and pings tell whether it stays.
            call.rehoming?.refused = true
            legRehomed(call, side)
        }
    }

    private func backOff(_ call: Call, _ side: DialogRecord.Side, milliseconds: UInt64) {
        let timer = clock.schedule(afterMilliseconds: milliseconds, target: self, token: rehomeToken(call, side))
        call.rehoming?[side] = .backingOff(timer)
    }

    private func rehomeToken(_ call: Call, _ side: DialogRecord.Side) -> UInt64 {
        Self.token(side == .client ? .rehomeClient : .rehomeBackend, call)
    }

    func rehomeTimerFired(_ call: Call, _ side: DialogRecord.Side) {
        guard let rehoming = call.rehoming, !call.isEnded else { return }
        switch rehoming[side] {
        case .backingOff: rehomeLeg(call, side)
        case .awaitingReconnect:
            stopAwaitingReconnect(call)
            rehomeFailed(call, except: side, status: 408)
        case .sent, .done: break
        }
    }

    /// A request from a leg that waited for its endpoint to reconnect: the leg is re-homed over
    /// the connection it came on.
    func reconnected(_ call: Call, _ side: DialogRecord.Side) {
        guard case .awaitingReconnect(let timer)? = call.rehoming?[side] else { return }
        clock.cancel(timer)
        stopAwaitingReconnect(call)
        rehomeLeg(call, side)
    }

    private func stopAwaitingReconnect(_ call: Call) {
        guard let aor = Self.addressOfRecord(call[.client].remoteURI), var numbers = awaitingReconnect[aor] else { return }
        numbers.removeAll { $0 == call.number }
        awaitingReconnect[aor] = numbers.isEmpty ? nil : numbers
    }

    /// A user registered over a connection (on any worker of this node): its calls on this worker
    /// that wait for their phone to reconnect are re-homed over that connection (`hop`).
    public func registered(addressOfRecord aor: String, over hop: Hop) {
        clock.assertInLoop()
        guard let numbers = awaitingReconnect.removeValue(forKey: aor) else { return }
        for number in numbers {
            guard let call = table.byNumber[number], case .awaitingReconnect? = call.rehoming?[.client],
                  call[.client].hop.transport == hop.transport else { continue }
            table.update(call) { $0.client.hop = hop }
            reconnected(call, .client)
        }
    }

    /// "user@host" of a From/To value or URI (host in lower case): how a registration and a
    /// caller's leg are matched.
    static func addressOfRecord(_ nameAddress: some Collection<UInt8>) -> String? {
        var bytes = Array(nameAddress)
        if let open = bytes.firstIndex(of: UInt8(ascii: "<")), let close = bytes[open...].firstIndex(of: UInt8(ascii: ">")) {
            bytes = Array(bytes[(open + 1)..<close])
        }
        guard let uri = try? SIPURI(bytes, 0, bytes.count), let user = uri.user else { return nil }
        return "\(String(decoding: user.bytes, as: UTF8.self))@\(uri.host.string.lowercased())"
    }

    private func legRehomed(_ call: Call, _ side: DialogRecord.Side) {
        call.rehoming?[side] = .done
        guard let rehoming = call.rehoming, case .done = rehoming.client, case .done = rehoming.backend else { return }
        call.rehoming = nil
        if rehoming.refused {
            statistics.rehomeFailures += 1
            rehoming.done?(.failed)
        } else {
            statistics.dialogsRehomed += 1
            rehoming.done?(.rehomed)
        }
    }

    private func rehomeFailed(_ call: Call, except side: DialogRecord.Side, status: Int) {
        statistics.rehomeFailures += 1
        abandonRehoming(call, .failed)
        hangUp(call, reason: "SIP;cause=\(status);text=\"Re-homing failed\"", except: side)
    }

    /// A re-homing that will not finish (the call ended, or another node took it): told as such.
    func abandonRehoming(_ call: Call, _ outcome: TakeOverOutcome) {
        guard let rehoming = call.rehoming else { return }
        call.rehoming = nil
        for side in [DialogRecord.Side.client, .backend] {
            switch rehoming[side] {
            case .backingOff(let t): clock.cancel(t)
            case .awaitingReconnect(let t):
                clock.cancel(t)
                stopAwaitingReconnect(call)
            case .sent, .done: break
            }
        }
        rehoming.done?(outcome)
    }

    /// Sends a request of the edge's own within one leg's dialog: the leg's next CSeq, our Contact
    /// when the method refreshes the target (and a session timer's headers where the leg has one);
    /// a 2xx to a re-INVITE is ACKed (with the SDP last sent on the leg when the re-INVITE offered
    /// none) and refreshes the leg's target, SDP and session timer. `done` gets the final response,
    /// or nil when none came. False when a re-INVITE cannot go now (another is under way).
    @discardableResult
    func sendSequential(_ call: Call, _ side: DialogRecord.Side, method: String, body: [UInt8], contentType: String?,
                        headers: [(String, String)] = [], done: @escaping (SIPMessage?) -> Void) -> Bool {
        let isInvite = method == "INVITE"
        if isInvite {
            switch call.record.reinvite {
            case .none, .edge: break
            case .relayed, .refresh: return false
            }
        }
        let timed = isInvite || method == "UPDATE"
        table.update(call) { record in
            record[side].localCSeq += 1
            if isInvite { record.reinvite = .edge }
        }
        if isInvite { call.edgeReinvites += 1 }
        let cseq = call[side].localCSeq
        var extra = timed ? sessionHeaders(call, side, inResponse: false) : []
        if !extra.isEmpty { extra.append(("Supported", "timer")) }
        extra += headers
        let refreshes = SIPMethod(method).map(Self.refreshesTarget) ?? false
        let request = inDialogRequest(method, call: call, side: side, cseq: cseq, contact: refreshes, extra: extra,
                                      contentType: contentType.map { ByteView(text: $0) }, body: body)
        let offered = !body.isEmpty
        // (The call is held until the answer: a 2xx that comes after the call ended is ACKed all the
        // same, §13.2.2.4. The transaction lets go of this closure when it ends.)
        let tx = transactions.startClient(request, to: call[side].hop, call: call, side: side, cseq: cseq, purpose: .ownRequest) { [weak self] response in
            guard let self else { return }
            if isInvite { call.edgeReinvites -= 1 }
            let status = response?.statusCode ?? 408
            let success = status >= 200 && status < 300
            if isInvite && success {
                let answer = offered ? [] : call[side].lastSDPSent
                let ack = self.inDialogRequest("ACK", call: call, side: side, cseq: cseq, contentType: answer.isEmpty ? nil : Self.sdpType, body: answer).bytes
                if side == .client { call.edgeACKs.client = ack } else { call.edgeACKs.backend = ack }
                _ = self.sender.send(ack, to: call[side].hop)
            }
            // A call that ended, or that this node no longer carries, changes no more.
            guard !call.isEnded, call.active, self.table[call.record.key] === call else {
                done(response)
                return
            }
            let target = success && refreshes ? response.flatMap(Self.contactURI) : nil
            let session = success && timed ? response.flatMap { (try? $0.sessionExpires()) ?? nil } : nil
            self.table.update(call) { record in
                if let target { record[side].remoteTarget = target }
                if isInvite, success, let body = response?.body, !body.isEmpty { record[side].lastSDPReceived = body.bytes }
                if let session {
                    record[side].sessionInterval = session.seconds
                    record[side].refresher = session.refresher == .uas ? .peer : .edge
                }
                if isInvite && call.edgeReinvites == 0 { record.reinvite = .none }
            }
            if success && timed { self.armSessionTimer(call, side) }
            done(response)
        }
        guard let tx else { return true }
        call.ownRequests.removeAll { $0.finished }
        call.ownRequests.append(tx)
        return true
    }

    /// What a `dlg_send_sequential` request carries: nothing, the SDP last sent on the leg
    /// (`outbound`), the last one the other leg sent (`inbound`), or a body of the operator's.
    public enum SequentialBody: Sendable {
        case none, outbound, inbound
        case custom(contentType: String, body: [UInt8])
    }

    /// `dlg_send_sequential`: a request of the edge's own on one leg of the dialog this worker
    /// carries whose key or client Call-ID is `callID`; `done` gets the final status and reason
    /// (nil: none came). False when there is no such dialog here or a re-INVITE cannot go now.
    public func sendSequential(callID: String, to side: DialogRecord.Side, method: String, body: SequentialBody,
                               headers: [(String, String)], done: @escaping @Sendable (Int?, String?) -> Void) -> Bool {
        clock.assertInLoop()
        guard let call = table[callID], call.isConfirmed, call.active else { return false }
        let (contentType, bytes): (String?, [UInt8])
        switch body {
        case .none: (contentType, bytes) = (nil, [])
        case .outbound: (contentType, bytes) = ("application/sdp", call[side].lastSDPSent)
        case .inbound: (contentType, bytes) = ("application/sdp", call[side.other].lastSDPReceived)
        case let .custom(type, body): (contentType, bytes) = (type, body)
        }
        return sendSequential(call, side, method: method, body: bytes, contentType: bytes.isEmpty ? nil : contentType, headers: headers) { response in
            done(response?.statusCode, response?.reasonPhrase?.string)
        }
    }

    /// A retransmitted 2xx to one of the edge's own re-INVITEs: its ACK was lost, so it goes again.
    func edgeReinviteAnsweredAgain(_ call: Call, _ side: DialogRecord.Side) {
        if let ack = side == .client ? call.edgeACKs.client : call.edgeACKs.backend { _ = sender.send(ack, to: call[side].hop) }
    }

    /// An early dialog whose node died: nobody can finish setting it up, so it ends on both sides
    /// and leaves no Asterisk channel behind: the backend's INVITE is cancelled (§9.1: its branch
    /// and Request-URI, kept in the record), and the caller's INVITE is answered 503 (its Via
    /// values are in the record too). The ended version goes to the sinks, so every node forgets it.
    func endInheritedEarly(_ record: DialogRecord) {
        guard table[record.key] == nil else { return }
        var record = record
        record.client.hop = freshHop(record.client)
        record.backend.hop = freshHop(record.backend)
        let call = table.adopt(record, active: true)
        callsStarted += 1
        cancelBackendInvite(record, reason: "SIP;cause=503;text=\"Edge node failed\"")
        if !record.clientInviteVias.isEmpty {
            let client = record.client
            var b = MessageBuilder(status: 503, reason: "Service Unavailable".utf8)
            for via in record.clientInviteVias { b.header("Via", via) }
            b.header("From", client.remoteURI, tag: client.remoteTag)
            b.header("To", client.localURI, tag: client.localTag)
            b.header("Call-ID", client.callID)
            b.header("CSeq", "\(client.inviteCSeq) INVITE")
            b.header("Warning", "399 sipedge \"the edge node carrying the call failed\"")
            let answer = b.finish(contentType: nil, body: [])
            _ = sender.send(answer, to: client.hop)
            if client.hop.transport == .udp {
                // No transaction here holds it (its ACK goes to the dead node): it goes twice more,
                // after T1 and 3*T1, in case one is lost.
                let again = Resend(bytes: answer, hop: client.hop, sender: sender)
                clock.schedule(afterMilliseconds: config.timers.t1, target: again, token: 0)
                clock.schedule(afterMilliseconds: 3 * config.timers.t1, target: again, token: 0)
            }
        }
        statistics.earlyDialogsEnded += 1
        endCall(call)
    }
}

/// A message sent again when its timer fires (the loop's timers hold it until then).
final class Resend: TimerTarget {
    let bytes: [UInt8]
    let hop: Hop
    unowned let sender: any MessageSender

    init(bytes: [UInt8], hop: Hop, sender: any MessageSender) {
        self.bytes = bytes
        self.hop = hop
        self.sender = sender
    }

    func timerFired(_ token: UInt64) { _ = sender.send(bytes, to: hop) }
}

extension String {
    /// An IPv6 host as a URI writes it, without its brackets.
    var trimmingBrackets: String {
        hasPrefix("[") && hasSuffix("]") ? String(dropFirst().dropLast()) : self
    }
}
