import Foundation
import Glibc
import Testing

/// Media anchored on the real rtpengine (Debian's rtpengine-daemon, userspace forwarding on
/// loopback, started and stopped by each test): SIPp callers → the edge → SIPp UAS (FarmTests.Farm).
@Suite(.serialized) struct MediaTests {
    typealias Farm = FarmTests.Farm
    typealias S = Scenarios

    static var rtpengine: String? {
        ["/usr/bin/rtpengine", "/usr/sbin/rtpengine"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// One rtpengine: its ng control port and its media ports, in the test's own block.
    final class RTPEngine {
        let process: Process
        let ngPort: Int
        let log: URL

        init?(ngPort: Int, mediaPorts: ClosedRange<Int>, in dir: URL) throws {
            guard let path = MediaTests.rtpengine else {
                if CallTests.underCI { Issue.record("rtpengine is not installed (make test installs rtpengine-daemon)") }
                return nil
            }
            self.ngPort = ngPort
            log = dir.appendingPathComponent("rtpengine-\(ngPort).log")
            _ = FileManager.default.createFile(atPath: log.path, contents: nil)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: path)
            p.arguments = ["--config-file=none", "--interface=127.0.0.1", "--listen-ng=127.0.0.1:\(ngPort)", "--foreground", "--log-stderr",
                           "--table=-1", "--port-min=\(mediaPorts.lowerBound)", "--port-max=\(mediaPorts.upperBound)",
                           "--pidfile=\(dir.appendingPathComponent("rtpengine-\(ngPort).pid").path)"]
            let out = try FileHandle(forWritingTo: log)
            p.standardOutput = out
            p.standardError = out
            p.standardInput = FileHandle.nullDevice
            try p.run()
            process = p
            guard ClusterTests.eventually(within: 5, { self.command("d7:command4:pinge")?.contains("4:pong") == true }) else {
                Issue.record("rtpengine did not answer a ping: \(self.output)")
                stop()
                return nil
            }
        }

        var output: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

        /// An ng command (bencoded dictionary, as text) and rtpengine's reply, or nil in 2 s.
        func command(_ bencode: String) -> String? {
            let peer = try? RawSIPPeer(ip: "127.0.0.1", port: 0)
            guard let peer else { return nil }
            peer.send("q\(UInt32.random(in: 0...UInt32.max)) \(bencode)", to: ngPort)
            peer.drain(for: 300)
            return peer.inbox.first
        }

        /// `query` of a call: rtpengine's view, as bencode text.
        func query(callID: String) -> String? { command("d7:call-id\(callID.utf8.count):\(callID)7:command5:querye") }

        /// From a query: for each endpoint port that rtpengine talks to, its own local port there.
        static func localPorts(_ query: String) -> [Int: Int] {
            var out: [Int: Int] = [:]
            // Stream by stream (each starts with its local port), its endpoint within it.
            for stream in query.components(separatedBy: "10:local porti").dropFirst() {
                guard let local = stream.prefixMatch(of: #/(\d+)e/#).flatMap({ Int($0.1) }),
                      let endpoint = stream.firstMatch(of: #/8:endpointd6:family4:IPv47:address9:127\.0\.0\.14:porti(\d+)e/#)
                      .flatMap({ Int($0.1) }) else { continue }
                out[endpoint] = local
            }
            return out
        }

        func stop() {
            if process.isRunning { kill(process.processIdentifier, SIGTERM) }
            process.waitUntilExit()
        }
    }

    /// A caller with media at `port` (its SDP says so), holding its call `hold` ms.
    static func caller(mediaPort port: Int, hold: Int) -> String {
        S.scenario("a caller whose media is anchored", [
            S.callerSends("INVITE", cseq: 1, withTag: false, sdp: true).replacingOccurrences(of: "[media_port]", with: "\(port)"),
            #"<recv response="100" optional="true"/>"#, #"<recv response="180" optional="true"/>"#, #"<recv response="200"/>"#,
            S.callerSends("ACK", cseq: 1, withTag: true, retransmit: false),
            "<pause milliseconds=\"\(hold)\"/>", S.callerSends("BYE", cseq: 2, withTag: true), #"<recv response="200"/>"#,
        ])
    }

    /// A caller whose INVITE has no SDP (late offer): its answer, media at `port`, goes in its ACK.
    static func lateOfferCaller(mediaPort port: Int, hold: Int) -> String {
        S.scenario("a caller making a late offer", [
            S.callerSends("INVITE", cseq: 1, withTag: false, sdp: false),
            #"<recv response="100" optional="true"/>"#, #"<recv response="180" optional="true"/>"#, #"<recv response="200"/>"#,
            S.callerSends("ACK", cseq: 1, withTag: true, sdp: true, retransmit: false).replacingOccurrences(of: "[media_port]", with: "\(port)"),
            "<pause milliseconds=\"\(hold)\"/>", S.callerSends("BYE", cseq: 2, withTag: true), #"<recv response="200"/>"#,
        ])
    }

    /// An Asterisk with media at `port`: answers, then the BYE.
    static func callee(mediaPort port: Int) -> String {
        S.scenario("an Asterisk whose media is anchored", [
            #"<recv request="INVITE"/>"#,
            S.calleeAnswers("200 OK", tag: true, sdp: true).replacingOccurrences(of: "[media_port]", with: "\(port)"),
            #"<recv request="ACK"/>"#, #"<recv request="BYE" timeout="60000"/>"#, S.calleeAnswers("200 OK", tag: false),
        ])
    }

    /// A UDP socket for RTP on 127.0.0.1:`port`.
    final class RTPSocket {
        let peer: RawSIPPeer
        init(port: Int) throws { peer = try RawSIPPeer(ip: "127.0.0.1", port: port) }

        /// An RTP packet (version 2, PCMU, 160 bytes of payload) to `port`.
        func send(sequence: UInt16, to port: Int) {
            var packet: [UInt8] = [0x80, 0x00, UInt8(sequence >> 8), UInt8(sequence & 0xFF), 0, 0, UInt8(sequence >> 8), UInt8(sequence & 0xFF) &* 160,
                                   0x12, 0x34, 0x56, 0x78]
            packet += [UInt8](repeating: 0xFF, count: 160)
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET, "127.0.0.1", &a.sin_addr)
            _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(peer.fd, packet, packet.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            } }
        }

        /// Datagrams received within `ms`.
        func received(within ms: Int) -> Int {
            peer.clear()
            peer.drain(for: ms)
            return peer.inbox.count
        }
    }

    /// The Farm with `[media]` on `engines` (ng ports relative to the farm's base), UAS 0 preferred.
    static func farm(engines: @escaping (Int) -> [String], scenarios: [String?], extraDispatcher: String = "", ping: Bool = false,
                     database: String? = nil) throws -> Farm? {
        try Farm(dispatcher: "algorithm = \"round-robin\"\nprobe_interval_seconds = 60\n\(extraDispatcher)", priorities: [0, 1, 1], scenarios: scenarios,
                 extra: (ping ? "[calls]\nping_interval_seconds = 1\n" : "") + (database.map { "[database]\npath = \"\($0)\"\n" } ?? ""),
                 tail: { base in "[media]\nrtpengine = [\(engines(base).map { "\"\($0)\"" }.joined(separator: ", "))]" })
    }

    /// The client Call-ID of the one dialog up.
    static func callerCallID(_ farm: Farm) throws -> String? {
        let dialogs = try RecoveryTests.dialogList(farm)
        return (dialogs.first?["client"] as? [String: Any])?["call_id"] as? String
    }

    /// One call through the edge and the real rtpengine, the caller's scenario made for its media
    /// port: rtpengine learns both sides, RTP crosses it both ways, each side is told rtpengine's
    /// ports and never the other's, and the session goes with the BYE. (`name`: of the logs.)
    static func callThroughRTPEngine(_ name: String, caller scenario: (Int) -> String) throws {
        guard let farm = try Self.farm(engines: { ["127.0.0.1:\($0 + 60)"] }, scenarios: [nil, nil, nil]) else { return }
        defer { farm.stop() }
        let (callerMedia, calleeMedia) = (farm.base + 50, farm.base + 52)
        farm.killUAS(0)
        try Self.callee(mediaPort: calleeMedia).write(to: farm.dir.appendingPathComponent("uas0.xml"), atomically: true, encoding: .utf8)
        let uas = try CallTests.process(farm.sipp, ["-sf", "uas0.xml", "-aa", "-i", "127.0.0.1", "-p", "\(farm.uasPort(0))", "-nostdin",
                                                    "-m", "1", "-trace_msg", "-message_file", "\(name)-uas.msg"], in: farm.dir)
        defer { if uas.isRunning { kill(uas.processIdentifier, SIGKILL) } }
        guard let engine = try RTPEngine(ngPort: farm.base + 60, mediaPorts: (farm.base + 100)...(farm.base + 199), in: farm.dir) else { return }
        defer { engine.stop() }
        let caller = try RTPSocket(port: callerMedia), callee = try RTPSocket(port: calleeMedia)
        let uac = try farm.call(1, rate: 1, scenario: scenario(callerMedia), timeout: 20, wait: false,
                                arguments: ["-trace_msg", "-message_file", "\(name)-uac.msg"])
        defer { if uac.isRunning { kill(uac.processIdentifier, SIGKILL) } }
        #expect(ClusterTests.eventually(within: 5) { (try? RecoveryTests.dialogs(farm)) == 1 }, "the call is up\n\(farm.edge.output)")
        let callID = try #require(try Self.callerCallID(farm))
        var query = ""
        #expect(ClusterTests.eventually(within: 3) {
            query = engine.query(callID: callID) ?? ""
            return RTPEngine.localPorts(query)[callerMedia] != nil && RTPEngine.localPorts(query)[calleeMedia] != nil
        }, "rtpengine knows the call by the caller's Call-ID, with both sides' media ports: \(query.prefix(3_000))")
        let ports = RTPEngine.localPorts(query)
        let towardCaller = try #require(ports[callerMedia]), towardCallee = try #require(ports[calleeMedia])
        // RTP both ways, through rtpengine's ports.
        for n in 0..<5 { caller.send(sequence: UInt16(n), to: towardCaller) }
        #expect(callee.received(within: 500) >= 3, "the caller's RTP reaches the Asterisk through rtpengine")
        for n in 0..<5 { callee.send(sequence: UInt16(100 + n), to: towardCallee) }
        #expect(caller.received(within: 500) >= 3, "the Asterisk's RTP reaches the caller through rtpengine")
        farm.finish(uac, timeout: 20)
        #expect(uac.terminationStatus == 0, "\(farm.edge.output.suffix(2_000))")
        farm.finish(uas, timeout: 5)
        // What each side was told: rtpengine's ports, never the other's own.
        let uasLog = (try? String(contentsOf: farm.dir.appendingPathComponent("\(name)-uas.msg"), encoding: .utf8)) ?? ""
        let uacLog = (try? String(contentsOf: farm.dir.appendingPathComponent("\(name)-uac.msg"), encoding: .utf8)) ?? ""
        #expect(uasLog.contains("m=audio \(towardCallee) ") && !uasLog.contains("m=audio \(callerMedia) "), "the Asterisk's SDP is rtpengine's")
        #expect(uacLog.contains("m=audio \(towardCaller) ") && !uacLog.contains("m=audio \(calleeMedia) "), "the caller's SDP is rtpengine's")
        #expect(ClusterTests.eventually(within: 3) { engine.query(callID: callID)?.contains("6:result5:error") == true },
                "the session is deleted with the call: \(engine.query(callID: callID) ?? "")")
    }

    @Test(.needsSIPp) func sdp_goes_through_rtpengine_rtp_flows_through_it_and_the_session_is_deleted_on_bye() throws {
        try Self.callThroughRTPEngine("media") { Self.caller(mediaPort: $0, hold: 4_000) }
    }

    /// The caller's INVITE has no SDP: the Asterisk's offer in its 200 and the caller's answer in
    /// its ACK go through rtpengine.
    @Test(.needsSIPp) func a_late_offer_goes_through_rtpengine_from_the_asterisks_200_to_the_callers_ack_and_rtp_flows_through_it() throws {
        try Self.callThroughRTPEngine("late") { Self.lateOfferCaller(mediaPort: $0, hold: 4_000) }
    }

    @Test(.needsSIPp) func with_media_anchored_a_recovered_call_sends_the_caller_no_reinvite() throws {
        let farmScenarios = [nil, RecoveryTests.recoveringFarm(mediaPort: 41_000), RecoveryTests.recoveringFarm(mediaPort: 42_000)]
        guard let farm = try Self.farm(engines: { ["127.0.0.1:\($0 + 60)"] }, scenarios: farmScenarios, extraDispatcher: "recover_calls = true",
                                       ping: true) else { return }
        defer { farm.stop() }
        guard let engine = try RTPEngine(ngPort: farm.base + 60, mediaPorts: (farm.base + 100)...(farm.base + 199), in: farm.dir) else { return }
        defer { engine.stop() }
        // (Any re-INVITE would be unexpected: SIPp would fail that call.)
        let uac = try farm.call(10, rate: 20, scenario: Self.caller(mediaPort: farm.base + 50, hold: 5_000), timeout: 30, wait: false,
                                arguments: ["-aa", "-trace_err"])
        defer { if uac.isRunning { kill(uac.processIdentifier, SIGKILL) } }
        #expect(ClusterTests.eventually(within: 5) { (try? RecoveryTests.dialogs(farm)) == 10 }, "10 calls up")
        let callID = try #require(try Self.callerCallID(farm))
        farm.killUAS(0)
        #expect(ClusterTests.eventually(within: 4) { (try? RecoveryTests.recoveryStatistics(farm))?["recovery:recovered_calls"] == 10 },
                "every call recovered: \((try? RecoveryTests.recoveryStatistics(farm)) ?? [:])")
        // rtpengine now sends the call's backend media to the new Asterisk.
        let ports = RTPEngine.localPorts(engine.query(callID: callID) ?? "")
        #expect(ports[41_000] != nil || ports[42_000] != nil, "\(ports)")
        farm.finish(uac, timeout: 30)
        #expect(uac.terminationStatus == 0, "no caller got a re-INVITE, each ended its call\n\(RecoveryTests.sippErrors(farm))\n\(farm.edge.output.suffix(2_000))")
        #expect(farm.invites(1) + farm.invites(2) == 10)
    }

    @Test(.needsSIPp) func an_rtpengine_that_does_not_answer_is_passed_over_for_the_next() throws {
        // The first, weighted heavily, listens nowhere (the kernel refuses); the second is there.
        guard let farm = try Self.farm(engines: { ["127.0.0.1:\($0 + 61)=5", "udp:127.0.0.1:\($0 + 60)"] }, scenarios: [nil, nil, nil]) else { return }
        defer { farm.stop() }
        guard let engine = try RTPEngine(ngPort: farm.base + 60, mediaPorts: (farm.base + 100)...(farm.base + 199), in: farm.dir) else { return }
        defer { engine.stop() }
        let uac = try farm.call(5, rate: 10, scenario: Self.caller(mediaPort: farm.base + 50, hold: 2_000), timeout: 20, wait: false,
                                arguments: ["-trace_msg", "-message_file", "failover-uac.msg"])
        defer { if uac.isRunning { kill(uac.processIdentifier, SIGKILL) } }
        farm.finish(uac, timeout: 20)
        #expect(uac.terminationStatus == 0)
        let log = (try? String(contentsOf: farm.dir.appendingPathComponent("failover-uac.msg"), encoding: .utf8)) ?? ""
        let ports = log.matches(of: #/m=audio (\d+) /#).compactMap { Int($0.1) }.filter { $0 != farm.base + 50 }
        #expect(ports.count >= 5 && ports.allSatisfy { (farm.base + 100...farm.base + 199).contains($0) }, "every answer's media is the live rtpengine's: \(ports)")
        #expect(farm.edge.output.contains("does not answer: skipped for 10 s"), "\(farm.edge.output.suffix(1_500))")
        #expect(CallTests.CallRun.count("Received command 'offer'", in: engine.output) == 5)
    }

    /// A call's media session outlives the process that made it: after a restart (as after a
    /// take-over by another node) the record says the call is anchored, and the edge finds the
    /// instance holding it with `query`. The calls' sessions are made on instance A while B (which
    /// their Call-IDs would go to, by weight) is not there yet; after the restart both are.
    @Test(.needsSIPp) func after_a_restart_the_edges_calls_stay_anchored_are_recovered_through_rtpengine_and_their_sessions_deleted() throws {
        let db = Scratch.file("media-dialogs", "db").path
        defer { for suffix in ["", "-wal", "-shm"] { unlink(db + suffix) } }
        guard let farm = try Self.farm(engines: { ["127.0.0.1:\($0 + 60)=1", "127.0.0.1:\($0 + 61)=1000"] },
                                       scenarios: [nil, RecoveryTests.recoveringFarm(mediaPort: 41_000)],
                                       extraDispatcher: "recover_calls = true", ping: true, database: db) else { return }
        defer { farm.stop() }
        guard let engine = try RTPEngine(ngPort: farm.base + 60, mediaPorts: (farm.base + 100)...(farm.base + 199), in: farm.dir) else { return }
        defer { engine.stop() }
        // (Any re-INVITE would be unexpected: SIPp would fail that call.)
        let uac = try farm.call(5, rate: 20, scenario: Self.caller(mediaPort: farm.base + 50, hold: 8_000), timeout: 30, wait: false,
                                arguments: ["-aa", "-trace_err"])
        defer { if uac.isRunning { kill(uac.processIdentifier, SIGKILL) } }
        #expect(ClusterTests.eventually(within: 5) { (try? RecoveryTests.dialogs(farm)) == 5 }, "5 calls up")
        let callIDs = try RecoveryTests.dialogList(farm).compactMap { ($0["client"] as? [String: Any])?["call_id"] as? String }
        #expect(callIDs.count == 5)
        guard let other = try RTPEngine(ngPort: farm.base + 61, mediaPorts: (farm.base + 200)...(farm.base + 299), in: farm.dir) else { return }
        defer { other.stop() }
        usleep(300_000)   // (the database writes behind)
        #expect(try farm.killAndRestartEdge(), "\(farm.edge.output.suffix(1_500))")
        #expect(ClusterTests.eventually(within: 5) { (try? RecoveryTests.dialogs(farm)) == 5 }, "the calls restored")
        farm.killUAS(0)
        #expect(ClusterTests.eventually(within: 5) { (try? RecoveryTests.recoveryStatistics(farm))?["recovery:recovered_calls"] == 5 },
                "every call recovered: \((try? RecoveryTests.recoveryStatistics(farm)) ?? [:])\n\(farm.edge.output.suffix(2_000))")
        for callID in callIDs {
            let ports = RTPEngine.localPorts(engine.query(callID: callID) ?? "")
            #expect(ports[41_000] != nil, "rtpengine sends the call's backend media to the new Asterisk: \(ports)")
        }
        farm.finish(uac, timeout: 30)
        #expect(uac.terminationStatus == 0, "no caller got a re-INVITE, each ended its call\n\(RecoveryTests.sippErrors(farm))\n\(farm.edge.output.suffix(2_000))")
        #expect(ClusterTests.eventually(within: 3) { callIDs.allSatisfy { engine.query(callID: $0)?.contains("6:result5:error") == true } },
                "each session deleted with its call")
        #expect(callIDs.allSatisfy { other.query(callID: $0)?.contains("6:result5:error") == true }, "none was ever on B")
        let refusals = farm.edge.output.split(whereSeparator: \.isNewline).filter { $0.contains("media: rtpengine") && $0.contains("refused") }
        #expect(refusals.isEmpty, "rtpengine took every request: \(refusals.prefix(3))")
    }
}
