import CTransportShim
import Glibc

/// Where a UDP endpoint hands what it receives (the layer above; Transport knows nothing of SIP).
/// Called on the endpoint's loop thread.
public protocol DatagramReceiver: AnyObject {
    /// A datagram arrived from `peer`.
    func received(_ datagram: [UInt8], from peer: SocketAddress, on endpoint: UDPEndpoint)
    /// Something we sent to `destination` was refused (ICMP port or host unreachable): the peer is
    /// gone, known in milliseconds rather than after a transaction timeout.
    func unreachable(_ destination: SocketAddress, error: SystemError, on endpoint: UDPEndpoint)
    /// A datagram larger than the receive buffer was cut off and dropped.
    func truncated(from peer: SocketAddress, on endpoint: UDPEndpoint)
}

extension DatagramReceiver {
    public func unreachable(_ destination: SocketAddress, error: SystemError, on endpoint: UDPEndpoint) {}
    public func truncated(from peer: SocketAddress, on endpoint: UDPEndpoint) {}
}

/// One UDP socket on one loop: receives with `recvmmsg` in batches, sends with `sendmmsg` in a
/// batch flushed at the end of each loop iteration, and reports ICMP errors (IP_RECVERR).
/// With `reusePort`, every worker opens its own socket on the same address (SO_REUSEPORT) and the
/// kernel spreads datagrams over them.
public final class UDPEndpoint: EventHandler, IterationEndHandler {
    public let loop: EventLoop
    public let localAddress: SocketAddress
    /// Datagrams per `recvmmsg`/`sendmmsg` call.
    public let batchSize: Int
    private let socket: Socket
    private weak var receiver: (any DatagramReceiver)?
    private var registration: RegistrationID?

    /// Receive and send buffers: `batchSize` × 65,535 bytes each, allocated once.
    private let receiveArena: UnsafeMutableRawPointer
    private let sendArena: UnsafeMutableRawPointer
    private var receiveSlots: [tshim_datagram]
    private var outgoing: [(bytes: [UInt8], to: SocketAddress)] = []
    private var sendSlots: [tshim_datagram]
    private var flushScheduled = false
    private var waitingForWritable = false
    /// Datagrams dropped because the kernel refused them (ICMP errors also reach the receiver).
    public private(set) var sendErrors = 0
    public private(set) var received = 0
    public private(set) var sent = 0

    public static let maxDatagram = 65_535

    /// Binds a UDP socket on `loop`'s thread (call from the loop, or before it starts).
    public init(loop: EventLoop, bindTo address: SocketAddress, reusePort: Bool = true, batchSize: Int = 32,
                receiveBufferBytes: Int32 = 4 << 20, receiver: any DatagramReceiver) throws(SystemError) {
        self.loop = loop
        self.batchSize = min(max(batchSize, 1), 64)
        self.receiver = receiver
        let s = try Socket(family: address.kernelFamily, type: Int32(SOCK_DGRAM.rawValue))
        // No SO_REUSEADDR: for UDP it would let a second socket (another process) bind the same
        // address beside this one, and UDP has no TIME_WAIT that would need it.
        if reusePort { try s.setOption(SOL_SOCKET, SO_REUSEPORT, Int32(1), "SO_REUSEPORT") }
        if address.family == .inet6 { try s.setOption(Int32(IPPROTO_IPV6), IPV6_V6ONLY, Int32(1), "IPV6_V6ONLY") }
        // Bigger kernel buffers absorb bursts; the kernel caps them at net.core.rmem_max.
        try? s.setOption(SOL_SOCKET, SO_RCVBUF, receiveBufferBytes, "SO_RCVBUF")
        try? s.setOption(SOL_SOCKET, SO_SNDBUF, receiveBufferBytes, "SO_SNDBUF")
        if tshim_enable_receive_errors(s.descriptor, address.kernelFamily) != 0 {
            throw SystemError("setsockopt(IP_RECVERR)", errno: Glibc.errno)
        }
        try s.bind(to: address)
        localAddress = try s.localAddress()
        socket = s
        receiveArena = UnsafeMutableRawPointer.allocate(byteCount: self.batchSize * Self.maxDatagram, alignment: 16)
        sendArena = UnsafeMutableRawPointer.allocate(byteCount: self.batchSize * Self.maxDatagram, alignment: 16)
        receiveSlots = Array(repeating: tshim_datagram(), count: self.batchSize)
        sendSlots = Array(repeating: tshim_datagram(), count: self.batchSize)
        registration = try loop.register(socket.descriptor, for: .readable, handler: self)
    }

    deinit {
        receiveArena.deallocate()
        sendArena.deallocate()
    }

    /// Attaches `program` to this socket's SO_REUSEPORT group: the kernel runs it on each datagram
    /// that reaches the group and queues the datagram on the socket whose index (in bind order) it
    /// returns; an index past the group leaves the choice to the kernel's usual hash. Call it once
    /// every socket of the group is bound, in order.
    public func attachGroupProgram(_ program: [SocketFilterInstruction]) throws(SystemError) {
        let instructions = program.map { sock_filter(code: $0.code, jt: $0.jumpIfTrue, jf: $0.jumpIfFalse, k: $0.k) }
        let result = instructions.withUnsafeBufferPointer { tshim_attach_reuseport_program(socket.descriptor, $0.baseAddress, UInt32($0.count)) }
        if result != 0 { throw SystemError("setsockopt(SO_ATTACH_REUSEPORT_CBPF)", errno: Glibc.errno) }
    }

    /// Stops receiving; the socket closes when the endpoint goes away.
    public func close() {
        if let registration { loop.deregister(registration) }
        registration = nil
    }

    // MARK: - Sending

    /// Queues `bytes` for `destination`; the batch goes out at the end of this loop iteration.
    public func send(_ bytes: [UInt8], to destination: SocketAddress) {
        loop.assertInLoop()
        outgoing.append((bytes, destination))
        if outgoing.count >= batchSize {
            flush()
        } else if !flushScheduled {
            flushScheduled = true
            loop.atEndOfIteration(self)
        }
    }

    public func iterationEnded() {
        flushScheduled = false
        flush()
    }

    /// Sends what is queued now, `batchSize` datagrams per system call.
    public func flush() {
        guard !outgoing.isEmpty, !waitingForWritable else { return }
        var done = 0
        while done < outgoing.count {
            let n = min(batchSize, outgoing.count - done)
            let result: Int32 = sendSlots.withUnsafeMutableBufferPointer { slots in
                // Each datagram is copied into the endpoint's own send buffers: no pinning of the
                // callers' arrays, no allocation per batch.
                for i in 0..<n {
                    let item = outgoing[done + i]
                    let base = sendArena + i * Self.maxDatagram
                    let count = min(item.bytes.count, Self.maxDatagram)
                    item.bytes.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: count) }
                    slots[i].base = base
                    slots[i].length = count
                    slots[i].address_length = item.to.write(to: &slots[i].address)
                }
                return tshim_send_batch(socket.descriptor, slots.baseAddress, UInt32(n))
            }
            if result < 0 {
                let e = Glibc.errno
                if e == EAGAIN || e == EWOULDBLOCK {
                    waitForWritable()
                    break
                }
                // ECONNREFUSED and the like come back through the error queue too; drop this one.
                sendErrors += 1
                done += 1
                continue
            }
            sent += Int(result)
            done += Int(result)
        }
        if done == outgoing.count { outgoing.removeAll(keepingCapacity: true) } else { outgoing.removeFirst(done) }
    }

    private func waitForWritable() {
        guard let registration, !waitingForWritable else { return }
        waitingForWritable = true
        try? loop.modify(registration, for: [.readable, .writable])
    }

    // MARK: - Events

    public func handle(_ events: IOEvents, on loop: EventLoop) throws {
        if events.contains(.error) { drainErrors() }
        if events.contains(.writable), waitingForWritable, let registration {
            waitingForWritable = false
            try loop.modify(registration, for: .readable)
            flush()
        }
        if events.contains(.readable) { try receiveBatches() }
    }

    private func receiveBatches() throws {
        // A bounded number of batches per wake-up, so one busy socket cannot starve the others.
        for _ in 0..<8 {
            let n = receiveSlots.withUnsafeMutableBufferPointer { slots -> Int32 in
                for i in 0..<batchSize {
                    slots[i].base = receiveArena + i * Self.maxDatagram
                    slots[i].length = Self.maxDatagram
                }
                return tshim_receive_batch(socket.descriptor, slots.baseAddress, UInt32(batchSize))
            }
            if n < 0 {
                let e = Glibc.errno
                if e == EAGAIN || e == EWOULDBLOCK { return }
                if e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH { drainErrors(); continue }
                throw SystemError("recvmmsg", errno: e)
            }
            if n == 0 { return }
            received += Int(n)
            for i in 0..<Int(n) {
                let slot = receiveSlots[i]
                let peer = withUnsafeBytes(of: slot.address) { SocketAddress($0.baseAddress!, length: Int(slot.address_length)) }
                guard let peer else { continue }
                if slot.truncated != 0 {
                    receiver?.truncated(from: peer, on: self)
                    continue
                }
                // One copy, of exactly the datagram, into storage the layer above owns.
                let bytes = [UInt8](UnsafeRawBufferPointer(start: slot.base, count: slot.length))
                receiver?.received(bytes, from: peer, on: self)
            }
            if Int(n) < batchSize { return }
        }
    }

    private func drainErrors() {
        var storage = sockaddr_storage()
        var length = socklen_t(0)
        var code: Int32 = 0
        while tshim_read_socket_error(socket.descriptor, &code, &storage, &length) == 1 {
            guard let destination = withUnsafeBytes(of: &storage, { SocketAddress($0.baseAddress!, length: Int(length)) }) else { continue }
            receiver?.unreachable(destination, error: SystemError("ICMP", errno: code), on: self)
        }
    }
}
