import CTransportShim
import Glibc

/// An open, non-blocking socket. It is the only owner of its descriptor: it cannot be copied, and
/// it closes the descriptor when it goes away (or when `close()` consumes it).
public struct Socket: ~Copyable {
    public let descriptor: Int32

    /// A new non-blocking, close-on-exec socket.
    public init(family: Int32, type: Int32, protocol proto: Int32 = 0) throws(SystemError) {
        descriptor = try blocking("socket") { Glibc.socket(family, type | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), proto) }
    }

    /// Takes ownership of an open descriptor (from accept).
    public init(adopting descriptor: Int32) {
        self.descriptor = descriptor
    }

    deinit { Glibc.close(descriptor) }

    public consuming func close() {
        // deinit does the work; consuming ends the value's life here.
    }

    public func setOption<T: BitwiseCopyable>(_ level: Int32, _ name: Int32, _ value: T, _ label: String) throws(SystemError) {
        var v = value
        try blocking("setsockopt(\(label))") {
            setsockopt(descriptor, level, name, &v, socklen_t(MemoryLayout<T>.size))
        }
    }

    public func bind(to address: SocketAddress) throws(SystemError) {
        let fd = descriptor
        let r = address.withSockAddr { p, len in Glibc.bind(fd, p, len) }
        if r != 0 { throw SystemError("bind \(address)", errno: Glibc.errno) }
    }

    /// Throws when another socket already holds `address` (port 0 is never held). A group of
    /// sockets that share an address through SO_REUSEPORT lets any process of the same user join
    /// it without a word; asked before the first of a group binds, this refuses instead. The probe
    /// binds without SO_REUSEPORT, which the kernel refuses wherever a socket is bound (a stream
    /// probe sets SO_REUSEADDR, so that connections in TIME_WAIT do not count).
    public static func ensureNotHeld(_ address: SocketAddress, stream: Bool) throws(SystemError) {
        guard address.port != 0 else { return }
        let probe = try Socket(family: address.kernelFamily, type: Int32((stream ? SOCK_STREAM : SOCK_DGRAM).rawValue))
        if stream { try probe.setOption(SOL_SOCKET, SO_REUSEADDR, Int32(1), "SO_REUSEADDR") }
        if address.family == .inet6 { try probe.setOption(Int32(IPPROTO_IPV6), IPV6_V6ONLY, Int32(1), "IPV6_V6ONLY") }
        try probe.bind(to: address)
    }

    /// Whether `address` is one of this host's (a wildcard always is): a UDP socket binds to it
    /// with port 0, or the kernel says EADDRNOTAVAIL. Nothing is sent.
    public static func isLocal(_ address: SocketAddress) -> Bool {
        guard let probe = try? Socket(family: address.kernelFamily, type: Int32(SOCK_DGRAM.rawValue)) else { return true }
        do {
            try probe.bind(to: address.with(port: 0))
            return true
        } catch {
            return error.errno != EADDRNOTAVAIL
        }
    }

    public func listen(backlog: Int32) throws(SystemError) {
        try blocking("listen") { Glibc.listen(descriptor, backlog) }
    }

    /// Starts a non-blocking connect; true if it completed at once.
    public func connect(to address: SocketAddress) throws(SystemError) -> Bool {
        let fd = descriptor
        while true {
            let r = address.withSockAddr { p, len in Glibc.connect(fd, p, len) }
            if r == 0 { return true }
            let e = Glibc.errno
            if e == EINTR { continue }
            if e == EINPROGRESS { return false }
            throw SystemError("connect \(address)", errno: e)
        }
    }

    /// Accepts one pending connection, non-blocking, with its peer address.
    public func accept() throws(SystemError) -> IOResult<AcceptedSocket> {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let fd = descriptor
        let r = try nonBlocking("accept4") {
            withUnsafeMutablePointer(to: &storage) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    tshim_accept(fd, $0, &length)
                }
            }
        }
        guard case .processed(let newFD) = r else { return .wouldBlock }
        let peer = withUnsafeBytes(of: &storage) { SocketAddress($0.baseAddress!, length: Int(length)) }
        return .processed(AcceptedSocket(descriptor: newFD, peer: peer))
    }

    /// The address the socket is bound to.
    public func localAddress() throws(SystemError) -> SocketAddress {
        try Self.address(descriptor, getsockname, "getsockname")
    }

    /// The connected peer's address.
    public func peerAddress() throws(SystemError) -> SocketAddress {
        try Self.address(descriptor, getpeername, "getpeername")
    }

    private static func address(_ fd: Int32, _ call: (Int32, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32,
                                _ name: String) throws(SystemError) -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let r = withUnsafeMutablePointer(to: &storage) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { call(fd, $0, &length) }
        }
        if r != 0 { throw SystemError(name, errno: Glibc.errno) }
        guard let a = withUnsafeBytes(of: &storage, { SocketAddress($0.baseAddress!, length: Int(length)) }) else {
            throw SystemError(name, errno: EAFNOSUPPORT)
        }
        return a
    }

    /// The pending error of a socket (SO_ERROR), 0 if none: how a non-blocking connect reports.
    public func pendingError() -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &value, &length)
        return value
    }
}

/// A descriptor fresh from `accept`, with the peer's address; wrap it in a `Socket` to own it.
public struct AcceptedSocket: Sendable {
    public let descriptor: Int32
    public let peer: SocketAddress?
}
