import Foundation
import Glibc
import Synchronization
import Testing
@testable import Transport

/// Listener tags, outgoing listener choice, worker hand-over, sharded identifiers, SCTP.
@Suite(.serialized) struct ListenerTests {
    static let publicTag = ListenerTag("public")!
    static let backendTag = ListenerTag("backend")!

    static let listeners = [
        ListenerSpec(proto: .udp, address: SocketAddress(ip: "127.0.0.1", port: 5060)!, tag: publicTag),
        ListenerSpec(proto: .udp, address: SocketAddress(ip: "127.0.0.2", port: 5060)!, advertisedHost: "203.0.113.5", tag: backendTag),
        ListenerSpec(proto: .tcp, address: SocketAddress(ip: "127.0.0.1", port: 5060)!, tag: publicTag),
        ListenerSpec(proto: .tls, address: SocketAddress(ip: "127.0.0.1", port: 5061)!, tag: publicTag),
        ListenerSpec(proto: .udp, address: SocketAddress(ip: "::1", port: 5060)!, tag: publicTag),
    ]

    @Test func tags_are_validated() {
        #expect(ListenerTag("public-1_a") != nil)
        #expect(ListenerTag("") == nil && ListenerTag("has space") == nil && ListenerTag("ü") == nil)
        #expect(ListenerTag(String(repeating: "a", count: 65)) == nil)
    }

    @Test func the_outgoing_listener_honours_protocol_family_and_tag() {
        let selector = ListenerSelector(Self.listeners)
        #expect(selector.select(proto: .udp, family: .inet)?.tag == Self.publicTag)
        #expect(selector.select(proto: .udp, family: .inet, tag: Self.backendTag)?.address.ipString == "127.0.0.2")
        #expect(selector.select(proto: .udp, family: .inet6)?.address.ipString == "::1")
        #expect(selector.select(proto: .tls, family: .inet)?.address.port == 5061)
        #expect(selector.select(proto: .sctp, family: .inet) == nil)
        // A tag no TCP listener carries: loose choice falls back, strict choice (re-homing) refuses.
        #expect(selector.select(proto: .tcp, family: .inet, tag: Self.backendTag)?.tag == Self.publicTag)
        #expect(selector.select(proto: .tcp, family: .inet, tag: Self.backendTag, strictTag: true) == nil)
        #expect(Self.listeners[1].advertised.host == "203.0.113.5" && Self.listeners[1].advertised.port == 5060)
        #expect(Self.listeners[4].advertised.host == "[::1]")
    }

    @Test func work_is_handed_to_the_owning_worker() throws {
        let group = try WorkerGroup(count: 3)
        try group.start()
        defer { group.stop() }
        let seen = Mutex<[Int: Int]>([:])
        let done = Atomic<Int>(0)
        for i in 0..<300 {
            let owner = i % 3
            let payload = [UInt8](repeating: UInt8(i & 0xFF), count: 100)
            group.handOver(to: owner) {
                let here = group.loops.firstIndex { $0.inLoop }
                seen.withLock { $0[owner, default: 0] += (here == owner && payload.count == 100) ? 1 : 0 }
                done.add(1, ordering: .relaxed)
            }
        }
        #expect(LoopTests.eventually { done.load(ordering: .relaxed) == 300 })
        let counts = seen.withLock { $0 }
        #expect(counts.values.reduce(0, +) == 300, "every piece of work ran on its owner")
        #expect(counts.count == 3, "every worker ran its share")
    }

    final class SCTPCollector: SCTPReceiver, @unchecked Sendable {
        // @unchecked: state behind a Mutex.
        let got = Mutex<[[UInt8]]>([])
        func received(_ message: [UInt8], from peer: SocketAddress, on endpoint: SCTPEndpoint) {
            got.withLock { $0.append(message) }
        }
    }

    /// Whether this kernel opens SCTP sockets at all.
    static var kernelHasSCTP: Bool {
        let fd = socket(AF_INET, Int32(SOCK_SEQPACKET.rawValue), Int32(IPPROTO_SCTP))
        if fd >= 0 { close(fd) }
        return fd >= 0
    }

    @Test func sctp_refusal_is_a_clear_error_naming_the_listener() throws {
        let explained = SCTPEndpoint.explain(SystemError("socket(SCTP)", errno: ESOCKTNOSUPPORT), listener: "sctp-public")
        #expect(explained.description.contains("listener sctp-public: this kernel has no SCTP"))
        #expect(SCTPEndpoint.explain(SystemError("socket(SCTP)", errno: EPROTONOSUPPORT), listener: "x").description.contains("no SCTP"))
        #expect(SCTPEndpoint.explain(SystemError("socket(SCTP)", errno: EMFILE), listener: "x").description.contains("cannot open SCTP socket"))
        guard !Self.kernelHasSCTP else { return }
        // On this kernel the real thing must fail the same way.
        let loop = try EventLoop()
        let collector = SCTPCollector()
        #expect {
            _ = try SCTPEndpoint(loop: loop, bindTo: SocketAddress(ip: "127.0.0.1", port: 0)!, name: "sctp-public", receiver: collector)
        } throws: { error in
            (error as? ListenerError)?.description.contains("listener sctp-public: this kernel has no SCTP") == true
        }
    }

    /// Opt-in (TSHIM_TEST_SCTP=1) for kernels with SCTP: two endpoints exchange messages.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["TSHIM_TEST_SCTP"] == "1"))
    func sctp_messages_cross_between_two_endpoints() throws {
        let loop = try EventLoop()
        let a = SCTPCollector(), b = SCTPCollector()
        let ea = try SCTPEndpoint(loop: loop, bindTo: SocketAddress(ip: "127.0.0.1", port: 0)!, name: "a", receiver: a)
        let eb = try SCTPEndpoint(loop: loop, bindTo: SocketAddress(ip: "127.0.0.1", port: 0)!, name: "b", receiver: b)
        try loop.start()
        defer { loop.stop() }
        let sender = LoopBound(ea, on: loop)
        let target = eb.localAddress
        try loop.submitAndWait { for i in 0..<10 { try sender.value.send(Array("message \(i)".utf8), to: target) } }
        #expect(LoopTests.eventually { b.got.withLock { $0.count } == 10 })
        withExtendedLifetime((a, eb)) {}
    }
}
