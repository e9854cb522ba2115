import SIPParser

// RFC 3261 §17 transactions as values: `handle(event)` changes state and returns what the owner
// must do (send bytes, arm or disarm a timer, pass a message up, report a timeout). No sockets, no
// clock: the owner performs the I/O and feeds timer expiries back as events. RFC 6026 states
// (Accepted) replace the RFC 3261 handling of 2xx to INVITE.

/// The RFC 3261 transaction timers (§17, Table 4) plus RFC 6026's L and M.
public enum TransactionTimer: UInt8, Sendable, Hashable, CaseIterable {
    /// A: INVITE request retransmit (UDP), doubling from T1.
    case a
    /// B: INVITE transaction timeout, 64*T1.
    case b
    /// D: wait for response retransmits, 32 s on UDP, 0 on reliable transports.
    case d
    /// E: non-INVITE request retransmit (UDP), doubling from T1 up to T2.
    case e
    /// F: non-INVITE transaction timeout, 64*T1.
    case f
    /// G: INVITE final response retransmit (UDP), doubling from T1 up to T2.
    case g
    /// H: wait for ACK receipt, 64*T1.
    case h
    /// I: wait for ACK retransmits, T4 on UDP, 0 on reliable.
    case i
    /// J: wait for non-INVITE request retransmits, 64*T1 on UDP, 0 on reliable.
    case j
    /// K: wait for non-INVITE response retransmits, T4 on UDP, 0 on reliable.
    case k
    /// L (RFC 6026): server INVITE in Accepted, 64*T1.
    case l
    /// M (RFC 6026): client INVITE in Accepted, 64*T1.
    case m

    /// D, I, J, K, L and M: a finished transaction waits for retransmissions, then ends. Nothing
    /// is sent when they fire, so they may fire a little late, in bulk.
    public var onlyEndsAWait: Bool {
        switch self {
        case .d, .i, .j, .k, .l, .m: true
        case .a, .b, .e, .f, .g, .h: false
        }
    }
}

/// RFC 3261 timer base values (milliseconds); configurable, the RFC's by default.
public struct TransactionTimerValues: Sendable, Equatable {
    /// T1: RTT estimate, 500 ms.
    public var t1: UInt64
    /// T2: maximum retransmit interval for non-INVITE requests and INVITE responses, 4 s.
    public var t2: UInt64
    /// T4: maximum time a message stays in the network, 5 s.
    public var t4: UInt64
    /// Timer D on unreliable transports: at least 32 s (§17.1.1.2).
    public var d: UInt64

    public init(t1: UInt64 = 500, t2: UInt64 = 4_000, t4: UInt64 = 5_000, d: UInt64 = 32_000) {
        self.t1 = t1
        self.t2 = t2
        self.t4 = t4
        self.d = d
    }

    public static let rfc3261 = TransactionTimerValues()
}

/// What a transaction asks its owner to do, in order.
public enum TransactionAction: Sendable, Equatable {
    /// Send these bytes to the peer (a first transmission or a retransmission).
    case send([UInt8])
    /// Arm `timer` to fire after this many milliseconds (re-arming replaces it).
    case arm(TransactionTimer, milliseconds: UInt64)
    /// Stop `timer`.
    case disarm(TransactionTimer)
    /// Hand the message of the current event to the transaction user.
    case passUp
    /// Tell the transaction user it timed out (B, F, or H without an ACK) or the transport failed.
    case timedOut
    /// The transaction is over: forget it.
    case terminate
}

/// Whether retransmissions are the transaction's job (UDP) or the transport's (TCP, TLS, SCTP).
public enum TransportReliability: Sendable, Equatable {
    case unreliable, reliable
}

// MARK: - Client transactions (§17.1)

/// A client transaction: INVITE (§17.1.1, with RFC 6026) or non-INVITE (§17.1.2).
public struct ClientTransaction: Sendable {
    public enum State: Sendable, Equatable { case calling, trying, proceeding, accepted, completed, terminated }

    /// Events a client transaction reacts to.
    public enum Event: Sendable {
        case response(SIPMessage)
        case timerFired(TransactionTimer)
        case transportError
    }

    public let isInvite: Bool
    public let reliability: TransportReliability
    public let timers: TransactionTimerValues
    public private(set) var state: State
    /// The ACK sent for a non-2xx final response (kept to resend on retransmitted finals).
    public private(set) var ack: [UInt8]?
    private var retransmitInterval: UInt64

    /// Creates the transaction for a request as built (`bytes`, shared by every retransmission, not
    /// copied or parsed: only a non-2xx final to an INVITE needs it parsed, for its ACK); `start()`
    /// gives the first actions (send, timers).
    public init(bytes: [UInt8], isInvite: Bool, reliability: TransportReliability, timers: TransactionTimerValues = .rfc3261) {
        self.requestBytes = bytes
        self.isInvite = isInvite
        self.reliability = reliability
        self.timers = timers
        self.state = isInvite ? .calling : .trying
        self.retransmitInterval = timers.t1
    }

    /// The same, for a request at hand as a parsed message.
    public init(request: SIPMessage, reliability: TransportReliability, timers: TransactionTimerValues = .rfc3261) {
        self.init(bytes: Array(request.bytes[0..<request.messageLength]), isInvite: request.method == .invite,
                  reliability: reliability, timers: timers)
    }

    /// The request as sent.
    public let requestBytes: [UInt8]

    /// Sends the request and arms A/B (INVITE) or E/F (non-INVITE); A and E only over UDP.
    public mutating func start() -> [TransactionAction] {
        var actions: [TransactionAction] = [.send(requestBytes)]
        if reliability == .unreliable { actions.append(.arm(isInvite ? .a : .e, milliseconds: timers.t1)) }
        actions.append(.arm(isInvite ? .b : .f, milliseconds: 64 * timers.t1))
        return actions
    }

    /// The one function that changes state.
    public mutating func handle(_ event: Event) -> [TransactionAction] {
        switch event {
        case .transportError:
            guard state != .terminated else { return [] }
            state = .terminated
            return [.timedOut, .terminate]
        case .timerFired(let timer):
            return isInvite ? inviteTimer(timer) : nonInviteTimer(timer)
        case .response(let response):
            guard let status = response.statusCode else { return [] }
            return isInvite ? inviteResponse(status, response) : nonInviteResponse(status)
        }
    }

    private mutating func inviteTimer(_ timer: TransactionTimer) -> [TransactionAction] {
        switch (state, timer) {
        case (.calling, .a):
            // §17.1.1.2: retransmit, double A.
            retransmitInterval *= 2
            return [.send(requestBytes), .arm(.a, milliseconds: retransmitInterval)]
        case (.calling, .b), (.proceeding, .b):
            state = .terminated
            return [.disarm(.a), .timedOut, .terminate]
        case (.completed, .d), (.accepted, .m):
            state = .terminated
            return [.terminate]
        default:
            return []
        }
    }

    private mutating func inviteResponse(_ status: Int, _ response: SIPMessage) -> [TransactionAction] {
        switch state {
        case .calling, .proceeding:
            if status < 200 {
                let wasCalling = state == .calling
                state = .proceeding
                return wasCalling ? [.disarm(.a), .passUp] : [.passUp]
            }
            if status < 300 {
                // RFC 6026 §8.4: Accepted; the ACK for 2xx is end to end (the TU's).
                state = .accepted
                return [.disarm(.a), .disarm(.b), .passUp, .arm(.m, milliseconds: 64 * timers.t1)]
            }
            // §17.1.1.3: ACK the non-2xx final here, hop by hop.
            state = .completed
            let ackBytes = (try? SIPMessage(parsing: requestBytes)).map { Self.nonSuccessACK(request: $0, response: response) } ?? []
            ack = ackBytes
            let d = reliability == .unreliable ? timers.d : 0
            return [.disarm(.a), .disarm(.b), .send(ackBytes), .passUp, .arm(.d, milliseconds: d)]
        case .accepted:
            // 2xx retransmissions (and 2xx from forked branches) go to the TU, which ACKs them.
            return status >= 200 && status < 300 ? [.passUp] : []
        case .completed:
            // A retransmitted final: resend the ACK, do not bother the TU.
            if status >= 300, let ack { return [.send(ack)] }
            return []
        case .trying, .terminated:
            return []
        }
    }

    private mutating func nonInviteTimer(_ timer: TransactionTimer) -> [TransactionAction] {
        switch (state, timer) {
        case (.trying, .e):
            // §17.1.2.2: retransmit, double E up to T2.
            retransmitInterval = min(retransmitInterval * 2, timers.t2)
            return [.send(requestBytes), .arm(.e, milliseconds: retransmitInterval)]
        case (.proceeding, .e):
            retransmitInterval = timers.t2
            return [.send(requestBytes), .arm(.e, milliseconds: timers.t2)]
        case (.trying, .f), (.proceeding, .f):
            state = .terminated
            return [.disarm(.e), .timedOut, .terminate]
        case (.completed, .k):
            state = .terminated
            return [.terminate]
        default:
            return []
        }
    }

    private mutating func nonInviteResponse(_ status: Int) -> [TransactionAction] {
        switch state {
        case .trying, .proceeding:
            if status < 200 {
                state = .proceeding
                return [.passUp]
            }
            state = .completed
            let k = reliability == .unreliable ? timers.t4 : 0
            return [.disarm(.e), .disarm(.f), .passUp, .arm(.k, milliseconds: k)]
        default:
            return []   // Completed absorbs retransmitted finals
        }
    }

    /// §17.1.1.3: the ACK for a non-2xx final response: the request's Request-URI, top Via, Call-ID,
    /// From, CSeq number and Route set; To (with its tag) from the response; CSeq method ACK.
    public static func nonSuccessACK(request: SIPMessage, response: SIPMessage) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(512)
        out.append(contentsOf: "ACK ".utf8)
        out.append(contentsOf: request.requestURIBytes?.bytes ?? [])
        out.append(contentsOf: " SIP/2.0\r\n".utf8)
        if let via = request.topValue(.via) { line(&out, "Via", via.bytes) }
        for i in 0..<request.headerCount where request.header(at: i).kind == .route {
            line(&out, "Route", request.header(at: i).value.bytes)
        }
        if let from = request.firstValue(.from) { line(&out, "From", from.bytes) }
        if let to = response.firstValue(.to) { line(&out, "To", to.bytes) }
        if let callID = request.callID { line(&out, "Call-ID", callID.bytes) }
        if let number = try? request.cseq().number { line(&out, "CSeq", Array("\(number) ACK".utf8)) }
        line(&out, "Max-Forwards", Array("70".utf8))
        line(&out, "Content-Length", Array("0".utf8))
        out.append(contentsOf: "\r\n".utf8)
        return out
    }

    private static func line(_ out: inout [UInt8], _ name: String, _ value: [UInt8]) {
        out.append(contentsOf: name.utf8)
        out.append(contentsOf: ": ".utf8)
        out.append(contentsOf: value)
        out.append(contentsOf: "\r\n".utf8)
    }
}

// MARK: - Server transactions (§17.2)

/// A server transaction: INVITE (§17.2.1, with RFC 6026) or non-INVITE (§17.2.2).
public struct ServerTransaction: Sendable {
    public enum State: Sendable, Equatable { case trying, proceeding, accepted, completed, confirmed, terminated }

    /// Events a server transaction reacts to.
    public enum Event: Sendable {
        /// The same request again (a retransmission).
        case retransmission
        /// An ACK matching this INVITE transaction.
        case ack
        /// The transaction user sends a response with this status.
        case respond(status: Int, bytes: [UInt8])
        case timerFired(TransactionTimer)
        case transportError
    }

    public let isInvite: Bool
    public let reliability: TransportReliability
    public let timers: TransactionTimerValues
    public private(set) var state: State
    private var lastResponse: [UInt8]?
    private var retransmitInterval: UInt64

    /// A server transaction for a request just received (the TU gets the request from the owner).
    public init(method: SIPMethod, reliability: TransportReliability, timers: TransactionTimerValues = .rfc3261) {
        self.isInvite = method == .invite
        self.reliability = reliability
        self.timers = timers
        self.state = isInvite ? .proceeding : .trying
        self.retransmitInterval = timers.t1
    }

    /// Whether the TU has given this transaction a response (a 100 Trying counts).
    public var hasResponded: Bool { lastResponse != nil }

    /// For INVITE: the 100 Trying to send (§17.2.1), which also becomes the response that
    /// answers retransmissions.
    public mutating func start(trying: [UInt8]?) -> [TransactionAction] {
        guard isInvite, let trying else { return [] }
        lastResponse = trying
        return [.send(trying)]
    }

    /// The one function that changes state.
    public mutating func handle(_ event: Event) -> [TransactionAction] {
        switch event {
        case .transportError:
            guard state != .terminated else { return [] }
            state = .terminated
            return [.timedOut, .terminate]
        case .retransmission:
            switch state {
            case .proceeding, .completed:
                return lastResponse.map { [.send($0)] } ?? []
            default:
                return []   // Trying discards; Accepted and Confirmed absorb
            }
        case .ack:
            guard isInvite else { return [] }
            switch state {
            case .completed:
                // §17.2.1: Confirmed; absorb ACK retransmits for Timer I.
                state = .confirmed
                let i = reliability == .unreliable ? timers.t4 : 0
                return [.disarm(.g), .disarm(.h), .arm(.i, milliseconds: i)]
            case .accepted:
                return [.passUp]   // RFC 6026: the ACK for a 2xx belongs to the TU
            default:
                return []
            }
        case .respond(let status, let bytes):
            return isInvite ? inviteRespond(status, bytes) : nonInviteRespond(status, bytes)
        case .timerFired(let timer):
            return timerFired(timer)
        }
    }

    private mutating func inviteRespond(_ status: Int, _ bytes: [UInt8]) -> [TransactionAction] {
        switch state {
        case .proceeding:
            lastResponse = bytes
            if status < 200 { return [.send(bytes)] }
            if status < 300 {
                // RFC 6026 §7.1: Accepted; the TU retransmits its 2xx until the ACK.
                state = .accepted
                return [.send(bytes), .arm(.l, milliseconds: 64 * timers.t1)]
            }
            state = .completed
            var actions: [TransactionAction] = [.send(bytes)]
            if reliability == .unreliable { actions.append(.arm(.g, milliseconds: timers.t1)) }
            actions.append(.arm(.h, milliseconds: 64 * timers.t1))
            return actions
        case .accepted:
            // 2xx retransmissions from the TU pass through.
            return status >= 200 && status < 300 ? [.send(bytes)] : []
        default:
            return []
        }
    }

    private mutating func nonInviteRespond(_ status: Int, _ bytes: [UInt8]) -> [TransactionAction] {
        switch state {
        case .trying, .proceeding:
            lastResponse = bytes
            if status < 200 {
                state = .proceeding
                return [.send(bytes)]
            }
            state = .completed
            let j = reliability == .unreliable ? 64 * timers.t1 : 0
            return [.send(bytes), .arm(.j, milliseconds: j)]
        default:
            return []
        }
    }

    private mutating func timerFired(_ timer: TransactionTimer) -> [TransactionAction] {
        switch (state, timer) {
        case (.completed, .g):
            // §17.2.1: retransmit the final response, double G up to T2.
            retransmitInterval = min(retransmitInterval * 2, timers.t2)
            return (lastResponse.map { [.send($0)] } ?? []) + [.arm(.g, milliseconds: retransmitInterval)]
        case (.completed, .h):
            // No ACK came: tell the TU (the far end is gone).
            state = .terminated
            return [.disarm(.g), .timedOut, .terminate]
        case (.confirmed, .i), (.completed, .j), (.accepted, .l):
            state = .terminated
            return [.terminate]
        default:
            return []
        }
    }
}

// MARK: - Matching (§17.1.3, §17.2.3)

/// What finds a message's transaction: the top Via branch and the method (ACK finds its INVITE;
/// CANCEL has its own), plus the sent-by for server transactions.
public struct TransactionKey: Hashable, Sendable {
    private static let magicCookie = Array("z9hG4bK".utf8)
    public let branch: [UInt8]
    public let method: String
    public let sentBy: [UInt8]
    /// The branch's hash, computed once. Branches are unique per transaction (ours carry 60 random
    /// bits), so it spreads keys as well as all three fields would. Kept in the key because the
    /// transaction tables hold tens of thousands of lingering transactions (Timers J, K, L, M): a
    /// lookup that probes past other keys, and a removal that moves the keys after it, then compare
    /// and rehash from the table's own memory instead of reading every probed key's arrays.
    private let branchHash: Int

    public init(branch: [UInt8], method: String, sentBy: [UInt8]) {
        self.branch = branch
        self.method = method
        self.sentBy = sentBy
        var hasher = Hasher()
        branch.withUnsafeBytes { hasher.combine(bytes: $0) }
        branchHash = hasher.finalize()
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(branchHash)
    }

    public static func == (a: TransactionKey, b: TransactionKey) -> Bool {
        a.branchHash == b.branchHash && a.branch == b.branch && a.method == b.method && a.sentBy == b.sentBy
    }

    /// The client transaction a response belongs to: branch and CSeq method (§17.1.3).
    public static func client(forResponse response: SIPMessage) -> TransactionKey? {
        guard !response.isRequest, let branch = response.topViaBranch, let method = response.cseqMethodBytes else { return nil }
        return TransactionKey(branch: branch.bytes, method: method.string, sentBy: [])
    }

    /// The key a client transaction registers under, from its request.
    public static func client(forRequest request: SIPMessage) -> TransactionKey? {
        guard request.isRequest, let branch = request.topViaBranch, let method = request.methodBytes else { return nil }
        return TransactionKey(branch: branch.bytes, method: method.string, sentBy: [])
    }

    /// The server transaction a request belongs to (§17.2.3): branch with the RFC 3261 magic
    /// cookie, sent-by, and method (an ACK looks for its INVITE). Nil for RFC 2543 branches,
    /// which the owner matches by dialog instead.
    public static func server(forRequest request: SIPMessage) -> TransactionKey? {
        guard request.isRequest, let branch = request.topViaBranch, branch.count > 7,
              branch.withUnsafeBytes({ $0.starts(with: Self.magicCookie) }),
              let via = try? request.topVia(), let method = request.method else { return nil }
        // host ":" port, written once into one array.
        var sentBy: [UInt8] = []
        sentBy.reserveCapacity(via.host.count + 6)
        via.host.withUnsafeBytes { sentBy.append(contentsOf: $0) }
        sentBy.append(UInt8(ascii: ":"))
        sentBy.appendDecimal(max(0, via.port ?? 5060))
        let name = method == .ack ? "INVITE" : method.description
        return TransactionKey(branch: branch.bytes, method: name, sentBy: sentBy)
    }
}
