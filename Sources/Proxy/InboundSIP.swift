import Dialog
import Foundation
import Logging
import SIPParser
import Synchronization
import Transport

/// Which worker's B2BUA owns a message, and the way to it.
///
/// `@unchecked Sendable`: `b2buas` is filled while the server is set up, before any loop starts,
/// and only read afterwards.
final class CallRouting: @unchecked Sendable {
    let workers: WorkerGroup
    var b2buas: [LoopBound<B2BUA>] = []
    /// Told each TCP/TLS peer whose connection closed (a dispatcher destination among them is
    /// probed at once: an Asterisk killed closes its connections, a kernel's help in milliseconds).
    var connectionClosed: (@Sendable (Hop) -> Void)?

    init(workers: WorkerGroup) { self.workers = workers }

    /// The worker of a dialog named by our tag or, failing that, our Call-ID; nil when neither is ours.
    func owner(tag: ByteView?, callID: ByteView?) -> Int? { MessageIntake.owner(tag: tag, callID: callID, workers: workers.count) }

    /// Offers a CANCEL that matched no INVITE on `worker` to the next worker, until it is back
    /// with the one it first reached (which then answers 481).
    func passOnCancel(_ cancel: SIPMessage, from peer: Hop, listenerTag: String, at worker: Int, firstWorker: Int) -> Bool {
        let next = (worker + 1) % b2buas.count
        guard next != firstWorker else { return false }
        let b2bua = b2buas[next]
        workers.handOver(to: next) { b2bua.value.receive(cancel, from: peer, listenerTag: listenerTag, firstWorker: firstWorker) }
        return true
    }

    /// An ICMP error names the destination, not the sender: with SO_REUSEPORT the kernel queues
    /// it on whichever of the workers' sockets the reuseport hash picks, not always the one that
    /// sent. Every worker is told (it is rare, and each checks only its own transactions).
    func unreachable(_ destination: Hop) {
        for b2bua in b2buas {
            workers.handOver(to: b2bua.loop.index) { b2bua.value.unreachable(destination) }
        }
    }

    /// Hands `m` to the worker `owner`: at once when that is the calling thread (the usual case:
    /// no closure, no copy of the message), else through its queue.
    func deliver(_ m: SIPMessage, from peer: Hop, listenerTag: String, to owner: Int) {
        guard b2buas.indices.contains(owner) else { return }
        let b2bua = b2buas[owner]
        if b2bua.loop.inLoop {
            b2bua.value.receive(m, from: peer, listenerTag: listenerTag)
        } else {
            workers.handOver(to: owner) { b2bua.value.receive(m, from: peer, listenerTag: listenerTag) }
        }
    }
}

/// The edge's receiver on one worker: applies its policy (flood limits) to what the transports
/// deliver, has the SIP stack's intake (`MessageIntake`) parse and check it, and hands UDP, TCP and
/// TLS messages to the B2BUA of the worker that owns them. An invalid one is answered where SIP
/// says so, and logged with its reason (summarised per source).
final class InboundSIP: DatagramReceiver, StreamReceiver, SCTPReceiver, Sendable {
    let worker: Int
    let intake: MessageIntake
    let logger: Logger
    let routing: CallRouting
    let received = Atomic<Int>(0)
    /// Messages this worker received for a call another worker owns, and passed on to it.
    let handedOver = Atomic<Int>(0)
    let invalid = Atomic<Int>(0)
    /// Requests dropped or refused because their source was over its rate (flood protection).
    let blocked = Atomic<Int>(0)
    /// This worker's ACL and table of sources; used only on its loop.
    private let protection: LoopBound<Protection>

    /// The `[security]` settings as one worker applies them; replaced by a reload.
    final class Protection {
        var settings: EdgeConfig.SecuritySettings
        var flood: FloodGuard?

        init(_ settings: EdgeConfig.SecuritySettings) {
            self.settings = settings
            apply(settings)
        }

        /// New settings: the sources' counts and blocks stay, under the new limits.
        func apply(_ new: EdgeConfig.SecuritySettings) {
            settings = new
            guard new.maxRequests > 0 else {
                flood = nil
                return
            }
            if let flood, flood.capacity == new.maxSources {
                flood.limit = new.maxRequests
                flood.windowMilliseconds = new.windowMilliseconds
                flood.blockMilliseconds = new.blockMilliseconds
            } else {
                flood = FloodGuard(limit: new.maxRequests, windowMilliseconds: new.windowMilliseconds,
                                   blockMilliseconds: new.blockMilliseconds, capacity: new.maxSources)
            }
        }
    }

    /// The tag of the listener this receiver serves.
    let listenerTag: String
    /// Whether it serves a UDP socket of this worker's own (`worker_ports`): what arrives there is
    /// answered from there, and the hop says so.
    let ownPort: Bool
    /// For a UDP listener, its place among the UDP listeners: what arrives on it is answered, and
    /// its dialogs' requests sent, from its socket (the hop says so).
    let udpListener: Int?
    /// New calls go to the worker their Call-ID hashes to (`spread_calls_by = "call-id"`).
    let spreadByCallID: Bool

    /// Where lines a peer can cause are summarised.
    let summary: LogSummary

    init(worker: Int, loop: EventLoop, summary: LogSummary, listenerTag: String, limits: SIPParserLimits, security: EdgeConfig.SecuritySettings, logger: Logger, routing: CallRouting,
         ownPort: Bool = false, spreadByCallID: Bool = false, udpListener: Int? = nil) {
        self.worker = worker
        self.udpListener = udpListener
        self.summary = summary
        self.spreadByCallID = spreadByCallID
        self.ownPort = ownPort
        self.listenerTag = listenerTag
        self.intake = MessageIntake(worker: worker, workers: routing.workers.count, limits: limits)
        self.logger = logger
        self.routing = routing
        protection = LoopBound(Protection(security), on: loop)
    }

    /// Takes new `[security]` settings on this worker's loop (a reload: no call is touched).
    func reload(_ settings: EdgeConfig.SecuritySettings) {
        let protection = self.protection
        protection.loop.execute { protection.value.apply(settings) }
    }

    /// The flood check for a request from an untrusted source: nil to go on, else whether to
    /// answer (503 with Retry-After, at most once a second per source) before dropping it.
    private func floodVerdict(_ bytes: [UInt8], from peer: SocketAddress) -> Bool? {
        let p = protection.value
        guard let table = p.flood, !bytes.starts(with: Self.responsePrefix), !p.settings.trusted.contains(peer) else { return nil }
        switch table.check(peer, now: protection.loop.now) {
        case .allow:
            return nil
        case .blockedNow:
            blocked.add(1, ordering: .relaxed)
            logger.warning("flood: \(peer.with(port: 0).ipString) sent more than \(table.limit) requests in \(table.windowMilliseconds / 1_000) s; blocked for \(table.blockMilliseconds / 1_000) s")
            return true
        case .blocked(let answer):
            blocked.add(1, ordering: .relaxed)
            return answer
        }
    }

    private static let responsePrefix = Array("SIP/".utf8)

    /// One delivery: the flood check, then the intake; a valid message goes to its owner, an
    /// invalid one gets the answer the intake built (through `reply`) and a log line.
    private func accept(_ bytes: [UInt8], from peer: SocketAddress, via proto: TransportProtocol, reply: (([UInt8]) -> Void)? = nil) {
        // A keep-alive (RFC 5626) is neither counted nor checked against the flood limit.
        if bytes.allSatisfy({ $0 == 0x0D || $0 == 0x0A }) { return }
        received.add(1, ordering: .relaxed)
        if let answer = floodVerdict(bytes, from: peer) {
            // Blocked: a 503 now and then tells an honest peer why; a flood gets silence.
            if answer, let reply, let message = try? SIPMessage(parsing: bytes, limits: intake.limits), message.method != .ack,
               message.topValue(.via) != nil {
                reply(intake.answer(message, status: 503, warning: "too many requests from this address",
                                    extra: [("Retry-After", "\(protection.value.settings.blockMilliseconds / 1_000)")]))
            }
            return
        }
        switch intake.take(bytes, answerable: reply != nil) {
        case .keepAlive:
            return
        case .message(let message):
            logger.debug("worker \(worker): \(proto.rawValue) from \(peer): \(message.method?.description ?? "\(message.statusCode ?? 0)")")
            guard proto != .sctp else { return }
            let owner = intake.owner(of: message, spreadByCallID: spreadByCallID)
            let hop = Hop(proto, peer, worker: proto == .udp && !ownPort ? nil : worker, listener: proto == .udp ? udpListener : nil)
            routing.deliver(message, from: hop, listenerTag: listenerTag, to: owner)
            if owner != worker { handedOver.add(1, ordering: .relaxed) }
        case .invalid(let error, let answer, let outcome):
            invalid.add(1, ordering: .relaxed)
            if let answer, let reply { reply(answer) }
            if summary.admit("invalid SIP message", from: peer) {
                logger.notice("\(proto.rawValue) from \(peer): invalid SIP message (\(bytes.count) bytes): \(error); \(outcome)")
            }
        }
    }

    func received(_ datagram: [UInt8], from peer: SocketAddress, on endpoint: UDPEndpoint) {
        accept(datagram, from: peer, via: .udp, reply: { endpoint.send($0, to: peer) })
    }

    func unreachable(_ destination: SocketAddress, error: SystemError, on endpoint: UDPEndpoint) {
        logger.info("udp: \(destination) unreachable: \(error)")
        routing.unreachable(Hop(.udp, destination))
    }

    func received(_ frame: [UInt8], on connection: TCPConnection) {
        accept(frame, from: connection.remote, via: connection.isSecure ? .tls : .tcp, reply: { connection.send($0) })
    }

    /// A connection that failed (refused, reset, cut off) fails what was waiting on it at once.
    func closed(_ connection: TCPConnection, reason: String?) {
        routing.connectionClosed?(Hop(connection.isSecure ? .tls : .tcp, connection.remote))
        guard let reason else { return }
        if summary.admit("connection closed", from: connection.remote) {
            logger.info("\(connection.isSecure ? "tls" : "tcp"): \(connection.remote) closed: \(reason)")
        }
        routing.unreachable(Hop(connection.isSecure ? .tls : .tcp, connection.remote))
    }

    func received(_ message: [UInt8], from peer: SocketAddress, on endpoint: SCTPEndpoint) {
        accept(message, from: peer, via: .sctp)
    }
}
