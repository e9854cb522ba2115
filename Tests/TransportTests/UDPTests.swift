import Glibc
import Synchronization
import Testing
@testable import Transport

/// UDP endpoints on two loops over loopback, IPv4 and IPv6.
@Suite(.serialized) struct UDPTests {
    /// Collects what an endpoint receives; echoes it back when asked to.
    final class Collector: DatagramReceiver, @unchecked Sendable {
        // @unchecked: `received`, `refused` are Mutex/atomic; `echo` is set before traffic.
        let received = Mutex<[(bytes: [UInt8], from: SocketAddress)]>([])
        let refused = Mutex<[SocketAddress]>([])
        var echo = false

        func received(_ datagram: [UInt8], from peer: SocketAddress, on endpoint: UDPEndpoint) {
            received.withLock { $0.append((datagram, peer)) }
            if echo { endpoint.send(datagram, to: peer) }
        }

        func unreachable(_ destination: SocketAddress, error: SystemError, on endpoint: UDPEndpoint) {
            refused.withLock { $0.append(destination) }
        }
    }

    static func pair(_ ip: String) throws -> (EventLoop, EventLoop, UDPEndpoint, UDPEndpoint, Collector, Collector) {
        let a = try EventLoop(index: 0), b = try EventLoop(index: 1)
        let ca = Collector(), cb = Collector()
        cb.echo = true
        let ea = try UDPEndpoint(loop: a, bindTo: SocketAddress(ip: ip, port: 0)!, reusePort: false, receiver: ca)
        let eb = try UDPEndpoint(loop: b, bindTo: SocketAddress(ip: ip, port: 0)!, reusePort: false, receiver: cb)
        try a.start()
        try b.start()
        return (a, b, ea, eb, ca, cb)
    }

    @Test(arguments: ["127.0.0.1", "::1"])
    func datagrams_of_1_byte_to_64_KiB_cross_and_echo(_ ip: String) throws {
        let (a, b, ea, eb, ca, cb) = try Self.pair(ip)
        defer { a.stop(); b.stop() }
        let sizes = [1, 2, 500, 1_400, 8_000, 30_000, 65_507 - (ip == "::1" ? 20 : 0)]
        let target = eb.localAddress
        let sender = LoopBound(ea, on: a)
        try a.submitAndWait {
            for (i, size) in sizes.enumerated() {
                sender.value.send((0..<size).map { UInt8(truncatingIfNeeded: $0 &+ i) }, to: target)
            }
        }
        #expect(LoopTests.eventually { ca.received.withLock { $0.count } == sizes.count })
        let back = ca.received.withLock { $0 }
        #expect(Set(back.map(\.bytes.count)) == Set(sizes))
        for (i, size) in sizes.enumerated() {
            let expected = (0..<size).map { UInt8(truncatingIfNeeded: $0 &+ i) }
            #expect(back.contains { $0.bytes == expected }, "size \(size)")
        }
        #expect(back.allSatisfy { $0.from == target })
        #expect(cb.received.withLock { $0.first?.from } == ea.localAddress)
    }

    @Test func a_burst_is_received_in_batches() throws {
        let (a, b, ea, eb, ca, cb) = try Self.pair("127.0.0.1")
        defer { withExtendedLifetime(cb) {} }  // endpoints hold their receivers weakly
        defer { a.stop(); b.stop() }
        let target = eb.localAddress
        let sender = LoopBound(ea, on: a)
        for round in 0..<10 {
            try a.submitAndWait {
                for i in 0..<100 { sender.value.send(Array("m\(round)-\(i)".utf8), to: target) }
            }
        }
        let arrived = LoopTests.eventually { ca.received.withLock { $0.count } == 1_000 }
        let echo = LoopBound(eb, on: b)
        let counts = try (a.submitAndWait { sender.value.sent }, b.submitAndWait { echo.value.received }, b.submitAndWait { echo.value.sent })
        #expect(arrived, "sent \(counts.0), echoed side received \(counts.1) and sent \(counts.2), back \(ca.received.withLock { $0.count })")
        #expect(counts == (1_000, 1_000, 1_000))
    }

    @Test func icmp_port_unreachable_is_reported_with_the_destination() throws {
        let loop = try EventLoop()
        let c = Collector()
        let e = try UDPEndpoint(loop: loop, bindTo: SocketAddress(ip: "127.0.0.1", port: 0)!, reusePort: false, receiver: c)
        // A port nobody listens on: bind a socket to learn a free port, then close it.
        let free: SocketAddress = try {
            let s = try Socket(family: AF_INET, type: Int32(SOCK_DGRAM.rawValue))
            try s.bind(to: SocketAddress(ip: "127.0.0.1", port: 0)!)
            return try s.localAddress()
        }()
        try loop.start()
        defer { loop.stop() }
        let sender = LoopBound(e, on: loop)
        try loop.submitAndWait { sender.value.send(Array("OPTIONS".utf8), to: free) }
        #expect(LoopTests.eventually { c.refused.withLock { $0.count } >= 1 })
        #expect(c.refused.withLock { $0.first } == free)
    }

    @Test func socket_addresses_round_trip() throws {
        for (ip, port) in [("127.0.0.1", 5060), ("::1", 5061), ("[2001:db8::5]", 1), ("192.0.2.200", 65535)] {
            let a = try #require(SocketAddress(ip: ip, port: port))
            var storage = sockaddr_storage()
            let len = a.write(to: &storage)
            let b = withUnsafeBytes(of: &storage) { SocketAddress($0.baseAddress!, length: Int(len)) }
            #expect(a == b && a.port == UInt16(port))
        }
        #expect(SocketAddress(ip: "127.0.0.1", port: 5060)?.description == "127.0.0.1:5060")
        #expect(SocketAddress(ip: "::1", port: 5060)?.description == "[::1]:5060")
        #expect(SocketAddress(ip: "example.com", port: 1) == nil && SocketAddress(ip: "1.2.3.4", port: 70_000) == nil)
    }

    @Test func a_coalescing_loop_pauses_while_datagrams_keep_coming_and_blocks_when_they_stop() throws {
        let a = try EventLoop(index: 0), b = try EventLoop(index: 1)
        let ca = Collector(), cb = Collector()
        let ea = try UDPEndpoint(loop: a, bindTo: SocketAddress(ip: "127.0.0.1", port: 0)!, reusePort: false, receiver: ca)
        let eb = try UDPEndpoint(loop: b, bindTo: SocketAddress(ip: "127.0.0.1", port: 0)!, reusePort: false, receiver: cb)
        b.coalesceMicroseconds = 2_000
        try a.start()
        try b.start()
        defer { a.stop(); b.stop() }
        // 300 datagrams, one every 300 µs: the receiving loop is woken often, so it pauses.
        let sender = LoopBound(ea, on: a), target = eb.localAddress
        for i in 0..<300 {
            try a.submitAndWait { sender.value.send(Array("datagram \(i)".utf8), to: target) }
            usleep(300)
        }
        #expect(LoopTests.eventually { cb.received.withLock { $0.count } == 300 }, "every datagram arrived")
        let busy = try b.submitAndWait { b.pauses }
        #expect(busy > 0, "the loop paused while datagrams kept coming")
        // Quiet: the loop goes back to a blocking wait instead of pausing and polling forever.
        usleep(100_000)
        let settled = try b.submitAndWait { b.pauses }
        usleep(300_000)
        #expect(try b.submitAndWait { b.pauses } == settled, "no pauses once nothing arrives")
        #expect(settled < 300, "fewer pauses than datagrams: each pause served several")
    }

    @Test func a_reuseport_group_queues_each_datagram_on_the_socket_its_program_chooses() throws {
        // Four sockets share one port, bound in order; all datagrams come from one sender, so the
        // kernel's hash alone would queue them on one socket. The program returns the first byte's
        // digit: "2..." goes to socket 2; "9..." names no socket, so the kernel's hash decides.
        typealias I = SocketFilterInstruction
        let program: [I] = [.statement(I.ld | I.byte | I.abs, 0), .statement(I.alu | I.sub | I.constant, 0x30), .statement(I.ret | I.accumulator)]
        let loop = try EventLoop(index: 0), senderLoop = try EventLoop(index: 1)
        let collectors = (0..<4).map { _ in Collector() }
        var group: [UDPEndpoint] = []
        for c in collectors {
            let port = group.first.map { $0.localAddress.port } ?? 0
            group.append(try UDPEndpoint(loop: loop, bindTo: SocketAddress(ip: "127.0.0.1", port: Int(port))!, reusePort: true, receiver: c))
        }
        try group[0].attachGroupProgram(program)
        #expect(throws: SystemError.self) { try group[0].attachGroupProgram([]) }
        let sender = try UDPEndpoint(loop: senderLoop, bindTo: SocketAddress(ip: "127.0.0.1", port: 0)!, reusePort: false, receiver: Collector())
        try loop.start()
        try senderLoop.start()
        defer { loop.stop(); senderLoop.stop() }
        let out = LoopBound(sender, on: senderLoop)
        let cases: [(String, Int?)] = [("2 two", 2), ("0 zero", 0), ("3 three", 3), ("1 one", 1), ("9 none", nil)]
        let target = group[0].localAddress
        for (text, _) in cases {
            try senderLoop.submitAndWait { out.value.send(Array(text.utf8), to: target) }
        }
        #expect(LoopTests.eventually { collectors.reduce(0) { $0 + $1.received.withLock { $0.count } } == cases.count })
        for (text, expected) in cases {
            let holders = collectors.indices.filter { i in collectors[i].received.withLock { $0.contains { $0.bytes == Array(text.utf8) } } }
            #expect(holders.count == 1, "each datagram is received once")
            if let expected { #expect(holders == [expected], "\(text) went to \(holders)") }
        }
    }
}
