import Foundation
import Glibc
import Testing

/// The edge in front of a farm of three SIPp UAS processes standing in for Asterisk servers: the
/// dispatcher's algorithms, probing, failover and draining, and the MI that drives it
/// (`sipedge mi`), all through the real binary.
@Suite(.serialized) struct FarmTests {
    /// Three UAS, one edge with the dispatcher over them and an MI on a free port.
    final class Farm {
        let dir: URL
        let base: Int
        let edge: CallTests.Edge
        private(set) var miAddress: String
        let sipp: String
        var uas: [Process?] = [nil, nil, nil]
        var starts = [0, 0, 0]
        let scenarios: [String?]
        /// How the edge reaches the UAS: "udp" or "tcp".
        let transport: String

        var edgePort: Int { base }
        func uasPort(_ i: Int) -> Int { base + 10 * (i + 1) }
        func uri(_ i: Int) -> String { "sip:127.0.0.1:\(uasPort(i))" + (transport == "udp" ? "" : ";transport=" + transport) }

        init?(dispatcher: String, weights: [Int] = [1, 1, 1], priorities: [Int] = [0, 0, 0], scenarios: [String?] = [nil, nil, nil],
              transport: String = "udp", extra: String = "", tail: (Int) -> String = { _ in "" }) throws {
            guard let sipp = try? CallTests.requireSIPp() else { return nil }
            self.sipp = sipp
            self.scenarios = scenarios
            self.transport = transport
            dir = try Scratch.directory("farm")
            var chosen: (Int, CallTests.Edge)?
            for _ in 0..<3 where chosen == nil {
                let base = Scratch.ports()
                let destinations = scenarios.indices.map { i in
                    "[[dispatcher.destination]]\nuri = \"sip:127.0.0.1:\(base + 10 * (i + 1))\(transport == "udp" ? "" : ";transport=" + transport)\"\n"
                        + "weight = \(weights[i])\npriority = \(priorities[i])\n"
                }.joined()
                let edge = try CallTests.Edge(config: """
                    workers = 2
                    \(extra)
                    [mi]
                    address = "127.0.0.1"
                    port = 0
                    [dispatcher]
                    \(dispatcher)
                    \(destinations)
                    \(CallTests.listeners(port: base, tcp: transport != "udp"))
                    \(tail(base))
                    """)
                if edge.waitFor("mi listening udp") { chosen = (base, edge) } else { edge.stop() }
            }
            guard let (base, edge) = chosen else {
                Issue.record("sipedge did not start on three sets of ports")
                return nil
            }
            self.base = base
            self.edge = edge
            miAddress = edge.bound("mi listening udp")!
            for i in scenarios.indices { try startUAS(i) }
            usleep(300_000)
        }

        /// (Re)starts UAS `i`: it answers OPTIONS (-aa), so probes find it alive.
        func startUAS(_ i: Int) throws {
            starts[i] += 1
            var args = scenarios[i] == nil ? ["-sn", "uas"] : ["-sf", "uas\(i).xml"]
            if let s = scenarios[i] { try s.write(to: dir.appendingPathComponent("uas\(i).xml"), atomically: true, encoding: .utf8) }
            if transport == "tcp" { args += ["-t", "t1"] }
            args += ["-aa", "-i", "127.0.0.1", "-p", "\(uasPort(i))", "-cp", "\(uasPort(i) + 1)", "-nostdin",
                     "-trace_msg", "-message_file", "uas\(i)-\(starts[i]).msg"]
            uas[i] = try CallTests.process(sipp, args, in: dir)
        }

        func killUAS(_ i: Int) {
            guard let p = uas[i] else { return }
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            uas[i] = nil
        }

        /// INVITEs UAS `i` received over all its runs.
        func invites(_ i: Int) -> Int {
            (1...max(1, starts[i])).reduce(0) { sum, k in
                let log = (try? String(contentsOf: dir.appendingPathComponent("uas\(i)-\(k).msg"), encoding: .utf8)) ?? ""
                return sum + CallTests.CallRun.count("INVITE sip:", in: log)
            }
        }

        /// `calls` SIPp calls through the edge (bounded by `timeout`), in the background if asked.
        @discardableResult
        func call(_ calls: Int, rate: Int = 200, scenario: String? = nil, timeout: Int = 30, wait: Bool = true,
                  arguments: [String] = []) throws -> Process {
            var args = scenario == nil ? ["-sn", "uac"] : ["-sf", "uac.xml"]
            if let scenario { try scenario.write(to: dir.appendingPathComponent("uac.xml"), atomically: true, encoding: .utf8) }
            args += ["127.0.0.1:\(edgePort)", "-i", "127.0.0.1", "-p", "\(base + 40)", "-cp", "\(base + 42)", "-m", "\(calls)",
                     "-r", "\(rate)", "-timeout", "\(timeout)s", "-nostdin"] + arguments
            let p = try CallTests.process(sipp, args, in: dir)
            if wait { finish(p, timeout: timeout) }
            return p
        }

        func finish(_ p: Process, timeout: Int) {
            for _ in 0..<(timeout * 10 + 50) where p.isRunning { usleep(100_000) }
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
        }

        /// SIGKILL of the edge, then the same config again; its MI port (0 in the config) is new.
        func killAndRestartEdge() throws -> Bool {
            try edge.killAndRestart()
            guard edge.waitFor("mi listening udp"),
                  let line = edge.output.split(whereSeparator: \.isNewline).last(where: { $0.contains("mi listening udp") }),
                  let word = line.split(separator: " ").first(where: { $0.hasPrefix("127.0.0.1:") }) else { return false }
            miAddress = String(word)
            return true
        }

        /// `sipedge mi ARGS` against this edge: exit status and what it printed.
        func mi(_ args: [String], extra: [String] = []) throws -> (status: Int32, output: String) {
            let p = Process()
            p.executableURL = CommandTests.binary
            p.arguments = ["mi", "--address", miAddress] + extra + args
            let out = Pipe()
            p.standardOutput = out
            p.standardError = out
            try p.run()
            let data = out.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return (p.terminationStatus, String(decoding: data, as: UTF8.self))
        }

        /// `ds_list`, decoded: URI -> (state, active calls).
        func destinations() throws -> [String: (state: String, calls: Int)] {
            let (status, text) = try mi(["ds_list"])
            guard status == 0, let json = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
                  let sets = json["sets"] as? [[String: Any]], let list = sets.first?["destinations"] as? [[String: Any]] else {
                Issue.record("ds_list: \(text)")
                return [:]
            }
            var out: [String: (String, Int)] = [:]
            for d in list { out[d["uri"] as? String ?? ""] = (d["state"] as? String ?? "", d["active_calls"] as? Int ?? -1) }
            return out
        }

        func waitForState(_ i: Int, _ state: String, seconds: Double) throws -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                if try destinations()[uri(i)]?.state == state { return true }
                usleep(100_000)
            }
            return false
        }

        func stop() {
            for i in scenarios.indices { killUAS(i) }
            edge.stop()
        }

        deinit { Scratch.remove(dir) }
    }

    static func distribution(_ algorithm: String, weights: [Int] = [1, 1, 1]) throws -> [Int]? {
        guard let farm = try Farm(dispatcher: "algorithm = \"\(algorithm)\"", weights: weights) else { return nil }
        defer { farm.stop() }
        let uac = try farm.call(1_000, rate: 250)
        #expect(uac.terminationStatus == 0, "every call of \(algorithm) succeeded\n\(farm.edge.output)")
        return (0..<3).map { farm.invites($0) }
    }

    @Test(.needsSIPp) func round_robin_spreads_1000_calls_evenly() throws {
        guard let counts = try Self.distribution("round-robin") else { return }
        #expect(counts.allSatisfy { (333...334).contains($0) }, "\(counts)")
    }

    @Test(.needsSIPp) func weighted_follows_the_weights_over_1000_calls() throws {
        guard let counts = try Self.distribution("weighted", weights: [1, 2, 3]) else { return }
        #expect(abs(counts[0] - 167) <= 1 && abs(counts[1] - 333) <= 1 && abs(counts[2] - 500) <= 1, "\(counts)")
    }

    @Test(.needsSIPp) func hash_over_call_id_spreads_calls_and_hash_over_from_user_keeps_a_user_on_one_destination() throws {
        guard let byCallID = try Self.distribution("hash-callid") else { return }
        // 1000 distinct Call-IDs: each destination near a third (4 standard deviations: ±60).
        #expect(byCallID.reduce(0, +) == 1_000 && byCallID.allSatisfy { (273...393).contains($0) }, "\(byCallID)")
        guard let byUser = try Self.distribution("hash-from-user") else { return }
        // SIPp calls from one user ("sipp"): every call to the same destination.
        #expect(byUser.sorted() == [0, 0, 1_000], "\(byUser)")
    }

    @Test(.needsSIPp) func least_calls_avoids_the_destination_that_holds_its_calls() throws {
        // Destination 0 takes 3 s to answer; the others answer at once. Least-calls sees its
        // calls pile up and sends it few new ones (round-robin would send it a third).
        guard let farm = try Farm(dispatcher: "algorithm = \"least-calls\"", scenarios: [Scenarios.slowCallee, nil, nil]) else { return }
        defer { farm.stop() }
        let uac = try farm.call(1_000, rate: 250)
        let counts = (0..<3).map { farm.invites($0) }
        #expect(uac.terminationStatus == 0, "\(farm.edge.output)")
        #expect(counts.reduce(0, +) == 1_000 && counts[0] < 50 && counts[1] >= 300 && counts[2] >= 300, "\(counts)")
    }

    @Test(.needsSIPp) func a_503_from_one_destination_fails_the_call_over_to_another() throws {
        guard let farm = try Farm(dispatcher: "algorithm = \"round-robin\"", scenarios: [Scenarios.unavailableCallee, nil, nil]) else { return }
        defer { farm.stop() }
        let uac = try farm.call(30, rate: 50)
        #expect(uac.terminationStatus == 0, "every call succeeded through another destination\n\(farm.edge.output)")
        #expect(farm.invites(0) >= 10, "the 503 destination was tried")
        #expect(farm.invites(1) + farm.invites(2) == 30)
    }

    @Test(.needsSIPp) func probing_marks_a_stopped_destination_inactive_and_a_restarted_one_active() throws {
        guard let farm = try Farm(dispatcher: "algorithm = \"round-robin\"\nprobe_interval_seconds = 1") else { return }
        defer { farm.stop() }
        #expect(try farm.destinations().values.allSatisfy { $0.state == "active" })
        farm.killUAS(1)
        #expect(try farm.waitForState(1, "inactive", seconds: 2.5), "inactive within two probe intervals")
        let before = farm.invites(1)
        let uac = try farm.call(60, rate: 100)
        #expect(uac.terminationStatus == 0 && farm.invites(1) == before, "new calls avoid it\n\(farm.edge.output)")
        try farm.startUAS(1)
        #expect(try farm.waitForState(1, "active", seconds: 2.5), "back within two probe intervals")
        let again = try farm.call(60, rate: 100)
        #expect(again.terminationStatus == 0 && farm.invites(1) == 20, "it takes its share again: \(farm.invites(1))")
        #expect(farm.edge.output.contains("dispatcher: sip:127.0.0.1:\(farm.uasPort(1)) active -> inactive"))
    }

    /// Issue 16, detection: a destination whose calls' requests are refused (ICMP) is inactive at
    /// once, long before its next probe.
    @Test(.needsSIPp) func a_destination_whose_calls_pings_are_refused_is_inactive_before_its_next_probe() throws {
        guard let farm = try Farm(dispatcher: "algorithm = \"round-robin\"\nprobe_interval_seconds = 60", extra: "[calls]\nping_interval_seconds = 1") else { return }
        defer { farm.stop() }
        // Three calls held for 30 s, one on each destination; then destination 1 dies.
        let uac = try farm.call(3, rate: 10, timeout: 40, wait: false, arguments: ["-d", "30000"])
        defer { if uac.isRunning { kill(uac.processIdentifier, SIGKILL) } }
        usleep(1_000_000)
        farm.killUAS(1)
        let killed = Date()
        #expect(try farm.waitForState(1, "inactive", seconds: 3), "the next ping to it met an ICMP refusal")
        #expect(Date().timeIntervalSince(killed) < 3, "well before the next probe (60 s)")
        #expect(try farm.destinations()[farm.uri(0)]?.state == "active" && farm.destinations()[farm.uri(2)]?.state == "active")
        #expect(farm.edge.output.contains("a call found it unreachable or silent"), "\(farm.edge.output)")
    }

    @Test(.needsSIPp) func draining_through_sipedge_mi_stops_new_calls_while_its_calls_end_normally() throws {
        guard let farm = try Farm(dispatcher: "algorithm = \"round-robin\"") else { return }
        defer { farm.stop() }
        // 30 calls of 3 s each: a third of them are up on destination 2 when it starts draining.
        let long = try farm.call(30, rate: 30, scenario: Scenarios.patientCaller.replacingOccurrences(of: "4000", with: "3000"), wait: false)
        usleep(1_500_000)
        #expect(try farm.destinations()[farm.uri(2)]?.calls == 10, "destination 2 carries its ten calls")
        let set = try farm.mi(["ds_set_state", "uri=\(farm.uri(2))", "state=draining"])
        #expect(set.status == 0 && set.output.contains("OK"), "\(set.output)")
        #expect(try farm.destinations()[farm.uri(2)]?.state == "draining")
        let before = farm.invites(2)
        // New calls (from another SIPp, on other ports) go to 0 and 1 only.
        let other = Process()
        other.executableURL = URL(fileURLWithPath: farm.sipp)
        other.arguments = ["-sn", "uac", "127.0.0.1:\(farm.edgePort)", "-i", "127.0.0.1", "-p", "\(farm.base + 50)", "-cp", "\(farm.base + 52)",
                           "-m", "20", "-r", "50", "-timeout", "15s", "-nostdin"]
        other.currentDirectoryURL = farm.dir
        other.standardOutput = FileHandle.nullDevice
        other.standardError = FileHandle.nullDevice
        try other.run()
        farm.finish(other, timeout: 15)
        #expect(other.terminationStatus == 0 && farm.invites(2) == before, "no new call reached the draining destination")
        farm.finish(long, timeout: 30)
        #expect(long.terminationStatus == 0, "the draining destination's calls ended normally\n\(farm.edge.output)")
        #expect(try farm.destinations()[farm.uri(2)]?.calls == 0)
        #expect(try farm.mi(["ds_set_state", "uri=\(farm.uri(2))", "state=active"]).status == 0)
        #expect(try farm.destinations()[farm.uri(2)]?.state == "active")
    }

    @Test(.needsSIPp) func every_mi_command_answers_through_sipedge_mi() throws {
        guard let farm = try Farm(dispatcher: "algorithm = \"round-robin\"") else { return }
        defer { farm.stop() }
        let version = try farm.mi(["version"])
        #expect(version.status == 0 && version.output.contains("SIPEdge 0.1.0"), "\(version.output)")
        let which = try farm.mi(["which"])
        #expect(which.status == 0 && ["ds_list", "ds_set_state", "ds_reload", "dlg_list", "dlg_end_dlg", "get_statistics",
                                      "reset_statistics", "which", "version"].allSatisfy { which.output.contains("\"\($0)\"") })
        // Calls that wait for a BYE: dlg_list shows them, dlg_end_dlg ends one on both legs.
        let waiting = try farm.call(2, rate: 10, scenario: Scenarios.waitingCaller, timeout: 20, wait: false)
        usleep(1_000_000)
        let list = try farm.mi(["dlg_list"])
        let json = try JSONSerialization.jsonObject(with: Data(list.output.utf8)) as? [String: Any]
        let dialogs = json?["Dialogs"] as? [[String: Any]] ?? []
        #expect(dialogs.count == 2 && dialogs.allSatisfy { $0["state"] as? String == "confirmed" }, "\(list.output)")
        for d in dialogs {
            let id = d["dialog_id"] as? String ?? ""
            let end = try farm.mi(["dlg_end_dlg", "dialog_id=\(id)"])
            #expect(end.status == 0, "\(end.output)")
        }
        farm.finish(waiting, timeout: 20)
        #expect(waiting.terminationStatus == 0, "both callers got the edge's BYE")
        let after = try JSONSerialization.jsonObject(with: Data(try farm.mi(["dlg_list"]).output.utf8)) as? [String: Any]
        #expect((after?["Dialogs"] as? [Any])?.isEmpty == true, "no dialog left")
        let stats = try farm.mi(["get_statistics"])
        #expect(stats.status == 0 && stats.output.contains("\"dialog:processed_dialogs\" : 2") && stats.output.contains("\"core:rcv_requests_invite\""),
                "\(stats.output)")
        #expect(stats.output.contains("\"dispatcher:active_destinations\" : 3"))
        #expect(try farm.mi(["reset_statistics"]).status == 0)
        #expect(try farm.mi(["get_statistics", "statistics=core:"]).output.contains("\"core:rcv_requests\" : 0"))
        // ds_reload reads the config file again; unknown commands and bad parameters are errors.
        #expect(try farm.mi(["ds_reload"]).status == 0)
        #expect(try farm.mi(["ds_set_state", "uri=sip:192.0.2.1:5060", "state=draining"]).status == 1)
        #expect(try farm.mi(["no_such_command"]).status == 1)
    }
    @Test(.needsSIPp) func a_reload_applies_dispatcher_and_acl_changes_without_dropping_calls() throws {
        guard let farm = try Farm(dispatcher: "algorithm = \"round-robin\"") else { return }
        defer { farm.stop() }
        // Six calls of 3 s: two on each destination.
        let long = try farm.call(6, rate: 20, scenario: Scenarios.patientCaller.replacingOccurrences(of: "4000", with: "3000"), wait: false)
        usleep(1_000_000)
        #expect(try farm.destinations()[farm.uri(2)]?.calls == 2)
        // The file now lists two destinations and allows one call per source.
        try farm.edge.rewrite(farm.edge.config
            .replacingOccurrences(of: "[[dispatcher.destination]]\nuri = \"\(farm.uri(2))\"\nweight = 1\npriority = 0\n", with: "")
            + "\n[security]\nmax_calls_per_source = 1\n")
        #expect(try farm.mi(["ds_reload"]).status == 0)
        #expect(try farm.mi(["address_reload"]).status == 0)
        let after = try farm.destinations()
        #expect(after.count == 2 && after[farm.uri(2)] == nil, "\(after)")
        // A new call from the same address (another SIPp, other ports) is over the new limit: 503.
        let other = Process()
        other.executableURL = URL(fileURLWithPath: farm.sipp)
        other.arguments = ["-sn", "uac", "127.0.0.1:\(farm.edgePort)", "-i", "127.0.0.1", "-p", "\(farm.base + 50)", "-cp", "\(farm.base + 52)",
                           "-m", "1", "-timeout", "5s", "-nostdin", "-trace_msg", "-message_file", "other.msg"]
        other.currentDirectoryURL = farm.dir
        other.standardOutput = FileHandle.nullDevice
        other.standardError = FileHandle.nullDevice
        try other.run()
        farm.finish(other, timeout: 5)
        let otherLog = (try? String(contentsOf: farm.dir.appendingPathComponent("other.msg"), encoding: .utf8)) ?? ""
        #expect(otherLog.contains("SIP/2.0 503") && otherLog.contains("too many calls from this address"), "\(otherLog)")
        // The six calls, the two on the removed destination among them, end normally.
        farm.finish(long, timeout: 20)
        #expect(long.terminationStatus == 0, "no call was dropped by the reloads\n\(farm.edge.output)")
        #expect(farm.edge.output.contains("dispatcher reloaded") && farm.edge.output.contains("[security] reloaded"))
    }
    @Test(.needsSIPp) func routes_send_calls_to_their_set_and_trusted_callers_to_their_request_uri() throws {
        // Set 1 holds all three; set 2 only destination 2; calls to +44... go to set 2.
        guard let farm = try Farm(dispatcher: "algorithm = \"round-robin\"", tail: { base in """
            [[dispatcher.set]]
            id = 2
            destinations = ["127.0.0.1:\(base + 30)"]
            [[route]]
            prefix = "+44"
            set = 2
            """ }) else { return }
        defer { farm.stop() }
        #expect(try farm.call(10, rate: 50, arguments: ["-s", "+442071234567"]).terminationStatus == 0)
        #expect((0..<3).map { farm.invites($0) } == [0, 0, 10], "every +44 call went to set 2")
        #expect(try farm.call(9, rate: 50, arguments: ["-s", "100"]).terminationStatus == 0)
        #expect((0..<3).map { farm.invites($0) } == [3, 3, 13], "the others went round set 1")
        let sets = try farm.mi(["ds_list"]).output
        #expect(sets.contains("\"id\" : 2") && sets.contains("\"id\" : 1"))
    }

    @Test(.needsSIPp) func a_trusted_caller_reaches_its_request_uri_and_a_user_the_edge_does_not_know_gets_404() throws {
        guard let farm = try Farm(dispatcher: "algorithm = \"round-robin\"",
                                  tail: { _ in "[security]\ntrusted = [\"127.0.0.1/32\"]" }) else { return }
        defer { farm.stop() }
        // An INVITE for a user at the edge itself: no registrar entry for it yet, so 404.
        let unknown = try farm.call(1, rate: 10, timeout: 5)
        #expect(unknown.terminationStatus != 0 && (0..<3).allSatisfy { farm.invites($0) == 0 }, "refused, nowhere sent")
        // An INVITE whose Request-URI names destination 1 goes there, not round the set.
        let direct = Scenarios.patientCaller.replacingOccurrences(of: "pause milliseconds=\"4000\"", with: "pause milliseconds=\"10\"")
            .replacingOccurrences(of: "INVITE sip:service@[remote_ip]:[remote_port]", with: "INVITE sip:service@127.0.0.1:\(farm.uasPort(1))")
        #expect(try farm.call(5, rate: 10, scenario: direct).terminationStatus == 0, "\(farm.edge.output)")
        #expect((0..<3).map { farm.invites($0) } == [0, 5, 0])
    }
}

extension Scenarios {
    /// Callee that rings for 3 s before answering, then waits for the BYE.
    static let slowCallee = scenario("slow callee", [
        #"<recv request="INVITE"/>"#,
        calleeAnswers("180 Ringing", tag: true),
        #"<pause milliseconds="3000"/>"#,
        calleeAnswers("200 OK", tag: true, sdp: true, retransmit: true),
        #"<recv request="ACK"/>"#, #"<recv request="BYE"/>"#,
        calleeAnswers("200 OK", tag: false),
    ])

    /// Callee that is out of service: 503 to every INVITE.
    static let unavailableCallee = scenario("unavailable callee", [
        #"<recv request="INVITE"/>"#,
        calleeAnswers("503 Service Unavailable", tag: true),
        #"<recv request="ACK"/>"#,
    ])
}
