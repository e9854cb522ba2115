import Foundation
import Glibc
import Testing

/// Flood limits, calls per source and malformed input, over the wire against the real binary.
@Suite(.serialized) struct ProtectionTests {
    /// A UDP socket bound to `ip` (any 127.x.y.z works on loopback without set-up), non-blocking.
    static func socket(from ip: String) -> Int32 {
        let fd = Glibc.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, ip, &a.sin_addr)
        _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return fd
    }

    static func send(_ fd: Int32, _ text: String, to port: Int) {
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr)
        let bytes = Array(text.utf8)
        _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            sendto(fd, bytes, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        } }
    }

    /// Status codes of every response waiting on `fd`: up to `ms` milliseconds for the first, then
    /// until 150 ms pass without another.
    static func statuses(_ fd: Int32, waiting ms: Int) -> [Int] {
        var out: [Int] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        var quiet = 0
        while quiet < (out.isEmpty ? ms : 150) {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n > 12, let code = Int(String(decoding: buffer[8..<11], as: UTF8.self)) {
                out.append(code)
                quiet = 0
            } else {
                usleep(10_000)
                quiet += 10
            }
        }
        return out
    }

    static func options(_ n: Int, from ip: String) -> String {
        "OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP \(ip):5999;branch=z9hG4bKflood\(n)\r\nMax-Forwards: 70\r\n"
            + "From: <sip:flood@\(ip)>;tag=f\(n)\r\nTo: <sip:edge@127.0.0.1>\r\nCall-ID: flood-\(n)@\(ip)\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    }

    static func rssKiB(_ pid: Int32) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }

    @Test(.needsSIPp) func a_flooding_source_is_blocked_while_others_are_served_and_memory_stays_bounded() throws {
        var flooded: (ok: Int, refused: Int) = (0, 0)
        var rss: (before: Int, after: Int) = (0, 0)
        // SIPp's 20 calls at 10 per second stay well under 100 requests a second from 127.0.0.1.
        guard let run = try CallTests.runCalls(20, timeout: 20, extraConfig: """
            [security]
            max_requests = 100
            window_seconds = 1
            block_seconds = 10
            max_sources = 500
            """, rate: 10, during: { edge, _ in
                // While SIPp calls from 127.0.0.1, 127.0.0.2 sends 20,000 requests as fast as it can.
                let port = edge.boundPort("listening udp")!
                rss.before = Self.rssKiB(edge.process.processIdentifier)
                let fd = Self.socket(from: "127.0.0.2")
                defer { close(fd) }
                for n in 0..<20_000 { Self.send(fd, Self.options(n, from: "127.0.0.2"), to: port) }
                let codes = Self.statuses(fd, waiting: 1_500)
                flooded = (codes.filter { $0 == 200 }.count, codes.filter { $0 == 503 }.count)
                // Then 3,000 forged-looking sources, one request each: the table of sources keeps 500.
                for n in 0..<3_000 {
                    let ip = "127.1.\(n / 250).\(n % 250 + 1)"
                    let one = Self.socket(from: ip)
                    Self.send(one, Self.options(n, from: ip), to: port)
                    close(one)
                }
                usleep(500_000)
                rss.after = Self.rssKiB(edge.process.processIdentifier)
            }, destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "the other source's calls were all served\n\(run.output)")
        #expect(flooded.ok <= 100, "at most the limit was answered: \(flooded)")
        #expect(flooded.refused >= 1, "the flooder was told why (503, Retry-After): \(flooded)")
        #expect(run.output.contains("flood: 127.0.0.2 sent more than 100 requests in 1 s; blocked for 10 s"))
        #expect(!run.output.contains("flood: 127.0.0.1 "), "the well-behaved source was never blocked")
        #expect(rss.after - rss.before < 32_768, "resident memory grew by \(rss.after - rss.before) KiB under the floods")
    }

    @Test(.needsSIPp) func calls_over_the_per_source_limit_are_refused_with_503() throws {
        guard let run = try CallTests.runCalls(10, timeout: 15, uacScenario: Scenarios.patientCaller,
                                               extraConfig: "[security]\nmax_calls_per_source = 5",
                                               destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(CallTests.CallRun.count("INVITE sip:", in: run.uasLog) == 5, "five calls reached the callee")
        #expect(CallTests.CallRun.count("SIP/2.0 503", in: run.uacLog) >= 5, "five were refused (SIPp logs retransmitted 503s too)")
        #expect(run.uacLog.contains("too many calls from this address"))
        #expect(run.status != 0, "SIPp counts the refused calls as failed")
    }

    @Test func every_rfc4475_message_sent_over_udp_gets_the_parsers_verdict_and_the_edge_stays_up() throws {
        let edge = try CallTests.Edge(config: """
            workers = 2
            \(CallTests.listeners(port: 0, tcp: false))
            """)
        defer { edge.stop() }
        #expect(edge.waitFor("listening udp"))
        let port = try #require(edge.boundPort("listening udp"))
        let dir = CommandTests.corpus.appendingPathComponent("rfc4475")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".dat") }.sorted()
        #expect(files.count == 49)
        var checked = 0
        for file in files {
            let path = dir.appendingPathComponent(file).path
            // What the parser says the wire should answer (checked against INDEX.md by RFC4475Tests).
            let parse = MISecretTests.sh([CommandTests.binary.path, "parse", "--json", path]).1
            guard let json = try JSONSerialization.jsonObject(with: Data(parse.utf8)) as? [String: Any],
                  json["valid"] as? Bool == false else { continue }
            let expected = json["status_code_to_send"] as? Int
            let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
            let fd = Self.socket(from: "127.0.0.1")
            defer { close(fd) }
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET, "127.0.0.1", &a.sin_addr)
            _ = bytes.withUnsafeBytes { raw in withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(fd, raw.baseAddress, raw.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            } } }
            let got = Self.statuses(fd, waiting: expected == nil ? 200 : 1_000)
            if let expected {
                #expect(got == [expected], "\(file): expected \(expected), got \(got)")
            } else {
                #expect(got.isEmpty, "\(file): expected silence, got \(got)")
            }
            checked += 1
        }
        #expect(checked >= 20, "\(checked) invalid messages checked")
        #expect(edge.process.isRunning, "the edge is still up")
        // And it still answers.
        let fd = Self.socket(from: "127.0.0.1")
        defer { close(fd) }
        Self.send(fd, Self.options(1, from: "127.0.0.1"), to: port)
        #expect(Self.statuses(fd, waiting: 1_000) == [200])
    }
    @Test(.needsSIPp) func a_late_copy_of_an_invite_after_its_call_ended_does_not_start_another_call() throws {
        // The caller is this test, on a raw UDP socket; the callee a SIPp UAS. After INVITE, 200,
        // ACK, BYE, 200, the first INVITE arrives once more (UDP may deliver a copy that late).
        guard let run = try CallTests.runCalls(1, timeout: 10, during: { edge, _ in
            let port = edge.boundPort("listening udp")!
            let fd = Self.socket(from: "127.0.0.3")
            defer { close(fd) }
            let head = "Via: SIP/2.0/UDP 127.0.0.3:5999;branch=z9hG4bKlate1\r\nMax-Forwards: 70\r\n"
                + "From: <sip:late@127.0.0.3>;tag=l1\r\nTo: <sip:service@127.0.0.1>\r\nCall-ID: late-copy-1\r\n"
            let invite = "INVITE sip:service@127.0.0.1:\(port) SIP/2.0\r\n" + head
                + "CSeq: 1 INVITE\r\nContact: <sip:late@127.0.0.3:5999>\r\nContent-Length: 0\r\n\r\n"
            Self.send(fd, invite, to: port)
            var buffer = [UInt8](repeating: 0, count: 65_536)
            var toTag = ""
            for _ in 0..<300 where toTag.isEmpty {
                let n = recv(fd, &buffer, buffer.count, 0)
                let text = n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : ""
                if text.hasPrefix("SIP/2.0 200"), let line = text.split(separator: "\r\n").first(where: { $0.hasPrefix("To:") }),
                   let tag = line.split(separator: "=").last { toTag = String(tag) }
                if n <= 0 { usleep(10_000) }
            }
            #expect(!toTag.isEmpty, "the call was answered")
            let dialog = "Via: SIP/2.0/UDP 127.0.0.3:5999;branch=z9hG4bKlate2\r\nMax-Forwards: 70\r\n"
                + "From: <sip:late@127.0.0.3>;tag=l1\r\nTo: <sip:service@127.0.0.1>;tag=\(toTag)\r\nCall-ID: late-copy-1\r\n"
            Self.send(fd, "ACK sip:service@127.0.0.1:\(port) SIP/2.0\r\n" + dialog + "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n", to: port)
            Self.send(fd, "BYE sip:service@127.0.0.1:\(port) SIP/2.0\r\n" + dialog.replacingOccurrences(of: "late2", with: "late3")
                + "CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n", to: port)
            #expect(Self.statuses(fd, waiting: 1_000).contains(200), "the BYE was answered")
            Self.send(fd, invite, to: port)
            #expect(Self.statuses(fd, waiting: 1_000).isEmpty, "the late copy was absorbed, not answered")
        }, destinations: { ["127.0.0.1:\($0)"] }) else { return }
        // SIPp's own call (runCalls places one) and ours: two INVITEs; the late copy would be a third.
        #expect(CallTests.CallRun.count("INVITE sip:", in: run.uasLog) == 2, "the late copy started no call")
    }
}
