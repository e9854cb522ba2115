import CTransportShim
import Glibc
import Synchronization

/// Where TCP connections hand what they frame, and tell that they closed. Loop thread only.
public protocol StreamReceiver: AnyObject {
    /// A whole frame arrived (its own bytes: keep them as long as needed).
    func received(_ frame: [UInt8], on connection: TCPConnection)
    /// The connection closed; `reason` is nil for an orderly close by the peer or by us.
    func closed(_ connection: TCPConnection, reason: String?)
}

/// Bounds on what TCP peers can make a loop hold.
public struct StreamLimits: Sendable, Equatable {
    /// Most connections at once on one loop.
    public var maxConnections: Int
    /// Most connections from one source address (all ports).
    public var maxConnectionsPerSource: Int
    /// Most bytes buffered while waiting for the end of a frame; more closes the connection.
    public var maxBufferedBytes: Int
    /// Most bytes queued for writing; past it `send` refuses (back-pressure).
    public var maxQueuedBytes: Int
    /// A connection silent this long is closed (milliseconds; 0: never).
    public var idleTimeoutMilliseconds: UInt64
    /// A frame whose first byte has arrived must be whole within this (milliseconds; 0: no
    /// deadline): a peer trickling bytes cannot hold a connection open with activity alone.
    public var frameTimeoutMilliseconds: UInt64
    /// An accepted connection that has sent nothing (for TLS: not finished its handshake) within
    /// this is closed (milliseconds; 0: only the idle timeout applies).
    public var silentTimeoutMilliseconds: UInt64

    public init(maxConnections: Int = 65_536, maxConnectionsPerSource: Int = 1_024, maxBufferedBytes: Int = 131_072,
                maxQueuedBytes: Int = 1 << 20, idleTimeoutMilliseconds: UInt64 = 300_000,
                frameTimeoutMilliseconds: UInt64 = 10_000, silentTimeoutMilliseconds: UInt64 = 10_000) {
        self.maxConnections = maxConnections
        self.maxConnectionsPerSource = maxConnectionsPerSource
        self.maxBufferedBytes = maxBufferedBytes
        self.maxQueuedBytes = maxQueuedBytes
        self.idleTimeoutMilliseconds = idleTimeoutMilliseconds
        self.frameTimeoutMilliseconds = frameTimeoutMilliseconds
        self.silentTimeoutMilliseconds = silentTimeoutMilliseconds
    }
}

/// The connections open per source address, and in all, across every table that shares it (one
/// per node: the limits are the node's, whichever worker accepted). Touched only when a connection
/// opens or closes, never per message.
public final class ConnectionCounts: Sendable {
    private let state = Mutex<(total: Int, bySource: [SocketAddress: Int])>((0, [:]))

    public init() {}

    /// Counts a new connection from `source` unless that would pass one of `limits` (nil: none,
    /// for a connection we open ourselves); nil when counted, else why not.
    func admit(_ source: SocketAddress, limits: StreamLimits?) -> String? {
        state.withLock { s in
            let n = s.bySource[source, default: 0]
            if let limits {
                if s.total >= limits.maxConnections { return "\(limits.maxConnections) connections open already" }
                if n >= limits.maxConnectionsPerSource { return "\(limits.maxConnectionsPerSource) connections from that source already" }
            }
            s.total += 1
            s.bySource[source] = n + 1
            return nil
        }
    }

    func release(_ source: SocketAddress) {
        state.withLock { s in
            s.total -= 1
            let left = s.bySource[source, default: 1] - 1
            s.bySource[source] = left > 0 ? left : nil
        }
    }
}

/// The TCP connections of one loop, keyed by remote address, so that responses and requests
/// toward a peer reuse its connection (RFC 3261 §18, RFC 5923 aliases). It owns the read scratch
/// buffer every connection of the loop shares and sweeps idle connections once a second.
public final class TCPConnectionTable {
    public let loop: EventLoop
    public let limits: StreamLimits
    public let framer: any StreamFramer
    /// Set for a TLS table: a server context for accepted connections, a client one for `connect`.
    public let tls: TLSContext?
    public weak var receiver: (any StreamReceiver)?
    private var byAddress: [SocketAddress: TCPConnection] = [:]
    /// Connections per source and in all, shared with the node's other tables.
    private let counts: ConnectionCounts
    fileprivate let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 65_536, alignment: 16)
    private var sweepTimer: TimerID?
    /// Where refusals and cut-offs are reported: the peer, the kind of event ("refused",
    /// "closing"; a layer above may summarise repeats by it) and the line.
    public var log: (_ peer: SocketAddress, _ kind: String, _ line: String) -> Void

    /// `counts`: shared by every table of a node, so that its limits are the node's.
    public init(loop: EventLoop, framer: any StreamFramer, limits: StreamLimits = StreamLimits(), counts: ConnectionCounts = ConnectionCounts(),
                tls: TLSContext? = nil, receiver: any StreamReceiver) {
        self.loop = loop
        self.counts = counts
        self.framer = framer
        self.tls = tls
        self.limits = limits
        self.receiver = receiver
        let loopLog = loop.log
        self.log = { _, _, line in loopLog(line) }
    }

    deinit { scratch.deallocate() }

    /// Open connections on this loop.
    public var count: Int { retained.count }

    /// The open connections (tests).
    var connectionsForTests: [TCPConnection] { Array(retained.values) }

    /// The connection to `remote`, if one is open (or an alias points there).
    public func connection(to remote: SocketAddress) -> TCPConnection? { byAddress[remote] }

    /// Makes `connection` also answer for `address` (RFC 5923: the Via sent-by of a client).
    public func alias(_ address: SocketAddress, to connection: TCPConnection) {
        byAddress[address] = connection
        connection.aliases.append(address)
    }

    /// The addresses outgoing connections leave from, one per family (port 0: any); none: as
    /// the kernel routes. A node's listener address, so that a peer that knows it by address (an
    /// Asterisk identifying its endpoints by IP) recognises a connection from it.
    public var sourceAddresses: [SocketAddress] = []

    /// The open connection to `remote`, or a new outgoing one (bytes sent before it is up are
    /// queued). For TLS, `serverName` is sent as SNI and must be what the certificate names.
    public func connect(to remote: SocketAddress, serverName: String? = nil) throws(TransportError) -> TCPConnection {
        loop.assertInLoop()
        if let existing = byAddress[remote], existing.isOpen { return existing }
        do {
            let socket = try Socket(family: remote.kernelFamily, type: Int32(SOCK_STREAM.rawValue))
            try socket.setOption(Int32(IPPROTO_TCP), TCP_NODELAY, Int32(1), "TCP_NODELAY")
            // (Not a loopback source toward another host, which it could not reach.)
            if let source = sourceAddresses.first(where: { $0.kernelFamily == remote.kernelFamily }), source.isLoopback == remote.isLoopback {
                try socket.bind(to: source.with(port: 0))
            }
            let done = try socket.connect(to: remote)
            let session = try tls.map { context throws(TLSError) in
                try TLSSession(context: context, serverName: serverName ?? remote.ipString)
            }
            let c = try TCPConnection(table: self, socket: socket, remote: remote, connecting: !done, tls: session)
            adopt(c)
            if done { c.connected() }
            return c
        } catch let error as SystemError {
            throw .system(error)
        } catch let error as TLSError {
            throw .tls(error)
        } catch {
            throw .system(SystemError("connect", errno: EIO))
        }
    }

    /// Takes an accepted socket, within the limits; nil (and closed) when over them.
    func accept(_ accepted: AcceptedSocket) -> TCPConnection? {
        let socket = Socket(adopting: accepted.descriptor)
        guard let peer = accepted.peer else { return nil }
        if let refusal = counts.admit(peer.with(port: 0), limits: limits) {
            log(peer, "refused", "TCP: refused \(peer): \(refusal)")
            return nil
        }
        try? socket.setOption(Int32(IPPROTO_TCP), TCP_NODELAY, Int32(1), "TCP_NODELAY")
        do {
            let session = try tls.map { context throws(TLSError) in try TLSSession(context: context, serverName: nil) }
            let c = try TCPConnection(table: self, socket: socket, remote: peer, connecting: false, tls: session)
            c.accepted = true
            adopt(c, counted: true)
            return c
        } catch {
            counts.release(peer.with(port: 0))
            log(peer, "refused", "TCP: cannot take \(peer): \(error)")
            return nil
        }
    }

    /// `counted`: the connection was admitted already (an accepted one); an outgoing one is
    /// counted here, past any limit (we chose to open it).
    private func adopt(_ c: TCPConnection, counted: Bool = false) {
        byAddress[c.remote] = c
        if !counted { _ = counts.admit(c.remote.with(port: 0), limits: nil) }
        let timed = limits.idleTimeoutMilliseconds > 0 || limits.frameTimeoutMilliseconds > 0 || limits.silentTimeoutMilliseconds > 0
        if sweepTimer == nil, timed { armSweep() }
        retained[ObjectIdentifier(c)] = c
    }

    /// Every open connection, kept alive by the table (the registration with the loop does too).
    private var retained: [ObjectIdentifier: TCPConnection] = [:]

    fileprivate func forget(_ c: TCPConnection) {
        guard retained.removeValue(forKey: ObjectIdentifier(c)) != nil else { return }
        for address in [c.remote] + c.aliases where byAddress[address] === c { byAddress[address] = nil }
        counts.release(c.remote.with(port: 0))
    }

    private func armSweep() {
        sweepTimer = loop.schedule(afterMilliseconds: 1_000) { [weak self] in
            guard let self else { return }
            self.sweepTimer = nil
            let now = self.loop.now
            for c in Array(self.retained.values) {
                if let why = c.overdue(now: now, limits: self.limits) { c.close(reason: why) }
            }
            if !self.retained.isEmpty { self.armSweep() }
        }
    }

    /// Closes every connection (shutdown).
    public func closeAll() {
        for c in Array(retained.values) { c.close(reason: nil) }
    }
}

/// One TCP connection on one loop: frames what it reads with the table's framer, queues what it
/// cannot write at once (bounded), answers keep-alives the framer asks for, and closes on garbage,
/// oversized streams, errors and idleness.
public final class TCPConnection: EventHandler {
    public let remote: SocketAddress
    public private(set) var local: SocketAddress?
    public let loop: EventLoop
    private unowned let table: TCPConnectionTable
    private var socket: Socket?
    private var registration: RegistrationID?
    private var buffered: [UInt8] = []
    private var queue: [[UInt8]] = []
    private var queueHead = 0
    private var queuedBytes = 0
    private var connecting: Bool
    private var watchingWritable = false
    fileprivate var aliases: [SocketAddress] = []
    fileprivate var lastActivity: UInt64
    /// When the connection opened, whether we accepted it (the silent timeout is for those), whether
    /// the peer has sent anything yet (for TLS: finished its handshake), and since when part of a
    /// frame has been waiting for the rest (nil: none).
    fileprivate let openedAt: UInt64
    fileprivate var accepted = false
    private var heardFrom = false
    private var partialSince: UInt64?
    public private(set) var isOpen = true
    /// The TLS session, for a TLS connection; plaintext waits in `pendingPlaintext` until the handshake is done.
    private let tls: TLSSession?
    private var pendingPlaintext: [[UInt8]] = []
    /// Set when the connection closes as soon as what is queued has been written.
    private var closingReason: String?

    fileprivate init(table: TCPConnectionTable, socket: consuming Socket, remote: SocketAddress, connecting: Bool,
                     tls: TLSSession?) throws(SystemError) {
        self.table = table
        self.loop = table.loop
        self.remote = remote
        self.connecting = connecting
        self.tls = tls
        self.lastActivity = table.loop.now
        self.openedAt = table.loop.now
        self.local = try? socket.localAddress()
        let fd = socket.descriptor
        self.socket = consume socket
        registration = try loop.register(fd, for: connecting ? [.readable, .writable] : .readable, handler: self)
        watchingWritable = connecting
    }

    /// Bytes waiting to be written.
    public var pendingBytes: Int { queuedBytes + pendingPlaintext.reduce(0) { $0 + $1.count } }

    /// Whether the connection runs TLS.
    public var isSecure: Bool { tls != nil }

    /// For a TLS server connection: the name the client asked for (SNI).
    public var requestedServerName: String? { tls?.requestedServerName }

    // MARK: - Writing

    /// Sends `bytes` (encrypted first on a TLS connection), or queues what cannot go yet. False, and
    /// nothing queued, when the queue is over its bound (the peer does not read: back-pressure) or
    /// the connection is closed.
    @discardableResult
    public func send(_ bytes: [UInt8]) -> Bool {
        loop.assertInLoop()
        guard isOpen, !bytes.isEmpty else { return isOpen }
        guard let tls else { return sendRaw(bytes) }
        guard pendingBytes + bytes.count <= table.limits.maxQueuedBytes else { return false }
        guard tls.handshakeDone else {
            pendingPlaintext.append(bytes)
            return true
        }
        if let failure = tls.write(bytes) {
            close(reason: failure)
            return false
        }
        return flushTLSOutput()
    }

    /// Sends whatever ciphertext the TLS session produced.
    @discardableResult
    private func flushTLSOutput() -> Bool {
        while isOpen, let out = tls?.takeOutput() {
            guard sendRaw(out) else {
                close(reason: "TLS output over the write queue's bound")
                return false
            }
        }
        return isOpen
    }

    /// Writes bytes as they are to the socket, queueing what the kernel will not take yet.
    private func sendRaw(_ bytes: [UInt8]) -> Bool {
        guard queuedBytes + bytes.count <= table.limits.maxQueuedBytes else { return false }
        if queuedBytes == 0 && !connecting {
            let written = writeNow(bytes, from: 0)
            guard isOpen else { return false }
            if written == bytes.count { return true }
            queue.append(bytes)
            queueHead = written
            queuedBytes = bytes.count - written
        } else {
            queue.append(bytes)
            queuedBytes += bytes.count
        }
        watchWritable(true)
        return true
    }

    /// Writes from `offset`; returns how many bytes the kernel took (closes on a hard error).
    private func writeNow(_ bytes: [UInt8], from offset: Int) -> Int {
        guard let fd = socket?.descriptor else { return 0 }
        var done = offset
        while done < bytes.count {
            let r = bytes.withUnsafeBytes { raw in Glibc.send(fd, raw.baseAddress! + done, raw.count - done, Int32(MSG_NOSIGNAL)) }
            if r > 0 { done += r; continue }
            let e = Glibc.errno
            if r < 0 && e == EINTR { continue }
            if r < 0 && (e == EAGAIN || e == EWOULDBLOCK) { break }
            close(reason: "write: \(SystemError("send", errno: e))")
            break
        }
        return done - offset
    }

    private func flushQueue() {
        while !queue.isEmpty {
            let first = queue[0]
            let written = writeNow(first, from: queueHead)
            guard isOpen else { return }
            queuedBytes -= written
            queueHead += written
            if queueHead < first.count { return }
            queue.removeFirst()
            queueHead = 0
        }
        if let closingReason {
            close(reason: closingReason)
            return
        }
        watchWritable(false)
    }

    private func watchWritable(_ on: Bool) {
        guard on != watchingWritable, let registration else { return }
        watchingWritable = on
        try? loop.modify(registration, for: on ? [.readable, .writable] : .readable)
    }

    // MARK: - Events

    /// The TCP connection is up: a TLS client starts its handshake, queued bytes go out.
    fileprivate func connected() {
        connecting = false
        local = try? socket?.localAddress()
        if let tls, !tls.handshakeDone {
            if let failure = tls.advanceHandshake() { close(reason: failure); return }
            flushTLSOutput()
        }
    }

    public func handle(_ events: IOEvents, on loop: EventLoop) throws {
        if connecting, events.contains(.writable) || events.contains(.error) || events.contains(.hangUp) {
            let error = socket?.pendingError() ?? 0
            if error != 0 {
                close(reason: "connect: \(SystemError("connect", errno: error))")
                return
            }
            connected()
            guard isOpen else { return }
        }
        if closingReason == nil, events.contains(.readable) || events.contains(.readHangUp) || events.contains(.hangUp) {
            readAvailable()
        }
        if isOpen, events.contains(.writable), !connecting { flushQueue() }
        if isOpen, events.contains(.error) {
            close(reason: "socket error: \(SystemError("SO_ERROR", errno: socket?.pendingError() ?? 0))")
        }
    }

    private func readAvailable() {
        guard let fd = socket?.descriptor else { return }
        let scratch = table.scratch
        while isOpen {
            let r = Glibc.read(fd, scratch.baseAddress!, scratch.count)
            if r > 0 {
                lastActivity = loop.now
                if let tls {
                    guard decrypt(UnsafeRawBufferPointer(rebasing: scratch[0..<r]), with: tls) else { return }
                    if tls.handshakeDone { heardFrom = true }
                } else {
                    buffered.append(contentsOf: UnsafeRawBufferPointer(rebasing: scratch[0..<r]))
                    heardFrom = true
                }
                // The deadline runs from the first byte of the frame now at the front: a busy
                // connection whose reads end mid-message starts a new one with each frame.
                if deliverFrames() || buffered.isEmpty { partialSince = nil }
                if !buffered.isEmpty, partialSince == nil { partialSince = loop.now }
                guard isOpen, closingReason == nil else { return }
                if buffered.count > table.limits.maxBufferedBytes {
                    close(reason: "more than \(table.limits.maxBufferedBytes) bytes without a complete frame")
                    return
                }
                if r < scratch.count { return }
                continue
            }
            if r == 0 {
                close(reason: nil)
                return
            }
            let e = Glibc.errno
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK { return }
            close(reason: "read: \(SystemError("read", errno: e))")
            return
        }
    }

    /// Feeds ciphertext to the session, moves the handshake on, appends plaintext to `buffered`.
    private func decrypt(_ ciphertext: UnsafeRawBufferPointer, with tls: TLSSession) -> Bool {
        tls.feed(ciphertext)
        if !tls.handshakeDone {
            if let failure = tls.advanceHandshake() {
                flushTLSOutput()   // the alert, so the peer learns why
                close(reason: failure)
                return false
            }
            flushTLSOutput()
            if tls.handshakeDone {
                let waiting = pendingPlaintext
                pendingPlaintext.removeAll()
                for bytes in waiting where !send(bytes) { return false }
            }
        }
        if tls.handshakeDone, let failure = tls.read(into: &buffered) {
            close(reason: failure == "TLS closed by peer" ? nil : failure)
            return false
        }
        return flushTLSOutput()
    }

    /// Hands up every whole frame buffered; true when there was at least one.
    private func deliverFrames() -> Bool {
        var start = 0
        var delivered = false
        while isOpen && start < buffered.count {
            let decision = buffered.withUnsafeBytes { raw in
                table.framer.decide(UnsafeRawBufferPointer(rebasing: raw[start...]))
            }
            switch decision {
            case .frame(let n):
                let frame = Array(buffered[start..<start + n])
                start += n
                delivered = true
                table.receiver?.received(frame, on: self)
            case .reply(let n, let answer):
                start += n
                send(answer)
            case .skip(let n):
                start += n
            case .needMore:
                buffered.removeFirst(start)
                return delivered
            case .invalid(let why):
                close(reason: why)
                return delivered
            case .refuse(let reply, let why):
                buffered = []
                send(reply)
                closeWhenWritten(reason: why)
                return delivered
            }
        }
        if start > 0 { buffered.removeFirst(min(start, buffered.count)) }
        return delivered
    }

    /// Why the connection must close now (nil: it may stay): idle too long, silent since it was
    /// accepted, or a frame begun and not finished in time (a peer trickling bytes).
    fileprivate func overdue(now: UInt64, limits: StreamLimits) -> String? {
        if limits.idleTimeoutMilliseconds > 0, now &- lastActivity > limits.idleTimeoutMilliseconds {
            return "idle for \(limits.idleTimeoutMilliseconds / 1_000) s"
        }
        if accepted, !heardFrom, limits.silentTimeoutMilliseconds > 0, now &- openedAt > limits.silentTimeoutMilliseconds {
            return tls == nil ? "nothing received within \(limits.silentTimeoutMilliseconds / 1_000) s"
                              : "TLS handshake not finished within \(limits.silentTimeoutMilliseconds / 1_000) s"
        }
        if let partialSince, limits.frameTimeoutMilliseconds > 0, now &- partialSince > limits.frameTimeoutMilliseconds {
            return "no complete message within \(limits.frameTimeoutMilliseconds / 1_000) s of its first byte"
        }
        return nil
    }

    /// Reads nothing more and closes once the write queue is empty (now, if it is).
    private func closeWhenWritten(reason: String) {
        guard isOpen else { return }
        guard queuedBytes > 0, let registration else {
            close(reason: reason)
            return
        }
        closingReason = reason
        watchingWritable = true
        try? loop.modify(registration, for: .writable)
    }

    /// Closes the connection (idempotent) and tells the receiver; a reason is also logged.
    public func close(reason: String?) {
        guard isOpen else { return }
        isOpen = false
        if let reason { table.log(remote, "closing", "\(tls == nil ? "TCP" : "TLS") \(remote): closing: \(reason)") }
        if let registration { loop.deregister(registration) }
        registration = nil
        socket = nil
        queue.removeAll()
        queuedBytes = 0
        buffered = []
        table.forget(self)
        table.receiver?.closed(self, reason: reason)
    }
}

/// A listening TCP socket: accepts on its loop, hands each connection to the loop's table.
public final class TCPListener: EventHandler {
    public let localAddress: SocketAddress
    public let table: TCPConnectionTable
    private let socket: Socket
    private var registration: RegistrationID?

    public init(table: TCPConnectionTable, bindTo address: SocketAddress, reusePort: Bool = true, backlog: Int32 = 4_096) throws(SystemError) {
        self.table = table
        let s = try Socket(family: address.kernelFamily, type: Int32(SOCK_STREAM.rawValue))
        try s.setOption(SOL_SOCKET, SO_REUSEADDR, Int32(1), "SO_REUSEADDR")
        if reusePort { try s.setOption(SOL_SOCKET, SO_REUSEPORT, Int32(1), "SO_REUSEPORT") }
        if address.family == .inet6 { try s.setOption(Int32(IPPROTO_IPV6), IPV6_V6ONLY, Int32(1), "IPV6_V6ONLY") }
        try s.bind(to: address)
        try s.listen(backlog: backlog)
        localAddress = try s.localAddress()
        socket = s
        registration = try table.loop.register(socket.descriptor, for: .readable, handler: self)
    }

    public func handle(_ events: IOEvents, on loop: EventLoop) throws {
        // Bounded per wake-up so that a connection storm cannot starve established traffic.
        for _ in 0..<256 {
            switch try socket.accept() {
            case .wouldBlock: return
            case .processed(let accepted):
                if table.accept(accepted) == nil { continue }
            }
        }
    }

    public func close() {
        if let registration { table.loop.deregister(registration) }
        registration = nil
    }
}
