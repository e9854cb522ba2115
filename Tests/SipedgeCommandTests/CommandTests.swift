import Foundation
import Glibc
import Synchronization
import Testing

/// The `sipedge` executable, run as a subprocess the way operators and scripts run it.
@Suite struct CommandTests {
    static let packageRoot: URL = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url
    }()
    static let corpus = packageRoot.deletingLastPathComponent().appendingPathComponent("shared/corpus")

    /// The built `sipedge` binary: beside the test bundle in SwiftPM's products folder.
    static var binary: URL {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        while !FileManager.default.fileExists(atPath: dir.appendingPathComponent("sipedge").path) && dir.path != "/" {
            dir.deleteLastPathComponent()
        }
        return dir.appendingPathComponent("sipedge")
    }

    static func run(_ args: [String], in directory: URL? = nil) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = binary
        p.arguments = args
        p.currentDirectoryURL = directory ?? packageRoot
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    static func jsonLines(_ text: String) throws -> [[String: Any]] {
        try text.split(separator: "\n").map {
            try #require(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
    }

    @Test func parse_json_reports_rfc4475_verdicts_and_fields() throws {
        let dir = Self.corpus.appendingPathComponent("rfc4475")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".dat") }.sorted()
        let r = try Self.run(["parse", "--json"] + files.map { dir.appendingPathComponent($0).path })
        #expect(r.status == 1, "some files are invalid, so the exit status is 1")
        let rows = try Self.jsonLines(r.out)
        #expect(rows.count == 49)
        let byFile = Dictionary(uniqueKeysWithValues: rows.map { (URL(fileURLWithPath: $0["file"] as! String).lastPathComponent, $0) })
        let keys = ["file", "valid", "error", "status_code_to_send", "kind", "method", "status", "request_uri", "call_id",
                    "cseq", "cseq_method", "from_tag", "to_tag", "via_branch", "via_count", "record_route_count", "body_length"]
        #expect(Set(byFile["wsinv.dat"]!.keys) == Set(keys))
        let wsinv = byFile["wsinv.dat"]!
        #expect(wsinv["valid"] as? Bool == true && wsinv["cseq"] as? Int == 9 && wsinv["via_count"] as? Int == 3)
        #expect(wsinv["body_length"] as? Int == 150 && wsinv["kind"] as? String == "request")
        #expect(byFile["longreq.dat"]!["via_count"] as? Int == 34)
        #expect(byFile["mpart01.dat"]!["body_length"] as? Int == 553)
        #expect(byFile["inv2543.dat"]!["body_length"] as? Int == 105)
        #expect(byFile["dblreq.dat"]!["method"] as? String == "REGISTER" && byFile["dblreq.dat"]!["body_length"] as? Int == 0)
        #expect(byFile["badvers.dat"]!["valid"] as? Bool == false && byFile["badvers.dat"]!["status_code_to_send"] as? Int == 505)
        #expect(byFile["insuf.dat"]!["valid"] as? Bool == false && byFile["insuf.dat"]!["status_code_to_send"] as? Int == 400)
        #expect(byFile["unreason.dat"]!["kind"] as? String == "response" && byFile["unreason.dat"]!["status"] as? Int == 200)
        #expect(byFile["intmeth.dat"]!["method"] as? String == "!interesting-Method0123456789_*+`.%indeed'~")
    }

    @Test func parse_exits_0_when_every_file_is_valid() throws {
        let dir = Self.corpus.appendingPathComponent("realistic")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".sip") }.sorted()
        let r = try Self.run(["parse", "--json"] + files.map { dir.appendingPathComponent($0).path })
        #expect(r.status == 0)
        let rows = try Self.jsonLines(r.out)
        #expect(rows.count == 10 && rows.allSatisfy { $0["valid"] as? Bool == true })
        let ok = rows.first { ($0["file"] as! String).hasSuffix("200_ok_invite_sdp.sip") }!
        #expect(ok["status"] as? Int == 200 && ok["via_count"] as? Int == 2 && ok["body_length"] as? Int == 261)
        let human = try Self.run(["parse", dir.appendingPathComponent("bye.sip").path])
        #expect(human.status == 0 && human.out.contains("valid: BYE"))
    }

    @Test func parse_stream_mode_requires_content_length() throws {
        let file = Self.corpus.appendingPathComponent("rfc4475/inv2543.dat").path
        let r = try Self.run(["parse", "--json", "--stream", file])
        #expect(r.status == 1 && r.out.contains("Content-Length required"))
    }

    @Test func check_config_accepts_the_shipped_file_and_names_line_and_key_of_errors() throws {
        let ok = try Self.run(["check-config", "conf/sipedge.toml"])
        #expect(ok.status == 0 && ok.out.contains("OK (2 listeners, 2 workers)"))
        let bad = Scratch.file("bad", "toml")
        try "workers = 2\n\n[[listener]]\nproto = \"udp\"\naddress = \"127.0.0.1\"\nprot = 5060\n".write(to: bad, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: bad) }
        let r = try Self.run(["check-config", bad.path])
        #expect(r.status == 2 && r.err.contains("line 6: listener[1].prot: unknown key"), "\(r.err)")
        // What would stop `run` stops `check-config`: an address this host does not have.
        try "[[listener]]\nproto = \"udp\"\naddress = \"192.0.2.1\"\n".write(to: bad, atomically: true, encoding: .utf8)
        let foreign = try Self.run(["check-config", bad.path])
        #expect(foreign.status == 2 && foreign.err.contains("line 3: listener[1].address: 192.0.2.1 is not an address of this host"), "\(foreign.err)")
    }

    /// Starts `sipedge run` on `config`; returns the process and a reader of its output so far.
    static func start(_ config: String, file given: URL? = nil) throws -> (Process, () -> String) {
        let file = given ?? Scratch.file("run", "toml")
        try config.write(to: file, atomically: true, encoding: .utf8)
        let p = Process()
        // A file made here goes when the process does (an Edge keeps and removes its own).
        if given == nil { p.terminationHandler = { _ in Scratch.remove(file) } }
        p.executableURL = binary
        p.arguments = ["run", "--config", file.path]
        p.currentDirectoryURL = packageRoot
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        let text = Mutex("")
        out.fileHandleForReading.readabilityHandler = { h in
            let data = h.availableData
            text.withLock { $0 += String(decoding: data, as: UTF8.self) }
        }
        try p.run()
        return (p, { text.withLock { $0 } })
    }

    static func waitFor(_ read: () -> String, _ needle: String) -> Bool {
        for _ in 0..<500 where !read().contains(needle) { usleep(10_000) }
        return read().contains(needle)
    }

    @Test func run_listens_parses_what_arrives_and_stops_on_sigterm() throws {
        // Every invalid message logged (not one per interval and source, the default).
        let (p, output) = try Self.start("""
            workers = 2
            [log]
            summary_interval_seconds = 0
            \(CallTests.listeners(port: 0))
            """)
        defer { if p.isRunning { p.terminate() } }
        #expect(Self.waitFor(output, "listening tcp"))
        // The UDP port the server bound, from its log line.
        let line = try #require(output().split(separator: "\n").first { $0.contains("listening udp 127.0.0.1:") })
        let port = try #require(Int(line.split(separator: " ").first { $0.hasPrefix("127.0.0.1:") }!.split(separator: ":")[1]))
        // An invalid request over the wire is logged with its reason; a valid one is counted.
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        var to = sockaddr_in()
        to.sin_family = sa_family_t(AF_INET)
        to.sin_port = UInt16(port).bigEndian
        to.sin_addr.s_addr = inet_addr("127.0.0.1")
        func send(_ text: String) {
            _ = text.utf8CString.withUnsafeBytes { raw in
                withUnsafePointer(to: &to) { p in
                    p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, raw.baseAddress, raw.count - 1, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
            }
        }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        func receive() -> String {
            var buffer = [UInt8](repeating: 0, count: 4_096)
            let n = recv(fd, &buffer, buffer.count, 0)
            return n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : ""
        }
        // Not parseable as SIP/2.0: logged, and answered 505 from its Via line as written.
        send("OPTIONS sip:a@127.0.0.1 SIP/7.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK1\r\n\r\n")
        let unsupported = receive()
        #expect(unsupported.hasPrefix("SIP/2.0 505 Version Not Supported\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK1\r\n"), "\(unsupported)")
        // Parseable but invalid (RFC 4475 §3.1.2.17, CSeq method differs): answered 400, statelessly.
        send("OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK3\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: bad\r\nCSeq: 8 INVITE\r\nContent-Length: 0\r\n\r\n")
        let answer = receive()
        #expect(answer.hasPrefix("SIP/2.0 400 Bad Request\r\n"), "\(answer)")
        #expect(answer.contains("Warning: 399 sipedge \"CSeq method differs from the request method\"") && answer.contains("Call-ID: bad"))
        // An unknown Request-URI scheme (RFC 4475 §3.3.2): 416.
        send("OPTIONS nobodyKnowsThisScheme:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK4\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: scheme\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        #expect(receive().hasPrefix("SIP/2.0 416 Unsupported URI Scheme\r\n"))
        // A valid request is counted, and answered by the B2BUA (OPTIONS out of dialog: 200).
        send("OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK2\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: ok\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        #expect(receive().hasPrefix("SIP/2.0 200 OK\r\n"))
        #expect(Self.waitFor(output, "unsupported SIP version"))
        #expect(output().contains("answered 400") && output().contains("answered 416") && output().contains("answered 505 from the headers as written"))
        p.terminate()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        #expect(Self.waitFor(output, "stopped: 4 messages received, 3 invalid, 0 handed over between workers, 0 calls started, 0 still up"), "\(output())")
    }

    @Test func run_refuses_an_sctp_listener_clearly_on_a_kernel_without_sctp() throws {
        let probe = socket(AF_INET, Int32(SOCK_SEQPACKET.rawValue), Int32(IPPROTO_SCTP))
        if probe >= 0 { close(probe); return }   // this kernel has SCTP: nothing to refuse
        let (p, output) = try Self.start("""
            [[listener]]
            proto = "sctp"
            address = "127.0.0.1"
            port = 0
            tag = "trunks"
            """)
        p.waitUntilExit()
        #expect(p.terminationStatus == 2)
        #expect(Self.waitFor(output, "listener sctp:127.0.0.1:0 tag=trunks: this kernel has no SCTP"), "\(output())")
    }

    @Test func mi_run_where_there_is_no_config_uses_the_default_mi_address() throws {
        let dir = try Scratch.directory("mi-elsewhere")
        defer { Scratch.remove(dir) }
        let (status, out, err) = try Self.run(["mi", "which", "--timeout", "1"], in: dir)
        #expect(!err.contains("cannot read"), "\(err)")
        // Nothing listens there (no answer), or a SIPEdge on this machine's default MI does.
        #expect(err.contains("no answer from 127.0.0.1:8888") || (status == 0 && out.contains("ds_list")), "\(status) \(out) \(err)")
        // A config named outright that is not there is an error, as before.
        let named = try Self.run(["mi", "which", "--config", "missing.toml"], in: dir)
        #expect(named.status != 0 && named.err.contains("missing.toml"), "\(named)")
    }

    @Test func version_and_check_config() throws {
        #expect(try Self.run(["--version"]).out.hasPrefix("0.1.0"))
    }
}
