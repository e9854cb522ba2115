import Dialog
import SIPParser
import Testing
import Transport

/// Destinations that record what the B2BUA tells them (which failed), for the rules on how a
/// backend is found dead from its calls.
final class RecordingPicker: DestinationPicker, @unchecked Sendable {
    let hops: [Hop]
    private(set) var failures: [Int] = []
    /// Whether calls are recovered (`recover_calls`), and where to: the first of `hops` not tried.
    var recovering = false

    init(_ hops: [Hop], recovering: Bool = false) {
        self.hops = hops
        self.recovering = recovering
    }

    func recovers(_ index: Int) -> Bool { recovering }
    func replacement(for index: Int, callID: [UInt8], excluding tried: [Int]) -> CallDestination? {
        hops.indices.first { !tried.contains($0) }.map { CallDestination(index: $0, hop: hops[$0]) }
    }

    func pick(_ call: CallRequest, excluding tried: [Int]) throws(CallRefusal) -> CallDestination? {
        hops.indices.first { !tried.contains($0) }.map { CallDestination(index: $0, hop: hops[$0]) }
    }
    func claim(_ index: Int) {}
    func release(_ index: Int) {}
    func failed(_ index: Int) { failures.append(index) }
    func index(of hop: Hop) -> Int? { hops.firstIndex { $0.address == hop.address } }
}

/// A backend is dead when requests in its calls go unanswered or are refused by the transport
/// (issue 16, detection): each such request counts against its destination as a failed probe.
@Suite struct BackendFailureTests {
    typealias Stage = B2BUAStage
    static let backend = Stage.backends[0]

    @Test func rfc3261_17_1_2_2_a_ping_to_the_backend_unanswered_until_timer_f_counts_against_it() throws {
        let picker = RecordingPicker(Stage.backends)
        let s = Stage { $0.picker = picker; $0.pingSeconds = 30 }
        try #require(s.establish() != nil)
        s.wait(30_000)
        let pings = s.unread(to: Self.backend).filter { $0.method == .options }
        #expect(pings.count == 1)
        // The caller answers its ping; the backend never does.
        if let toCaller = s.unread(to: Stage.caller).last(where: { $0.method == .options }) {
            s.fromCaller(Stage.response(to: toCaller, 200, toTag: nil))
        }
        s.wait(31_000)
        #expect(picker.failures.isEmpty, "not before Timer F")
        s.wait(1_100)
        #expect(picker.failures == [0], "Timer F (64*T1) fired for the backend's ping")
    }

    @Test func an_icmp_refusal_of_a_request_relayed_to_the_backend_counts_against_it_at_once() throws {
        let picker = RecordingPicker(Stage.backends)
        let s = Stage { $0.picker = picker }
        let (tag, _) = try #require(s.establish())
        s.fromCaller(s.callerRequest("INFO", cseq: 2, toTag: tag))
        #expect(s.unread(to: Self.backend).map(\.method) == [.info])
        s.b2bua.unreachable(Self.backend)
        s.clock.endIteration()
        #expect(picker.failures == [0])
        #expect(s.unread(to: Stage.caller).compactMap(\.statusCode).last == 408, "the caller's INFO gets 408")
    }

    @Test func a_request_to_the_caller_unanswered_does_not_count_against_the_backend() throws {
        let picker = RecordingPicker(Stage.backends)
        let s = Stage { $0.picker = picker; $0.pingSeconds = 30 }
        try #require(s.establish() != nil)
        s.wait(30_000)
        if let toBackend = s.unread(to: Self.backend).last(where: { $0.method == .options }) {
            s.fromBackend(Stage.response(to: toBackend, 200, toTag: nil))
        }
        s.wait(33_000)
        #expect(picker.failures.isEmpty)
    }

    // MARK: - Recovery (issue 16)

    static let other = Stage.backends[1]

    /// A call up on backend 0 (pings every 30 s) whose ping the transport refuses: its backend is
    /// dead. The stage, the edge's tag toward the caller and the INVITE the lost backend got.
    static func callWhoseBackendDies(_ picker: RecordingPicker) throws -> (Stage, String, SIPMessage) {
        let s = Stage { $0.picker = picker; $0.pingSeconds = 30 }
        let (tag, lost) = try #require(s.establish())
        s.wait(30_000)
        _ = s.unread(to: Stage.caller)
        s.b2bua.unreachable(Self.backend)
        s.clock.endIteration()
        return (s, tag, lost)
    }

    @Test func a_call_whose_backend_dies_gets_a_new_backend_leg_with_the_recovery_headers_and_the_caller_keeps_its_dialog() throws {
        let picker = RecordingPicker(Stage.backends, recovering: true)
        // The backend's ping is refused (ICMP): the call moves to the other destination.
        let (s, tag, lost) = try Self.callWhoseBackendDies(picker)
        let invite = try #require(s.next(to: Self.other))
        #expect(invite.method == .invite && invite.tag(of: .to) == nil)
        #expect(invite.callID?.string != lost.callID?.string && invite.tag(of: .from)?.string != lost.tag(of: .from)?.string, "a new leg")
        #expect(invite.text.contains("X-SIPEdge-Recovery-Call-ID: \(lost.callID!.string)\r\n"))
        #expect(invite.text.contains("X-SIPEdge-Recovery-Age: "))
        #expect(invite.body.string == Stage.sdp, "the caller's last SDP")
        #expect(invite.value(.to) == lost.value(.to) && invite.value(.from)?.hasPrefix(lost.value(.from)!.components(separatedBy: ";tag=")[0]) == true)
        // The new backend answers with the same media: ACKed, and the caller hears nothing.
        s.fromBackend(Stage.response(to: invite, 200, body: Stage.answerSDP), hop: Self.other)
        #expect(s.unread(to: Self.other).map(\.method) == [.ack])
        #expect(s.unread(to: Stage.caller).isEmpty, "no re-INVITE: the media did not move")
        #expect(s.b2bua.statistics.recoveriesDone == 1)
        // The caller's BYE ends the call through the new backend.
        s.fromCaller(s.callerRequest("BYE", cseq: 2, toTag: tag))
        let bye = try #require(s.next(to: Self.other))
        #expect(bye.method == .bye && bye.callID?.string == invite.callID?.string && bye.tag(of: .to)?.string == "b1")
    }

    @Test func rfc4028_10_the_lost_legs_session_timer_does_not_end_the_call_while_a_new_leg_is_built() throws {
        let picker = RecordingPicker(Stage.backends, recovering: true)
        let s = Stage { $0.picker = picker; $0.pingSeconds = 30 }
        // The backend refreshes its leg (90 s): without a refresh by 60 s, the call would end.
        let (tag, lost) = try #require(s.establish(answerExtra: [("Session-Expires", "90;refresher=uas"), ("Require", "timer")]))
        s.wait(30_000)
        _ = s.unread(to: Stage.caller)
        _ = s.unread(to: Self.backend)
        s.b2bua.unreachable(Self.backend)
        s.clock.endIteration()
        let invite = try #require(s.next(to: Self.other))
        s.fromBackend(Stage.response(to: invite, 180), hop: Self.other)
        s.wait(31_000)
        // (The caller's leg is pinged as before; it answers.)
        for ping in s.unread(to: Stage.caller) {
            #expect(ping.method == .options, "no BYE while the new backend rings")
            s.fromCaller(Stage.response(to: ping, 200, toTag: nil))
        }
        #expect(s.b2bua.activeCalls == 1)
        s.fromBackend(Stage.response(to: invite, 200, body: Stage.answerSDP), hop: Self.other)
        #expect(s.unread(to: Self.other).map(\.method) == [.ack])
        // The leg left gets a BYE, in case its backend was not dead after all.
        let bye = try #require(s.unread(to: Self.backend).first { $0.method == .bye })
        #expect(bye.callID?.string == lost.callID?.string && bye.value(.reason) == "SIP;cause=503;text=\"backend lost\"")
        #expect(s.unread(to: Stage.caller).isEmpty && s.b2bua.activeCalls == 1)
        s.fromCaller(s.callerRequest("BYE", cseq: 2, toTag: tag))
        #expect(s.next(to: Self.other)?.method == .bye)
    }

    @Test func rfc3261_9_1_a_recovery_left_half_built_by_a_node_that_died_is_finished_by_the_node_taking_over() throws {
        let picker = RecordingPicker(Stage.backends, recovering: true)
        let (one, tag, lost) = try Self.callWhoseBackendDies(picker)
        let halfBuilt = try #require(one.next(to: Self.other))
        let record = try #require(one.sink.records.last)
        #expect(record.recoveringFrom == lost.callID?.string && record.backend.remoteTag.isEmpty, "the record says a recovery is under way")
        // Node 1 dies before the new backend answers; node 2 takes the call over.
        let two = RehomingSpecTests.nodeTwo { $0.picker = RecordingPicker(Stage.backends, recovering: true); $0.pingSeconds = 30 }
        let outcome = RehomingSpecTests.takeOver(record, on: two)
        let toOther = two.unread(to: Self.other)
        #expect(toOther.map(\.method) == [.cancel, .invite], "node 1's INVITE cancelled, a new one sent")
        #expect(toOther.first?.topViaBranch?.string == halfBuilt.topViaBranch?.string)
        let invite = try #require(toOther.last)
        #expect(invite.callID?.string != halfBuilt.callID?.string)
        #expect(invite.text.contains("X-SIPEdge-Recovery-Call-ID: \(lost.callID!.string)\r\n"), "still naming the call recovered")
        #expect(two.unread(to: Self.backend).isEmpty, "the lost leg is not re-homed")
        // The caller's leg is re-homed as in any take-over.
        let toCaller = try #require(two.next(to: Stage.caller))
        #expect(toCaller.method == .invite && toCaller.callID?.string == "call-1@192.0.2.10")
        two.fromCaller(Stage.response(to: toCaller, 200, toTag: nil, body: Stage.sdp))
        #expect(outcome.value == .rehomed)
        two.fromBackend(Stage.response(to: invite, 200, body: Stage.answerSDP), hop: Self.other)
        #expect(two.unread(to: Self.other).map(\.method) == [.ack])
        #expect(two.b2bua.statistics.recoveriesDone == 1)
        let after = try #require(two.b2bua.dialogRecords().first)
        #expect(after.recoveringFrom.isEmpty && after.recoveries == 1 && after.backend.callID == invite.callID?.string)
        two.fromCaller(two.callerRequest("BYE", cseq: 2, toTag: tag))
        let bye = try #require(two.unread(to: Self.other).first { $0.method == .bye })
        #expect(bye.callID?.string == invite.callID?.string && bye.tag(of: .to)?.string == "b1")
    }

    @Test func a_recovery_stops_when_another_node_carries_the_call_and_resumes_when_this_one_does_again() throws {
        let picker = RecordingPicker(Stage.backends, recovering: true)
        let (s, _, lost) = try Self.callWhoseBackendDies(picker)
        let first = try #require(s.next(to: Self.other))
        s.b2bua.stopActing(for: "")
        #expect(s.b2bua.statistics.recoveriesPending == 0 && s.b2bua.statistics.recoveriesHandedOver == 1)
        s.wait(40_000)
        #expect(s.unread(to: Self.other).isEmpty && s.unread(to: Stage.caller).isEmpty, "a passive copy sends nothing, even when the INVITE goes unanswered")
        s.b2bua.startActing(for: "")
        let toOther = s.unread(to: Self.other)
        #expect(toOther.map(\.method) == [.cancel, .invite], "the INVITE left unanswered cancelled, a new one sent")
        #expect(toOther.first?.topViaBranch?.string == first.topViaBranch?.string)
        #expect(toOther.last?.text.contains("X-SIPEdge-Recovery-Call-ID: \(lost.callID!.string)\r\n") == true)
        #expect(s.b2bua.statistics.recoveriesPending == 1)
    }

    @Test func a_new_backend_answering_with_other_media_gives_the_caller_one_reinvite_in_its_dialog() throws {
        let picker = RecordingPicker(Stage.backends, recovering: true)
        let (s, tag, _) = try Self.callWhoseBackendDies(picker)
        let invite = try #require(s.next(to: Self.other))
        let moved = Stage.answerSDP.replacingOccurrences(of: "m=audio 10000", with: "m=audio 20000")
        s.fromBackend(Stage.response(to: invite, 200, body: moved), hop: Self.other)
        let reinvites = s.unread(to: Stage.caller).filter { $0.method == .invite }
        #expect(reinvites.count == 1 && reinvites.first?.body.string == moved)
        #expect(reinvites.first?.tag(of: .from)?.string == tag && reinvites.first?.callID?.string == "call-1@192.0.2.10", "the caller's same dialog")
    }

    @Test func with_no_destination_left_the_caller_gets_a_bye_saying_the_backend_was_lost() throws {
        let picker = RecordingPicker([Stage.backends[0]], recovering: true)
        let (s, _, _) = try Self.callWhoseBackendDies(picker)
        let bye = try #require(s.unread(to: Stage.caller).first { $0.method == .bye })
        #expect(bye.value(.reason) == "SIP;cause=503;text=\"backend lost\"")
        #expect(s.b2bua.activeCalls == 0 && s.b2bua.statistics.recoveriesFailed == 1)
    }

    @Test func without_recover_calls_a_dead_backend_ends_its_calls_as_before() throws {
        let picker = RecordingPicker(Stage.backends)
        let (s, _, _) = try Self.callWhoseBackendDies(picker)
        #expect(s.unread(to: Stage.caller).contains { $0.method == .bye && $0.value(.reason) == "SIP;cause=408;text=\"Dialog ping failed\"" })
        #expect(s.unread(to: Self.other).isEmpty)
    }

    @Test func recoveries_start_at_the_pace_configured_and_each_gets_its_new_leg() throws {
        let picker = RecordingPicker(Stage.backends, recovering: true)
        let s = Stage { $0.picker = picker; $0.recoveriesPerSecond = 200 }
        for n in 1...5 { try #require(s.establish(callID: "call-\(n)@192.0.2.10") != nil) }
        _ = s.unread(to: Self.backend)
        // The dispatcher found destination 0 dead: its five calls, two every 10 ms.
        s.b2bua.backendLost(0)
        s.clock.endIteration()
        var started = [s.unread(to: Self.other).filter { $0.method == .invite }.count]
        for _ in 0..<3 {
            s.wait(10)
            started.append(s.unread(to: Self.other).filter { $0.method == .invite }.count)
        }
        #expect(started == [2, 2, 1, 0])
        #expect(s.b2bua.statistics.recoveriesStarted == 5 && s.b2bua.statistics.recoveriesDone == 0)
    }

    @Test func recoveries_on_two_workers_share_one_pace() throws {
        let budget = RecoveryBudget(perSecond: 200)
        let workers = (0..<2).map { _ in Stage { $0.picker = RecordingPicker(Stage.backends, recovering: true); $0.recoveryBudget = budget } }
        for s in workers {
            for n in 1...3 { try #require(s.establish(callID: "call-\(n)@192.0.2.10") != nil) }
            _ = s.unread(to: Self.backend)
        }
        for s in workers {
            s.b2bua.backendLost(0)
            s.clock.endIteration()
        }
        func started() -> Int { workers.map { $0.unread(to: Self.other).filter { $0.method == .invite }.count }.reduce(0, +) }
        var counts = [started()]
        for _ in 0..<3 {
            for s in workers { s.wait(10) }
            counts.append(started())
        }
        #expect(counts == [2, 2, 2, 0], "200 a second over both workers, not each")
    }

    @Test func a_planned_move_ends_the_old_backend_leg_once_the_new_one_answers() throws {
        let picker = RecordingPicker(Stage.backends)   // recover_calls off: the operator asks
        let s = Stage { $0.picker = picker }
        let (_, old) = try #require(s.establish())
        _ = s.unread(to: Self.backend)
        #expect(s.b2bua.recover(key: nil, destinations: [0]) == 1)
        s.clock.endIteration()
        let invite = try #require(s.next(to: Self.other))
        #expect(invite.method == .invite && s.unread(to: Self.backend).isEmpty, "the old leg stays until the new one answers")
        s.fromBackend(Stage.response(to: invite, 200, body: Stage.answerSDP), hop: Self.other)
        #expect(s.unread(to: Self.other).map(\.method) == [.ack])
        let bye = try #require(s.next(to: Self.backend))
        #expect(bye.method == .bye && bye.callID?.string == old.callID?.string && bye.value(.reason) == "SIP;cause=200;text=\"Call moved\"")
        #expect(s.b2bua.dialogRecords().first?.recoveries == 1 && s.b2bua.dialogRecords().first?.backend.callID == invite.callID?.string)
    }

    @Test func rfc3261_15_a_caller_that_hangs_up_during_a_planned_move_ends_both_backend_legs() throws {
        let picker = RecordingPicker(Stage.backends)
        let s = Stage { $0.picker = picker }
        let (tag, old) = try #require(s.establish())
        _ = s.unread(to: Self.backend)
        #expect(s.b2bua.recover(key: nil, destinations: [0]) == 1)
        s.clock.endIteration()
        let invite = try #require(s.next(to: Self.other))
        s.fromCaller(s.callerRequest("BYE", cseq: 2, toTag: tag))
        #expect(s.unread(to: Self.other).map(\.method) == [.cancel], "the new leg's INVITE is cancelled")
        let bye = try #require(s.next(to: Self.backend), "the live Asterisk it was leaving keeps no channel")
        #expect(bye.method == .bye && bye.callID?.string == old.callID?.string && bye.callID?.string != invite.callID?.string)
        #expect(s.b2bua.activeCalls == 0)
    }

    @Test func a_planned_move_that_no_destination_takes_leaves_the_call_where_it_was() throws {
        let picker = RecordingPicker([Stage.backends[0]])
        let s = Stage { $0.picker = picker }
        let (tag, old) = try #require(s.establish())
        _ = s.unread(to: Self.backend)
        #expect(s.b2bua.recover(key: old.callID?.string, destinations: []) == 1)
        s.clock.endIteration()
        #expect(s.unread(to: Stage.caller).isEmpty && s.b2bua.activeCalls == 1)
        s.fromCaller(s.callerRequest("BYE", cseq: 2, toTag: tag))
        let bye = try #require(s.next(to: Self.backend))
        #expect(bye.method == .bye && bye.callID?.string == old.callID?.string, "still on its first backend leg")
    }

    @Test func the_record_a_recovery_leaves_is_told_to_the_sinks_as_ended() throws {
        let picker = RecordingPicker(Stage.backends)
        let sink = RecordingSink()
        let s = Stage { $0.picker = picker }
        s.b2bua.add(sink: sink)
        let (_, old) = try #require(s.establish())
        let oldKey = try #require(old.callID?.string)
        #expect(s.b2bua.recover(key: nil, destinations: [0]) == 1)
        s.clock.endIteration()
        let newKey = try #require(s.next(to: Self.other)?.callID?.string)
        #expect(sink.records.contains { $0.key == oldKey && $0.state == .ended }, "no copy stays under the old key")
        #expect(sink.records.last?.key == newKey && sink.records.last?.state == .confirmed)
    }

    @Test func rfc3261_9_1_a_caller_that_hangs_up_while_its_new_backend_rings_has_that_invite_cancelled_and_a_crossing_2xx_ended() throws {
        let picker = RecordingPicker(Stage.backends, recovering: true)
        let (s, tag, _) = try Self.callWhoseBackendDies(picker)
        let invite = try #require(s.next(to: Self.other))
        s.fromCaller(s.callerRequest("BYE", cseq: 2, toTag: tag))
        let toOther = s.unread(to: Self.other)
        #expect(toOther.map(\.method) == [.cancel], "a CANCEL, no BYE outside a dialog")
        #expect(toOther.first?.topViaBranch?.string == invite.topViaBranch?.string && toOther.first?.callID?.string == invite.callID?.string)
        #expect(s.b2bua.activeCalls == 0 && s.b2bua.statistics.recoveriesFailed == 1)
        // The new backend's 2xx crossed the CANCEL: ACKed, then ended with a BYE.
        s.fromBackend(Stage.response(to: invite, 200, body: Stage.answerSDP), hop: Self.other)
        let after = s.unread(to: Self.other)
        #expect(after.map(\.method) == [.ack, .bye])
        #expect(after.allSatisfy { $0.callID?.string == invite.callID?.string && $0.tag(of: .to)?.string == "b1" })
        #expect(s.unread(to: Stage.caller).allSatisfy { $0.method != .invite }, "the caller hears nothing of it")
    }

    @Test func what_the_backend_asks_to_keep_is_given_to_the_next_one_and_to_no_one_else() throws {
        let picker = RecordingPicker(Stage.backends, recovering: true)
        let s = Stage { $0.picker = picker; $0.pingSeconds = 30 }
        s.fromCaller(s.invite())
        let first = try #require(s.next(to: Self.backend))
        s.fromBackend(Stage.response(to: first, 200, extra: [("X-SIPEdge-Var-Queue", "support"), ("X-SIPEdge-Var-Agent", "7")], body: Stage.answerSDP))
        let ok = try #require(s.unread(to: Stage.caller).first { $0.statusCode == 200 })
        #expect(!ok.text.lowercased().contains("x-sipedge-var"), "the caller never sees them")
        let tag = try #require(ok.tag(of: .to)?.string)
        s.fromCaller(s.callerRequest("ACK", cseq: 1, toTag: tag))
        // Later, in a request of its own, the backend changes one and drops the other.
        s.fromBackend(s.backendRequest("INFO", cseq: 2, on: first, extra: "X-SIPEdge-Var-Queue: sales\r\nX-SIPEdge-Var-Agent: "))
        let info = try #require(s.unread(to: Stage.caller).first { $0.method == .info })
        #expect(!info.text.lowercased().contains("x-sipedge-var"))
        #expect(s.b2bua.dialogRecords().first?.variables == [DialogVariable(name: "Queue", value: "sales")])
        _ = s.unread(to: Self.backend)
        s.wait(30_000)
        s.b2bua.unreachable(Self.backend)
        s.clock.endIteration()
        let invite = try #require(s.next(to: Self.other))
        #expect(invite.text.contains("X-SIPEdge-Var-Queue: sales\r\n") && !invite.text.contains("Agent"))
    }
}
