import SIPParser
import Transport

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

/// A server transaction of the B2BUA: its state machine, the request it answers, the hop it came
/// along, its key and timers, and the call it belongs to.
final class ServerTxRecord {
    /// Its slot in the layer's slab; `serial` tells it from the slot's earlier transactions.
    let id: UInt32
    var serial: UInt32 = 0
    var machine: ServerTransaction
    let request: SIPMessage
    let peer: Hop
    let key: TransactionKey
    var timers = ArmedTimers()
    weak var call: Call?
    /// Ended early by the B2BUA (its INVITE is answered and acknowledged): nothing more is armed.
    var finished = false

    init(id: UInt32, machine: ServerTransaction, request: SIPMessage, peer: Hop, key: TransactionKey) {
        self.id = id
        self.machine = machine
        self.request = request
        self.peer = peer
        self.key = key
    }
}

/// A client transaction of the B2BUA: its state machine, where it goes, which call and leg it
/// serves, what it is for, and its CSeq number (a 2xx to an INVITE is ACKed with it).
final class ClientTxRecord {
    /// Its slot in the layer's slab, written into its branch; `serial` as for server transactions.
    let id: UInt32
    var serial: UInt32 = 0
    var machine: ClientTransaction
    let peer: Hop
    /// The Via branch and method it is found by (RFC 3261 §17.1.3).
    let branch: [UInt8]
    let method: String
    var timers = ArmedTimers()
    /// The CANCEL sent for this INVITE: same branch, its own transaction (§9.1).
    var cancel: ClientTxRecord?
    weak var call: Call?
    /// The leg of `call` the request went on.
    var side: DialogRecord.Side?
    var cseq: UInt32 = 0
    /// For a request relayed from one leg to the other: the server transaction it answers.
    var origin: ServerTxRecord?
    /// What the B2BUA itself sent this request for, when its answer is not relayed.
    var purpose = Purpose.relay
    /// For a request the B2BUA sent for itself (a probe, a registration): told the final
    /// response, or nil when none came.
    var onFinal: ((SIPMessage?) -> Void)?
    var finished = false

    /// relay: answers a request of the other leg; backendInvite: a call's INVITE; refresh, ping:
    /// session timer and dialog ping of a leg; ownRequest: a probe or a forwarded REGISTER, whose
    /// answer goes to `onFinal`; fireAndForget: a BYE or CANCEL nobody waits for.
    enum Purpose { case relay, backendInvite, refresh(DialogRecord.Side), ping(DialogRecord.Side), ownRequest, fireAndForget }

    init(id: UInt32, machine: ClientTransaction, peer: Hop, branch: [UInt8], method: String) {
        self.id = id
        self.machine = machine
        self.peer = peer
        self.branch = branch
        self.method = method
    }
}

/// What the transaction layer tells the one above it (RFC 3261 §17: the transaction user).
protocol TransactionUser: AnyObject {
    /// A response for a client transaction that the machine passes up (provisional, final, a 2xx
    /// retransmission in Accepted).
    func response(_ response: SIPMessage, for tx: ClientTxRecord)
    /// Timer B or F fired, or the transport could not carry the request.
    func timedOut(_ tx: ClientTxRecord)
    /// Timer H: no ACK came for a final response to an INVITE.
    func timedOut(_ tx: ServerTxRecord)
}

/// RFC 3261 §17 for one worker: the server and client transactions, their timers on the loop's
/// clock, and the actions their machines ask for (send, arm, pass up). What a message means for a
/// call is the user's business.
///
/// Transactions live in slabs (arrays with free lists): a timer's token and a transaction's id are
/// its slot. A client transaction's slot is also written into its Via branch (`.<slot>` after our
/// identifier), so a response finds it by index, checked against the whole branch and method,
/// without building a key or hashing one. Server transactions are found by the peer's branch,
/// sent-by and method (§17.2.3), in a hash table.
final class TransactionLayer: TimerTarget {
    let clock: any LoopClock
    let timers: TransactionTimerValues
    private unowned let sender: any MessageSender
    unowned(unsafe) var user: (any TransactionUser)!
    private(set) var server: [TransactionKey: ServerTxRecord] = [:]
    private var servers = Slab<ServerTxRecord>()
    private var clients = Slab<ClientTxRecord>()

    init(clock: any LoopClock, timers: TransactionTimerValues, sender: any MessageSender) {
        self.clock = clock
        self.timers = timers
        self.sender = sender
    }

    /// Client transactions in progress.
    var clientCount: Int { clients.count }

    /// Tells a slot's transactions apart over time (in timer tokens: a slot is reused).
    private var serials: UInt32 = 0

    private func takeSerial() -> UInt32 {
        serials &+= 1
        return serials
    }

    /// The slot the next client transaction will take: write it into the request's branch
    /// (`MessageBuilder.via(..., slot:)`) before `startClient`.
    var nextClientSlot: Int { clients.nextSlot }

    // MARK: - Server transactions

    /// A server transaction for a request just received (not yet known by `key`).
    func newServer(_ request: SIPMessage, method: SIPMethod, from hop: Hop, key: TransactionKey) -> ServerTxRecord {
        let machine = ServerTransaction(method: method, reliability: hop.reliability, timers: timers)
        let tx = servers.insert { ServerTxRecord(id: UInt32($0), machine: machine, request: request, peer: hop, key: key) }
        tx.serial = takeSerial()
        server[key] = tx
        return tx
    }

    /// The INVITE's 100 Trying (§17.2.1), which also answers its retransmissions.
    func sendTrying(_ tx: ServerTxRecord) {
        perform(tx.machine.start(trying: MessageBuilder.response(to: tx.request, status: 100, toTag: nil)), server: tx)
    }

    func respond(_ tx: ServerTxRecord, status: Int, bytes: [UInt8]) {
        perform(tx.machine.handle(.respond(status: status, bytes: bytes)), server: tx)
    }

    func handle(_ event: ServerTransaction.Event, _ tx: ServerTxRecord) {
        perform(tx.machine.handle(event), server: tx)
    }

    func finish(_ tx: ServerTxRecord) {
        guard !tx.finished else { return }
        tx.finished = true
        release(&tx.timers)
        server[tx.key] = nil
        servers.remove(Int(tx.id))
    }

    private func perform(_ actions: [TransactionAction], server tx: ServerTxRecord) {
        for action in actions {
            switch action {
            case .send(let bytes): _ = sender.send(bytes, to: tx.peer)
            case .arm(let timer, let ms): if !tx.finished { arm(timer, ms, token: Self.token(tx.id, tx.serial, timer, server: true), in: &tx.timers) }
            case .disarm(let timer): if let t = tx.timers.removeValue(forKey: timer) { clock.cancel(t) }
            case .passUp: break   // the only ACK passed up (RFC 6026) is the user's, who matched it already
            case .timedOut: user.timedOut(tx)
            case .terminate: finish(tx)
            }
        }
    }

    // MARK: - Client transactions

    /// Starts a client transaction for a request the edge built, sending it to `destination`.
    @discardableResult
    func startClient(_ request: BuiltRequest, to destination: Hop, call: Call?, side: DialogRecord.Side? = nil, cseq: UInt32 = 0,
                     origin: ServerTxRecord? = nil, purpose: ClientTxRecord.Purpose = .relay,
                     onFinal: ((SIPMessage?) -> Void)? = nil) -> ClientTxRecord? {
        guard !request.branch.isEmpty else {
            onFinal?(nil)
            return nil
        }
        let machine = ClientTransaction(bytes: request.bytes, isInvite: request.isInvite, reliability: destination.reliability, timers: timers)
        let tx = clients.insert { ClientTxRecord(id: UInt32($0), machine: machine, peer: destination, branch: request.branch, method: request.method) }
        tx.serial = takeSerial()
        if request.method == "CANCEL", let invite = find(branch: request.branch, method: "INVITE".utf8) {
            invite.cancel = tx   // the CANCEL carries its INVITE's branch: it is found through it
        }
        tx.call = call
        tx.side = side
        tx.cseq = cseq
        tx.origin = origin
        tx.purpose = purpose
        tx.onFinal = onFinal
        perform(tx.machine.start(), client: tx, message: nil)
        return tx
    }

    /// The client transaction a response belongs to (§17.1.3: its top Via branch and CSeq method),
    /// found by the slot our branch carries.
    func client(forResponse response: SIPMessage) -> ClientTxRecord? {
        guard let branch = response.topViaBranch, let method = response.cseqMethodBytes else { return nil }
        return branch.withUnsafeBytes { b in method.withUnsafeBytes { m in find(branch: b, method: m) } }
    }

    private func find(branch: some Collection<UInt8>, method: some Collection<UInt8>) -> ClientTxRecord? {
        guard let slot = Self.slot(inBranch: branch), let tx = clients[slot], tx.branch.elementsEqual(branch) else { return nil }
        if method.elementsEqual(tx.method.utf8) { return tx }
        if let cancel = tx.cancel, !cancel.finished, method.elementsEqual(cancel.method.utf8) { return cancel }
        return nil
    }

    /// The slot written after the last "." of one of our branches; nil for any other branch.
    static func slot(inBranch branch: some Collection<UInt8>) -> Int? {
        var value = 0, digits = 0, seenDot = false
        for b in branch {
            if b == UInt8(ascii: ".") {
                (value, digits, seenDot) = (0, 0, true)
            } else if seenDot {
                guard b &- 0x30 < 10, digits < 9 else { return nil }
                value = value * 10 + Int(b &- 0x30)
                digits += 1
            }
        }
        return seenDot && digits > 0 ? value : nil
    }

    /// A response that matched `tx` by its branch and method.
    func receive(_ response: SIPMessage, for tx: ClientTxRecord) {
        perform(tx.machine.handle(.response(response)), client: tx, message: response)
    }

    func finish(_ tx: ClientTxRecord) {
        guard !tx.finished else { return }
        tx.finished = true
        release(&tx.timers)
        clients.remove(Int(tx.id))
    }

    /// The transport says `hop` refused what we sent: every client transaction toward it fails.
    func unreachable(_ hop: Hop) {
        let failing = clients.all.filter { $0.peer.address == hop.address && $0.peer.transport == hop.transport }
        for tx in failing { perform(tx.machine.handle(.transportError), client: tx, message: nil) }
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
            case .arm(let timer, let ms): if !tx.finished { arm(timer, ms, token: Self.token(tx.id, tx.serial, timer, server: false), in: &tx.timers) }
            case .disarm(let timer): if let t = tx.timers.removeValue(forKey: timer) { clock.cancel(t) }
            case .passUp: if let message { user.response(message, for: tx) }
            case .timedOut: user.timedOut(tx)
            case .terminate: finish(tx)
            }
        }
    }

    // MARK: - Timers

    private func release(_ timers: inout ArmedTimers) {
        timers.forEach { clock.cancel($0) }
        timers.removeAll()
    }

    private func arm(_ timer: TransactionTimer, _ ms: UInt64, token: UInt64, in timers: inout ArmedTimers) {
        if let old = timers[timer] { clock.cancel(old) }
        timers[timer] = timer.onlyEndsAWait ? clock.schedule(atLeastMilliseconds: ms, target: self, token: token)
                                            : clock.schedule(afterMilliseconds: ms, target: self, token: token)
    }

    /// Serial, slot, server or client, timer: one token, no allocation per timer.
    private static func token(_ slot: UInt32, _ serial: UInt32, _ timer: TransactionTimer, server: Bool) -> UInt64 {
        UInt64(serial) << 32 | UInt64(slot & 0x7F_FFFF) << 9 | (server ? 0x100 : 0) | UInt64(timer.rawValue)
    }

    /// (A token names its transaction by slot and serial: a timer left over from a transaction that
    /// ended finds its slot taken by another, with another serial, and does nothing.)
    func timerFired(_ token: UInt64) {
        let slot = Int((token >> 9) & 0x7F_FFFF), serial = UInt32(truncatingIfNeeded: token >> 32)
        guard let timer = TransactionTimer(rawValue: UInt8(truncatingIfNeeded: token)) else { return }
        if token & 0x100 != 0 {
            guard let tx = servers[slot], tx.serial == serial else { return }
            tx.timers[timer] = nil
            perform(tx.machine.handle(.timerFired(timer)), server: tx)
        } else {
            guard let tx = clients[slot], tx.serial == serial else { return }
            tx.timers[timer] = nil
            perform(tx.machine.handle(.timerFired(timer)), client: tx, message: nil)
        }
    }
}

/// Objects in an array with a free list: insert returns the slot, which stays theirs until removed.
struct Slab<Element: AnyObject> {
    private var slots: [Element?] = []
    private var free: [Int] = []
    private(set) var count = 0

    /// The slot the next `insert` takes.
    var nextSlot: Int { free.last ?? slots.count }

    mutating func insert(_ make: (Int) -> Element) -> Element {
        let slot = free.popLast() ?? slots.count
        let element = make(slot)
        if slot == slots.count { slots.append(element) } else { slots[slot] = element }
        count += 1
        return element
    }

    mutating func remove(_ slot: Int) {
        guard slots.indices.contains(slot), slots[slot] != nil else { return }
        slots[slot] = nil
        free.append(slot)
        count -= 1
    }

    subscript(slot: Int) -> Element? { slots.indices.contains(slot) ? slots[slot] : nil }

    var all: [Element] { slots.compactMap { $0 } }
}
