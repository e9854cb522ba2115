import Foundation
import Glibc
import SIPParser
import Synchronization
import Testing
import Transport
@testable import Dialog

/// SIP messages framed over real TCP connections with SIPStreamFraming.
@Suite(.serialized) struct SIPOverTCPTests {
    final class Messages: StreamReceiver, @unchecked Sendable {
        // @unchecked: state behind Mutexes.
        let parsed = Mutex<[SIPMessage]>([])
        let closes = Mutex<[String?]>([])
        func received(_ frame: [UInt8], on connection: TCPConnection) {
            if let m = try? SIPMessage(parsing: frame) { parsed.withLock { $0.append(m) } }
        }
        func closed(_ connection: TCPConnection, reason: String?) { closes.withLock { $0.append(reason) } }
    }

    static func corpus(_ name: String) throws -> [UInt8] {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return [UInt8](try Data(contentsOf: url.deletingLastPathComponent().appendingPathComponent("shared/corpus/\(name)")))
    }

    static func eventually(_ condition: () -> Bool) -> Bool {
        for _ in 0..<2_500 where !condition() { usleep(2_000) }
        return condition()
    }

    static func connect(_ address: SocketAddress) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        _ = address.withSockAddr { Glibc.connect(fd, $0, $1) }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    @Test func rfc3261_18_3_messages_and_rfc5626_keepalives_over_tcp() throws {
        let loop = try EventLoop()
        loop.log = { _ in }
        let messages = Messages()
        let table = TCPConnectionTable(loop: loop, framer: SIPStreamFraming(), receiver: messages)
        let listener = try TCPListener(table: table, bindTo: SocketAddress(ip: "127.0.0.1", port: 0)!, reusePort: false)
        try loop.start()
        defer { loop.stop() }
        let fd = Self.connect(listener.localAddress)
        defer { close(fd) }
        // Three messages and a ping in one write, split anywhere by TCP; bodies up to 60 KB.
        let invite = try Self.corpus("realistic/invite_sdp.sip")
        let bye = try Self.corpus("realistic/bye.sip")
        let body = [UInt8](repeating: UInt8(ascii: "x"), count: 60_000)
        let big = Array("MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: big\r\nCSeq: 1 MESSAGE\r\nContent-Length: 60000\r\n\r\n".utf8) + body
        let stream = invite + bye + big + Array("\r\n\r\n".utf8)
        _ = stream.withUnsafeBytes { send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
        var pong = [UInt8](repeating: 0, count: 2)
        #expect(read(fd, &pong, 2) == 2 && pong == [0x0D, 0x0A])
        #expect(Self.eventually { messages.parsed.withLock { $0.count } == 3 })
        let got = messages.parsed.withLock { $0 }
        #expect(got.map { $0.method } == [.invite, .bye, .message])
        #expect(got[2].body.count == 60_000)

        // inv2543 has no Content-Length: on a stream that cannot be framed, so the connection goes,
        // after a 400 that says why.
        let bad = Self.connect(listener.localAddress)
        defer { close(bad) }
        let old = try Self.corpus("rfc4475/inv2543.dat")
        _ = old.withUnsafeBytes { send(bad, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
        var answer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4_096)
        while case let n = read(bad, &chunk, chunk.count), n > 0 { answer += chunk[0..<n] }
        let text = String(decoding: answer, as: UTF8.self)
        #expect(text.hasPrefix("SIP/2.0 400 ") && text.contains("Content-Length required"), "\(text)")
        #expect(Self.eventually { messages.closes.withLock { $0.contains { $0?.contains("Content-Length required") == true } } })
        withExtendedLifetime(table) {}
    }
}
