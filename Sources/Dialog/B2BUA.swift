import Glibc
import SIPParser
import Transport

/// Where the B2BUA's messages go out; the edge implements it over its listeners and connections.
public protocol MessageSender: AnyObject {
    /// Sends `bytes` along `hop`; false when that cannot even be tried (no connection and none can
    /// be opened), which fails the transaction at once.
    func send(_ bytes: [UInt8], to hop: Hop) -> Bool
}

/// Where dialog records go when they change: persistence, replication (DESIGN.md: Dialog declares
/// the protocol, the layers above implement it). Called on the owning loop; must not block.
public protocol DialogStateSink: AnyObject {
    func dialogChanged(_ record: DialogRecord)
    func dialogEnded(key: String)
}

/// The address the edge writes into one transport's Via and Contact, and the listener's tag.
public struct LocalAddress: Sendable, Equatable {
    public var host: String
    public var port: UInt16
    public var tag: String

    public init(host: String, port: UInt16, tag: String) {
        self.host = host
        self.port = port
        self.tag = tag
    }
}

/// What a B2BUA needs to know of its surroundings.
public struct B2BUAConfig: Sendable {
    /// Our advertised address per transport (the first listener of each).
    public var local: [TransportProtocol: LocalAddress]
    /// Where new calls go, in turn, when there is no `picker`.
    public var backends: [Hop]
    /// The dispatcher: chooses each call's backend, hears of failures.
    public var picker: (any DestinationPicker)?
    /// Limits on calls per source (nil: none).
    public var admission: (any CallAdmission)?
    /// The registrar that answers REGISTER (nil: 501).
    public var registrar: (any RegistrationHandler)?
    public var timers: TransactionTimerValues
    /// A call still up after this many seconds is ended with a BYE to both legs (0: never).
    public var maxCallSeconds: UInt64
    /// RFC 4028: the session interval asked of backends (0: none), and the smallest accepted.
    public var sessionExpires: UInt32
    public var minSE: UInt32
    /// In-dialog OPTIONS toward both legs every this many seconds (0: never); a leg that does not
    /// answer, or answers 408/481, ends the call.
    public var pingSeconds: UInt64
    /// The sharing tag written into new dialog records.
    public var sharingTag: String
    /// Each worker's own UDP address, by worker index (`worker_ports`; empty: none). Legs toward
    /// dispatcher destinations use it, so their answers arrive at the worker that owns the call.
    public var workerUDP: [LocalAddress] = []

    public init(local: [TransportProtocol: LocalAddress], backends: [Hop], timers: TransactionTimerValues = .rfc3261,
                maxCallSeconds: UInt64 = 43_200, sessionExpires: UInt32 = 0, minSE: UInt32 = 90, pingSeconds: UInt64 = 0,
                sharingTag: String = "", picker: (any DestinationPicker)? = nil, admission: (any CallAdmission)? = nil,
                registrar: (any RegistrationHandler)? = nil) {
        self.local = local
        self.admission = admission
        self.registrar = registrar
        self.backends = backends
        self.picker = picker
        self.timers = timers
        self.maxCallSeconds = maxCallSeconds
        self.sessionExpires = sessionExpires
        self.minSE = minSE
        self.pingSeconds = pingSeconds
        self.sharingTag = sharingTag
    }

    /// Host and port for our Via/Contact on `transport` (UDP's when that transport has no listener).
    func address(for transport: TransportProtocol) -> LocalAddress {
        local[transport] ?? local[.udp] ?? local.values.first ?? LocalAddress(host: "127.0.0.1", port: 5060, tag: "default")
    }
}

/// Counters of one B2BUA, for `get_statistics`: kept as enum keys and a small array (nothing
/// to build per message), named when asked for.
public struct B2BUAStatistics: Sendable, Equatable {
    var requestCounts: [SIPMethod: Int] = [:]
    /// Responses by class: index 1 is 1xx ... 6 is 6xx.
    var replyCounts = [Int](repeating: 0, count: 7)

    public init() {}

    /// Requests received, by method name.
    public var requests: [String: Int] {
        Dictionary(requestCounts.map { ($0.key.description, $0.value) }, uniquingKeysWith: +)
    }

    /// Responses received, by class ("2xx").
    public var replies: [String: Int] {
        Dictionary(uniqueKeysWithValues: (1...6).filter { replyCounts[$0] > 0 }.map { ("\($0)xx", replyCounts[$0]) })
    }
}

/// The timers a transaction has armed: at most a few at a time, kept inline (no allocation per
/// transaction, unlike a dictionary).
struct ArmedTimers {
    private var slots: (Slot, Slot, Slot, Slot) = (.empty, .empty, .empty, .empty)

    enum Slot {
        case empty
        case armed(TransactionTimer, TimerID)
    }

    private func slot(_ i: Int) -> Slot {
        switch i {
        case 0: slots.0
        case 1: slots.1
        case 2: slots.2
        default: slots.3
        }
    }

    private mutating func set(_ i: Int, _ s: Slot) {
        switch i {
        case 0: slots.0 = s
        case 1: slots.1 = s
        case 2: slots.2 = s
        default: slots.3 = s
        }
    }

    subscript(timer: TransactionTimer) -> TimerID? {
        get {
            for i in 0..<4 { if case .armed(let t, let id) = slot(i), t == timer { return id } }
            return nil
        }
        set {
            var free: Int?
            for i in 0..<4 {
                switch slot(i) {
                case .armed(let t, _) where t == timer:
                    set(i, newValue.map { .armed(timer, $0) } ?? .empty)
                    return
                case .empty: if free == nil { free = i }
                default: break
                }
            }
            // Transactions arm at most three at once (RFC 3261 §17); a fifth would be left to fire
            // on a finished transaction, which ignores it.
            guard let newValue, let free else { return }
            set(free, .armed(timer, newValue))
        }
    }

    mutating func removeValue(forKey timer: TransactionTimer) -> TimerID? {
        let old = self[timer]
        self[timer] = nil
        return old
    }

    func forEach(_ body: (TimerID) -> Void) {
        for i in 0..<4 { if case .armed(_, let id) = slot(i) { body(id) } }
    }

    mutating func removeAll() { slots = (.empty, .empty, .empty, .empty) }
}

/// Which leg of a call.
enum Side {
    case client, backend
    var other: Side { self == .client ? .backend : .client }
}

/// A call through the edge: its dialog record (both legs) and what lives only while this node
/// carries it: transactions in flight, retransmission and session timers, failover progress.
final class Call {
    let number: UInt32
    var record: DialogRecord
    /// The client's INVITE server transaction, while responses still flow back to it.
    var clientInvite: ServerTxRecord?
    /// The 2xx sent to the client, retransmitted until its ACK comes (RFC 3261 §13.3.1.4).
    var answer: [UInt8]?
    var answerInterval: UInt64 = 0
    var answerTimer: TimerID?
    var answerDeadline: UInt64 = 0
    /// The backend's 2xx was ACKed (an ACK for a 2xx is its own transaction: a retransmitted 2xx
    /// gets it again, rebuilt, rather than a stored copy held for the call's life).
    var backendAcknowledged = false
    /// The caller's INVITE had no SDP: the backend's ACK carries the caller's answer.
    var lateOffer = false
    /// Serial failover: the destinations tried (picker indices), the current one, and whether a
    /// backend has committed to the call (a provisional with a To tag, or a 2xx).
    var tried: [Int] = []
    var destination: Int?
    var committed = false
    /// The INVITE sent to the current backend (a CANCEL copies its Via, From, To and Request-URI);
    /// dropped once the call is answered.
    var backendInvite: SIPMessage?
    /// The session interval asked of the current backend (raised by a 422's Min-SE).
    var askedSessionExpires: UInt32 = 0
    /// The client cancelled: a late 2xx from the backend is ACKed and then ended with a BYE.
    var cancelled = false
    /// A re-INVITE is on its way through; another one meets 491 (glare, RFC 3261 §14.2).
    var reinviteInProgress = false
    /// The ACK for the last relayed re-INVITE's 2xx, resent if that 2xx is retransmitted.
    var reinviteACK: [UInt8]?
    /// Ends the call when its maximum lifetime is up.
    var lifetimeTimer: TimerID?
    /// RFC 4028, per leg: when to refresh (we refresh) or give up (the peer refreshes).
    var sessionTimers: (client: TimerID?, backend: TimerID?) = (nil, nil)
    var pingTimer: TimerID?
    /// The pings and session refreshes this call has in flight (ended with the call).
    var ownRequests: [ClientTxRecord] = []
    /// The Request-URI user, to address each backend, and the From user (hashing dispatchers).
    var user = ""
    /// What the picker is told of this call.
    var request: CallRequest?
    /// The source counted by the call admission, to release when the call ends.
    var admitted: SocketAddress?

    init(number: UInt32, record: DialogRecord) {
        self.number = number
        self.record = record
    }

    subscript(side: Side) -> LegRecord {
        get { side == .client ? record.client : record.backend }
        set { if side == .client { record.client = newValue } else { record.backend = newValue } }
    }

    func side(ofCallID id: some Collection<UInt8>) -> Side? {
        if id.elementsEqual(record.backend.callID.utf8) { return .backend }
        if id.elementsEqual(record.client.callID.utf8) { return .client }
        return nil
    }

    var isConfirmed: Bool { record.state == .confirmed }
    var isEnded: Bool { record.state == .ended }
}

/// A transaction of the B2BUA: its state machine, the request it is about, the hop its messages
/// take, its key, its armed timers and the call it serves.
final class TransactionRecord<Machine> {
    let id: UInt32
    var machine: Machine
    let request: SIPMessage
    let peer: Hop
    let key: TransactionKey
    var timers = ArmedTimers()
    weak var call: Call?
    /// For a request relayed from one leg to the other: the server transaction it answers.
    var origin: AnyObject?
    /// What the B2BUA itself sent this request for, when its answer is not relayed.
    var purpose = Purpose.relay
    /// For a request the B2BUA sent for itself (a probe, a registration): told the final
    /// response, or nil when none came.
    var onFinal: ((SIPMessage?) -> Void)?
    /// Ended early by the B2BUA (its INVITE is answered and acknowledged): nothing more is armed.
    var finished = false

    /// relay: answers a request of the other leg; backendInvite: a call's INVITE; refresh, ping:
    /// session timer and dialog ping of a leg; ownRequest: a probe or a forwarded REGISTER, whose
    /// answer goes to `onFinal`; fireAndForget: a BYE or CANCEL nobody waits for.
    enum Purpose { case relay, backendInvite, refresh(Side), ping(Side), ownRequest, fireAndForget }

    init(id: UInt32, machine: Machine, request: SIPMessage, peer: Hop, key: TransactionKey) {
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
/// legs on the worker's loop, over UDP, TCP or TLS per leg; keeps each call as a versioned
/// `DialogRecord` handed to a `DialogStateSink` on every change; runs RFC 4028 session timers per
/// leg, in-dialog OPTIONS pings and a maximum lifetime; and fails an initial INVITE over to the
/// next backend on a timeout, 408 or 5xx.
public final class B2BUA: TimerTarget {
    public let loop: EventLoop
    public let config: B2BUAConfig
    private unowned let sender: any MessageSender
    private let picker: any DestinationPicker
    /// Told of every change to a confirmed dialog, and of its end (persistence, replication).
    public weak var sink: (any DialogStateSink)?
    /// A CANCEL whose INVITE is not on this worker (it came from another source port, so the
    /// kernel queued it on another worker's socket) is offered here with the worker it first
    /// reached; true when another worker takes it, false when every worker has looked (481).
    public var passOnCancel: ((_ cancel: SIPMessage, _ hop: Hop, _ listenerTag: String, _ firstWorker: Int) -> Bool)?
    private var ids: ShardedIdentifiers
    private var nextTxID: UInt32 = 1
    private var serverTransactions: [TransactionKey: ServerTxRecord] = [:]
    private var clientTransactions: [TransactionKey: ClientTxRecord] = [:]
    private var transactionsByID: [UInt32: AnyObject] = [:]
    private var calls: [String: Call] = [:]
    private var callsByNumber: [UInt32: Call] = [:]
    /// Client Call-IDs of calls that ended in the last 64*T1, oldest first: a late copy of their
    /// INVITE (UDP can deliver one after the ACK and BYE) must not start a new call. Bounded: past
    /// `recentLimit` the oldest are forgotten early.
    private var recentlyEnded: Set<String> = []
    private var recentOrder: [(id: String, at: UInt64)] = []
    private var recentHead = 0
    private static let recentLimit = 131_072
    /// Calls set up and ended so far (statistics and tests).
    public private(set) var callsStarted = 0
    public private(set) var callsEnded = 0
    /// What this worker's B2BUA has handled since the start or the last `resetStatistics`.
    public private(set) var statistics = B2BUAStatistics()
    public var activeCalls: Int { callsByNumber.count }

    /// This worker's own UDP address, if it has one.
    private let ownUDP: LocalAddress?

    public init(loop: EventLoop, config: B2BUAConfig, sender: any MessageSender) {
        self.loop = loop
        self.config = config
        self.ownUDP = config.workerUDP.indices.contains(loop.index) ? config.workerUDP[loop.index] : nil
        self.sender = sender
        self.picker = config.picker ?? RoundRobinDestinations(config.backends)
        self.ids = ShardedIdentifiers(worker: loop.index)
    }

    /// Our address on messages along `hop`: this worker's own UDP port when the hop uses it, else
    /// the listener's.
    private func localAddress(_ hop: Hop) -> LocalAddress {
        if hop.transport == .udp, hop.worker == loop.index, let ownUDP { return ownUDP }
        return config.address(for: hop.transport)
    }

    /// The hop toward a dispatcher destination (or probe): by this worker's own UDP port when it
    /// has one, so the answers come straight back to it.
    private func byOwnPort(_ hop: Hop) -> Hop {
        guard hop.transport == .udp, ownUDP != nil else { return hop }
        return Hop(.udp, hop.address, worker: loop.index)
    }

    /// Our Via toward `hop`, with a new branch, written into `b`.
    private func via(_ hop: Hop, into b: inout MessageBuilder) {
        let local = localAddress(hop)
        b.via(hop.transport, host: local.host, port: local.port, ids: &ids)
    }

    /// Our Contact on a leg: the user part, and the address of the leg's transport.
    private func contact(_ leg: LegRecord) -> MessageBuilder.OurContact {
        let local = localAddress(leg.hop)
        return MessageBuilder.OurContact(user: leg.contactUser, host: local.host, port: local.port, transport: leg.hop.transport)
    }

    private func contact(_ leg: LegRecord, into b: inout MessageBuilder) { b.contact(contact(leg)) }

    private static func wallClock() -> UInt64 { UInt64(max(0, time(nil))) }

    // MARK: - Receiving

    /// A parsed, validated message that came along `hop`.
    /// `firstWorker`: the worker a CANCEL passed on by `passOnCancel` first reached.
    public func receive(_ message: SIPMessage, from hop: Hop, listenerTag: String = "", firstWorker: Int? = nil) {
        loop.assertInLoop()
        // (A CANCEL passed on from another worker was counted there.)
        if firstWorker == nil, let method = message.method {
            statistics.requestCounts[method, default: 0] += 1
        } else if let status = message.statusCode, (100...699).contains(status) {
            statistics.replyCounts[status / 100] += 1
        }
        if message.isRequest {
            receiveRequest(message, from: hop, listenerTag: listenerTag, firstWorker: firstWorker ?? loop.index)
        } else if let key = TransactionKey.client(forResponse: message), let tx = clientTransactions[key] {
            let actions = tx.machine.handle(.response(message))
            perform(actions, client: tx, message: message)
        } else if let status = message.statusCode, status >= 200, status < 300, let id = message.callID,
                  let call = calls[id.string], call.side(ofCallID: id.bytes) == .backend, call.backendAcknowledged,
                  (try? message.cseq().number) == call.record.backend.inviteCSeq {
            // A retransmitted 2xx for a backend INVITE whose transaction ended once it was ACKed:
            // the ACK was lost, so it goes again (RFC 6026 §7.2 gives 2xx retransmissions to the TU).
            sendBackendACK(call)
        }
        // Any other response matching no transaction is dropped (§17.1.3).
    }

    private func receiveRequest(_ request: SIPMessage, from hop: Hop, listenerTag: String, firstWorker: Int) {
        let key = TransactionKey.server(forRequest: request)
        if request.method == .ack {
            if let key, let tx = serverTransactions[key] {
                perform(tx.machine.handle(.ack), server: tx)
            }
            if let id = request.callID, let call = calls[id.string], call.side(ofCallID: id.bytes) == .client,
               Self.belongs(request, to: call.record.client) {
                clientAcknowledged(call, ack: request)
            }
            return
        }
        if let key, let tx = serverTransactions[key] {
            if tx.machine.isInvite, !tx.machine.hasResponded {
                sendTrying(tx)   // the caller retransmits before the 100 was due: it goes now
            } else {
                perform(tx.machine.handle(.retransmission), server: tx)
            }
            return
        }
        guard let key, let method = request.method else { return }
        if method == .cancel, request.tag(of: .to) == nil,
           serverTransactions[TransactionKey(branch: key.branch, method: "INVITE", sentBy: key.sentBy)] == nil,
           passOnCancel?(request, hop, listenerTag, firstWorker) == true {
            return   // another worker may hold its INVITE
        }
        if method == .invite, request.tag(of: .to) == nil, let id = request.callID, recentlyEnded.contains(id.string) {
            return   // a late copy of the INVITE of a call that is over
        }
        if method == .invite, request.tag(of: .to) == nil, let id = request.callID, let call = calls[id.string],
           call.side(ofCallID: id.bytes) == .client {
            // The INVITE of a call we already carry, whose transaction ended with the caller's ACK
            // (or a copy that took another path, §8.2.2.2): it changes nothing; a 2xx not yet
            // acknowledged goes again.
            if let answer = call.answer { _ = sender.send(answer, to: call.record.client.hop) }
            return
        }
        let tx = ServerTxRecord(id: takeID(), machine: ServerTransaction(method: method, reliability: hop.reliability, timers: config.timers),
                                request: request, peer: hop, key: key)
        register(tx)
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
            guard let registrar = config.registrar else {
                respond(tx, status: 501)
                break
            }
            switch registrar.register(request, from: tx.peer) {
            case .answer(let status, let headers):
                respond(tx, status: status, extra: headers)
            case .forward(let upstream):
                forwardRegistration(request, tx, upstream, registrar: registrar)
            }
        case .bye, .prack, .update, .info:
            // Requests that exist only inside a dialog, sent without a To tag: no dialog of ours
            // (RFC 3261 §15.1.2 for BYE; RFC 3262, 3311 and 6086 likewise).
            respond(tx, status: 481)
        default:
            respond(tx, status: 501)
        }
    }

    /// Whether `request`'s top Via is one we wrote: a branch of our form (`z9hG4bKs<worker>x...`)
    /// and a sent-by that is one of our addresses. No one else puts our address in their Via.
    private func isOurOwn(_ request: SIPMessage) -> Bool {
        guard let via = try? request.topVia(), let branch = via.branch, branch.count > 7,
              branch.withUnsafeBytes({ ShardedIdentifiers.worker(of: $0.dropFirst(7), workers: 1_000) }) != nil else { return false }
        let port = via.port ?? 5060
        var host = via.host.string
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        func ours(_ a: LocalAddress) -> Bool {
            Int(a.port) == port && (a.host == host || a.host == "[\(host)]")
        }
        return config.local.values.contains(where: ours) || config.workerUDP.contains(where: ours)
    }

    static let allow = "INVITE, ACK, BYE, CANCEL, OPTIONS, PRACK, UPDATE, INFO, NOTIFY, REFER, MESSAGE"

    // MARK: - Calls

    /// §17.2.1: a 100 Trying quenches the caller's retransmissions, unless the TU answers within
    /// 200 ms. A new call's 100 waits that long: when the farm rings or answers first (the usual
    /// case), its 180 or final response does the job and the 100 is never built or sent.
    static let tryingDelayMilliseconds: UInt64 = 200

    private func sendTrying(_ tx: ServerTxRecord) {
        perform(tx.machine.start(trying: MessageBuilder.response(to: tx.request, status: 100, toTag: nil)), server: tx)
    }

    private func newCall(_ invite: SIPMessage, _ tx: ServerTxRecord, listenerTag: String) {
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
        if let admission = config.admission {
            guard admission.admit(tx.peer.address) else {
                respond(tx, status: 503, extra: [("Retry-After", "30"), ("Warning", "399 sipedge \"too many calls from this address\"")])
                return
            }
        }
        let clientTarget = Self.contactURI(of: invite) ?? from.uri.text.bytes
        let clientHop = tx.peer
        var clientLeg = LegRecord(callID: callID, localTag: ids.make(), remoteTag: fromTag.string, localCSeq: 0,
                                  remoteCSeq: (try? invite.cseq().number) ?? 1, inviteCSeq: (try? invite.cseq().number) ?? 1,
                                  localURI: addressPart(to), remoteURI: addressPart(from), remoteTarget: clientTarget,
                                  routeSet: invite.values(.recordRoute).map(\.bytes),
                                  hop: clientHop, listenerTag: config.address(for: clientHop.transport).tag)
        let offer = invite.body.bytes   // one array, shared by both legs' records
        clientLeg.lastSDPReceived = offer
        clientLeg.peerAllowsUpdate = Self.allows(invite, "UPDATE")
        if let se = sessionExpires {
            clientLeg.sessionInterval = se.seconds
            // The caller refreshes unless it asked us to, or cannot (no "timer" in Supported).
            clientLeg.refresher = se.refresher == .uas || !Self.supports(invite, "timer") ? .edge : .peer
        }
        // The caller's identity goes on, but not its address: the From URI's host becomes ours.
        let local = config.address(for: .udp)
        let backendFrom = Array((from.displayName.map { $0.string + " " } ?? "").utf8)
            + Array("<sip:\(from.uri.user.map { String(decoding: $0.bytes, as: UTF8.self) + "@" } ?? "")\(local.host):\(local.port)>".utf8)
        var backendLeg = LegRecord(callID: "", localTag: "", localCSeq: 1, localURI: backendFrom, remoteURI: addressPart(to),
                                   remoteTarget: [], hop: tx.peer.withoutWorker, listenerTag: local.tag)
        backendLeg.lastSDPSent = offer
        let call = Call(number: takeID(), record: DialogRecord(client: clientLeg, backend: backendLeg, sharingTag: config.sharingTag,
                                                               startedAt: Self.wallClock()))
        call.admitted = config.admission != nil ? tx.peer.address : nil
        call.user = uri.user.map { String(decoding: $0.bytes, as: UTF8.self) } ?? ""
        call.request = CallRequest(callID: Array(callID.utf8), fromUser: from.uri.user?.bytes ?? [], source: tx.peer,
                                   listenerTag: listenerTag, requestURI: uri.text.bytes, requestUser: call.user,
                                   requestHost: uri.host.string, requestPort: uri.port ?? (uri.scheme == .sips ? 5061 : 5060))
        call.askedSessionExpires = config.sessionExpires > 0 ? max(config.sessionExpires, config.minSE) : 0
        call.clientInvite = tx
        tx.call = call
        calls[callID] = call
        callsByNumber[call.number] = call
        callsStarted += 1
        switch tryNextBackend(call) {
        case .sent:
            _ = loop.schedule(afterMilliseconds: Self.tryingDelayMilliseconds, target: self, token: Self.token(.trying, call))
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

    /// Sends the call's INVITE to the next destination the picker offers (or again to the same one,
    /// after a 422), as a fresh backend leg (own Call-ID, tag, branch); false when none is left.
    @discardableResult
    private func tryNextBackend(_ call: Call, sameDestination: Bool = false) -> Attempt {
        guard let tx = call.clientInvite, let request = call.request else { return .exhausted }
        let invite = tx.request
        let index: Int, destination: Hop
        var target: [UInt8]
        if sameDestination, let current = call.destination {
            (index, destination, target) = (current, call.record.backend.hop, call.record.backend.remoteTarget)
        } else {
            if let previous = call.destination { picker.release(previous) }
            call.destination = nil
            let choice: CallDestination?
            do throws(CallRefusal) {
                choice = try picker.pick(request, excluding: call.tried)
            } catch {
                return .refused(error)
            }
            guard let choice else { return .exhausted }
            // A dispatcher destination (an Asterisk) is reached by this worker's own port; a phone
            // or a trusted caller's target by the listener it knows.
            (index, destination) = (choice.index, choice.index >= 0 ? byOwnPort(choice.hop) : choice.hop)
            call.tried.append(index)
            call.destination = index
            if let uri = choice.requestURI {
                target = uri
            } else {
                let host = destination.address.uriHost
                let transport = destination.transport == .udp ? "" : ";transport=\(destination.transport.rawValue)"
                target = Array("sip:\(call.user.isEmpty ? "" : call.user + "@")\(host):\(destination.address.port)\(transport)".utf8)
            }
        }
        if !call.record.backend.callID.isEmpty { calls[call.record.backend.callID] = nil }
        var leg = call.record.backend
        leg.callID = ids.make()
        leg.localTag = ids.make()
        leg.remoteTag = ""
        leg.remoteTarget = target
        leg.routeSet = []
        leg.hop = destination
        leg.listenerTag = config.address(for: destination.transport).tag
        leg.inviteCSeq = leg.localCSeq
        call.record.backend = leg
        calls[leg.callID] = call
        let maxForwards = (try? invite.maxForwards()) ?? 70
        var b = MessageBuilder(requestLine: "INVITE", uri: target)
        via(destination, into: &b)
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
        let bytes = b.finish(contentType: invite.contentType, body: invite.body.bytes)
        // Parsed once: the CANCEL and ACK are built from it, and its transaction runs on it.
        let parsed = try? SIPMessage(parsing: bytes)
        call.backendInvite = parsed
        startClient(parsed, to: destination, call: call, purpose: .backendInvite)
        return .sent
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
        guard call.record.state == .early else { return }   // answered already: the CANCEL changes nothing
        call.cancelled = true
        if let backendInvite = call.backendInvite {
            var b = MessageBuilder(requestLine: "CANCEL", uri: backendInvite.requestURIBytes?.bytes ?? call.record.backend.remoteTarget)
            if let via = backendInvite.topValue(.via) { b.header("Via", via.bytes) }
            b.header("Max-Forwards", "70")
            if let from = backendInvite.firstValue(.from) { b.header("From", from.bytes) }
            if let to = backendInvite.firstValue(.to) { b.header("To", to.bytes) }
            b.header("Call-ID", call.record.backend.callID)
            b.header("CSeq", "\(call.record.backend.inviteCSeq) CANCEL")
            if let reason = request.firstValue(.reason) { b.header("Reason", reason.bytes) }
            startClient(b.finish(), to: call.record.backend.hop, call: nil, purpose: .fireAndForget)
        }
        let bytes = MessageBuilder.response(to: inviteTx.request, status: 487, toTag: call.record.client.localTag)
        perform(inviteTx.machine.handle(.respond(status: 487, bytes: bytes)), server: inviteTx)
        call.clientInvite = nil
    }

    /// Whether a failed attempt may go to another destination: the backend has not committed
    /// (no provisional with a To tag) and it failed with a timeout, 408 or 5xx.
    private func mayFailOver(_ call: Call, status: Int?) -> Bool {
        guard !call.committed, call.clientInvite != nil else { return false }
        guard let status else { return true }
        return status == 408 || (status >= 500 && status < 600)
    }

    /// A response to the backend INVITE, passed up by its client transaction.
    private func backendInviteResponse(_ response: SIPMessage, call: Call) {
        if call.cancelled {
            cancelledCallAnswered(response, call: call)
            return
        }
        guard let status = response.statusCode, status > 100 else { return }
        if status >= 200 && status < 300 && call.isConfirmed {
            // A retransmitted 2xx: our ACK was lost (or is still waiting for the caller's answer).
            if call.backendAcknowledged { sendBackendACK(call) }
            return
        }
        guard let tx = call.clientInvite else { return }
        if status == 422, !call.committed, let minSE = (try? response.minSE()) ?? nil, minSE > call.askedSessionExpires {
            // RFC 4028 §7.4: the backend wants a longer interval; ask again with it.
            call.askedSessionExpires = minSE
            call.record.backend.localCSeq += 1
            if tryNextBackend(call, sameDestination: true) == .sent { return }
        }
        if status >= 300 && mayFailOver(call, status: status) && tryNextBackend(call) == .sent {
            return
        }
        if status >= 200 || response.tag(of: .to) != nil { call.committed = true }
        if status < 300, let tag = response.tag(of: .to) {
            call.record.backend.remoteTag = tag.string
            if let target = Self.contactURI(of: response) { call.record.backend.remoteTarget = target }
            call.record.backend.routeSet = response.values(.recordRoute).map(\.bytes).reversed()
        }
        if !response.body.isEmpty { carrySDP(response.body.bytes, from: .backend, call: call) }
        var extra: [(String, String)] = []
        if status >= 200 && status < 300 {
            call.record.state = .confirmed
            call.record.answeredAt = Self.wallClock()
            call.record.backend.peerAllowsUpdate = Self.allows(response, "UPDATE")
            if let se = (try? response.sessionExpires()) ?? nil {
                call.record.backend.sessionInterval = se.seconds
                // In a response to our request, "uac" is us.
                call.record.backend.refresher = se.refresher == .uas ? .peer : .edge
            }
            if config.maxCallSeconds > 0 {
                call.record.endsAt = call.record.answeredAt + config.maxCallSeconds
                call.lifetimeTimer = loop.schedule(afterMilliseconds: config.maxCallSeconds * 1_000, target: self,
                                                   token: Self.token(.lifetime, call))
            }
            call.backendInvite = nil
            call.request = nil   // answered: no more destinations to choose
            // Late offer (the caller's INVITE had no SDP): the backend's ACK carries the caller's
            // answer, so it waits for the caller's ACK.
            call.lateOffer = tx.request.body.isEmpty && !response.body.isEmpty
            if !call.lateOffer { sendBackendACK(call) }
            armSessionTimer(call, .backend)
            armSessionTimer(call, .client)
            // Pings wait for the caller's ACK (clientAcknowledged): a 2xx that is never
            // acknowledged (a forged source) must not make us send anything more than its
            // retransmissions.
            extra = sessionHeaders(call, .client, inResponse: true)
        }
        var b = MessageBuilder.responseHead(to: tx.request, status: status, reason: response.reasonPhrase?.string,
                                            toTag: call.record.client.localTag, contact: status < 300 ? contact(call.record.client) : nil,
                                            extraHeaders: extra + (status < 300 ? [("Allow", Self.allow)] : []))
        Self.copySessionHeaders(from: response, into: &b, addTimer: false)
        b.header("Server", "SIPEdge")
        let bytes = b.finish(contentType: response.contentType, body: response.body.bytes)
        perform(tx.machine.handle(.respond(status: status, bytes: bytes)), server: tx)
        if status >= 200 && status < 300 {
            call.answer = bytes
            call.answerInterval = config.timers.t1
            call.answerDeadline = loop.now + 64 * config.timers.t1
            if tx.peer.reliability == .unreliable {
                call.answerTimer = loop.schedule(afterMilliseconds: call.answerInterval, target: self, token: Self.token(.answer, call))
            }
            changed(call)
        }
        if status >= 300 {
            call.clientInvite = nil
            endCall(call)
        }
    }

    /// The ACK for the backend's 2xx (§13.2.2.4), with the caller's answer in a late-offer call.
    private func sendBackendACK(_ call: Call) {
        let body = call.lateOffer ? call.record.client.lastSDPReceived : []
        let bytes = inDialogRequest("ACK", call: call, side: .backend, cseq: call.record.backend.inviteCSeq,
                                    contentType: body.isEmpty ? nil : Self.sdpType, body: body)
        call.backendAcknowledged = true
        _ = sender.send(bytes, to: call.record.backend.hop)
    }

    /// After a CANCEL: the backend's final answer ends the call; a 2xx that crossed the CANCEL is
    /// ACKed and followed by a BYE (§9.1: the CANCEL came too late for it).
    private func cancelledCallAnswered(_ response: SIPMessage, call: Call) {
        guard let status = response.statusCode, status >= 200 else { return }
        if status < 300, !call.isEnded {
            call.record.backend.remoteTag = response.tag(of: .to)?.string ?? ""
            if let target = Self.contactURI(of: response) { call.record.backend.remoteTarget = target }
            _ = sender.send(inDialogRequest("ACK", call: call, side: .backend, cseq: call.record.backend.inviteCSeq),
                            to: call.record.backend.hop)
            sendBYE(call, .backend, reason: nil)
        }
        endCall(call)
    }

    private func clientAcknowledged(_ call: Call, ack: SIPMessage) {
        // The INVITE is answered and the answer acknowledged: its server transaction has nothing
        // left to do (a late copy of the INVITE is recognised by its Call-ID), so it ends now
        // rather than after Timer L's 32 s.
        if let tx = call.clientInvite, tx.machine.state == .accepted { finish(tx) }
        if let t = call.answerTimer { loop.cancel(t) }
        call.answerTimer = nil
        if call.isConfirmed, call.pingTimer == nil, config.pingSeconds > 0 {
            // The dialog is confirmed by both sides now: from here on, it may be pinged.
            call.pingTimer = loop.schedule(afterMilliseconds: config.pingSeconds * 1_000, target: self, token: Self.token(.ping, call))
        }
        if call.answer != nil, !call.backendAcknowledged, call.isConfirmed {
            // Late offer: the caller's ACK carries the answer to the backend's offer.
            if !ack.body.isEmpty { carrySDP(ack.body.bytes, from: .client, call: call) }
            sendBackendACK(call)
            changed(call)
        }
        call.answer = nil
        call.clientInvite = nil
    }

    /// An in-dialog request (To has a tag): BYE ends the call on both legs; a session refresh is
    /// answered here; anything else crosses to the other leg.
    private func inDialog(_ request: SIPMessage, _ tx: ServerTxRecord) {
        guard let id = request.callID, let call = calls[id.string], let side = call.side(ofCallID: id.bytes),
              Self.belongs(request, to: call[side]) else {
            respond(tx, status: 481)
            return
        }
        guard let cseq = try? request.cseq().number else { return }
        if request.method != .prack || call.isConfirmed {
            // §12.2.2: a request older than the last one from that peer is out of order.
            if cseq < call[side].remoteCSeq && request.method != .prack {
                respond(tx, status: 500, extra: [("Retry-After", "1")])
                return
            }
            call[side].remoteCSeq = max(cseq, call[side].remoteCSeq)
        }
        // A new NAT binding or connection for the peer: later requests follow it.
        if tx.peer.transport == call[side].hop.transport { call[side].hop = tx.peer }
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

    /// An UPDATE without a body, or a re-INVITE offering the session the peer already has: it only
    /// refreshes that leg's session timer (RFC 4028), so the edge answers it and the other leg
    /// never hears of it.
    private func isSessionRefresh(_ request: SIPMessage, call: Call, side: Side) -> Bool {
        guard call.isConfirmed, call[side].sessionInterval > 0 else { return false }
        if request.method == .update { return request.body.isEmpty }
        if request.method == .invite {
            return request.body.isEmpty ? false : request.body.bytes.elementsEqual(call[side].lastSDPReceived)
        }
        return false
    }

    private func answerRefresh(_ request: SIPMessage, _ tx: ServerTxRecord, call: Call, side: Side) {
        if request.method == .invite {
            perform(tx.machine.start(trying: MessageBuilder.response(to: request, status: 100, toTag: nil)), server: tx)
        }
        adoptRequestedSessionTimer(request, call: call, side: side)
        if let target = Self.contactURI(of: request) { call[side].remoteTarget = target }
        let leg = call[side]
        let body = request.method == .invite ? leg.lastSDPSent : []
        var b = MessageBuilder.responseHead(to: request, status: 200, toTag: nil, contact: contact(leg),
                                        extraHeaders: sessionHeaders(call, side, inResponse: true) + [("Allow", Self.allow)])
        b.header("Server", "SIPEdge")
        let bytes = b.finish(contentType: body.isEmpty ? nil : Self.sdpType, body: body)
        perform(tx.machine.handle(.respond(status: 200, bytes: bytes)), server: tx)
        armSessionTimer(call, side)
        changed(call)
    }

    /// A refresh request from the peer sets the leg's interval and refresher (RFC 4028 §9).
    private func adoptRequestedSessionTimer(_ request: SIPMessage, call: Call, side: Side) {
        guard let se = (try? request.sessionExpires()) ?? nil, se.seconds >= config.minSE else { return }
        call[side].sessionInterval = se.seconds
        // In a request from the peer, "uac" is the peer.
        call[side].refresher = se.refresher == .uas || !Self.supports(request, "timer") ? .edge : .peer
    }

    /// Any other in-dialog request (re-INVITE, UPDATE, INFO, NOTIFY, MESSAGE, REFER, OPTIONS...)
    /// goes to the other leg as that leg's own request; its response comes back the same way.
    private func relay(_ request: SIPMessage, _ tx: ServerTxRecord, call: Call, from side: Side) {
        guard let method = request.method, let name = request.methodBytes?.string else { return }
        let refreshesTarget = method == .invite || method == .update
        if refreshesTarget, let target = Self.contactURI(of: request) {
            call[side].remoteTarget = target   // §12.2.2 target refresh
        }
        if refreshesTarget { adoptRequestedSessionTimer(request, call: call, side: side) }
        if method == .invite {
            perform(tx.machine.start(trying: MessageBuilder.response(to: request, status: 100, toTag: nil)), server: tx)
            guard !call.reinviteInProgress else {
                respond(tx, status: 491)
                return
            }
            call.reinviteInProgress = true
        }
        let other = side.other
        call[other].localCSeq += 1
        var extra: [(String, String)] = []
        if method == .prack, let rack = request.firstValue(.rack) {
            // RFC 3262 §7.2: RAck names the INVITE by its CSeq, which differs between the legs.
            let parts = rack.string.split(separator: " ", omittingEmptySubsequences: true)
            if parts.count == 3 { extra.append(("RAck", "\(parts[0]) \(call[other].inviteCSeq) \(parts[2])")) }
        }
        if refreshesTarget { extra += sessionHeaders(call, other, inResponse: false) }
        if !request.body.isEmpty { carrySDP(request.body.bytes, from: side, call: call) }
        let bytes = inDialogRequest(name, call: call, side: other, cseq: call[other].localCSeq, contact: refreshesTarget,
                                    extra: extra, copying: request, contentType: request.contentType, body: request.body.bytes)
        startClient(bytes, to: call[other].hop, call: call, origin: tx)
        changed(call)
    }

    /// The other leg answered a relayed request: the answer goes back to the leg that asked.
    private func relayResponse(_ response: SIPMessage, clientTx: ClientTxRecord, origin: ServerTxRecord) {
        guard let status = response.statusCode, status > 100 else { return }
        let method = origin.request.method
        let refreshes = method == .invite || method == .update
        var extra: [(String, String)] = []
        var ourContact: MessageBuilder.OurContact?
        if let call = clientTx.call, let answering = clientTx.request.callID.flatMap({ call.side(ofCallID: $0.bytes) }) {
            let asking = answering.other
            if method == .invite && status >= 200 {
                if status < 300 {
                    if origin.machine.state != .proceeding {
                        // A retransmitted 2xx: our ACK was lost.
                        if let ack = call.reinviteACK { _ = sender.send(ack, to: call[answering].hop) }
                        return
                    }
                    let cseq = (try? clientTx.request.cseq().number) ?? call[answering].localCSeq
                    let ack = inDialogRequest("ACK", call: call, side: answering, cseq: cseq)
                    call.reinviteACK = ack
                    _ = sender.send(ack, to: call[answering].hop)
                }
                call.reinviteInProgress = false
            }
            if refreshes && status >= 200 && status < 300 {
                if let target = Self.contactURI(of: response) { call[answering].remoteTarget = target }
                if let se = (try? response.sessionExpires()) ?? nil {
                    call[answering].sessionInterval = se.seconds
                    call[answering].refresher = se.refresher == .uas ? .peer : .edge
                }
                armSessionTimer(call, answering)
                armSessionTimer(call, asking)
                extra = sessionHeaders(call, asking, inResponse: true)
                ourContact = contact(call[asking])
            }
            if !response.body.isEmpty { carrySDP(response.body.bytes, from: answering, call: call) }
            if status >= 200 { changed(call) }
        }
        var b = MessageBuilder.responseHead(to: origin.request, status: status, reason: response.reasonPhrase?.string, toTag: nil,
                                            contact: ourContact, extraHeaders: extra)
        Self.copySessionHeaders(from: response, into: &b, addTimer: false)
        b.header("Server", "SIPEdge")
        let bytes = b.finish(contentType: response.contentType, body: response.body.bytes)
        perform(origin.machine.handle(.respond(status: status, bytes: bytes)), server: origin)
    }

    /// A body crossing from `side` to the other: the last SDP each way, for refreshes and records.
    private func carrySDP(_ body: [UInt8], from side: Side, call: Call) {
        call[side].lastSDPReceived = body
        call[side.other].lastSDPSent = body
    }

    /// A request within a leg's dialog, from the leg's own state (§12.2.1.1).
    private func inDialogRequest(_ method: String, call: Call, side: Side, cseq: UInt32, contact withContact: Bool = false,
                                 extra: [(String, String)] = [], copying source: SIPMessage? = nil,
                                 contentType: ByteView? = nil, body: [UInt8] = []) -> [UInt8] {
        let leg = call[side]
        var b = MessageBuilder(requestLine: method, uri: leg.remoteTarget)
        via(leg.hop, into: &b)
        b.header("Max-Forwards", "70")
        for route in leg.routeSet { b.header("Route", route) }
        b.header("From", leg.localURI, tag: leg.localTag)
        b.header("To", leg.remoteURI, tag: leg.remoteTag)
        b.header("Call-ID", leg.callID)
        b.cseq(cseq, method)
        if withContact { contact(leg, into: &b) }
        for (name, value) in extra { b.header(name, value) }
        if let source { Self.copySessionHeaders(from: source, into: &b, addTimer: extra.contains { $0.0 == "Session-Expires" }) }
        return b.finish(contentType: contentType, body: body)
    }

    // MARK: - Ending calls

    /// Sends a BYE on one leg (its own CSeq), answered or not.
    private func sendBYE(_ call: Call, _ side: Side, reason: String?) {
        call[side].localCSeq += 1
        let bytes = inDialogRequest("BYE", call: call, side: side, cseq: call[side].localCSeq,
                                    extra: reason.map { [("Reason", $0)] } ?? [])
        startClient(bytes, to: call[side].hop, call: nil, purpose: .fireAndForget)
    }

    /// Ends a confirmed call with a BYE on each leg but `except` (the one that hung up).
    private func hangUp(_ call: Call, reason: String?, except: Side? = nil) {
        guard !call.isEnded else { return }
        for side in [Side.backend, .client] where side != except { sendBYE(call, side, reason: reason) }
        endCall(call)
    }

    private func endCall(_ call: Call) {
        guard !call.isEnded else { return }
        let wasConfirmed = call.isConfirmed
        call.record.state = .ended
        for t in [call.answerTimer, call.lifetimeTimer, call.sessionTimers.client, call.sessionTimers.backend, call.pingTimer] {
            if let t { loop.cancel(t) }
        }
        call.answerTimer = nil
        call.pingTimer = nil
        call.lifetimeTimer = nil
        call.sessionTimers = (nil, nil)
        // Its pings and refreshes are about a dialog that is gone: no retransmission of them may
        // go on (toward a forged source that would make us a reflector).
        for tx in call.ownRequests where !tx.finished { finish(tx) }
        call.ownRequests = []
        calls[call.record.client.callID] = nil
        calls[call.record.backend.callID] = nil
        callsByNumber[call.number] = nil
        callsEnded += 1
        rememberEnded(call.record.client.callID)
        if let d = call.destination { picker.release(d) }
        call.destination = nil
        if let source = call.admitted { config.admission?.release(source) }
        call.admitted = nil
        if wasConfirmed { sink?.dialogEnded(key: call.record.key) }
    }

    private func rememberEnded(_ callID: String) {
        let now = loop.now
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

    /// A confirmed call changed: a new version of its record goes to the sink.
    private func changed(_ call: Call) {
        guard call.isConfirmed else { return }
        call.record.version += 1
        sink?.dialogChanged(call.record)
    }

    // MARK: - Session timers (RFC 4028) and pings

    /// Session-Expires (and Require: timer) for a leg's message, when that leg has a session timer.
    private func sessionHeaders(_ call: Call, _ side: Side, inResponse: Bool) -> [(String, String)] {
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
    /// end (§10: interval - min(32, interval/3)) when the peer does.
    private func armSessionTimer(_ call: Call, _ side: Side) {
        let old = side == .client ? call.sessionTimers.client : call.sessionTimers.backend
        if let old { loop.cancel(old) }
        let leg = call[side]
        var timer: TimerID?
        if leg.sessionInterval > 0 && leg.refresher != .none && !call.isEnded {
            let interval = UInt64(leg.sessionInterval)
            let ms = leg.refresher == .edge ? interval * 500 : (interval - min(32, interval / 3)) * 1_000
            timer = loop.schedule(afterMilliseconds: max(ms, 100), target: self,
                                  token: Self.token(side == .client ? .sessionClient : .sessionBackend, call))
        }
        if side == .client { call.sessionTimers.client = timer } else { call.sessionTimers.backend = timer }
    }

    private func sessionTimerFired(_ call: Call, _ side: Side) {
        if side == .client { call.sessionTimers.client = nil } else { call.sessionTimers.backend = nil }
        guard call.isConfirmed else { return }
        let leg = call[side]
        if leg.refresher == .peer {
            // No refresh came in time: the session is over on that leg, so on both (§10).
            hangUp(call, reason: "SIP;cause=408;text=\"Session timer expired\"")
            return
        }
        guard !call.reinviteInProgress else {
            // A re-INVITE is crossing: try again shortly.
            let t = loop.schedule(afterMilliseconds: 1_000, target: self,
                                  token: Self.token(side == .client ? .sessionClient : .sessionBackend, call))
            if side == .client { call.sessionTimers.client = t } else { call.sessionTimers.backend = t }
            return
        }
        // Our turn to refresh: UPDATE without a body where the peer takes it, else a re-INVITE
        // offering the session as it stands.
        call[side].localCSeq += 1
        let method = leg.peerAllowsUpdate ? "UPDATE" : "INVITE"
        let body = method == "INVITE" ? leg.lastSDPSent : []
        if method == "INVITE" { call.reinviteInProgress = true }
        let bytes = inDialogRequest(method, call: call, side: side, cseq: call[side].localCSeq, contact: true,
                                    extra: sessionHeaders(call, side, inResponse: false) + [("Supported", "timer")],
                                    contentType: body.isEmpty ? nil : Self.sdpType, body: body)
        startClient(bytes, to: leg.hop, call: call, purpose: .refresh(side))
        changed(call)
    }

    /// The answer to a refresh or a ping we sent on `side`.
    private func ownRequestAnswered(_ response: SIPMessage, tx: ClientTxRecord, call: Call, purpose: TransactionRecord<ClientTransaction>.Purpose) {
        guard let status = response.statusCode, status >= 200 else { return }
        switch purpose {
        case .refresh(let side):
            if tx.machine.isInvite {
                if status < 300 {
                    let ack = inDialogRequest("ACK", call: call, side: side, cseq: (try? tx.request.cseq().number) ?? call[side].localCSeq)
                    _ = sender.send(ack, to: call[side].hop)
                    if !response.body.isEmpty { call[side].lastSDPReceived = response.body.bytes }
                }
                call.reinviteInProgress = false
            }
            if status < 300 {
                if let se = (try? response.sessionExpires()) ?? nil {
                    call[side].sessionInterval = se.seconds
                    call[side].refresher = se.refresher == .uas ? .peer : .edge
                }
                armSessionTimer(call, side)
                changed(call)
            } else if status == 491 {
                armSessionTimer(call, side)
            } else {
                hangUp(call, reason: "SIP;cause=\(status);text=\"Session refresh failed\"")
            }
        case .ping:
            // The peer is there if it answers at all, unless it no longer knows the dialog.
            if status == 408 || status == 481 { hangUp(call, reason: "SIP;cause=\(status);text=\"Dialog ping failed\"") }
        default:
            break
        }
    }

    private func ping(_ call: Call) {
        call.pingTimer = nil
        guard call.isConfirmed else { return }
        for side in [Side.client, .backend] {
            call[side].localCSeq += 1
            let bytes = inDialogRequest("OPTIONS", call: call, side: side, cseq: call[side].localCSeq)
            startClient(bytes, to: call[side].hop, call: call, purpose: .ping(side))
        }
        changed(call)
        if call.isConfirmed {
            call.pingTimer = loop.schedule(afterMilliseconds: config.pingSeconds * 1_000, target: self, token: Self.token(.ping, call))
        }
    }

    // MARK: - Records from elsewhere (a restart, another node)

    /// Takes over a confirmed dialog from its record (loaded from disk or replicated): both legs
    /// as they were, its timers re-armed from their wall-clock deadlines. Its transactions are not
    /// carried over: requests from either side start new ones.
    public func restore(_ record: DialogRecord) {
        loop.assertInLoop()
        guard record.state == .confirmed, calls[record.backend.callID] == nil else { return }
        var record = record
        record.client.hop = record.client.hop.withoutWorker
        record.backend.hop = record.backend.hop.withoutWorker
        let call = Call(number: takeID(), record: record)
        calls[record.client.callID] = call
        calls[record.backend.callID] = call
        callsByNumber[call.number] = call
        callsStarted += 1
        if let index = picker.index(of: record.backend.hop) {
            picker.claim(index)
            call.destination = index
        }
        if record.endsAt > 0 {
            let now = Self.wallClock()
            let ms = record.endsAt > now ? (record.endsAt - now) * 1_000 : 1
            call.lifetimeTimer = loop.schedule(afterMilliseconds: ms, target: self, token: Self.token(.lifetime, call))
        }
        armSessionTimer(call, .client)
        armSessionTimer(call, .backend)
        if config.pingSeconds > 0 {
            call.pingTimer = loop.schedule(afterMilliseconds: config.pingSeconds * 1_000, target: self, token: Self.token(.ping, call))
        }
    }

    /// Transactions in progress on this worker, server and client.
    public var transactionCounts: (server: Int, client: Int) { (serverTransactions.count, clientTransactions.count) }

    public func resetStatistics() {
        loop.assertInLoop()
        statistics = B2BUAStatistics()
    }

    /// The records of every confirmed call on this worker (`dlg_list`).
    public func dialogRecords() -> [DialogRecord] {
        loop.assertInLoop()
        return callsByNumber.values.filter(\.isConfirmed).map(\.record)
    }

    /// Ends the call whose record has `key` with a BYE on both legs (`dlg_end_dlg`); false if none.
    public func endDialog(key: String, reason: String = "SIP;cause=200;text=\"Ended by the operator\"") -> Bool {
        loop.assertInLoop()
        guard let call = calls[key], call.isConfirmed else { return false }
        hangUp(call, reason: reason)
        return true
    }

    // MARK: - Helpers

    /// "name-addr" or "addr-spec" of a From/To value without its header parameters (the tag).
    private func addressPart(_ address: NameAddress) -> [UInt8] {
        var end = address.paramsStart
        let base = address.base
        while end > 0, isLWSByte(base[end - 1]) { end -= 1 }
        let start = address.displayStart >= 0 ? address.displayStart : (address.hasAngleBrackets ? address.uri.start - 1 : address.uri.start)
        return Array(base[start..<end])
    }

    static let sdpType = ByteView(text: "application/sdp")

    static func contactURI(of message: SIPMessage) -> [UInt8]? {
        if let contact = try? message.contact(), case .addresses(let a) = contact, let first = a.first { return first.uri.text.bytes }
        return nil
    }

    static func supports(_ message: SIPMessage, _ tag: String) -> Bool {
        ((try? message.optionTags(.supported)) ?? []).contains { $0.equalsIgnoringCase(tag) }
            || ((try? message.optionTags(.require)) ?? []).contains { $0.equalsIgnoringCase(tag) }
    }

    static func allows(_ message: SIPMessage, _ method: String) -> Bool {
        message.values(.allow).contains { $0.equalsIgnoringCase(method) }
    }

    /// The session headers that cross legs (MessageBuilder.endToEnd) except the session timer's,
    /// which each leg has its own of: Session-Expires and Min-SE stay behind, "timer" leaves
    /// Supported and Require (and is added back to Supported when this leg asks for a timer).
    static func copySessionHeaders(from source: SIPMessage, into b: inout MessageBuilder, addTimer: Bool) {
        var supportedWritten = false
        for i in 0..<source.headerCount {
            let h = source.header(at: i)
            guard MessageBuilder.endToEnd.contains(h.kind), h.kind != .sessionExpires, h.kind != .minSE else { continue }
            if h.kind == .supported || h.kind == .require {
                let tags = h.value.string.split(separator: ",").map { String($0.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed()) }
                    .filter { !$0.isEmpty && $0.lowercased() != "timer" }
                var kept = tags
                if h.kind == .supported && addTimer && !supportedWritten { kept.append("timer"); supportedWritten = true }
                if !kept.isEmpty { b.header(h.name.string, kept.joined(separator: ", ")) }
            } else {
                b.header(h.name.string, h.value.bytes)
            }
        }
        if addTimer && !supportedWritten { b.header("Supported", "timer") }
    }

    /// Sends a phone's REGISTER on to the upstream registrar (the Asterisk) as the edge's own: our
    /// Via, Call-ID and CSeq, the edge as Contact, the phone's identity and credentials. The
    /// answer goes back to the phone: a challenge as it came, a 2xx as the phone's own bindings.
    private func forwardRegistration(_ request: SIPMessage, _ tx: ServerTxRecord, _ up: UpstreamRegistration,
                                     registrar: any RegistrationHandler) {
        let local = config.address(for: up.hop.transport)
        var b = MessageBuilder(requestLine: "REGISTER", uri: up.requestURI)
        via(up.hop, into: &b)
        b.header("Max-Forwards", "70")
        if let from = request.firstValue(.from) { b.header("From", from.bytes) }
        if let to = request.firstValue(.to) { b.header("To", to.bytes) }
        b.header("Call-ID", up.callID)
        b.header("CSeq", "\(up.cseq) REGISTER")
        b.header("Contact", "<sip:\(up.user)@\(local.host):\(local.port)\(up.hop.transport == .udp ? "" : ";transport=\(up.hop.transport.rawValue)")>")
        b.header("Expires", "\(up.expires)")
        for kind: HeaderKind in [.authorization, .proxyAuthorization, .userAgent] {
            for i in 0..<request.headerCount where request.header(at: i).kind == kind {
                let h = request.header(at: i)
                b.header(h.name.string, h.value.bytes)
            }
        }
        startClient(b.finish(), to: up.hop, call: nil, purpose: .ownRequest, onFinal: { [weak self] response in
            guard let self, self.serverTransactions[tx.key] === tx else { return }
            let (status, headers) = registrar.upstreamAnswered(request, from: tx.peer, upstream: up, response: response)
            self.respond(tx, status: status, extra: headers)
        })
    }

    /// Sends an OPTIONS outside any dialog to `hop` (the dispatcher's probe); `done` gets the final
    /// status, or nil when none came (Timer F, an ICMP refusal, a refused connection).
    public func probe(_ destination: Hop, _ done: @escaping (Int?) -> Void) {
        loop.assertInLoop()
        let hop = byOwnPort(destination)
        let local = localAddress(hop)
        let host = hop.address.uriHost
        let transport = hop.transport == .udp ? "" : ";transport=\(hop.transport.rawValue)"
        var b = MessageBuilder(requestLine: "OPTIONS", uri: Array("sip:\(host):\(hop.address.port)\(transport)".utf8))
        via(hop, into: &b)
        b.header("Max-Forwards", "70")
        b.header("From", "<sip:edge@\(local.host):\(local.port)>;tag=\(ids.make())")
        b.header("To", "<sip:\(host):\(hop.address.port)>")
        b.header("Call-ID", ids.make())
        b.header("CSeq", "1 OPTIONS")
        b.header("Accept", "application/sdp")
        startClient(b.finish(), to: hop, call: nil, purpose: .ownRequest, onFinal: { done($0?.statusCode) })
    }

    /// The transport says `hop` refused what we sent (ICMP unreachable, a refused or broken
    /// connection): every client transaction toward it fails at once, not after Timer B or F.
    public func unreachable(_ hop: Hop) {
        loop.assertInLoop()
        let failing = clientTransactions.values.filter { $0.peer.address == hop.address && $0.peer.transport == hop.transport }
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

    private func startClient(_ bytes: [UInt8], to destination: Hop, call: Call?, origin: ServerTxRecord? = nil,
                             purpose: ClientTxRecord.Purpose = .relay, onFinal: ((SIPMessage?) -> Void)? = nil) {
        startClient(try? SIPMessage(parsing: bytes), to: destination, call: call, origin: origin, purpose: purpose, onFinal: onFinal)
    }

    /// `request`: one we built, parsed (nil if it did not parse: the transaction fails at once).
    private func startClient(_ request: SIPMessage?, to destination: Hop, call: Call?, origin: ServerTxRecord? = nil,
                             purpose: ClientTxRecord.Purpose = .relay, onFinal: ((SIPMessage?) -> Void)? = nil) {
        guard let request, let key = TransactionKey.client(forRequest: request) else {
            onFinal?(nil)
            return
        }
        let tx = ClientTxRecord(id: takeID(), machine: ClientTransaction(request: request, reliability: destination.reliability, timers: config.timers),
                                request: request, peer: destination, key: key)
        tx.call = call
        tx.origin = origin
        tx.purpose = purpose
        tx.onFinal = onFinal
        if let call {
            switch purpose {
            case .ping, .refresh:
                call.ownRequests.removeAll { $0.finished }
                call.ownRequests.append(tx)
            default: break
            }
        }
        clientTransactions[key] = tx
        transactionsByID[tx.id] = tx
        perform(tx.machine.start(), client: tx, message: nil)
    }

    /// Ends a transaction (its machine said so, or before its own timers would): its timers are
    /// cancelled and it leaves its table.
    private func finish(_ tx: ServerTxRecord) { release(tx, from: &serverTransactions) }

    private func finish(_ tx: ClientTxRecord) { release(tx, from: &clientTransactions) }

    private func release<Machine>(_ tx: TransactionRecord<Machine>, from table: inout [TransactionKey: TransactionRecord<Machine>]) {
        tx.finished = true
        tx.timers.forEach { loop.cancel($0) }
        tx.timers.removeAll()
        table[tx.key] = nil
        transactionsByID[tx.id] = nil
    }

    private func respond(_ tx: ServerTxRecord, status: Int, extra: [(String, String)] = []) {
        let tag = tx.request.tag(of: .to) == nil ? ids.make() : nil
        let bytes = MessageBuilder.response(to: tx.request, status: status, toTag: tag, extraHeaders: extra)
        perform(tx.machine.handle(.respond(status: status, bytes: bytes)), server: tx)
    }

    private func perform(_ actions: [TransactionAction], server tx: ServerTxRecord) {
        for action in actions {
            switch action {
            case .send(let bytes): _ = sender.send(bytes, to: tx.peer)
            case .arm(let timer, let ms): if !tx.finished { arm(timer, ms, id: tx.id, in: &tx.timers) }
            case .disarm(let timer): if let t = tx.timers.removeValue(forKey: timer) { loop.cancel(t) }
            case .passUp: break   // the only ACK passed up (RFC 6026) is handled by clientAcknowledged
            case .timedOut:
                // No ACK for our final response: the client is gone.
                if let call = tx.call, call.clientInvite === tx || call.answer != nil {
                    if call.isConfirmed { hangUp(call, reason: "SIP;cause=408;text=\"No ACK\"", except: .client) } else { endCall(call) }
                }
            case .terminate:
                finish(tx)
            }
        }
    }

    private func perform(_ actions: [TransactionAction], client tx: ClientTxRecord, message: SIPMessage?) {
        var actions = actions[...]
        while let action = actions.popFirst() {
            switch action {
            case .send(let bytes):
                if !sender.send(bytes, to: tx.peer) {
                    // Nothing can carry it (no connection, none can be opened): fail at once.
                    actions = tx.machine.handle(.transportError)[...] + actions
                }
            case .arm(let timer, let ms): if !tx.finished { arm(timer, ms, id: tx.id, in: &tx.timers) }
            case .disarm(let timer): if let t = tx.timers.removeValue(forKey: timer) { loop.cancel(t) }
            case .passUp:
                guard let message else { break }
                if let onFinal = tx.onFinal, let status = message.statusCode, status >= 200 {
                    tx.onFinal = nil
                    onFinal(message)
                } else if let origin = tx.origin as? ServerTxRecord {
                    relayResponse(message, clientTx: tx, origin: origin)
                } else if let call = tx.call {
                    switch tx.purpose {
                    case .backendInvite:
                        backendInviteResponse(message, call: call)
                        // Answered and ACKed: a retransmitted 2xx is recognised by its Call-ID and
                        // CSeq, so the transaction need not wait out Timer M.
                        if call.backendAcknowledged, let status = message.statusCode, status >= 200, status < 300 { finish(tx) }
                    case .relay, .fireAndForget, .ownRequest: break
                    case .refresh, .ping: ownRequestAnswered(message, tx: tx, call: call, purpose: tx.purpose)
                    }
                }
            case .timedOut:
                if let onFinal = tx.onFinal {
                    tx.onFinal = nil
                    onFinal(nil)
                    break
                }
                if let origin = tx.origin as? ServerTxRecord {
                    // The other leg did not answer a relayed request.
                    if tx.machine.isInvite { tx.call?.reinviteInProgress = false }
                    respond(origin, status: 408)
                    break
                }
                guard let call = tx.call else { break }
                switch tx.purpose {
                case .backendInvite:
                    // The backend never answered (Timer B) or is unreachable: that counts against it
                    // at once; the call goes to the next one, or gets 408.
                    if let d = call.destination, !call.committed { picker.failed(d) }
                    if call.cancelled {
                        endCall(call)
                    } else if mayFailOver(call, status: nil) && tryNextBackend(call) == .sent {
                        break
                    } else if let server = call.clientInvite {
                        respond(server, status: 408)
                        call.clientInvite = nil
                        endCall(call)
                    }
                case .refresh:
                    if tx.machine.isInvite { call.reinviteInProgress = false }
                    hangUp(call, reason: "SIP;cause=408;text=\"Session refresh failed\"")
                case .ping:
                    hangUp(call, reason: "SIP;cause=408;text=\"Dialog ping failed\"")
                case .relay, .fireAndForget, .ownRequest:
                    break
                }
            case .terminate:
                finish(tx)
            }
        }
    }

    private func arm(_ timer: TransactionTimer, _ ms: UInt64, id: UInt32, in timers: inout ArmedTimers) {
        if let old = timers[timer] { loop.cancel(old) }
        let token = UInt64(id) << 8 | UInt64(timer.rawValue)
        timers[timer] = timer.onlyEndsAWait ? loop.schedule(atLeastMilliseconds: ms, target: self, token: token)
                                            : loop.schedule(afterMilliseconds: ms, target: self, token: token)
    }

    /// Call timers share the token space with transaction timers: the top byte says which.
    private enum CallTimer: UInt64 {
        case answer = 1, lifetime, sessionClient, sessionBackend, ping, trying
    }

    private static func token(_ kind: CallTimer, _ call: Call) -> UInt64 { kind.rawValue << 56 | UInt64(call.number) }

    public func timerFired(_ token: UInt64, on loop: EventLoop) {
        if let kind = CallTimer(rawValue: token >> 56) {
            guard let call = callsByNumber[UInt32(truncatingIfNeeded: token)] else { return }
            switch kind {
            case .lifetime:
                call.lifetimeTimer = nil
                guard call.isConfirmed else { return }
                hangUp(call, reason: "SIP;cause=200;text=\"Call lifetime reached\"")
            case .sessionClient: sessionTimerFired(call, .client)
            case .sessionBackend: sessionTimerFired(call, .backend)
            case .ping: ping(call)
            case .trying:
                if let tx = call.clientInvite, !tx.finished, !tx.machine.hasResponded { sendTrying(tx) }
            case .answer:
                guard let answer = call.answer else { return }
                if loop.now >= call.answerDeadline {
                    // §13.3.1.4: no ACK within 64*T1: end the call (BYE to the backend).
                    call.answerTimer = nil
                    hangUp(call, reason: "SIP;cause=408;text=\"No ACK\"", except: .client)
                    return
                }
                _ = sender.send(answer, to: call.record.client.hop)
                call.answerInterval = min(call.answerInterval * 2, config.timers.t2)
                call.answerTimer = loop.schedule(afterMilliseconds: call.answerInterval, target: self, token: token)
            }
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
