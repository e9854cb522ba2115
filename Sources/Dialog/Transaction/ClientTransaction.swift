import SIPParser

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
