import CTransportShim
import Glibc

/// Why a listener could not be opened, said so that an operator knows which one and what to do.
public struct ListenerError: Error, Sendable, CustomStringConvertible {
    public let listener: String
    public let reason: String
    public let underlying: SystemError?

    public init(listener: String, reason: String, underlying: SystemError?) {
        self.listener = listener
        self.reason = reason
        self.underlying = underlying
    }

    public var description: String { "listener \(listener): \(reason)" }
}

/// Where an SCTP endpoint hands the messages it receives (each SCTP message is one SIP message,
/// RFC 4168). Loop thread only.
public protocol SCTPReceiver: AnyObject {
    func received(_ message: [UInt8], from peer: SocketAddress, on endpoint: SCTPEndpoint)
}

/// An SCTP one-to-many socket (SOCK_SEQPACKET, RFC 4168 §5) on one loop: associations are set up
/// on first send and accepted implicitly; message boundaries are kept by SCTP itself.
public final class SCTPEndpoint: EventHandler {
    public let loop: EventLoop
    public let localAddress: SocketAddress
    private let socket: Socket
    private weak var receiver: (any SCTPReceiver)?
    private var registration: RegistrationID?
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65_536, alignment: 16)

    /// Opens the listener; on a kernel without SCTP the error says so and names the listener.
    public init(loop: EventLoop, bindTo address: SocketAddress, name: String, receiver: any SCTPReceiver) throws(ListenerError) {
        self.loop = loop
        self.receiver = receiver
        let fd = tshim_sctp_socket(address.kernelFamily)
        guard fd >= 0 else {
            let e = SystemError("socket(SCTP)", errno: Glibc.errno)
            throw Self.explain(e, listener: name)
        }
        let s = Socket(adopting: fd)
        do {
            try s.setOption(SOL_SOCKET, SO_REUSEADDR, Int32(1), "SO_REUSEADDR")
            try s.bind(to: address)
            try s.listen(backlog: 1_024)
            localAddress = try s.localAddress()
        } catch {
            throw ListenerError(listener: name, reason: "cannot open SCTP on \(address): \(error)", underlying: error)
        }
        socket = s
        do {
            registration = try loop.register(socket.descriptor, for: .readable, handler: self)
        } catch {
            throw ListenerError(listener: name, reason: "cannot watch SCTP socket: \(error)", underlying: error)
        }
    }

    deinit { buffer.deallocate() }

    /// Turns the kernel's refusal into words: errno 93/94 (EPROTONOSUPPORT/ESOCKTNOSUPPORT) mean
    /// this kernel was built, or booted, without SCTP.
    static func explain(_ error: SystemError, listener: String) -> ListenerError {
        if error.isUnsupportedProtocol {
            return ListenerError(listener: listener,
                                 reason: "this kernel has no SCTP (\(error)); load the sctp module or remove the listener",
                                 underlying: error)
        }
        return ListenerError(listener: listener, reason: "cannot open SCTP socket: \(error)", underlying: error)
    }

    /// Sends one message to `peer` (an association is set up if there is none).
    public func send(_ message: [UInt8], to peer: SocketAddress) throws(SystemError) {
        let fd = socket.descriptor
        let r = message.withUnsafeBytes { raw in
            peer.withSockAddr { tshim_sctp_send(fd, raw.baseAddress, raw.count, $0, $1) }
        }
        if r < 0 { throw SystemError("sctp_sendmsg \(peer)", errno: Glibc.errno) }
    }

    public func handle(_ events: IOEvents, on loop: EventLoop) throws {
        guard events.contains(.readable) else { return }
        var from = sockaddr_storage()
        var fromLength = socklen_t(0)
        var notification: Int32 = 0
        for _ in 0..<64 {
            let n = tshim_sctp_receive(socket.descriptor, buffer.baseAddress, buffer.count, &from, &fromLength, &notification)
            if n < 0 {
                let e = Glibc.errno
                if e == EAGAIN || e == EWOULDBLOCK { return }
                throw SystemError("sctp_recvmsg", errno: e)
            }
            if notification != 0 { continue }
            guard let peer = withUnsafeBytes(of: &from, { SocketAddress($0.baseAddress!, length: Int(fromLength)) }) else { continue }
            receiver?.received([UInt8](UnsafeRawBufferPointer(rebasing: buffer[0..<n])), from: peer, on: self)
        }
    }

    public func close() {
        if let registration { loop.deregister(registration) }
        registration = nil
    }
}
