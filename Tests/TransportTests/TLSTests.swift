import Foundation
import Glibc
import Synchronization
import Testing
@testable import Transport

/// Certificates made for the tests with the `openssl` command: a CA, a server certificate for
/// localhost / 127.0.0.1 / ::1 signed by it, a client certificate signed by it, and a rogue
/// self-signed server certificate for the same names.
final class TestCertificates {
    let dir: String

    init(dir: String) { self.dir = dir }

    /// The test's keys and certificates go with it.
    deinit { try? FileManager.default.removeItem(atPath: dir) }
    var ca: String { dir + "/ca.pem" }
    var serverCert: String { dir + "/server.pem" }
    var serverKey: String { dir + "/server.key" }
    var clientCert: String { dir + "/client.pem" }
    var clientKey: String { dir + "/client.key" }
    var rogueCert: String { dir + "/rogue.pem" }
    var rogueKey: String { dir + "/rogue.key" }

    static func make() throws -> TestCertificates {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sipedge-tls-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let script = """
        set -e
        cd '\(dir)'
        key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$1" 2>/dev/null; }
        key ca.key
        openssl req -x509 -new -key ca.key -out ca.pem -days 2 -subj '/CN=SIPEdge test CA' 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\\n' > san.ext
        for who in server client; do
          key $who.key
          openssl req -new -key $who.key -out $who.csr -subj "/CN=$who.localhost" 2>/dev/null
          openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $who.pem -days 2 -extfile san.ext 2>/dev/null
        done
        key rogue.key
        openssl req -x509 -new -key rogue.key -out rogue.pem -days 2 -subj '/CN=localhost' -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' 2>/dev/null
        """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = ["-c", script]
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw TLSError(description: "openssl could not make the test certificates") }
        return TestCertificates(dir: dir)
    }

    /// A server context with the CA-signed certificate (or the rogue one); `verifyClients`: mutual TLS.
    func server(rogue: Bool = false, verifyClients: Bool = false) throws -> TLSContext {
        try TLSContext(role: .server, certificateFile: rogue ? rogueCert : serverCert, privateKeyFile: rogue ? rogueKey : serverKey,
                       caFile: ca, verifyPeer: verifyClients)
    }

    /// A client context that checks servers against the test CA, with a client certificate if asked.
    func client(withCertificate: Bool = false) throws -> TLSContext {
        try TLSContext(role: .client, certificateFile: withCertificate ? clientCert : nil,
                       privateKeyFile: withCertificate ? clientKey : nil, caFile: ca, verifyPeer: true)
    }
}

@Suite(.serialized) struct TLSTests {
    /// A TLS server (echoing) on one loop and a TLS client table on another.
    struct Setup {
        let serverLoop: EventLoop, clientLoop: EventLoop
        let serverTable: TCPConnectionTable, clientTable: TCPConnectionTable
        let listener: TCPListener
        let server: StreamCollector, client: StreamCollector

        func stop() { clientLoop.stop(); serverLoop.stop() }

        /// Connects, sends one frame, returns what came back (nil if the connection closed or 5 s passed).
        func roundTrip(to address: SocketAddress, serverName: String?) throws -> [UInt8]? {
            let bound = LoopBound(clientTable, on: clientLoop)
            let frame = LengthPrefixFramer.encode(Array("REGISTER over TLS".utf8))
            try clientLoop.submitAndWait {
                let c = try bound.value.connect(to: address, serverName: serverName)
                c.send(frame)
            }
            // Until an answer comes back or the client's connection closes (a refused handshake).
            _ = LoopTests.eventually(5, { client.frames.withLock { !$0.isEmpty } || client.closes.withLock { !$0.isEmpty } })
            return client.frames.withLock { $0.first }
        }
    }

    static func setup(_ ip: String, server: TLSContext, client: TLSContext) throws -> Setup {
        let serverLoop = try EventLoop(index: 0), clientLoop = try EventLoop(index: 1)
        serverLoop.log = { _ in }
        clientLoop.log = { _ in }
        let s = StreamCollector(), c = StreamCollector()
        s.echo = true
        let framer = LengthPrefixFramer(maxFrame: 70_000)
        let serverTable = TCPConnectionTable(loop: serverLoop, framer: framer, tls: server, receiver: s)
        let clientTable = TCPConnectionTable(loop: clientLoop, framer: framer, tls: client, receiver: c)
        serverTable.log = { _, _, _ in }
        clientTable.log = { _, _, _ in }
        let listener = try TCPListener(table: serverTable, bindTo: SocketAddress(ip: ip, port: 0)!, reusePort: false)
        try serverLoop.start()
        try clientLoop.start()
        return Setup(serverLoop: serverLoop, clientLoop: clientLoop, serverTable: serverTable, clientTable: clientTable,
                     listener: listener, server: s, client: c)
    }

    @Test(arguments: ["127.0.0.1", "::1"])
    func a_verified_tls_connection_carries_frames_both_ways(_ ip: String) throws {
        let certs = try TestCertificates.make()
        let server = try certs.server()
        let client = try certs.client()
        let s = try Self.setup(ip, server: server, client: client)
        defer { s.stop() }
        let back = try s.roundTrip(to: s.listener.localAddress, serverName: "localhost")
        #expect(back == LengthPrefixFramer.encode(Array("REGISTER over TLS".utf8)))
        // The server saw the SNI name.
        let table = LoopBound(s.serverTable, on: s.serverLoop)
        let remote = try s.clientLoop.submitAndWait { [clientTable = LoopBound(s.clientTable, on: s.clientLoop), address = s.listener.localAddress] in
            clientTable.value.connection(to: address)?.local
        }
        let sni = try s.serverLoop.submitAndWait { remote.flatMap { table.value.connection(to: $0)?.requestedServerName } }
        #expect(sni == "localhost")
    }

    @Test(arguments: ["127.0.0.1", "::1"])
    func frames_of_1_byte_to_64_KiB_cross_tls(_ ip: String) throws {
        let certs = try TestCertificates.make()
        let server = try certs.server()
        let client = try certs.client()
        let s = try Self.setup(ip, server: server, client: client)
        defer { s.stop() }
        let sizes = [1, 2, 100, 1_500, 16_383, 16_385, 65_536]
        let frames = sizes.map { size in LengthPrefixFramer.encode((0..<size).map { UInt8(truncatingIfNeeded: $0 &* 13) }) }
        let bound = LoopBound(s.clientTable, on: s.clientLoop)
        let address = s.listener.localAddress
        try s.clientLoop.submitAndWait {
            let c = try bound.value.connect(to: address, serverName: "localhost")
            for f in frames { c.send(f) }   // queued until the handshake is done, then sent in order
        }
        #expect(LoopTests.eventually { s.client.frames.withLock { $0.count } == sizes.count })
        #expect(s.client.frames.withLock { $0 } == frames)
    }

    @Test func a_peer_that_does_not_speak_tls_is_cut_off_and_others_carry_on() throws {
        let certs = try TestCertificates.make()
        let server = try certs.server()
        let client = try certs.client()
        let s = try Self.setup("127.0.0.1", server: server, client: client)
        defer { s.stop() }
        let plain = try TestClient(to: s.listener.localAddress)
        plain.write(Array("OPTIONS sip:a@b SIP/2.0\r\n\r\n".utf8))
        #expect(plain.isClosedByPeer())
        #expect(LoopTests.eventually { s.server.closes.withLock { $0.contains { $0?.contains("TLS handshake failed") == true } } })
        #expect(try s.roundTrip(to: s.listener.localAddress, serverName: "localhost") != nil)
    }

    @Test func a_server_with_a_wrong_certificate_is_refused() throws {
        let certs = try TestCertificates.make()
        let rogue = try certs.server(rogue: true)
        let client = try certs.client()
        let s = try Self.setup("127.0.0.1", server: rogue, client: client)
        defer { s.stop() }
        #expect(try s.roundTrip(to: s.listener.localAddress, serverName: "localhost") == nil)
        #expect(LoopTests.eventually { s.client.closes.withLock { $0.contains { $0?.contains("certificate verify failed") == true } } })
        #expect(s.server.frames.withLock { $0.isEmpty })
    }

    @Test func a_certificate_for_another_name_is_refused() throws {
        let certs = try TestCertificates.make()
        let server = try certs.server()
        let client = try certs.client()
        let s = try Self.setup("127.0.0.1", server: server, client: client)
        defer { s.stop() }
        #expect(try s.roundTrip(to: s.listener.localAddress, serverName: "sip.example.com") == nil)
        #expect(LoopTests.eventually { s.client.closes.withLock { $0.contains { $0?.contains("certificate verify failed") == true } } })
    }

    @Test func mutual_tls_needs_a_client_certificate() throws {
        let certs = try TestCertificates.make()
        let server = try certs.server(verifyClients: true)
        let anonymous = try certs.client()
        let s1 = try Self.setup("127.0.0.1", server: server, client: anonymous)
        #expect(try s1.roundTrip(to: s1.listener.localAddress, serverName: "localhost") == nil)
        #expect(LoopTests.eventually { s1.server.closes.withLock { !$0.isEmpty } })
        s1.stop()

        let withCertificate = try certs.client(withCertificate: true)
        let s2 = try Self.setup("127.0.0.1", server: server, client: withCertificate)
        defer { s2.stop() }
        #expect(try s2.roundTrip(to: s2.listener.localAddress, serverName: "127.0.0.1") != nil)
    }

    @Test func contexts_refuse_bad_files() throws {
        #expect(throws: TLSError.self) { try TLSContext(role: .server) }
        #expect(throws: TLSError.self) { try TLSContext(role: .server, certificateFile: "/nonexistent.pem") }
        let certs = try TestCertificates.make()
        #expect(throws: TLSError.self) {
            try TLSContext(role: .server, certificateFile: certs.serverCert, privateKeyFile: certs.rogueKey)
        }
    }
}
