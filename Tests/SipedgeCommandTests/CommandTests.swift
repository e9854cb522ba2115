import Foundation
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

    static func run(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = binary
        p.arguments = args
        p.currentDirectoryURL = packageRoot
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
        let bad = FileManager.default.temporaryDirectory.appendingPathComponent("sipedge-bad-\(getpid()).toml")
        try "workers = 2\n\n[[listener]]\nproto = \"udp\"\naddress = \"127.0.0.1\"\nprot = 5060\n".write(to: bad, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: bad) }
        let r = try Self.run(["check-config", bad.path])
        #expect(r.status == 2 && r.err.contains("line 6: listener[1].prot: unknown key"), "\(r.err)")
    }

    @Test func run_starts_on_the_shipped_config() throws {
        let r = try Self.run(["run"])
        #expect(r.status == 0 && r.out.contains("listener udp 127.0.0.1:5060 tag=public"))
        #expect(try Self.run(["--version"]).out.hasPrefix("0.1.0"))
    }
}
