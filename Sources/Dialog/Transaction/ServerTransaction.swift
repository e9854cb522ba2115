import SIPParser

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
