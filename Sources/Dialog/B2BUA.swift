import SIPParser
import Transport

/// Where the B2BUA's messages go out; the edge implements it over its listeners.
public protocol MessageSender: AnyObject {
    func send(_ bytes: [UInt8], to destination: SocketAddress)
}

/// What a B2BUA needs to know of its surroundings.
public struct B2BUAConfig: Sendable {
    /// Host and port written into our Via and Contact (the listener's advertised address).
    public var host: String
    public var port: UInt16
    /// Where new calls go, in turn (the dispatcher with probing replaces this, issue 5).
    public var backends: [SocketAddress]
    public var timers: TransactionTimerValues
    /// A call still up after this many seconds is ended with a BYE to both legs (0: never).
    public var maxCallSeconds: UInt64

    public init(host: String, port: UInt16, backends: [SocketAddress], timers: TransactionTimerValues = .rfc3261,
                maxCallSeconds: UInt64 = 43_200) {
        self.host = host
        self.port = port
        self.backends = backends
        self.maxCallSeconds = maxCallSeconds
        self.timers = timers
    }
}

/// One side of a call, as the edge sees it: its own Call-ID, tags, CSeq space, remote target and
/// the address its messages go to. Nothing of one leg is ever written into the other's messages.
struct Leg {
    var callID: String
    var localTag: String
    var remoteTag: String?
    var localCSeq: UInt32
    /// Our address-of-record on this leg (a From/To value without its tag).
    var localURI: [UInt8]
    var remoteURI: [UInt8]
    /// Where in-dialog requests are addressed (the peer's Contact URI).
    var remoteTarget: [UInt8]
    /// Where messages for this leg are sent.
    var peer: SocketAddress
}

/// A call through the edge: the client leg and the backend leg.
final class Call {
    enum State { case early, confirmed, ended }
    let number: UInt32
    var client: Leg
    var backend: Leg
    var state = State.early
    /// The client's INVITE server transaction, while responses still flow back to it.
    var clientInvite: ServerTxRecord?
    /// The 2xx sent to the client, retransmitted until its ACK comes (RFC 3261 §13.3.1.4).
    var answer: [UInt8]?
    var answerInterval: UInt64 = 0
    var answerTimer: TimerID?
    var answerDeadline: UInt64 = 0
    /// The ACK sent to the backend for its 2xx, resent if the 2xx is retransmitted.
    var backendACK: [UInt8]?
    /// Serial failover: which destination this call started with, how many it has tried, and
    /// whether a backend has committed to it (a provisional with a To tag, or a 2xx).
    var firstDestination = 0
    var attempts = 0
    var committed = false
    /// The INVITE sent to the current backend (a CANCEL copies its Via, From, To and Request-URI).
    var backendInvite: SIPMessage?
    /// The client cancelled: a late 2xx from the backend is ACKed and then ended with a BYE.
    var cancelled = false
    /// A re-INVITE is on its way through; another one meets 491 (glare, RFC 3261 §14.2).
    var reinviteInProgress = false
    /// The ACK for the last relayed re-INVITE's 2xx, resent if that 2xx is retransmitted.
    var reinviteACK: [UInt8]?
    /// Ends the call when its maximum lifetime is up.
    var lifetimeTimer: TimerID?
    /// The Request-URI user, to address each backend.
    var user = ""
    /// CSeq numbers of the INVITE on each leg (a PRACK's RAck names it).
    var clientInviteCSeq: UInt32 = 1
    var backendInviteCSeq: UInt32 = 1

    init(number: UInt32, client: Leg, backend: Leg) {
        self.number = number
        self.client = client
        self.backend = backend
    }
}

/// A transaction of the B2BUA: its state machine, the request it is about, the peer its messages
/// go to, its key, its armed timers and the call it serves.
final class TransactionRecord<Machine> {
    let id: UInt32
    var machine: Machine
    let request: SIPMessage
    let peer: SocketAddress
    let key: TransactionKey
    var timers: [TransactionTimer: TimerID] = [:]
    weak var call: Call?
    /// For a request relayed from one leg to the other: the server transaction it answers.
    var origin: AnyObject?

    init(id: UInt32, machine: Machine, request: SIPMessage, peer: SocketAddress, key: TransactionKey) {
        self.id = id
        self.machine = machine
        self.request = request
        self.peer = peer
        self.key = key
    }
}

typealias ServerTxRecord = TransactionRecord<ServerTransaction>
typealias ClientTxRecord = TransactionRecord<ClientTransaction>

/// The B2BUA of one worker: every call is split into a client leg and a backend leg that never
/// see each other's Via, Record-Route, Contact or Call-ID. It runs RFC 3261 transactions for both
/// legs on the worker's loop. This first cut carries INVITE (provisional, 2xx, non-2xx, timeout),
/// ACK and BYE from either side over UDP; CANCEL, re-INVITE, UPDATE, PRACK, failover and dialog
/// records come next.
public final class B2BUA: TimerTarget {
    public let loop: EventLoop
    public let config: B2BUAConfig
    private unowned let sender: any MessageSender
    private var ids: ShardedIdentifiers
    private var nextTxID: UInt32 = 1
    private var serverTransactions: [TransactionKey: ServerTxRecord] = [:]
    private var clientTransactions: [TransactionKey: ClientTxRecord] = [:]
    private var transactionsByID: [UInt32: AnyObject] = [:]
    private var calls: [String: Call] = [:]
    private var callsByNumber: [UInt32: Call] = [:]
    /// Calls set up and ended so far (statistics and tests).
    public private(set) var callsStarted = 0
    public private(set) var callsEnded = 0
    public var activeCalls: Int { callsByNumber.count }

    public init(loop: EventLoop, config: B2BUAConfig, sender: any MessageSender) {
        self.loop = loop
        self.config = config
        self.sender = sender
        self.ids = ShardedIdentifiers(worker: loop.index)
    }

    private var contact: String { "<sip:edge@\(config.host):\(config.port)>" }

    private func newBranch() -> String { "z9hG4bK" + ids.make() }

    // MARK: - Receiving

    /// A parsed, validated message from `source`.
    public func receive(_ message: SIPMessage, from source: SocketAddress) {
        loop.assertInLoop()
        if message.isRequest {
            receiveRequest(message, from: source)
        } else if let key = TransactionKey.client(forResponse: message), let tx = clientTransactions[key] {
            let actions = tx.machine.handle(.response(message))
            perform(actions, client: tx, message: message)
        }
        // A response matching no transaction is dropped (§17.1.3).
    }

    private func receiveRequest(_ request: SIPMessage, from source: SocketAddress) {
        let key = TransactionKey.server(forRequest: request)
        if request.method == .ack {
            if let key, let tx = serverTransactions[key] {
                perform(tx.machine.handle(.ack), server: tx)
            } else if let id = request.callID?.string, let call = calls[id], id == call.client.callID {
                clientAcknowledged(call)
            }
            return
        }
        if let key, let tx = serverTransactions[key] {
            perform(tx.machine.handle(.retransmission), server: tx)
            return
        }
        guard let key, let method = request.method else { return }
        let reliability: TransportReliability = .unreliable
        let tx = ServerTxRecord(id: takeID(), machine: ServerTransaction(method: method, reliability: reliability, timers: config.timers),
                                request: request, peer: source, key: key)
        register(tx)
        if request.tag(of: .to) != nil {
            inDialog(request, tx)
            return
        }
        switch method {
        case .invite:
            newCall(request, tx)
        case .cancel:
            cancel(request, tx, key: key)
        case .options:
            respond(tx, status: 200, extra: [("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS")])
        default:
            respond(tx, status: 501)
        }
    }

    // MARK: - Calls

    private func newCall(_ invite: SIPMessage, _ tx: ServerTxRecord) {
        perform(tx.machine.start(trying: MessageBuilder.response(to: invite, status: 100, toTag: nil)), server: tx)
        guard let fromTag = invite.tag(of: .from), let callID = invite.callID?.string,
              let from = try? invite.from(), let to = try? invite.to(), let uri = try? invite.requestURI() else {
            respond(tx, status: 400)
            return
        }
        let clientTarget = (try? invite.contact()).flatMap { value -> [UInt8]? in
            if case .addresses(let a) = value, let first = a.first { return first.uri.text.bytes }
            return nil
        } ?? from.uri.text.bytes
        let clientLeg = Leg(callID: callID, localTag: ids.make(), remoteTag: fromTag.string, localCSeq: 0,
                            localURI: addressPart(to), remoteURI: addressPart(from), remoteTarget: clientTarget, peer: tx.peer)
        guard !config.backends.isEmpty else {
            respond(tx, status: 503)
            return
        }
        // The caller's identity goes on, but not its address: the From URI's host becomes ours.
        let backendFrom = Array((from.displayName.map { $0.string + " " } ?? "").utf8)
            + Array("<sip:\(from.uri.user.map { String(decoding: $0.bytes, as: UTF8.self) + "@" } ?? "")\(config.host):\(config.port)>".utf8)
        let backendLeg = Leg(callID: "", localTag: "", remoteTag: nil, localCSeq: 1, localURI: backendFrom,
                             remoteURI: addressPart(to), remoteTarget: [], peer: config.backends[0])
        let call = Call(number: takeID(), client: clientLeg, backend: backendLeg)
        call.user = uri.user.map { String(decoding: $0.bytes, as: UTF8.self) } ?? ""
        call.clientInviteCSeq = (try? invite.cseq().number) ?? 1
        call.firstDestination = callsStarted % config.backends.count
        call.clientInvite = tx
        tx.call = call
        calls[clientLeg.callID] = call
        callsByNumber[call.number] = call
        callsStarted += 1
        let maxForwards = ((try? invite.maxForwards()) ?? 70) ?? 70
        guard maxForwards > 0 else {
            respond(tx, status: 483)
            endCall(call)
            return
        }
        tryNextBackend(call)
    }

    /// Sends the call's INVITE to its next destination, as a fresh backend leg (own Call-ID, tag,
    /// branch). Serial failover calls it again after a failure before the backend committed.
    private func tryNextBackend(_ call: Call) {
        guard let tx = call.clientInvite else { return }
        let invite = tx.request
        let destination = config.backends[(call.firstDestination + call.attempts) % config.backends.count]
        call.attempts += 1
        if !call.backend.callID.isEmpty { calls[call.backend.callID] = nil }
        let host = destination.family == .inet6 ? "[\(destination.ipString)]" : destination.ipString
        let target = Array("sip:\(call.user.isEmpty ? "" : call.user + "@")\(host):\(destination.port)".utf8)
        call.backend.callID = ids.make()
        call.backend.localTag = ids.make()
        call.backend.remoteTag = nil
        call.backend.remoteTarget = target
        call.backend.peer = destination
        calls[call.backend.callID] = call
        let maxForwards = ((try? invite.maxForwards()) ?? 70) ?? 70
        var b = MessageBuilder(requestLine: "INVITE", uri: target)
        b.header("Via", "SIP/2.0/UDP \(config.host):\(config.port);branch=\(newBranch());rport")
        b.header("Max-Forwards", "\(maxForwards - 1)")
        b.header("From", call.backend.localURI + Array(";tag=\(call.backend.localTag)".utf8))
        b.header("To", call.backend.remoteURI)
        b.header("Call-ID", call.backend.callID)
        b.header("CSeq", "\(call.backend.localCSeq) INVITE")
        call.backendInviteCSeq = call.backend.localCSeq
        b.header("Contact", contact)
        b.copy(MessageBuilder.endToEnd, from: invite)
        let bytes = b.finish(contentType: invite.contentType, body: invite.body.bytes)
        call.backendInvite = try? SIPMessage(parsing: bytes)
        startClient(bytes, to: destination, call: call)
    }

    /// §9.2: a CANCEL is answered 200 by itself; if its INVITE is still pending, the INVITE gets
    /// 487 and the backend gets its own CANCEL (§9.1: same branch and Request-URI as its INVITE).
    private func cancel(_ request: SIPMessage, _ tx: ServerTxRecord, key: TransactionKey) {
        let inviteKey = TransactionKey(branch: key.branch, method: "INVITE", sentBy: key.sentBy)
        guard let inviteTx = serverTransactions[inviteKey], let call = inviteTx.call, call.clientInvite === inviteTx else {
            respond(tx, status: 481)
            return
        }
        respond(tx, status: 200)
        guard call.state == .early else { return }   // answered already: the CANCEL changes nothing
        call.cancelled = true
        if let backendInvite = call.backendInvite {
            var b = MessageBuilder(requestLine: "CANCEL", uri: backendInvite.requestURIBytes?.bytes ?? call.backend.remoteTarget)
            if let via = backendInvite.topValue(.via) { b.header("Via", via.bytes) }
            b.header("Max-Forwards", "70")
            if let from = backendInvite.firstValue(.from) { b.header("From", from.bytes) }
            if let to = backendInvite.firstValue(.to) { b.header("To", to.bytes) }
            b.header("Call-ID", call.backend.callID)
            b.header("CSeq", "\(call.backend.localCSeq) CANCEL")
            startClient(b.finish(), to: call.backend.peer, call: nil)
        }
        let bytes = MessageBuilder.response(to: inviteTx.request, status: 487, toTag: call.client.localTag)
        perform(inviteTx.machine.handle(.respond(status: 487, bytes: bytes)), server: inviteTx)
        call.clientInvite = nil
    }

    /// Whether a failed attempt may go to another destination: the backend has not committed
    /// (no provisional with a To tag), it failed with a timeout, 408 or 5xx, and one is left.
    private func mayFailOver(_ call: Call, status: Int?) -> Bool {
        guard !call.committed, call.attempts < config.backends.count, call.clientInvite != nil else { return false }
        guard let status else { return true }
        return status == 408 || (status >= 500 && status < 600)
    }

    /// A response to the backend INVITE, passed up by its client transaction.
    private func backendInviteResponse(_ response: SIPMessage, call: Call) {
        if call.cancelled {
            cancelledCallAnswered(response, call: call)
            return
        }
        guard let status = response.statusCode, status > 100, let tx = call.clientInvite else { return }
        if status >= 300 && mayFailOver(call, status: status) {
            tryNextBackend(call)
            return
        }
        if status >= 200 || response.tag(of: .to) != nil { call.committed = true }
        if status < 300, let tag = response.tag(of: .to) {
            call.backend.remoteTag = tag.string
            if let contact = try? response.contact(), case .addresses(let a) = contact, let first = a.first {
                call.backend.remoteTarget = first.uri.text.bytes
            }
        }
        if status >= 200 && status < 300 {
            if call.state == .confirmed {
                // A retransmitted 2xx: our ACK was lost.
                if let ack = call.backendACK { sender.send(ack, to: call.backend.peer) }
                return
            }
            call.state = .confirmed
            if config.maxCallSeconds > 0 {
                call.lifetimeTimer = loop.schedule(afterMilliseconds: config.maxCallSeconds * 1_000, target: self,
                                                   token: Self.lifetimeFlag | UInt64(call.number))
            }
            let ack = inDialogRequest("ACK", leg: call.backend, cseq: call.backend.localCSeq)
            call.backendACK = ack
            sender.send(ack, to: call.backend.peer)
        }
        let bytes = MessageBuilder.response(to: tx.request, status: status, reason: response.reasonPhrase?.string,
                                            toTag: call.client.localTag, contact: status < 300 ? contact : nil,
                                            copying: response, contentType: response.contentType, body: response.body.bytes)
        perform(tx.machine.handle(.respond(status: status, bytes: bytes)), server: tx)
        if status >= 200 && status < 300 {
            call.answer = bytes
            call.answerInterval = config.timers.t1
            call.answerDeadline = loop.now + 64 * config.timers.t1
            call.answerTimer = loop.schedule(afterMilliseconds: call.answerInterval, target: self, token: Self.answerToken(call))
        }
        if status >= 300 {
            call.clientInvite = nil
            endCall(call)
        }
    }

    /// After a CANCEL: the backend's final answer ends the call; a 2xx that crossed the CANCEL is
    /// ACKed and followed by a BYE (§9.1: the CANCEL came too late for it).
    private func cancelledCallAnswered(_ response: SIPMessage, call: Call) {
        guard let status = response.statusCode, status >= 200 else { return }
        if status < 300, call.state != .ended {
            call.backend.remoteTag = response.tag(of: .to)?.string
            if let contact = try? response.contact(), case .addresses(let a) = contact, let first = a.first {
                call.backend.remoteTarget = first.uri.text.bytes
            }
            sender.send(inDialogRequest("ACK", leg: call.backend, cseq: call.backend.localCSeq), to: call.backend.peer)
            call.backend.localCSeq += 1
            startClient(inDialogRequest("BYE", leg: call.backend, cseq: call.backend.localCSeq), to: call.backend.peer, call: nil)
        }
        endCall(call)
    }

    private func clientAcknowledged(_ call: Call) {
        if let t = call.answerTimer { loop.cancel(t) }
        call.answerTimer = nil
        call.answer = nil
        call.clientInvite = nil
    }

    /// An in-dialog request (To has a tag): BYE ends the call on both legs; OPTIONS is answered.
    private func inDialog(_ request: SIPMessage, _ tx: ServerTxRecord) {
        guard let callID = request.callID?.string, let call = calls[callID] else {
            respond(tx, status: 481)
            return
        }
        switch request.method {
        case .bye:
            respond(tx, status: 200)
            let fromClient = callID == call.client.callID
            var other = fromClient ? call.backend : call.client
            other.localCSeq += 1
            if fromClient { call.backend = other } else { call.client = other }
            let bye = inDialogRequest("BYE", leg: other, cseq: other.localCSeq)
            startClient(bye, to: other.peer, call: nil)
            endCall(call)
        case .ack, .cancel:
            break
        default:
            relay(request, tx, call: call, fromClient: callID == call.client.callID)
        }
    }

    /// Any other in-dialog request (re-INVITE, UPDATE, INFO, NOTIFY, MESSAGE, REFER, OPTIONS...)
    /// goes to the other leg as that leg's own request; its response comes back the same way.
    private func relay(_ request: SIPMessage, _ tx: ServerTxRecord, call: Call, fromClient: Bool) {
        guard let method = request.method, let name = request.methodBytes?.string else { return }
        let refreshesTarget = method == .invite || method == .update
        if refreshesTarget, let contact = try? request.contact(), case .addresses(let a) = contact, let first = a.first {
            // Target refresh (§12.2.2): the sender's new Contact.
            if fromClient { call.client.remoteTarget = first.uri.text.bytes } else { call.backend.remoteTarget = first.uri.text.bytes }
        }
        if method == .invite {
            perform(tx.machine.start(trying: MessageBuilder.response(to: request, status: 100, toTag: nil)), server: tx)
            guard !call.reinviteInProgress else {
                respond(tx, status: 491)
                return
            }
            call.reinviteInProgress = true
        }
        var other = fromClient ? call.backend : call.client
        other.localCSeq += 1
        if fromClient { call.backend = other } else { call.client = other }
        var extra: [(String, String)] = []
        if method == .prack, let rack = request.firstValue(.rack) {
            // RFC 3262 §7.2: RAck names the INVITE by its CSeq, which differs between the legs.
            let parts = rack.string.split(separator: " ", omittingEmptySubsequences: true)
            let inviteCSeq = fromClient ? call.backendInviteCSeq : call.clientInviteCSeq
            if parts.count == 3 { extra.append(("RAck", "\(parts[0]) \(inviteCSeq) \(parts[2])")) }
        }
        let bytes = inDialogRequest(name, leg: other, cseq: other.localCSeq, contact: refreshesTarget ? contact : nil,
                                    extra: extra, copying: request, contentType: request.contentType, body: request.body.bytes)
        startClient(bytes, to: other.peer, call: call, origin: tx)
    }

    /// The other leg answered a relayed request: the answer goes back to the leg that asked.
    private func relayResponse(_ response: SIPMessage, clientTx: ClientTxRecord, origin: ServerTxRecord) {
        guard let status = response.statusCode, status > 100 else { return }
        let call = clientTx.call
        let isInvite = clientTx.machine.isInvite
        if isInvite, status >= 200, let call {
            let answeringLeg = clientTx.request.callID?.string == call.backend.callID ? call.backend : call.client
            if status < 300 {
                if origin.machine.state != .proceeding {
                    // A retransmitted 2xx: our ACK was lost.
                    if let ack = call.reinviteACK { sender.send(ack, to: answeringLeg.peer) }
                    return
                }
                if let contact = try? response.contact(), case .addresses(let a) = contact, let first = a.first {
                    if answeringLeg.callID == call.backend.callID { call.backend.remoteTarget = first.uri.text.bytes }
                    else { call.client.remoteTarget = first.uri.text.bytes }
                }
                let leg = answeringLeg.callID == call.backend.callID ? call.backend : call.client
                let ack = inDialogRequest("ACK", leg: leg, cseq: (try? clientTx.request.cseq().number) ?? leg.localCSeq)
                call.reinviteACK = ack
                sender.send(ack, to: leg.peer)
            }
            call.reinviteInProgress = false
        }
        let refreshes = origin.request.method == .invite || origin.request.method == .update
        let bytes = MessageBuilder.response(to: origin.request, status: status, reason: response.reasonPhrase?.string, toTag: nil,
                                            contact: refreshes && status < 300 ? contact : nil,
                                            copying: response, contentType: response.contentType, body: response.body.bytes)
        perform(origin.machine.handle(.respond(status: status, bytes: bytes)), server: origin)
    }

    /// A request within a leg's dialog, from the leg's own state (§12.2.1.1).
    private func inDialogRequest(_ method: String, leg: Leg, cseq: UInt32, contact: String? = nil,
                                 extra: [(String, String)] = [], copying source: SIPMessage? = nil,
                                 contentType: ByteView? = nil, body: [UInt8] = []) -> [UInt8] {
        var b = MessageBuilder(requestLine: method, uri: leg.remoteTarget)
        b.header("Via", "SIP/2.0/UDP \(config.host):\(config.port);branch=\(newBranch());rport")
        b.header("Max-Forwards", "70")
        b.header("From", leg.localURI + Array(";tag=\(leg.localTag)".utf8))
        b.header("To", leg.remoteURI + (leg.remoteTag.map { Array(";tag=\($0)".utf8) } ?? []))
        b.header("Call-ID", leg.callID)
        b.header("CSeq", "\(cseq) \(method)")
        if let contact { b.header("Contact", contact) }
        for (name, value) in extra { b.header(name, value) }
        if let source { b.copy(MessageBuilder.endToEnd, from: source) }
        return b.finish(contentType: contentType, body: body)
    }

    private func endCall(_ call: Call) {
        guard call.state != .ended else { return }
        call.state = .ended
        if let t = call.answerTimer { loop.cancel(t) }
        if let t = call.lifetimeTimer { loop.cancel(t) }
        calls[call.client.callID] = nil
        calls[call.backend.callID] = nil
        callsByNumber[call.number] = nil
        callsEnded += 1
    }

    /// "name-addr" or "addr-spec" of a From/To value without its header parameters (the tag).
    private func addressPart(_ address: NameAddress) -> [UInt8] {
        var end = address.paramsStart
        let base = address.base
        while end > 0, isLWSByte(base[end - 1]) { end -= 1 }
        let start = address.displayStart >= 0 ? address.displayStart : (address.hasAngleBrackets ? address.uri.start - 1 : address.uri.start)
        return Array(base[start..<end])
    }

    /// The transport says `destination` refused what we sent (ICMP unreachable): every client
    /// transaction toward it fails at once, instead of after Timer B or F.
    public func unreachable(_ destination: SocketAddress) {
        loop.assertInLoop()
        let failing = clientTransactions.values.filter { $0.peer == destination }
        for tx in failing {
            perform(tx.machine.handle(.transportError), client: tx, message: nil)
        }
    }

    // MARK: - Transactions

    private func takeID() -> UInt32 {
        defer { nextTxID &+= 1 }
        return nextTxID
    }

    private func register(_ tx: ServerTxRecord) {
        serverTransactions[tx.key] = tx
        transactionsByID[tx.id] = tx
    }

    private func startClient(_ bytes: [UInt8], to destination: SocketAddress, call: Call?, origin: ServerTxRecord? = nil) {
        guard let request = try? SIPMessage(parsing: bytes), let key = TransactionKey.client(forRequest: request) else { return }
        let tx = ClientTxRecord(id: takeID(), machine: ClientTransaction(request: request, reliability: .unreliable, timers: config.timers),
                                request: request, peer: destination, key: key)
        tx.call = call
        tx.origin = origin
        clientTransactions[key] = tx
        transactionsByID[tx.id] = tx
        perform(tx.machine.start(), client: tx, message: nil)
    }

    private func respond(_ tx: ServerTxRecord, status: Int, extra: [(String, String)] = []) {
        let tag = tx.request.tag(of: .to) == nil ? ids.make() : nil
        let bytes = MessageBuilder.response(to: tx.request, status: status, toTag: tag, extraHeaders: extra)
        perform(tx.machine.handle(.respond(status: status, bytes: bytes)), server: tx)
    }

    private func perform(_ actions: [TransactionAction], server tx: ServerTxRecord) {
        for action in actions {
            switch action {
            case .send(let bytes): sender.send(bytes, to: tx.peer)
            case .arm(let timer, let ms): arm(timer, ms, id: tx.id, in: &tx.timers)
            case .disarm(let timer): if let t = tx.timers.removeValue(forKey: timer) { loop.cancel(t) }
            case .passUp: break   // the only ACK passed up (RFC 6026) is handled by clientAcknowledged
            case .timedOut:
                // No ACK for our final response: the client is gone.
                if let call = tx.call { endCall(call) }
            case .terminate:
                for t in tx.timers.values { loop.cancel(t) }
                serverTransactions[tx.key] = nil
                transactionsByID[tx.id] = nil
            }
        }
    }

    private func perform(_ actions: [TransactionAction], client tx: ClientTxRecord, message: SIPMessage?) {
        for action in actions {
            switch action {
            case .send(let bytes): sender.send(bytes, to: tx.peer)
            case .arm(let timer, let ms): arm(timer, ms, id: tx.id, in: &tx.timers)
            case .disarm(let timer): if let t = tx.timers.removeValue(forKey: timer) { loop.cancel(t) }
            case .passUp:
                guard let message else { break }
                if let origin = tx.origin as? ServerTxRecord {
                    relayResponse(message, clientTx: tx, origin: origin)
                } else if let call = tx.call, tx.machine.isInvite {
                    backendInviteResponse(message, call: call)
                }
            case .timedOut:
                if let origin = tx.origin as? ServerTxRecord {
                    // The other leg did not answer a relayed request.
                    tx.call?.reinviteInProgress = false
                    respond(origin, status: 408)
                    break
                }
                // The backend never answered (Timer B) or is unreachable: the next one, or 408.
                if let call = tx.call, tx.machine.isInvite, mayFailOver(call, status: nil) {
                    tryNextBackend(call)
                } else if let call = tx.call, let server = call.clientInvite, tx.machine.isInvite {
                    respond(server, status: 408)
                    call.clientInvite = nil
                    endCall(call)
                }
            case .terminate:
                for t in tx.timers.values { loop.cancel(t) }
                clientTransactions[tx.key] = nil
                transactionsByID[tx.id] = nil
            }
        }
    }

    private func arm(_ timer: TransactionTimer, _ ms: UInt64, id: UInt32, in timers: inout [TransactionTimer: TimerID]) {
        if let old = timers[timer] { loop.cancel(old) }
        timers[timer] = loop.schedule(afterMilliseconds: ms, target: self, token: UInt64(id) << 8 | UInt64(timer.rawValue))
    }

    private static let answerFlag: UInt64 = 1 << 63
    private static let lifetimeFlag: UInt64 = 1 << 62

    private static func answerToken(_ call: Call) -> UInt64 { answerFlag | UInt64(call.number) }

    public func timerFired(_ token: UInt64, on loop: EventLoop) {
        if token & Self.lifetimeFlag != 0 {
            // The call outlived its maximum lifetime: BYE on both legs, then forget it.
            guard let call = callsByNumber[UInt32(truncatingIfNeeded: token)], call.state == .confirmed else { return }
            call.lifetimeTimer = nil
            for fromBackendSide in [true, false] {
                var leg = fromBackendSide ? call.backend : call.client
                leg.localCSeq += 1
                if fromBackendSide { call.backend = leg } else { call.client = leg }
                startClient(inDialogRequest("BYE", leg: leg, cseq: leg.localCSeq, extra: [("Reason", "SIP;cause=200;text=\"Call lifetime reached\"")]),
                            to: leg.peer, call: nil)
            }
            endCall(call)
            return
        }
        if token & Self.answerFlag != 0 {
            guard let call = callsByNumber[UInt32(truncatingIfNeeded: token)], let answer = call.answer else { return }
            if loop.now >= call.answerDeadline {
                // §13.3.1.4: no ACK within 64*T1: end the call (BYE to the backend).
                call.answerTimer = nil
                call.backend.localCSeq += 1
                startClient(inDialogRequest("BYE", leg: call.backend, cseq: call.backend.localCSeq), to: call.backend.peer, call: nil)
                endCall(call)
                return
            }
            sender.send(answer, to: call.client.peer)
            call.answerInterval = min(call.answerInterval * 2, config.timers.t2)
            call.answerTimer = loop.schedule(afterMilliseconds: call.answerInterval, target: self, token: token)
            return
        }
        let id = UInt32(truncatingIfNeeded: token >> 8)
        guard let timer = TransactionTimer(rawValue: UInt8(truncatingIfNeeded: token)) else { return }
        if let tx = transactionsByID[id] as? ServerTxRecord {
            tx.timers[timer] = nil
            perform(tx.machine.handle(.timerFired(timer)), server: tx)
        } else if let tx = transactionsByID[id] as? ClientTxRecord {
            tx.timers[timer] = nil
            perform(tx.machine.handle(.timerFired(timer)), client: tx, message: nil)
        }
    }
}
