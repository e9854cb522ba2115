import Logging
import SIPParser
import Synchronization
import Transport

/// The first layer above Transport on one worker: turns datagrams, stream frames and SCTP messages
/// into parsed, checked SIP messages. An invalid one is logged with its reason and dropped.
final class InboundSIP: DatagramReceiver, StreamReceiver, SCTPReceiver, Sendable {
    let worker: Int
    let limits: SIPParserLimits
    let logger: Logger
    let received = Atomic<Int>(0)
    let invalid = Atomic<Int>(0)

    init(worker: Int, limits: SIPParserLimits, logger: Logger) {
        self.worker = worker
        self.limits = limits
        self.logger = logger
    }

    private func accept(_ bytes: [UInt8], from peer: SocketAddress, via proto: TransportProtocol) {
        // RFC 3261 §7.5 / RFC 5626: a datagram of CRLFs is a keep-alive, not a message.
        if bytes.allSatisfy({ $0 == 0x0D || $0 == 0x0A }) { return }
        received.add(1, ordering: .relaxed)
        do {
            let message = try SIPMessage(parsing: bytes, limits: limits)
            try message.validate(limits: limits)
            logger.debug("worker \(worker): \(proto.rawValue) from \(peer): \(message.method?.description ?? "\(message.statusCode ?? 0)")")
        } catch {
            invalid.add(1, ordering: .relaxed)
            let answer = error.status.map { "would answer \($0)" } ?? "dropped"
            logger.notice("\(proto.rawValue) from \(peer): invalid SIP message (\(bytes.count) bytes): \(error); \(answer)")
        }
    }

    func received(_ datagram: [UInt8], from peer: SocketAddress, on endpoint: UDPEndpoint) {
        accept(datagram, from: peer, via: .udp)
    }

    func received(_ frame: [UInt8], on connection: TCPConnection) {
        accept(frame, from: connection.remote, via: connection.isSecure ? .tls : .tcp)
    }

    func closed(_ connection: TCPConnection, reason: String?) {}

    func received(_ message: [UInt8], from peer: SocketAddress, on endpoint: SCTPEndpoint) {
        accept(message, from: peer, via: .sctp)
    }
}
