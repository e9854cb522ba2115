import Foundation
import Glibc
import Testing

/// Recovery off a dead backend over the wire (issue 16): SIPp callers → the edge → SIPp UAS
/// "Asterisks" (FarmTests.Farm), the first preferred; it is killed with calls up on it.
@Suite(.serialized) struct RecoveryTests {
    typealias Farm = FarmTests.Farm
    typealias S = Scenarios

    /// The caller's INVITE, the 200 (its To-tag kept as `answertag`) and the ACK.
    static let callerSetUp = [S.callerSends("INVITE", cseq: 1, withTag: false, sdp: true),
                              #"<recv response="100" optional="true"/>"#, #"<recv response="180" optional="true"/>"#,
                              #"<recv response="200"><action><ereg regexp=";tag=([^;> ]+)" search_in="hdr" header="To:" assign_to="x,answertag"/></action></recv>"#,
                              S.callerSends("ACK", cseq: 1, withTag: true, retransmit: false)]

    /// A caller whose call is recovered: set up, then one re-INVITE in its dialog (same Call-ID:
    /// SIPp matches it to the call) within `wait` ms, answered; then its BYE, with the tags of the
    /// answer it got at first, ends the call with a 200 (the edge still knows the dialog by them).
    static func recoveredCaller(wait: Int, byeAfter: Int = 500) -> String {
        let bye = S.callerSends("BYE", cseq: 2, withTag: false)
            .replacingOccurrences(of: "[remote_port]>\n", with: "[remote_port]>;tag=[$answertag]\n")
        return S.scenario("a caller whose backend dies", callerSetUp + [
            "<recv request=\"INVITE\" timeout=\"\(wait)\"/>", S.calleeAnswers("200 OK", tag: false, sdp: true), #"<recv request="ACK"/>"#,
            "<pause milliseconds=\"\(byeAfter)\"/>", bye, #"<recv response="200"/>"#, #"<Reference variables="x"/>"#,
        ])
    }

    /// A caller whose backend dies with none left: the edge's BYE, with the Reason, within `wait` ms.
    static func abandonedCaller(wait: Int) -> String {
        S.scenario("a caller left with no backend", callerSetUp + [
            "<recv request=\"BYE\" timeout=\"\(wait)\"><action><ereg regexp=\"cause=503;text=.backend lost.\" search_in=\"hdr\" header=\"Reason:\" check_it=\"true\" assign_to=\"reason\"/></action></recv>",
            S.calleeAnswers("200 OK", tag: false), #"<Reference variables="x,answertag,reason"/>"#,
        ])
    }

    /// An Asterisk that takes recovered calls: the INVITE must name the lost call and its age;
    /// answered with media of its own (port `mediaPort`), then the caller's BYE.
    static func recoveringFarm(mediaPort: Int, variable: Bool = false) -> String {
        let check = #"<ereg regexp="[^ ]+" search_in="hdr" header="X-SIPEdge-Recovery-Call-ID:" check_it="true" assign_to="lost"/>"#
            + #"<ereg regexp="[0-9]+" search_in="hdr" header="X-SIPEdge-Recovery-Age:" check_it="true" assign_to="age"/>"#
            + (variable ? #"<ereg regexp="sales" search_in="hdr" header="X-SIPEdge-Var-Queue:" check_it="true" assign_to="queue"/>"# : "")
        return S.scenario("an Asterisk taking recovered calls", [
            "<recv request=\"INVITE\"><action>\(check)</action></recv>",
            S.calleeAnswers("200 OK", tag: true, sdp: true).replacingOccurrences(of: "[media_port]", with: "\(mediaPort)"),
            #"<recv request="ACK"/>"#, #"<recv request="BYE" timeout="60000"/>"#, S.calleeAnswers("200 OK", tag: false),
            variable ? #"<Reference variables="lost,age,queue"/>"# : #"<Reference variables="lost,age"/>"#,
        ])
    }

    /// The preferred Asterisk: answers with a variable for the edge to keep (`X-SIPEdge-Var-Queue:
    /// sales`), then takes the BYE if it lives that long.
    static let variableKeepingFarm = S.scenario("an Asterisk that keeps a variable on its calls", [
        #"<recv request="INVITE"/>"#,
        S.calleeAnswers("200 OK", tag: true, sdp: true)
            .replacingOccurrences(of: "Contact: <sip:[local_ip]:[local_port]>", with: "Contact: <sip:[local_ip]:[local_port]>\nX-SIPEdge-Var-Queue: sales"),
        #"<recv request="ACK"/>"#, #"<recv request="BYE" timeout="60000"/>"#, S.calleeAnswers("200 OK", tag: false),
    ])

    /// Values of header `name` in the messages UAS `i` logged.
    static func values(_ name: String, of farm: Farm, _ i: Int) -> [String] {
        (1...max(1, farm.starts[i])).flatMap { k -> [String] in
            let log = (try? String(contentsOf: farm.dir.appendingPathComponent("uas\(i)-\(k).msg"), encoding: .utf8)) ?? ""
            return log.split(whereSeparator: \.isNewline).filter { $0.hasPrefix(name + ":") }
                .map { $0.dropFirst(name.count + 1).trimmingCharacters(in: .whitespaces) }
        }
    }

    /// What SIPp logged as errors (`-trace_err`) in the farm's directory.
    static func sippErrors(_ farm: Farm) -> String {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: farm.dir.path)) ?? []
        return files.filter { $0.hasSuffix("errors.log") }
            .compactMap { try? String(contentsOf: farm.dir.appendingPathComponent($0), encoding: .utf8) }.joined().suffix(2_000).description
    }

    /// `get_statistics statistics=recovery:`, decoded.
    static func recoveryStatistics(_ farm: Farm) throws -> [String: Int] {
        let (_, text) = try farm.mi(["get_statistics", "statistics=recovery:"])
        return (try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Int]) ?? [:]
    }

    /// `dlg_list`'s total.
    static func dialogs(_ farm: Farm) throws -> Int {
        let (_, text) = try farm.mi(["dlg_list", "limit=1"])
        return ((try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any])?["total"] as? Int ?? -1
    }

    /// The farm for these tests: UAS 0 preferred, the others (1, or 1 and 2) taking recovered
    /// calls; probes every 60 s (a dead backend is found by its calls' pings, sent every second).
    /// (`first`: UAS 0 is preferred by the `first` algorithm, not by priority.)
    static func farm(asterisks: Int = 3, first: Bool = false, transport: String = "udp", recovering: Bool = true, pingSeconds: Int = 1) throws -> Farm? {
        try Farm(dispatcher: "algorithm = \"\(first ? "first" : "round-robin")\"\nprobe_interval_seconds = 60\nrecover_calls = \(recovering)",
                 priorities: [0] + Array(repeating: first ? 0 : 1, count: asterisks - 1),
                 scenarios: [variableKeepingFarm] + (1..<asterisks).map { recoveringFarm(mediaPort: 40_000 + 1_000 * $0, variable: true) },
                 transport: transport,
                 extra: "[calls]\nping_interval_seconds = \(pingSeconds)")
    }

    /// The issue's set-up: two Asterisks, the first preferred (by priority over UDP, by the
    /// `first` algorithm over TCP). 100 calls up on UAS 0, which is killed: each is recovered
    /// onto UAS 1 with the headers naming it, the caller gets one re-INVITE in its dialog, and
    /// its BYE ends the call there.
    static func recovers(over transport: String) throws {
        guard let farm = try farm(asterisks: 2, first: transport == "tcp", transport: transport) else { return }
        defer { farm.stop() }
        let uac = try farm.call(100, rate: 100, scenario: recoveredCaller(wait: 20_000), timeout: 40, wait: false, arguments: ["-aa", "-trace_err"])
        defer { if uac.isRunning { kill(uac.processIdentifier, SIGKILL) } }
        #expect(ClusterTests.eventually(within: 10) { (try? dialogs(farm)) == 100 }, "100 calls up")
        farm.killUAS(0)
        farm.finish(uac, timeout: 40)
        #expect(uac.terminationStatus == 0, "every caller got one re-INVITE in its dialog and its BYE was answered\n\(sippErrors(farm))\n\(farm.edge.output.suffix(3_000))")
        let lost = Set(values("Call-ID", of: farm, 0))
        let named = values("X-SIPEdge-Recovery-Call-ID", of: farm, 1)
        #expect(lost.count == 100 && named.count == 100 && Set(named) == lost, "each lost leg named once: \(named.count) of \(lost.count)")
        // (SIPp's own header checks pass a header that is missing: the logs are read instead.)
        let ages = values("X-SIPEdge-Recovery-Age", of: farm, 1)
        #expect(ages.count == 100 && ages.allSatisfy { Int($0).map { (0...60).contains($0) } == true }, "\(ages.prefix(5))")
        let kept = values("X-SIPEdge-Var-Queue", of: farm, 1)
        #expect(kept.count == 100 && kept.allSatisfy { $0 == "sales" }, "the variable the first Asterisk set reaches the next: \(kept.count)")
        #expect(farm.invites(1) == 100, "\(farm.invites(1))")
        #expect(try recoveryStatistics(farm) == ["recovery:recovered_calls": 100, "recovery:failed_calls": 0, "recovery:pending_calls": 0])
        #expect(try dialogs(farm) == 0)
        #expect(farm.edge.output.contains("recovered, 0 failed, 0 pending (done)"), "progress in the log")
    }

    @Test(.needsSIPp) func calls_on_a_killed_asterisk_are_recovered_onto_another_and_end_there() throws {
        try Self.recovers(over: "udp")
    }

    @Test(.needsSIPp) func calls_on_a_killed_asterisk_over_tcp_are_recovered_onto_another_and_end_there() throws {
        try Self.recovers(over: "tcp")
    }

    /// Detection with the kernel's help: an Asterisk killed has its TCP connections closed by its
    /// kernel; the edge probes it at once (refused), long before a ping (60 s) or probe (60 s).
    @Test(.needsSIPp) func over_tcp_a_killed_asterisk_is_found_dead_by_its_closed_connection_not_at_its_next_probe() throws {
        guard let farm = try Self.farm(transport: "tcp", pingSeconds: 60) else { return }
        defer { farm.stop() }
        let uac = try farm.call(10, rate: 50, scenario: Self.recoveredCaller(wait: 10_000), timeout: 20, wait: false, arguments: ["-aa", "-trace_err"])
        defer { if uac.isRunning { kill(uac.processIdentifier, SIGKILL) } }
        #expect(ClusterTests.eventually(within: 5) { (try? Self.dialogs(farm)) == 10 }, "10 calls up")
        farm.killUAS(0)
        let killed = Date()
        #expect(try farm.waitForState(0, "inactive", seconds: 5), "\(farm.edge.output.suffix(1_500))")
        #expect(Date().timeIntervalSince(killed) < 5, "long before its next probe or ping (60 s)")
        #expect(farm.edge.output.contains("its connection closed and a probe was not answered"))
        farm.finish(uac, timeout: 20)
        #expect(uac.terminationStatus == 0, "each call recovered and ended\n\(Self.sippErrors(farm))")
    }

    @Test(.needsSIPp) func with_no_asterisk_left_each_caller_gets_a_bye_saying_the_backend_was_lost() throws {
        guard let farm = try Self.farm() else { return }
        defer { farm.stop() }
        let uac = try farm.call(20, rate: 50, scenario: Self.abandonedCaller(wait: 20_000), timeout: 30, wait: false,
                                arguments: ["-aa", "-trace_err", "-trace_msg", "-message_file", "abandoned-uac.msg"])
        defer { if uac.isRunning { kill(uac.processIdentifier, SIGKILL) } }
        #expect(ClusterTests.eventually(within: 10) { (try? Self.dialogs(farm)) == 20 }, "20 calls up: \((try? Self.dialogs(farm)) ?? -1)\n\(farm.edge.output.suffix(2_000))")
        // The others die first, unnoticed (probes are a minute apart): each recovery finds out.
        farm.killUAS(1)
        farm.killUAS(2)
        farm.killUAS(0)
        farm.finish(uac, timeout: 30)
        #expect(uac.terminationStatus == 0, "every caller got the BYE with the Reason\n\(Self.sippErrors(farm))\n\(farm.edge.output.suffix(3_000))")
        #expect(try Self.dialogs(farm) == 0, "nothing stays in dlg_list")
        let log = (try? String(contentsOf: farm.dir.appendingPathComponent("abandoned-uac.msg"), encoding: .utf8)) ?? ""
        #expect(CallTests.CallRun.count("Reason: SIP;cause=503;text=\"backend lost\"", in: log) == 20, "each BYE says why")
        #expect(try Self.recoveryStatistics(farm) == ["recovery:recovered_calls": 0, "recovery:failed_calls": 20, "recovery:pending_calls": 0])
    }

    /// `dlg_list`'s dialogs (at most 40).
    static func dialogList(_ farm: Farm) throws -> [[String: Any]] {
        let (_, text) = try farm.mi(["dlg_list", "limit=40"])
        return ((try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any])?["Dialogs"] as? [[String: Any]] ?? []
    }

    /// Planned maintenance: `dlg_recover` moves one call by its id, then every call left on the
    /// destination; the Asterisk they leave gets a BYE for each once the new one answered.
    @Test(.needsSIPp) func dlg_recover_moves_a_call_or_a_destinations_calls_off_a_live_asterisk() throws {
        guard let farm = try Self.farm(recovering: false) else { return }
        defer { farm.stop() }
        let uac = try farm.call(20, rate: 50, scenario: Self.recoveredCaller(wait: 20_000, byeAfter: 4_000), timeout: 40, wait: false,
                                arguments: ["-aa", "-trace_err"])
        defer { if uac.isRunning { kill(uac.processIdentifier, SIGKILL) } }
        #expect(ClusterTests.eventually(within: 10) { (try? Self.dialogs(farm)) == 20 }, "20 calls up")
        let first = try #require(try Self.dialogList(farm).first)
        let id = try #require(first["dialog_id"] as? String)
        #expect(first["destination"] as? String == farm.uri(0) && first["recoveries"] as? Int == 0)
        let one = try farm.mi(["dlg_recover", "callid=\(id)"])
        #expect(one.status == 0 && one.output.contains("\"recovering\" : 1"), "\(one.output)")
        var moved: [String: Any]?
        #expect(ClusterTests.eventually(within: 3) {
            moved = (try? Self.dialogList(farm))?.first { $0["recoveries"] as? Int == 1 }
            return moved != nil
        }, "dlg_list counts the move")
        #expect(moved?["dialog_id"] as? String != id && [farm.uri(1), farm.uri(2)].contains(moved?["destination"] as? String ?? ""),
                "a new backend leg on another destination: \(moved ?? [:])")
        let rest = try farm.mi(["dlg_recover", "destination=\(farm.uri(0))"])
        #expect(rest.status == 0 && rest.output.contains("\"recovering\" : 19"), "\(rest.output)")
        farm.finish(uac, timeout: 40)
        #expect(uac.terminationStatus == 0, "every caller got one re-INVITE and ended through its new Asterisk\n\(Self.sippErrors(farm))")
        let left = (1...farm.starts[0]).map { (try? String(contentsOf: farm.dir.appendingPathComponent("uas0-\($0).msg"), encoding: .utf8)) ?? "" }.joined()
        #expect(CallTests.CallRun.count("Reason: SIP;cause=200;text=\"Call moved\"", in: left) == 20, "the Asterisk left got a BYE for each")
        #expect(try Self.recoveryStatistics(farm)["recovery:recovered_calls"] == 20)
        #expect(try farm.mi(["dlg_recover", "destination=sip:127.0.0.1:1"]).status != 0, "an unknown destination is an error")
    }

    /// An Asterisk slow to take recovered calls: rings, answers 4 s later.
    static let slowRecoveringFarm = S.scenario("an Asterisk slow to take recovered calls", [
        #"<recv request="INVITE"/>"#, S.calleeAnswers("180 Ringing", tag: true),
        #"<pause milliseconds="4000"/>"#,
        S.calleeAnswers("200 OK", tag: true, sdp: true).replacingOccurrences(of: "[media_port]", with: "41000"),
        #"<recv request="ACK"/>"#, #"<recv request="BYE" timeout="60000"/>"#, S.calleeAnswers("200 OK", tag: false),
    ])

    /// The edge dies while its new backend legs ring; restarted on its database, it cancels those
    /// INVITEs and sends new ones naming the same lost calls, and the calls go on.
    @Test(.needsSIPp) func a_recovery_cut_short_by_the_edges_death_is_finished_after_its_restart() throws {
        let db = Scratch.file("recovery-dialogs", "db").path
        defer { for suffix in ["", "-wal", "-shm"] { unlink(db + suffix) } }
        guard let farm = try Farm(dispatcher: "algorithm = \"first\"\nprobe_interval_seconds = 60\nrecover_calls = true", priorities: [0, 0],
                                  scenarios: [nil, Self.slowRecoveringFarm],
                                  extra: "[calls]\nping_interval_seconds = 1\n[database]\npath = \"\(db)\"\n") else { return }
        defer { farm.stop() }
        let uac = try farm.call(5, rate: 20, scenario: Self.recoveredCaller(wait: 30_000), timeout: 50, wait: false, arguments: ["-aa", "-trace_err"])
        defer { if uac.isRunning { kill(uac.processIdentifier, SIGKILL) } }
        #expect(ClusterTests.eventually(within: 10) { (try? Self.dialogs(farm)) == 5 }, "5 calls up")
        farm.killUAS(0)
        #expect(ClusterTests.eventually(within: 5) { (try? Self.recoveryStatistics(farm))?["recovery:pending_calls"] == 5 },
                "5 recoveries under way: \((try? Self.recoveryStatistics(farm)) ?? [:])")
        usleep(500_000)   // (the database writes every 100 ms)
        #expect(try farm.killAndRestartEdge(), "\(farm.edge.output.suffix(1_500))")
        #expect(ClusterTests.eventually(within: 10) { (try? Self.recoveryStatistics(farm))?["recovery:recovered_calls"] == 5 },
                "the restarted edge finished them: \((try? Self.recoveryStatistics(farm)) ?? [:])\n\(farm.edge.output.suffix(2_000))")
        farm.finish(uac, timeout: 50)
        #expect(uac.terminationStatus == 0, "every caller got one re-INVITE in its dialog and its BYE was answered\n\(Self.sippErrors(farm))")
        let lost = Set(Self.values("Call-ID", of: farm, 0))
        let named = Self.values("X-SIPEdge-Recovery-Call-ID", of: farm, 1)
        #expect(lost.count == 5 && named.count == 10 && Set(named) == lost, "each lost call named by the INVITE cancelled and by the new one: \(named.count)")
        let log = (1...farm.starts[1]).map { (try? String(contentsOf: farm.dir.appendingPathComponent("uas1-\($0).msg"), encoding: .utf8)) ?? "" }.joined()
        // (At least once each: this SIPp, pausing, answers none, so they are sent again.)
        #expect(CallTests.CallRun.count("CANCEL sip:", in: log) >= 5, "the INVITEs of the edge that died are cancelled")
        #expect(try Self.dialogs(farm) == 0)
    }
}
