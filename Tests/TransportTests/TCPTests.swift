import Glibc
import Synchronization
import Testing
@testable import Transport

/// A test framing: "FR" + 4-byte big-endian length + payload. Anything else is garbage.
struct LengthPrefixFramer: StreamFramer {
    let maxFrame: Int
    func decide(_ b: UnsafeRawBufferPointer) -> FrameDecision {
        guard b.count >= 1 else { return .needMore }
        guard b[0] == UInt8(ascii: "F") else { return .invalid("garbage: no frame marker") }
        guard b.count >= 6 else { return .needMore }
        guard b[1] == UInt8(ascii: "R") else { return .invalid("garbage: no frame marker") }
        let n = Int(b[2]) << 24 | Int(b[3]) << 16 | Int(b[4]) << 8 | Int(b[5])
        guard n <= maxFrame else { return .invalid("frame of \(n) bytes is over the limit") }
        return b.count >= 6 + n ? .frame(6 + n) : .needMore
    }

    static func encode(_ payload: [UInt8]) -> [UInt8] {
        let n = payload.count
        return [UInt8(ascii: "F"), UInt8(ascii: "R"), UInt8(n >> 24 & 0xFF), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)] + payload
    }
}

/// Records frames and closes; echoes frames back when asked to.
final class StreamCollector: StreamReceiver, @unchecked Sendable {
    // @unchecked: the recorded state is behind Mutexes; `echo` is set before traffic.
    let frames = Mutex<[[UInt8]]>([])
    let closes = Mutex<[String?]>([])
    var echo = false

    func received(_ frame: [UInt8], on connection: TCPConnection) {
        frames.withLock { $0.append(frame) }
        if echo { connection.send(frame) }
    }

    func closed(_ connection: TCPConnection, reason: String?) {
        closes.withLock { $0.append(reason) }
    }
}

/// A blocking client socket for the test thread.
final class TestClient {
    let fd: Int32
    init(to address: SocketAddress) throws {
        fd = socket(address.kernelFamily, Int32(SOCK_STREAM.rawValue), 0)
        let r = address.withSockAddr { Glibc.connect(fd, $0, $1) }
        if r != 0 { throw SystemError("connect", errno: errno) }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
    deinit { Glibc.close(fd) }

    func write(_ bytes: [UInt8]) {
        var done = 0
        while done < bytes.count {
            let r = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL)) }
            if r <= 0 { return }
            done += r
        }
    }

    /// Reads exactly `n` bytes (or fewer if the peer closes / 5 s pass).
    func read(_ n: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n)
        var done = 0
        while done < n {
            let r = out.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + done, n - done) }
            if r <= 0 { break }
            done += r
        }
        return Array(out[0..<done])
    }

    /// True once the server has closed the connection (read returns 0 or an error).
    func isClosedByPeer() -> Bool {
        var byte: UInt8 = 0
        return Glibc.read(fd, &byte, 1) <= 0
    }
}

@Suite(.serialized) struct TCPTests {
    /// Open connections of `table`, asked on its loop.
    static func count(_ table: TCPConnectionTable) -> Int? {
        let bound = LoopBound(table, on: table.loop)
        return try? table.loop.submitAndWait { bound.value.count }
    }

    /// Log lines of the tables made by `server` (the test asserts that cut-offs are logged).
    static let logs = Mutex<[String]>([])

    static func server(_ ip: String, limits: StreamLimits = StreamLimits(), echo: Bool = true)
        throws -> (EventLoop, TCPConnectionTable, TCPListener, StreamCollector) {
        let loop = try EventLoop()
        loop.log = { _ in }
        let collector = StreamCollector()
        collector.echo = echo
        let table = TCPConnectionTable(loop: loop, framer: LengthPrefixFramer(maxFrame: 70_000), limits: limits, receiver: collector)
        table.log = { _, _, line in Self.logs.withLock { $0.append(line) } }
        let listener = try TCPListener(table: table, bindTo: SocketAddress(ip: ip, port: 0)!, reusePort: false)
        try loop.start()
        return (loop, table, listener, collector)
    }

    @Test(arguments: ["127.0.0.1", "::1"])
    func frames_of_1_byte_to_64_KiB_are_framed_and_echoed(_ ip: String) throws {
        let (loop, table, listener, collector) = try Self.server(ip)
        defer { loop.stop() }
        let client = try TestClient(to: listener.localAddress)
        for size in [1, 2, 100, 1_500, 16_384, 65_536] {
            let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            // Written in uneven pieces so frames straddle reads.
            let encoded = LengthPrefixFramer.encode(payload)
            var offset = 0
            var piece = 1
            while offset < encoded.count {
                let end = min(encoded.count, offset + piece)
                client.write(Array(encoded[offset..<end]))
                offset = end
                piece = piece * 3 + 1
            }
            #expect(client.read(encoded.count) == encoded, "size \(size)")
        }
        #expect(collector.frames.withLock { $0.map(\.count) } == [1, 2, 100, 1_500, 16_384, 65_536].map { $0 + 6 })
        withExtendedLifetime(table) {}
    }

    @Test func a_garbage_peer_is_cut_off_and_others_carry_on() throws {
        let (loop, table, listener, collector) = try Self.server("127.0.0.1")
        defer { loop.stop() }
        let good = try TestClient(to: listener.localAddress)
        let bad = try TestClient(to: listener.localAddress)
        bad.write(Array("\u{0}\u{1}garbage".utf8))
        #expect(bad.isClosedByPeer())
        let frame = LengthPrefixFramer.encode(Array("still here".utf8))
        good.write(frame)
        #expect(good.read(frame.count) == frame)
        #expect(LoopTests.eventually { collector.closes.withLock { $0.contains { $0?.contains("garbage") == true } } })
        #expect(Self.logs.withLock { $0.contains { $0.hasPrefix("TCP 127.0.0.1:") && $0.contains("closing: garbage") } })
        withExtendedLifetime(table) {}
    }

    @Test func an_oversized_stream_is_cut_off() throws {
        let (loop, table, listener, collector) = try Self.server("127.0.0.1", limits: StreamLimits(maxBufferedBytes: 10_000))
        defer { loop.stop() }
        let c = try TestClient(to: listener.localAddress)
        // A frame header announcing 60,000 bytes, then bytes that never complete it.
        c.write(Array(LengthPrefixFramer.encode([UInt8](repeating: 1, count: 60_000))[0..<20_000]))
        #expect(c.isClosedByPeer())
        #expect(LoopTests.eventually { collector.closes.withLock { $0.contains { $0?.contains("without a complete frame") == true } } })
        #expect(Self.logs.withLock { $0.contains { $0.contains("closing: more than 10000 bytes") } })
        withExtendedLifetime(table) {}
    }

    @Test func two_thousand_connections_are_held_and_served() throws {
        // All from 127.0.0.1: the per-source limit (1,024 by default) is raised for this test.
        let (loop, table, listener, collector) = try Self.server("127.0.0.1", limits: StreamLimits(maxConnectionsPerSource: 4_096))
        defer { loop.stop() }
        var clients: [TestClient] = []
        for _ in 0..<2_000 { clients.append(try TestClient(to: listener.localAddress)) }
        #expect(LoopTests.eventually { Self.count(table) == 2_000 })
        for (i, c) in clients.enumerated() { c.write(LengthPrefixFramer.encode(Array("client \(i)".utf8))) }
        var answered = 0
        for (i, c) in clients.enumerated() {
            let expected = LengthPrefixFramer.encode(Array("client \(i)".utf8))
            if c.read(expected.count) == expected { answered += 1 }
        }
        #expect(answered == 2_000)
        #expect(collector.frames.withLock { $0.count } == 2_000)
        clients.removeAll()
        #expect(LoopTests.eventually { Self.count(table) == 0 })
    }

    @Test func limits_per_source_and_idle_timeout() throws {
        let limits = StreamLimits(maxConnectionsPerSource: 3, idleTimeoutMilliseconds: 1_200)
        let (loop, table, listener, _) = try Self.server("127.0.0.1", limits: limits)
        defer { loop.stop() }
        let first = try (0..<3).map { _ in try TestClient(to: listener.localAddress) }
        #expect(LoopTests.eventually { Self.count(table) == 3 })
        let fourth = try TestClient(to: listener.localAddress)
        #expect(fourth.isClosedByPeer())
        // Idle connections go within the timeout plus one sweep.
        #expect(LoopTests.eventually(5) { Self.count(table) == 0 })
        #expect(first.allSatisfy { $0.isClosedByPeer() })
    }

    @Test func outgoing_connections_leave_from_the_source_address_given() throws {
        let (serverLoop, serverTable, listener, _) = try Self.server("127.0.0.1", echo: false)
        defer { serverLoop.stop() }
        let clientLoop = try EventLoop()
        let clientTable = TCPConnectionTable(loop: clientLoop, framer: LengthPrefixFramer(maxFrame: 70_000), receiver: StreamCollector())
        clientTable.sourceAddresses = [SocketAddress(ip: "127.0.0.12", port: 5060)!]
        try clientLoop.start()
        defer { clientLoop.stop() }
        let bound = LoopBound(clientTable, on: clientLoop)
        let target = listener.localAddress
        try clientLoop.submitAndWait { _ = try bound.value.connect(to: target) }
        #expect(LoopTests.eventually { Self.count(serverTable) == 1 })
        let server = LoopBound(serverTable, on: serverLoop)
        let peers = try serverLoop.submitAndWait { server.value.connectionsForTests.map(\.remote.ipString) }
        #expect(peers == ["127.0.0.12"], "from the listener's address, any port")
    }

    @Test func outgoing_connections_are_reused_and_back_pressure_refuses_sends() throws {
        let (serverLoop, serverTable, listener, _) = try Self.server("127.0.0.1", echo: false)
        defer { serverLoop.stop() }
        let clientLoop = try EventLoop()
        let sink = StreamCollector()
        let clientTable = TCPConnectionTable(loop: clientLoop, framer: LengthPrefixFramer(maxFrame: 70_000),
                                             limits: StreamLimits(maxQueuedBytes: 256 * 1024), receiver: sink)
        try clientLoop.start()
        defer { clientLoop.stop() }
        let bound = LoopBound(clientTable, on: clientLoop)
        let target = listener.localAddress
        let same = try clientLoop.submitAndWait {
            let a = try bound.value.connect(to: target)
            let b = try bound.value.connect(to: target)
            return a === b && bound.value.count == 1
        }
        #expect(same)
        #expect(LoopTests.eventually { Self.count(serverTable) == 1 })

        // A peer that never reads: a listening socket nobody accepts from. The kernel buffers fill,
        // then the connection's queue reaches its bound and `send` refuses.
        let stuck = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(stuck) }
        let any = SocketAddress(ip: "127.0.0.1", port: 0)!
        #expect(any.withSockAddr { bind(stuck, $0, $1) } == 0 && listen(stuck, 8) == 0)
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(stuck, $0, &length) } }
        let stuckAddress = withUnsafeBytes(of: &storage) { SocketAddress($0.baseAddress!, length: Int(length))! }
        let refusedAfter = try clientLoop.submitAndWait { () -> Int in
            let c = try bound.value.connect(to: stuckAddress)
            let frame = LengthPrefixFramer.encode([UInt8](repeating: 7, count: 65_000))
            for i in 0..<2_000 where !c.send(frame) { return i }
            return -1
        }
        #expect(refusedAfter > 0, "send must refuse once the queue is full")
        withExtendedLifetime(serverTable) {}
    }
}
