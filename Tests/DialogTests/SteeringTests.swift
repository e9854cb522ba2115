import Glibc
import Synchronization
import Testing
import Transport
@testable import Dialog

/// The socket filter program built from our identifier format: SIP responses reach the socket of
/// the worker their Via branch names (UDP sockets of one SO_REUSEPORT group on loopback).
@Suite struct SteeringTests {
    final class Collector: DatagramReceiver, @unchecked Sendable {
        // @unchecked: `received` is a Mutex.
        let received = Mutex<[(bytes: [UInt8], from: SocketAddress)]>([])
        func received(_ datagram: [UInt8], from peer: SocketAddress, on endpoint: UDPEndpoint) {
            received.withLock { $0.append((datagram, peer)) }
        }
        func unreachable(_ destination: SocketAddress, error: SystemError, on endpoint: UDPEndpoint) {}
    }

    static func eventually(_ condition: () -> Bool) -> Bool {
        for _ in 0..<2_500 where !condition() { usleep(2_000) }
        return condition()
    }

    @Test func the_program_fits_the_kernels_limit() {
        #expect(ResponseSteering.program().count <= SocketFilterInstruction.maximumCount)
    }

    @Test func a_reuseport_group_steers_each_response_to_the_socket_its_via_branch_names() throws {
        // Twelve sockets share one port, bound in order (socket n stands for worker n); all
        // datagrams come from one sender, so the kernel's hash alone would queue them on one socket.
        let loop = try EventLoop(index: 0), senderLoop = try EventLoop(index: 1)
        let collectors = (0..<12).map { _ in Collector() }
        var group: [UDPEndpoint] = []
        for c in collectors {
            let port = group.first.map { $0.localAddress.port } ?? 0
            group.append(try UDPEndpoint(loop: loop, bindTo: SocketAddress(ip: "127.0.0.1", port: Int(port))!, reusePort: true, receiver: c))
        }
        try group[0].attachGroupProgram(ResponseSteering.program())
        let sink = Collector()
        let sender = try UDPEndpoint(loop: senderLoop, bindTo: SocketAddress(ip: "127.0.0.1", port: 0)!, reusePort: false, receiver: sink)
        try loop.start()
        try senderLoop.start()
        defer { loop.stop(); senderLoop.stop() }
        let target = group[0].localAddress
        func response(_ status: String, via: String) -> [UInt8] {
            Array("""
                SIP/2.0 \(status)\r
                \(via)\r
                From: <sip:alice@127.0.0.1>;tag=a1\r
                To: <sip:bob@127.0.0.1>;tag=b2\r
                Call-ID: steering-test-\(status.hashValue)\r
                CSeq: 1 INVITE\r
                Contact: <sip:bob@127.0.0.1:5080>\r
                Content-Length: 0\r
                \r

                """.utf8)
        }
        let sentBy = "Via: SIP/2.0/UDP 127.0.0.1:\(target.port)"
        // (datagram, the socket it must reach; nil: any one, by the kernel's hash)
        let cases: [([UInt8], Int?)] = [
            (response("200 OK", via: "\(sentBy);branch=z9hG4bKs3xq0c1;rport"), 3),
            (response("180 Ringing", via: "\(sentBy);rport=5060;received=127.0.0.1;branch=z9hG4bKs7xk2"), 7),   // PJSIP's order
            (response("183 Session Progress", via: "\(sentBy);branch=z9hG4bKs11x9"), 11),
            (response("486 Busy Here", via: "\(sentBy);branch=z9hG4bKs10xa"), 10),
            (response("200 OK", via: "\(sentBy);branch=z9hG4bKs0xzz"), 0),
            (response("200 OK", via: "\(sentBy);branch=z9hG4bKs42x1"), nil),            // no such socket
            (response("200 OK", via: "v: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKs5x1"), nil),   // compact form
            (response("200 OK", via: "\(sentBy);branch=z9hG4bK-other-stack"), nil),
            (Array("INVITE sip:bob@127.0.0.1 SIP/2.0\r\n\(sentBy);branch=z9hG4bKs5x1\r\n\r\n".utf8), nil),
            (Array("\r\n\r\n".utf8), nil),                                              // keep-alive
        ]
        let out = LoopBound(sender, on: senderLoop)
        for (bytes, _) in cases {
            try senderLoop.submitAndWait { out.value.send(bytes, to: target) }
        }
        #expect(Self.eventually { collectors.reduce(0) { $0 + $1.received.withLock { $0.count } } == cases.count })
        for (bytes, expected) in cases {
            let holders = collectors.indices.filter { i in collectors[i].received.withLock { $0.contains { $0.bytes == bytes } } }
            #expect(holders.count == 1, "each datagram is received once")
            if let expected { #expect(holders == [expected], "\(String(decoding: bytes.prefix(24), as: UTF8.self))... went to \(holders)") }
        }
    }
}
