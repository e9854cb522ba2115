import Foundation
import Glibc
import Testing

/// Re-homing over the wire: three nodes (ClusterTests.Cluster), a SIPp UAC calling node 1 and a
/// SIPp UAS as the farm, both running scenarios that expect the re-homing re-INVITE and check
/// its Contact; the UAC then sends its BYE to the Contact it learnt.
@Suite(.serialized) struct RehomingTests {
    typealias Cluster = ClusterTests.Cluster

    typealias S = Scenarios

    /// The Contact of a re-homing request: a survivor's address (127.0.0.12 or .13), never node 1's;
    /// what the call sends from then on goes there (SIPp would answer the address it first spoke
    /// to, where RFC 3261 §18.2.2 says the Via's: the same survivor here).
    static let survivorContact = #"<ereg regexp="&lt;sip:[^@>]*@(127\.0\.0\.1[23]):([0-9]+)" search_in="hdr" header="Contact:" check_it="true" assign_to="contact,host,port"/>"#
        + #"<setdest host="[$host]" port="[$port]" protocol="[transport]"/>"#

    /// The re-homing re-INVITE, from a survivor, within `timeout` ms (`extra`: more actions).
    static func rehomingInvite(timeout: Int, extra: String = "") -> String {
        "<recv request=\"INVITE\" timeout=\"\(timeout)\"><action>\(survivorContact)\(extra)</action></recv>"
    }

    /// A 200 to the request just received, with an SDP answer; a plain 200; a refusal and its ACK.
    static let okWithSDP = S.calleeAnswers("200 OK", tag: false, sdp: true)
    static let ok = S.calleeAnswers("200 OK", tag: false)
    static func refused(_ status: Int) -> String { S.calleeAnswers("\(status) Refused", tag: false) + "<recv request=\"ACK\"/>" }
    /// The edge's tag on the caller's leg, from the re-homing re-INVITE's From.
    static let edgeTag = #"<ereg regexp=";tag=([^;> ]+)" search_in="hdr" header="From:" assign_to="x,edgetag"/>"#

    /// The caller's INVITE, the answer and the ACK.
    static let callerSetUp = [S.callerSends("INVITE", cseq: 1, withTag: false, sdp: true),
                              #"<recv response="100" optional="true"/>"#, #"<recv response="180" optional="true"/>"#, #"<recv response="200"/>"#,
                              S.callerSends("ACK", cseq: 1, withTag: true, retransmit: false)]

    /// The UAC: INVITE, 200, ACK; then (within `wait` ms) a re-INVITE from a survivor, answered;
    /// then, `byeAfter` ms later, a BYE sent to the Contact that re-INVITE gave. `endedBy`: instead
    /// of hanging up, the caller expects the edge's BYE with this Reason cause.
    static func uacScenario(wait: Int, byeAfter: Int = 1_000, endedBy: Int? = nil, byeWithin: Int = 10_000) -> String {
        var steps = callerSetUp + [rehomingInvite(timeout: wait, extra: edgeTag), okWithSDP]
        if let cause = endedBy {
            // (The edge's BYE may come before its ACK.)
            steps += [#"<recv request="ACK" optional="true"/>"#,
                      "<recv request=\"BYE\" timeout=\"\(byeWithin)\"><action><ereg regexp=\"cause=\(cause)\" search_in=\"hdr\" header=\"Reason:\" check_it=\"true\" assign_to=\"reason\"/></action></recv>",
                      ok, #"<Reference variables="contact,x,edgetag,reason"/>"#]
        } else {
            let bye = S.callerSends("BYE", cseq: 3, withTag: false)
                .replacingOccurrences(of: "BYE sip:service@[remote_ip]:[remote_port]", with: "BYE sip:edge@[$host]:[$port];transport=[transport]")
                .replacingOccurrences(of: "[remote_port]>\n", with: "[remote_port]>;tag=[$edgetag]\n")
            steps += [#"<recv request="ACK"/>"#, "<pause milliseconds=\"\(byeAfter)\"/>", bye, #"<recv response="200"/>"#,
                      #"<Reference variables="contact,x"/>"#]
        }
        return S.scenario("a call that is re-homed", steps)
    }

    /// The UAS (the farm): answers the INVITE (after `answerAfter` ms, ringing meanwhile), then
    /// expects the re-homing re-INVITE from a survivor (answered with `reinviteStatus`, 0: never
    /// answered; none expected when nil), then a BYE (unless `byeExpected` is false). `refusedFirst`: the first
    /// re-homing re-INVITE is answered with this, and the next one as `reinviteStatus` says.
    static func uasScenario(answerAfter: Int = 0, reinviteStatus: Int? = 200, wait: Int = 60_000, byeExpected: Bool = true,
                            refusedFirst: Int? = nil) -> String {
        var steps = farmAnswers(after: answerAfter)
        if let status = reinviteStatus {
            if let first = refusedFirst { steps += [rehomingInvite(timeout: wait), refused(first)] }
            // (Never answered: the farm stays, silent, past Timer B.)
            let silent = #"<recv request="CANCEL" timeout="33000" ontimeout="silent"/><label id="silent"/>"#
            steps += [rehomingInvite(timeout: wait), status == 200 ? okWithSDP + #"<recv request="ACK"/>"# : status == 0 ? silent : refused(status),
                      #"<Reference variables="contact"/>"#]
        }
        if byeExpected { steps += ["<recv request=\"BYE\" timeout=\"\(wait)\"/>", ok] }
        return S.scenario("a farm whose calls are re-homed", steps)
    }

    /// The farm's INVITE, answered (after `after` ms of ringing), and the ACK.
    static func farmAnswers(after: Int = 0) -> [String] {
        [#"<recv request="INVITE"/>"#]
            + (after == 0 ? [] : [S.calleeAnswers("180 Ringing", tag: true), "<pause milliseconds=\"\(after)\"/>"])
            + [S.calleeAnswers("200 OK", tag: true, sdp: true), #"<recv request="ACK"/>"#]
    }

    /// A SIPp UAS for calls that may be re-homed any number of times (from a survivor each time)
    /// until their BYE.
    static func uasLoop() -> String {
        S.scenario("a farm whose calls are re-homed, again and again", farmAnswers() + [
            #"<label id="wait"/>"#,
            "<recv request=\"INVITE\" optional=\"true\" next=\"rehome\"><action>\(survivorContact)</action></recv>",
            #"<recv request="BYE"/>"#, ok, #"<nop next="end"/>"#,
            #"<label id="rehome"/>"#, okWithSDP, #"<recv request="ACK" next="wait"/>"#,
            #"<label id="end"/>"#, #"<Reference variables="contact"/>"#,
        ])
    }

    /// A SIPp UAC whose calls accept any number of re-homing re-INVITEs for `hold` ms, then end
    /// (without a BYE: the test ends them by stopping SIPp).
    static func uacLoop(hold: Int) -> String {
        S.scenario("a call re-homed again and again", callerSetUp + [
            #"<label id="wait"/>"#,
            "<recv request=\"INVITE\" timeout=\"\(hold)\" ontimeout=\"end\"><action>\(survivorContact)</action></recv>",
            okWithSDP, #"<recv request="ACK" next="wait"/>"#,
            #"<label id="end"/>"#, #"<Reference variables="contact"/>"#,
        ])
    }

    /// A SIPp UAS (the farm) and UAC (calling node 1) on scenarios of their own; both killed, and
    /// their directory removed, when it goes.
    final class ScenarioLoad {
        let dir: URL
        let uas: Process
        let uac: Process

        /// `target`: where the UAC calls (node 1 by default).
        init(_ c: Cluster, uas uasXML: String, uac uacXML: String, calls: Int, rate: Int, target: String? = nil) throws {
            dir = try Scratch.directory("rehome")
            try uasXML.write(to: dir.appendingPathComponent("uas.xml"), atomically: true, encoding: .utf8)
            try uacXML.write(to: dir.appendingPathComponent("uac.xml"), atomically: true, encoding: .utf8)
            uas = try ClusterTests.sipp(["-sf", "uas.xml", "-aa", "-t", "u1", "-i", "127.0.0.1", "-p", "\(c.uasPort)", "-m", "\(calls)",
                                         "-trace_err", "-error_file", "uas-errors.log"], in: dir)
            usleep(300_000)
            uac = try ClusterTests.sipp(["-sf", "uac.xml", "-aa", "\(target ?? "\(Cluster.ip(1)):\(c.sipPort)")", "-i", "127.0.0.1",
                                         "-p", "\(c.uacPort)", "-m", "\(calls)", "-r", "\(rate)", "-timeout", "120s",
                                         "-trace_err", "-error_file", "uac-errors.log"], in: dir)
        }

        /// What SIPp logged as errors (for a failing test's message).
        var errors: String {
            ["uac", "uas"].map { name in
                let text = (try? String(contentsOf: dir.appendingPathComponent("\(name)-errors.log"), encoding: .utf8)) ?? ""
                return "\(name): " + String(text.prefix(1_500))
            }.joined(separator: "\n")
        }

        deinit {
            for p in [uac, uas] where p.isRunning { kill(p.processIdentifier, SIGKILL) }
            Scratch.remove(dir)
        }
    }

    /// 200 calls up through node 1, node 1 killed: the node that takes its tag re-INVITEs both legs
    /// of every call with its own Contact within 2 s; the callers' BYEs to that Contact end them all.
    @Test(.needsSIPp) func a_killed_nodes_calls_are_reinvited_by_the_survivor_within_2_s_and_end_with_byes_to_it() throws {
        let calls = 200
        let c = try Cluster()
        defer { c.stopAll() }
        try c.start(nodes: [1, 2, 3])
        let load = try ScenarioLoad(c, uas: Self.uasScenario(), uac: Self.uacScenario(wait: 60_000), calls: calls, rate: 100)
        defer { withExtendedLifetime(load) {} }
        #expect(ClusterTests.eventually(within: 6) { c.dialogs(2)?.count == calls && c.dialogs(3)?.count == calls }, "replicated: \(load.errors)")

        c.kill(1)
        let killed = Date()
        var holder = 0
        let rehomed = ClusterTests.eventually(within: 2) {
            holder = c.tags(2)["node1"]?.state == "active" ? 2 : c.tags(3)["node1"]?.state == "active" ? 3 : 0
            return holder != 0 && c.statistic(holder, "cluster:rehomed_dialogs") == calls
        }
        let took = Date().timeIntervalSince(killed)
        #expect(rehomed, "within 2 s of the kill node \(holder) re-homed \(holder == 0 ? 0 : c.statistic(holder, "cluster:rehomed_dialogs") ?? -1) of \(calls) (\(took) s)")
        ClusterTests.finish(load.uac, within: 20)
        ClusterTests.finish(load.uas, within: 5)
        #expect(load.uac.terminationStatus == 0 && load.uas.terminationStatus == 0,
                "every call re-INVITEd on both legs from a survivor and ended by a BYE to it with 200:\n\(load.errors)")
        #expect(holder == 0 || c.statistic(holder, "cluster:rehome_failures") == 0)
        #expect(ClusterTests.eventually(within: 3) { c.dialogs(2)?.isEmpty == true && c.dialogs(3)?.isEmpty == true }, "none left")
        if holder != 0 {
            #expect(c.nodes[holder]!.output.contains("cluster: re-homing: \(calls) done, 0 failed, 0 hung up meanwhile, 0 early ended, 0 left"), "progress logged")
        }
    }

    @Test(.needsSIPp) func a_drained_node_is_stopped_with_no_call_lost() throws {
        let c = try Cluster()
        defer { c.stopAll() }
        try c.start(nodes: [1, 2, 3])
        // The callers hang up 4 s after they learn the new Contact: after node 1 is gone.
        let load = try ScenarioLoad(c, uas: Self.uasScenario(), uac: Self.uacScenario(wait: 30_000, byeAfter: 4_000), calls: 100, rate: 100)
        defer { withExtendedLifetime(load) {} }
        #expect(ClusterTests.eventually(within: 4) { c.dialogs(2)?.count == 100 }, "replicated: \(load.errors)")
        let moved = try #require(Self.runMI(c, node: 2, "dlg_rehome", ["tag=node1", "count=100"]))
        #expect(moved.contains("100"), "sipedge mi dlg_rehome: \(moved)")
        #expect(ClusterTests.eventually(within: 3) { c.statistic(2, "cluster:rehomed_dialogs") == 100 }, "node 2 re-homed the 100")
        #expect(ClusterTests.eventually(within: 2) { (c.dialogs(3) ?? [:]).values.filter { $0.hasSuffix("/node2") }.count == 100 }, "every node lists them under node2")
        c.nodes[1]!.stop()
        #expect(!c.nodes[1]!.process.isRunning, "node 1 stopped cleanly")
        ClusterTests.finish(load.uac, within: 15)
        ClusterTests.finish(load.uas, within: 5)
        #expect(load.uac.terminationStatus == 0 && load.uas.terminationStatus == 0, "all 100 calls ended with 200 through node 2:\n\(load.errors)")
        #expect(c.statistic(2, "cluster:rehome_failures") == 0)
    }

    @Test(.needsSIPp) func calls_still_ringing_when_their_node_dies_are_cancelled_at_the_farm_and_refused_to_the_callers() throws {
        let c = try Cluster()
        defer { c.stopAll() }
        try c.start(nodes: [1, 2, 3])
        // The farm rings and would answer after 20 s; the callers wait for a final answer.
        let load = try ScenarioLoad(c, uas: Self.ringingUAS(), uac: Self.uacRefused(), calls: 20, rate: 100)
        defer { withExtendedLifetime(load) {} }
        usleep(1_000_000)
        c.kill(1)
        ClusterTests.finish(load.uas, within: 6)
        ClusterTests.finish(load.uac, within: 3)
        #expect(load.uas.terminationStatus == 0, "the farm got a CANCEL for each of the 20 calls:\n\(load.errors)")
        #expect(load.uac.terminationStatus == 0, "each caller got 503:\n\(load.errors)")
        let holder = c.tags(2)["node1"]?.state == "active" ? 2 : 3
        #expect(c.statistic(holder, "cluster:early_dialogs_ended") == 20)
        #expect(ClusterTests.eventually(within: 2) { c.dialogs(2)?.isEmpty == true && c.dialogs(3)?.isEmpty == true })
    }

    @Test(.needsSIPp) func a_farm_that_no_longer_knows_a_call_makes_the_survivor_end_it_with_a_bye_to_the_caller() throws {
        let c = try Cluster()
        defer { c.stopAll() }
        try c.start(nodes: [1, 2, 3])
        // The farm answers the re-homing re-INVITE 481: the caller gets a BYE with that cause.
        let load = try ScenarioLoad(c, uas: Self.uasScenario(reinviteStatus: 481, byeExpected: false),
                                    uac: Self.uacScenario(wait: 30_000, endedBy: 481), calls: 10, rate: 100)
        defer { withExtendedLifetime(load) {} }
        #expect(ClusterTests.eventually(within: 3) { c.dialogs(2)?.count == 10 }, "replicated: \(load.errors)")
        c.kill(1)
        ClusterTests.finish(load.uac, within: 10)
        ClusterTests.finish(load.uas, within: 3)
        #expect(load.uac.terminationStatus == 0 && load.uas.terminationStatus == 0, "each caller got the BYE:\n\(load.errors)")
        let holder = c.tags(2)["node1"]?.state == "active" ? 2 : 3
        #expect(c.statistic(holder, "cluster:rehome_failures") == 10)
        #expect(ClusterTests.eventually(within: 2) { c.dialogs(2)?.isEmpty == true && c.dialogs(3)?.isEmpty == true })
    }

    @Test(.needsSIPp) func a_farm_that_never_answers_the_rehoming_makes_the_survivor_end_the_call_at_timer_b() throws {
        let c = try Cluster()
        defer { c.stopAll() }
        try c.start(nodes: [1, 2, 3])
        let load = try ScenarioLoad(c, uas: Self.uasScenario(reinviteStatus: 0, byeExpected: false),
                                    uac: Self.uacScenario(wait: 30_000, endedBy: 408, byeWithin: 45_000), calls: 5, rate: 100)
        defer { withExtendedLifetime(load) {} }
        #expect(ClusterTests.eventually(within: 3) { c.dialogs(2)?.count == 5 }, "replicated: \(load.errors)")
        c.kill(1)
        let killed = Date()
        #expect(ClusterTests.eventually(within: 3) { c.statistic(2, "cluster:taken_over_dialogs") == 5 })
        ClusterTests.finish(load.uac, within: 45)
        let ended = Date().timeIntervalSince(killed)
        // Timer B (64 * T1 = 32 s) after the re-INVITE, which went within about a second of the kill.
        #expect(ended > 32 && ended < 36, "the callers' BYE came \(ended) s after the kill")
        // (The silent farm's own verdict does not matter: SIPp counts its wait as a timeout.)
        #expect(load.uac.terminationStatus == 0, "each caller got a BYE with cause 408:\n\(load.errors)")
        #expect(c.statistic(2, "cluster:rehome_failures") == 5)
    }

    @Test(.needsSIPp) func an_operator_sends_requests_within_a_dialog_by_hand_and_gets_their_answers() throws {
        let c = try Cluster()
        defer { c.stopAll() }
        try c.start(nodes: [1, 2, 3])
        let load = try ScenarioLoad(c, uas: Self.uasLoop(), uac: Self.uacLoop(hold: 20_000), calls: 3, rate: 10)
        defer { withExtendedLifetime(load) {} }
        #expect(ClusterTests.eventually(within: 3) { c.dialogs(2)?.count == 3 }, "replicated: \(load.errors)")
        let callID = try #require((c.object(1, "dlg_list")["Dialogs"] as? [[String: Any]])?.first
            .flatMap { ($0["client"] as? [String: Any])?["call_id"] as? String })
        // The call moves to node 2 (both legs re-INVITEd), which then speaks in it by hand.
        #expect(c.object(2, "dlg_rehome", ["callid": callID])["queued"] as? Int == 1)
        #expect(ClusterTests.eventually(within: 2) { c.statistic(2, "cluster:rehomed_dialogs") == 1 })
        let reinvite = Self.runMI(c, node: 2, "dlg_send_sequential", ["callid=\(callID)", "mode=callee", "body=outbound"])
        #expect(reinvite?.contains("\"status\" : 200") == true || reinvite?.contains("\"status\":200") == true, "\(reinvite ?? "failed")\n\(load.errors)")
        let update = c.object(2, "dlg_send_sequential", ["callid": callID, "method": "UPDATE", "mode": "caller"])
        #expect(update["status"] as? Int == 200, "SIPp answers an UPDATE 200 (-aa): \(update)")
        let options = c.object(2, "dlg_send_sequential", ["callid": callID, "method": "OPTIONS", "mode": "callee",
                                                          "headers": "X-Operator: maintenance"])
        #expect(options["status"] as? Int == 200, "\(options)")
        // Refused with a reason: modes not offered, BYE, a dialog node 2 does not carry.
        #expect(c.mi(2, "dlg_send_sequential", ["callid": callID, "mode": "challenge"]) == nil)
        #expect(c.mi(2, "dlg_send_sequential", ["callid": callID, "method": "BYE"]) == nil)
        #expect(c.mi(2, "dlg_send_sequential", ["callid": "no-such-call"]) == nil)
        #expect(c.mi(2, "dlg_send_sequential", ["callid": callID, "headers": "Bad header"]) == nil)
        #expect(c.mi(2, "dlg_send_sequential", ["callid": callID, "headers": "CSeq: 1 OPTIONS"]) == nil, "the edge writes the dialog's headers")
        #expect(load.uac.isRunning && load.uas.isRunning, "the calls are still up: \(load.errors)")
    }

    @Test(.enabled(if: CallTests.baresip != nil || CallTests.underCI, "needs baresip"))
    func two_baresip_phones_keep_talking_when_the_node_carrying_their_call_dies_and_hang_up_through_the_survivor() throws {
        guard let baresip = CallTests.baresip else {
            if CallTests.underCI { Issue.record("baresip is not installed (make test installs baresip-core)") }
            return
        }
        let c = try Cluster()
        defer { c.stopAll() }
        try c.start(nodes: [1, 2, 3])
        let dir = try Scratch.directory("rehome-baresip")
        defer { Scratch.remove(dir) }
        // Bob is the farm (the dispatcher's destination); Alice calls him through node 1.
        try CallTests.baresipConfig(dir.appendingPathComponent("alice"), user: "alice", port: c.uacPort, rtp: (c.base + 100)...(c.base + 149))
        try CallTests.baresipConfig(dir.appendingPathComponent("bob"), user: "bob", port: c.uasPort, rtp: (c.base + 150)...(c.base + 199))
        let bobLog = dir.appendingPathComponent("bob.log"), aliceLog = dir.appendingPathComponent("alice.log")
        let run = { (args: [String], log: URL) throws -> Process in
            _ = FileManager.default.createFile(atPath: log.path, contents: nil)
            return try CallTests.startBaresip(baresip, args, log: log)
        }
        let bob = try run(["-f", dir.appendingPathComponent("bob").path, "-t", "16"], bobLog)
        defer { if bob.isRunning { kill(bob.processIdentifier, SIGKILL) } }
        usleep(500_000)
        // Alice talks for 9 s and hangs up as she quits.
        let alice = try run(["-f", dir.appendingPathComponent("alice").path, "-e", "/dial sip:bob@\(Cluster.ip(1)):\(c.sipPort)", "-t", "9"], aliceLog)
        defer { if alice.isRunning { kill(alice.processIdentifier, SIGKILL) } }
        func log(_ url: URL) -> String { (try? String(contentsOf: url, encoding: .utf8)) ?? "" }
        #expect(ClusterTests.eventually(within: 4) { c.dialogs(2)?.count == 1 }, "the call is up and replicated:\n\(log(aliceLog))")
        usleep(1_000_000)
        c.kill(1)
        #expect(ClusterTests.eventually(within: 3) { c.statistic(2, "cluster:rehomed_dialogs") == 1 || c.statistic(3, "cluster:rehomed_dialogs") == 1 },
                "both phones took the survivor's re-INVITE (or UPDATE):\nalice:\n\(log(aliceLog))\nbob:\n\(log(bobLog))")
        for _ in 0..<120 where alice.isRunning { usleep(100_000) }
        for _ in 0..<30 where !log(bobLog).contains("terminated") { usleep(100_000) }
        let a = log(aliceLog), b = log(bobLog)
        // Media is end to end: it never touched node 1, and flowed both ways to the end.
        let aRates = CallTests.lastBitrates(a), bRates = CallTests.lastBitrates(b)
        #expect((aRates?.tx ?? 0) > 32_000 && (aRates?.rx ?? 0) > 32_000, "alice sent/received \(String(describing: aRates)) bit/s at the end")
        #expect((bRates?.tx ?? 0) > 32_000 && (bRates?.rx ?? 0) > 32_000, "bob sent/received \(String(describing: bRates)) bit/s at the end")
        #expect(b.contains("terminated") && bob.isRunning, "alice's BYE reached bob through the survivor before his own timeout:\n\(b)")
        #expect(ClusterTests.eventually(within: 2) { c.dialogs(2)?.isEmpty == true && c.dialogs(3)?.isEmpty == true })
    }

    /// The farm's own re-INVITE crosses the survivor's (glare, RFC 3261 §14.2): the farm answers
    /// ours 491 and gets 491 for its own; the survivor tries again after the back-off.
    static func glaringUAS() -> String {
        // The farm's own requests in its dialog with the survivor (whose tag its re-INVITE gave).
        func farmSends(_ method: String, via: String, body: Bool) -> String {
            """
              <send><![CDATA[
            \(method) sip:edge@[$host]:[$port] SIP/2.0
            \(via)
            Max-Forwards: 70
            From: <sip:service@[local_ip]:[local_port]>;tag=[pid]SIPpTag01[call_number]
            To: <sip:sipp@[$host]>;tag=[$edgetag]
            Call-ID: [call_id]
            CSeq: 10 \(method)
            Contact: <sip:sipp@[local_ip]:[local_port]>
            \(body ? "Content-Type: application/sdp\nContent-Length: [len]\n\n\(S.sdp)" : "Content-Length: 0\n")
              ]]></send>
            """
        }
        // Ours is held unanswered (its headers kept) until the farm's own has been refused 491
        // and ACKed; then ours is refused 491 too, and comes again after the back-off.
        let keep = ["Via", "From", "To", "Call-ID", "CSeq"].map { name in
            "<ereg regexp=\".*\" search_in=\"hdr\" header=\"\(name):\" assign_to=\"kept\(name.replacingOccurrences(of: "-", with: ""))\"/>"
        }.joined()
        let refuseOurs = """
              <send><![CDATA[
            SIP/2.0 491 Request Pending
            Via: [$keptVia]
            From: [$keptFrom]
            To: [$keptTo]
            Call-ID: [$keptCallID]
            CSeq: [$keptCSeq]
            Content-Length: 0

              ]]></send>
            """
        return S.scenario("a farm whose re-INVITE crosses the survivor's", farmAnswers() + [
            rehomingInvite(timeout: 30_000, extra: edgeTag + keep),
            farmSends("INVITE", via: "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]", body: true),
            #"<recv response="100" optional="true"/>"#, #"<recv response="491"/>"#, farmSends("ACK", via: "[last_Via:]", body: false),
            refuseOurs, #"<recv request="ACK"/>"#,
            #"<recv request="INVITE" timeout="10000"/>"#, okWithSDP, #"<recv request="ACK"/>"#,
            #"<recv request="BYE" timeout="30000"/>"#, ok, #"<Reference variables="contact,x"/>"#,
        ])
    }

    @Test(.needsSIPp) func a_reinvite_from_the_farm_that_crosses_the_survivors_is_refused_both_ways_and_the_survivor_tries_again() throws {
        let c = try Cluster()
        defer { c.stopAll() }
        try c.start(nodes: [1, 2, 3])
        let load = try ScenarioLoad(c, uas: Self.glaringUAS(), uac: Self.uacScenario(wait: 30_000, byeAfter: 5_000), calls: 5, rate: 100)
        defer { withExtendedLifetime(load) {} }
        #expect(ClusterTests.eventually(within: 3) { c.dialogs(2)?.count == 5 }, "replicated: \(load.errors)")
        c.kill(1)
        #expect(ClusterTests.eventually(within: 7) { c.statistic(2, "cluster:rehomed_dialogs") == 5 }, "\(load.errors)")
        ClusterTests.finish(load.uac, within: 10)
        ClusterTests.finish(load.uas, within: 3)
        #expect(load.uac.terminationStatus == 0 && load.uas.terminationStatus == 0,
                "the farm's re-INVITE got 491, ours was tried again and every call ended with 200:\n\(load.errors)")
    }

    @Test(.needsSIPp) func a_491_from_the_farm_is_tried_again_after_the_back_off_and_the_calls_go_on() throws {
        let c = try Cluster()
        defer { c.stopAll() }
        try c.start(nodes: [1, 2, 3])
        // The farm's own re-INVITE crossed ours (it says 491): we made that leg's Call-ID, so we
        // wait 2.1 to 4 s (RFC 3261 §14.1) and try again; the caller hangs up 5 s after its own.
        let load = try ScenarioLoad(c, uas: Self.uasScenario(refusedFirst: 491), uac: Self.uacScenario(wait: 30_000, byeAfter: 5_000),
                                    calls: 10, rate: 100)
        defer { withExtendedLifetime(load) {} }
        #expect(ClusterTests.eventually(within: 3) { c.dialogs(2)?.count == 10 }, "replicated: \(load.errors)")
        c.kill(1)
        let killed = Date()
        #expect(ClusterTests.eventually(within: 2) { c.statistic(2, "cluster:taken_over_dialogs") == 10 })
        usleep(1_500_000)
        #expect(c.statistic(2, "cluster:rehomed_dialogs") == 0, "nobody re-INVITEs the farm again before 2.1 s")
        #expect(ClusterTests.eventually(within: 5) { c.statistic(2, "cluster:rehomed_dialogs") == 10 }, "\(load.errors)")
        let took = Date().timeIntervalSince(killed)
        #expect(took > 2.1, "after the back-off: \(took) s")
        ClusterTests.finish(load.uac, within: 10)
        ClusterTests.finish(load.uas, within: 3)
        #expect(load.uac.terminationStatus == 0 && load.uas.terminationStatus == 0, "\(load.errors)")
        #expect(c.statistic(2, "cluster:rehome_failures") == 0)
    }

    /// Both legs over TCP, 200 calls: the callers reach node 1 through a SIPEdge of their own (an
    /// operator's access edge) and the farm is behind another one, both over TCP to the cluster (a
    /// SIPp over TCP cannot take requests on a new connection, nor many back to back on one).
    /// Node 1 is killed: node 2 re-homes both legs of every call over new connections it opens to
    /// those SIPEdges' Contacts, from its own address, within 2 s; the callers' BYEs then end
    /// every call through node 2.
    @Test(.needsSIPp) func both_legs_over_tcp_are_rehomed_over_new_connections_from_the_survivors_address() throws {
        let (callersIP, farmIP) = ("127.0.0.15", "127.0.0.14")
        let c = try Cluster(transport: "tcp", destination: { "sip:\(farmIP):\($0 + 30);transport=tcp" })
        defer { c.stopAll() }
        func front(_ ip: String, port: Int, destination: String) throws -> CallTests.Edge {
            let edge = try CallTests.Edge(config: """
                workers = 2
                [dispatcher]
                destinations = ["\(destination)"]
                [[listener]]
                proto = "tcp"
                address = "\(ip)"
                port = \(port)
                tag = "public"
                [[listener]]
                proto = "udp"
                address = "\(ip)"
                port = \(port)
                tag = "public"
                [mi]
                address = "\(ip)"
                port = \(port + 1)
                """)
            #expect(edge.waitFor("mi listening"), "\(edge.output)")
            return edge
        }
        let farmFront = try front(farmIP, port: c.base + 30, destination: "127.0.0.1:\(c.uasPort)")
        defer { farmFront.stop() }
        let callersFront = try front(callersIP, port: c.base + 40, destination: "sip:\(Cluster.ip(1)):\(c.sipPort);transport=tcp")
        defer { callersFront.stop() }
        try c.start(nodes: [1, 2, 3])
        let calls = 200
        // (Both SIPEdges allow UPDATE: node 2 re-homes their legs with one, which they relay to the
        // SIPps, who answer it by themselves, -aa. The callers hang up 6 s after their 200.)
        let uac = S.scenario("a call through an access edge", Self.callerSetUp + [
            #"<pause milliseconds="6000"/>"#, S.callerSends("BYE", cseq: 2, withTag: true), #"<recv response="200"/>"#,
        ])
        let load = try ScenarioLoad(c, uas: Self.uasScenario(reinviteStatus: nil), uac: uac, calls: calls, rate: 200,
                                    target: "\(callersIP):\(c.base + 40)")
        defer { withExtendedLifetime(load) {} }
        #expect(ClusterTests.eventually(within: 4) { c.dialogs(2)?.count == calls }, "replicated: \(load.errors)")
        c.kill(1)
        let killed = Date()
        #expect(ClusterTests.eventually(within: 2) { c.statistic(2, "cluster:rehomed_dialogs") == calls },
                "node 2 re-homed \(c.statistic(2, "cluster:rehomed_dialogs") ?? -1) of \(calls) within 2 s:\n\(load.errors)")
        let took = Date().timeIntervalSince(killed)
        // Each SIPEdge now reaches node 2's side of every call over a connection node 2 opened,
        // from node 2's own address.
        for (name, ip, port, leg) in [("farm's", farmIP, c.base + 31, "client"), ("callers'", callersIP, c.base + 41, "backend")] {
            var hops: [String: Int] = [:]
            var offset = 0
            while let page = MIClient.call(host: ip, port: port, method: "dlg_list", params: ["offset": "\(offset)", "limit": "40"]) as? [String: Any],
                  let list = page["Dialogs"] as? [[String: Any]], !list.isEmpty {
                for d in list {
                    let hop = ((d[leg] as? [String: Any])?["hop"] as? String ?? "").split(separator: ":").prefix(2).joined(separator: ":")
                    hops[hop, default: 0] += 1
                }
                offset += list.count
            }
            #expect(hops == ["tcp:127.0.0.12": calls], "the \(name) SIPEdge: \(hops) (\(took) s after the kill)")
        }
        ClusterTests.finish(load.uac, within: 15)
        ClusterTests.finish(load.uas, within: 5)
        #expect(load.uac.terminationStatus == 0 && load.uas.terminationStatus == 0, "every call ended with 200 through node 2:\n\(load.errors)")
        #expect(ClusterTests.eventually(within: 3) { c.dialogs(2)?.isEmpty == true }, "none left")
    }

    /// Phones behind NAT over TCP (their Contact reaches nobody: only their own connection does)
    /// call through node 1, which dies with their connections. The survivor cannot reach them and
    /// waits; Alice registers again on it, Bob sends a request in his dialog: each is re-homed over
    /// that new connection, and each hangs up through the survivor.
    @Test(.needsSIPp) func phones_behind_nat_over_tcp_are_rehomed_when_they_register_or_speak_again_on_the_survivor() throws {
        typealias Phone = RegistrarTests.TCPPhone
        let c = try Cluster(extra: "[registrar]", transport: "tcp")
        defer { c.stopAll() }
        try c.start(nodes: [1, 2, 3])
        let dir = try Scratch.directory("nat-tcp")
        defer { Scratch.remove(dir) }
        try Self.uasLoop().write(to: dir.appendingPathComponent("uas.xml"), atomically: true, encoding: .utf8)
        let uas = try ClusterTests.sipp(["-sf", "uas.xml", "-aa", "-i", "127.0.0.1", "-p", "\(c.uasPort)", "-m", "2"], in: dir)
        defer { if uas.isRunning { kill(uas.processIdentifier, SIGKILL) } }
        usleep(300_000)
        let sdp = "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\n"
        func request(_ method: String, _ user: String, to target: String, toTag: String?, cseq: Int, callID: String, body: String = "") -> String {
            "\(method) \(target) SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK\(user)\(method)\(cseq)\r\nMax-Forwards: 70\r\n"
                + "From: <sip:\(user)@127.0.0.1>;tag=\(user)1\r\nTo: <sip:service@\(Cluster.ip(1))>\(toTag.map { ";tag=\($0)" } ?? "")\r\n"
                + "Call-ID: \(callID)\r\nCSeq: \(cseq) \(method)\r\nContact: <sip:\(user)@127.0.0.1:9;transport=tcp>\r\n"
                + (body.isEmpty ? "" : "Content-Type: application/sdp\r\n") + "Content-Length: \(body.utf8.count)\r\n\r\n" + body
        }
        /// Messages from `phone` until one satisfies `wanted` (at most 10 reads); that one.
        func next(_ phone: Phone, _ wanted: (String) -> Bool) -> String? {
            for _ in 0..<10 {
                guard let m = phone.receive() else { return nil }
                if wanted(m) { return m }
            }
            return nil
        }
        // Two calls up through node 1, each phone on a connection of its own.
        var edgeTag: [String: String] = [:]
        var firstConnections: [Phone] = []
        for user in ["alice", "bob"] {
            let phone = try #require(Phone(port: c.sipPort, host: Cluster.ip(1)))
            phone.send(request("INVITE", user, to: "sip:service@\(Cluster.ip(1)):\(c.sipPort);transport=tcp", toTag: nil, cseq: 1,
                               callID: "nat-\(user)", body: sdp))
            let ok = try #require(next(phone) { $0.hasPrefix("SIP/2.0 200") }, "\(user)'s call answered")
            let toLine = try #require(ok.split(separator: "\r\n").first { $0.lowercased().hasPrefix("to:") })
            edgeTag[user] = String(toLine[toLine.range(of: "tag=")!.upperBound...].prefix { $0 != ";" && $0 != ">" })
            phone.send(request("ACK", user, to: "sip:edge@\(Cluster.ip(1)):\(c.sipPort);transport=tcp", toTag: edgeTag[user], cseq: 1, callID: "nat-\(user)"))
            firstConnections.append(phone)
        }
        #expect(ClusterTests.eventually(within: 3) { c.dialogs(2)?.count == 2 }, "both calls up and replicated")
        c.kill(1)
        // The survivor re-homes the farm's legs; the phones' legs wait (their Contact is unreachable).
        #expect(ClusterTests.eventually(within: 3) { c.statistic(2, "cluster:taken_over_dialogs") == 2 })
        usleep(500_000)
        #expect(c.statistic(2, "cluster:rehomed_dialogs") == 0 && c.statistic(2, "cluster:rehome_pending") == 2, "waiting for the phones")

        // Alice registers again, now on node 2: her call is re-homed over that connection.
        let alice = try #require(Phone(port: c.sipPort, host: Cluster.ip(2)))
        alice.send("REGISTER sip:\(Cluster.ip(2)):\(c.sipPort) SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKnatreg1\r\n"
            + "From: <sip:alice@127.0.0.1>;tag=r1\r\nTo: <sip:alice@127.0.0.1>\r\nCall-ID: natreg-1\r\nCSeq: 1 REGISTER\r\n"
            + "Contact: <sip:alice@127.0.0.1:9;transport=tcp>\r\nExpires: 300\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        #expect(next(alice) { $0.hasPrefix("SIP/2.0 200") }?.contains("CSeq: 1 REGISTER") == true)
        let reinviteA = try #require(next(alice) { $0.hasPrefix("INVITE ") }, "re-homed over the new connection")
        #expect(reinviteA.contains("Contact: <sip:edge@\(Cluster.ip(2)):\(c.sipPort);transport=tcp>") && reinviteA.contains("Call-ID: nat-alice"))
        alice.send(Phone.answer(reinviteA, "200 OK", body: sdp))
        #expect(next(alice) { $0.hasPrefix("ACK ") } != nil)

        // Bob speaks in his dialog, on node 2: the same, over his new connection.
        let bob = try #require(Phone(port: c.sipPort, host: Cluster.ip(2)))
        bob.send(request("OPTIONS", "bob", to: "sip:edge@\(Cluster.ip(2)):\(c.sipPort);transport=tcp", toTag: edgeTag["bob"], cseq: 2, callID: "nat-bob"))
        let reinviteB = try #require(next(bob) { $0.hasPrefix("INVITE ") }, "re-homed over the new connection")
        #expect(reinviteB.contains("Call-ID: nat-bob"))
        bob.send(Phone.answer(reinviteB, "200 OK", body: sdp))
        #expect(next(bob) { $0.hasPrefix("ACK ") } != nil)
        #expect(ClusterTests.eventually(within: 2) { c.statistic(2, "cluster:rehomed_dialogs") == 2 })

        // Both hang up through node 2; the farm gets both BYEs.
        alice.send(request("BYE", "alice", to: "sip:edge@\(Cluster.ip(2)):\(c.sipPort);transport=tcp", toTag: edgeTag["alice"], cseq: 3, callID: "nat-alice"))
        bob.send(request("BYE", "bob", to: "sip:edge@\(Cluster.ip(2)):\(c.sipPort);transport=tcp", toTag: edgeTag["bob"], cseq: 3, callID: "nat-bob"))
        #expect(next(alice) { $0.hasPrefix("SIP/2.0 200") && $0.contains("BYE") } != nil)
        #expect(next(bob) { $0.hasPrefix("SIP/2.0 200") && $0.contains("BYE") } != nil)
        ClusterTests.finish(uas, within: 5)
        #expect(uas.terminationStatus == 0, "the farm saw both calls re-homed and ended")
        withExtendedLifetime(firstConnections) {}
    }

    /// A farm that rings and waits for a CANCEL (answered 200, the INVITE 487).
    static func ringingUAS() -> String {
        S.scenario("a farm that rings until cancelled", [
            #"<recv request="INVITE"/>"#, S.calleeAnswers("180 Ringing", tag: true),
            #"<recv request="CANCEL" timeout="20000"/>"#, ok,
        ])
    }

    /// Callers whose INVITE must end with a 503.
    static func uacRefused() -> String {
        S.scenario("a call refused when its node dies", [
            S.callerSends("INVITE", cseq: 1, withTag: false, sdp: true),
            #"<recv response="100" optional="true"/>"#, #"<recv response="180" optional="true"/>"#,
            #"<recv response="503" timeout="10000"/>"#,
        ])
    }

    /// `sipedge mi` run as an operator would, against node `node`'s MI; its output (nil if it failed).
    static func runMI(_ c: Cluster, node: Int, _ method: String, _ params: [String]) -> String? {
        let p = Process()
        p.executableURL = CommandTests.binary
        p.arguments = ["mi", "--address", "\(Cluster.ip(node)):\(c.miPort)", method] + params
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        guard (try? p.run()) != nil else { return nil }
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return p.terminationStatus == 0 ? text : nil
    }
}
