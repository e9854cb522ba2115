import Dialog
import SIPParser
import Testing
import Transport

/// Re-homing, driven message by message: a call set up on one B2BUA ("node 1"), its record taken
/// over by another ("node 2", whose listeners have other addresses), on manual clocks.
@Suite struct RehomingSpecTests {
    typealias Stage = B2BUAStage
    static let caller = Stage.caller
    static let backend = Stage.backends[0]

    /// Node 2: the same listener tags at its own addresses.
    static func nodeTwo(_ tweak: (inout B2BUAConfig) -> Void = { _ in }) -> Stage {
        Stage { config in
            config.listeners = [.udp: [LocalAddress(host: "198.51.100.2", port: 5060, tag: "public"),
                                       LocalAddress(host: "10.0.0.2", port: 5060, tag: "farm")]]
            tweak(&config)
        }
    }

    /// A call up on node 1 and node 1's last record of it; `answerExtra` goes on the backend's 200.
    static func callOnNodeOne(answerExtra: [(String, String)] = []) throws -> (record: DialogRecord, toTag: String, backendInvite: SIPMessage) {
        let one = Stage()
        let (tag, invite) = try #require(one.establish(answerExtra: answerExtra))
        return (try #require(one.sink.records.last), tag, invite)
    }

    /// Takes `record` over on `two`, returning the outcome once told.
    final class Outcome: @unchecked Sendable { var value: TakeOverOutcome? }

    static func takeOver(_ record: DialogRecord, on two: Stage) -> Outcome {
        let outcome = Outcome()
        two.b2bua.takeOver(record) { outcome.value = $0 }
        two.clock.endIteration()
        return outcome
    }

    @Test func rfc3261_12_2_a_dialog_taken_over_is_reinvited_on_both_legs_with_our_contact_and_the_sdp_last_sent() throws {
        let (record, toTag, _) = try Self.callOnNodeOne()
        let two = Self.nodeTwo()
        let outcome = Self.takeOver(record, on: two)
        let toCaller = try #require(two.next(to: Self.caller))
        let toBackend = try #require(two.next(to: Self.backend))
        #expect(toCaller.method == .invite && toBackend.method == .invite)
        #expect(toCaller.value(.contact) == "<sip:edge@198.51.100.2:5060>", "node 2's address for the leg's listener tag")
        #expect(toBackend.value(.contact) == "<sip:edge@10.0.0.2:5060>" || toBackend.value(.contact) == "<sip:edge@198.51.100.2:5060>")
        #expect(toCaller.tag(of: .from)?.string == toTag && toCaller.tag(of: .to)?.string == "a1" && toCaller.callID?.string == "call-1@192.0.2.10")
        // §12.2.2: the replicated CSeq continues past a gap (the dead node may have sent a request
        // or two that never reached us; a gap is fine, a CSeq already seen gets 500).
        #expect(try toCaller.cseq().number == record.client.localCSeq + 21, "the replicated CSeq continues, past the gap")
        #expect(try toBackend.cseq().number == record.backend.localCSeq + 21)
        #expect(toCaller.body.string == Stage.answerSDP, "the caller is offered what it has: the backend's SDP")
        #expect(toBackend.body.string == Stage.sdp, "the backend the caller's")
        #expect(toCaller.requestURIBytes?.string == "sip:alice@192.0.2.10:5060", "to the caller's target, by its route set")
        #expect(toCaller.values(.route).map(\.string) == ["<sip:proxy.example.com;lr>"])
        #expect(outcome.value == nil, "not settled before both legs answer")

        two.fromCaller(Stage.response(to: toCaller, 200, toTag: nil, contact: "<sip:alice@192.0.2.10:5062>", body: Stage.sdp))
        #expect(two.unread(to: Self.caller).map(\.method) == [.ack])
        two.fromBackend(Stage.response(to: toBackend, 200, toTag: nil, body: Stage.answerSDP))
        let ack = try #require(two.unread(to: Self.backend).first)
        let ackCSeq = try ack.cseq().number
        #expect(ack.method == .ack && ackCSeq == record.backend.localCSeq + 21)
        #expect(outcome.value == .rehomed)
        #expect(two.b2bua.statistics.dialogsRehomed == 1)
        #expect(two.b2bua.dialogRecords().first?.client.remoteTarget == Array("sip:alice@192.0.2.10:5062".utf8), "§12.2: the 2xx's Contact is the new target")
        #expect(two.b2bua.dialogRecords().first?.reinvite == DialogRecord.PendingReinvite.none)
    }

    @Test func rfc3311_a_leg_that_allows_update_is_rehomed_with_an_update_without_a_body() throws {
        let (record, _, _) = try Self.callOnNodeOne(answerExtra: [("Allow", "INVITE, ACK, BYE, UPDATE")])
        let two = Self.nodeTwo()
        let outcome = Self.takeOver(record, on: two)
        let update = try #require(two.next(to: Self.backend))
        #expect(update.method == .update && update.body.isEmpty && update.value(.contact) != nil)
        two.fromBackend(Stage.response(to: update, 200, toTag: nil))
        #expect(two.unread(to: Self.backend).isEmpty, "no ACK for an UPDATE")
        let invite = try #require(two.next(to: Self.caller))
        two.fromCaller(Stage.response(to: invite, 200, toTag: nil, body: Stage.sdp))
        #expect(outcome.value == .rehomed)
    }

    @Test func rfc3261_14_1_a_491_is_tried_again_after_the_back_off_of_the_call_id_owner() throws {
        let (record, _, _) = try Self.callOnNodeOne()
        let two = Self.nodeTwo()
        let outcome = Self.takeOver(record, on: two)
        let first = try #require(two.next(to: Self.backend))
        two.fromBackend(Stage.response(to: first, 491, toTag: nil))
        #expect(two.unread(to: Self.backend).map(\.method) == [.ack], "the 491 is ACKed by its transaction")
        two.wait(2_090)
        #expect(two.unread(to: Self.backend).isEmpty, "we made the backend leg's Call-ID: at least 2.1 s")
        two.wait(1_920)
        let again = try #require(two.unread(to: Self.backend).first)
        let (a1, f1) = (try again.cseq().number, try first.cseq().number)
        #expect(again.method == .invite && a1 == f1 + 1)
        two.fromBackend(Stage.response(to: again, 200, toTag: nil, body: Stage.answerSDP))
        let toCaller = try #require(two.next(to: Self.caller))
        two.fromCaller(Stage.response(to: toCaller, 200, toTag: nil, body: Stage.sdp))
        #expect(outcome.value == .rehomed)
    }

    @Test func rfc3261_14_2_a_reinvite_that_crosses_a_rehoming_one_gets_491() throws {
        let (record, toTag, _) = try Self.callOnNodeOne()
        let two = Self.nodeTwo()
        _ = Self.takeOver(record, on: two)
        let ours = try #require(two.next(to: Self.caller))
        two.fromCaller(two.callerRequest("INVITE", cseq: 2, toTag: toTag, body: Stage.sdp))
        #expect(two.unread(to: Self.caller).compactMap(\.statusCode) == [100, 491])
        #expect(two.unread(to: Self.backend).allSatisfy { $0.method == .invite && $0.body.string == Stage.sdp }, "nothing relayed")
        // The caller gets 491 for ours too, and waits less (it does not own its Call-ID... we don't either).
        two.fromCaller(Stage.response(to: ours, 491, toTag: nil))
        two.wait(2_010)
        let again = try #require(two.unread(to: Self.caller).first { $0.method == .invite })
        let (n1, n2) = (try again.cseq().number, try ours.cseq().number)
        #expect(n1 == n2 + 1, "we do not own the caller's Call-ID: within 2 s")
    }

    @Test func rfc3261_14_2_the_farms_reinvite_that_crosses_ours_gets_491_and_ours_goes_again_after_its_491() throws {
        let (record, _, invite) = try Self.callOnNodeOne()
        let two = Self.nodeTwo()
        let outcome = Self.takeOver(record, on: two)
        let ours = try #require(two.next(to: Self.backend))
        two.fromBackend(two.backendRequest("INVITE", cseq: 10, on: invite, body: Stage.answerSDP))
        #expect(two.unread(to: Self.backend).compactMap(\.statusCode) == [100, 491])
        #expect(two.unread(to: Self.caller).allSatisfy { $0.method == .invite && $0.body.string == Stage.answerSDP }, "nothing relayed to the caller")
        two.fromBackend(Stage.response(to: ours, 491, toTag: nil))
        two.wait(4_010)
        let again = try #require(two.unread(to: Self.backend).first { $0.method == .invite })
        two.fromBackend(Stage.response(to: again, 200, toTag: nil, body: Stage.answerSDP))
        let toCaller = try #require(two.sender.log.first { $0.message.method == .invite && $0.hop.address == Self.caller.address }?.message)
        two.fromCaller(Stage.response(to: toCaller, 200, toTag: nil, body: Stage.sdp))
        #expect(outcome.value == .rehomed)
    }

    @Test func rfc3261_14_2_a_session_refresh_that_crosses_a_rehoming_reinvite_gets_491_too() throws {
        // A re-INVITE offering the session as it stands only refreshes the caller's session timer:
        // the edge answers it itself, but not while its own re-INVITE is out on that leg.
        let one = Stage()
        let (tag, _) = try #require(one.establish(inviteExtra: "Session-Expires: 90;refresher=uac\nSupported: timer"))
        let record = try #require(one.sink.records.last)
        let two = Self.nodeTwo()
        _ = Self.takeOver(record, on: two)
        _ = try #require(two.next(to: Self.caller))
        two.fromCaller(two.callerRequest("INVITE", cseq: 2, toTag: tag, extra: "Session-Expires: 90;refresher=uac\nSupported: timer",
                                         body: Stage.sdp))
        #expect(two.unread(to: Self.caller).compactMap(\.statusCode) == [100, 491])
    }

    @Test func a_481_to_rehoming_ends_the_call_with_a_bye_and_a_reason_on_the_other_leg() throws {
        let (record, _, _) = try Self.callOnNodeOne()
        let two = Self.nodeTwo()
        let outcome = Self.takeOver(record, on: two)
        let toCaller = try #require(two.next(to: Self.caller))
        _ = two.next(to: Self.backend)
        two.fromCaller(Stage.response(to: toCaller, 481, toTag: nil))
        let bye = try #require(two.unread(to: Self.backend).first)
        #expect(bye.method == .bye && bye.value(.reason) == "SIP;cause=481;text=\"Re-homing failed\"")
        #expect(two.unread(to: Self.caller).allSatisfy { $0.method == .ack }, "no BYE to the caller, who no longer knows the dialog")
        #expect(outcome.value == .failed && two.b2bua.activeCalls == 0)
        #expect(two.sink.records.last?.state == .ended)
    }

    @Test func rfc3261_17_1_1_2_a_leg_that_never_answers_ends_the_call_on_the_other_leg_at_timer_b() throws {
        let (record, _, _) = try Self.callOnNodeOne()
        let two = Self.nodeTwo()
        let outcome = Self.takeOver(record, on: two)
        let toCaller = try #require(two.next(to: Self.caller))
        two.fromCaller(Stage.response(to: toCaller, 200, toTag: nil, body: Stage.sdp))
        two.wait(31_000)
        #expect(!two.unread(to: Self.caller).contains { $0.method == .bye })
        two.wait(1_100)
        #expect(two.unread(to: Self.caller).contains { $0.method == .bye && $0.value(.reason) == "SIP;cause=408;text=\"Re-homing failed\"" },
                "64*T1 after the re-INVITE")
        #expect(outcome.value == .failed)
    }

    @Test func a_refused_rehoming_keeps_the_call_and_counts_as_failed_and_a_refused_update_becomes_a_reinvite() throws {
        let (record, _, _) = try Self.callOnNodeOne(answerExtra: [("Allow", "INVITE, ACK, BYE, UPDATE")])
        let two = Self.nodeTwo()
        let outcome = Self.takeOver(record, on: two)
        let update = try #require(two.next(to: Self.backend))
        two.fromBackend(Stage.response(to: update, 501, toTag: nil))
        let invite = try #require(two.unread(to: Self.backend).first { $0.method == .invite }, "a re-INVITE after the 501")
        two.fromBackend(Stage.response(to: invite, 200, toTag: nil, body: Stage.answerSDP))
        let toCaller = try #require(two.next(to: Self.caller))
        two.fromCaller(Stage.response(to: toCaller, 488, toTag: nil))
        #expect(outcome.value == .failed && two.b2bua.statistics.rehomeFailures == 1)
        #expect(two.b2bua.activeCalls == 1 && !two.unread(to: Self.backend).contains { $0.method == .bye }, "the call goes on")
    }

    @Test func a_request_sent_by_hand_is_answered_even_when_its_call_ends_first() throws {
        let s = Stage()
        let (tag, _) = try #require(s.establish())
        final class Answer: @unchecked Sendable { var value: (Int?, String?)?; var count = 0 }
        let answer = Answer()
        #expect(s.b2bua.sendSequential(callID: "call-1@192.0.2.10", to: .backend, method: "OPTIONS", body: .none,
                                       headers: [("X-Operator", "check")]) { answer.value = ($0, $1); answer.count += 1 })
        s.clock.endIteration()
        let options = try #require(s.next(to: Self.backend))
        #expect(options.method == .options && options.text.contains("X-Operator: check\r\n"))
        // The caller hangs up before the farm answers: whoever waits is told there is no answer.
        s.fromCaller(s.callerRequest("BYE", cseq: 2, toTag: tag))
        #expect(answer.count == 1 && answer.value?.0 == nil)
        s.fromBackend(Stage.response(to: options, 200, toTag: nil))
        #expect(answer.count == 1, "told once")
        #expect(!s.b2bua.sendSequential(callID: "call-1@192.0.2.10", to: .backend, method: "OPTIONS", body: .none, headers: []) { _, _ in },
                "no such call any more")
    }

    @Test func a_retransmitted_2xx_to_our_reinvite_is_acked_again() throws {
        let (record, _, _) = try Self.callOnNodeOne()
        let two = Self.nodeTwo()
        _ = Self.takeOver(record, on: two)
        let toCaller = try #require(two.next(to: Self.caller))
        let ok = Stage.response(to: toCaller, 200, toTag: nil, body: Stage.sdp)
        two.fromCaller(ok)
        two.fromCaller(ok)
        let acks = two.unread(to: Self.caller).filter { $0.method == .ack }
        #expect(acks.count == 2 && acks[0].text == acks[1].text)
    }

    @Test func rfc3261_9_1_an_early_dialog_of_a_dead_node_is_cancelled_at_the_backend_and_the_caller_gets_503() throws {
        // (The caller's Via values are kept in a cluster only: a sharing tag.)
        let one = Stage { $0.sharingTag = "node1" }
        one.fromCaller(one.invite(extra: "Via: SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bK-upstream"))
        let forwarded = try #require(one.next(to: Self.backend))
        one.fromBackend(Stage.response(to: forwarded, 180))
        let record = try #require(one.sink.records.last)
        #expect(record.state == .early)
        let invite = one.sender.log.first { $0.message.method == .invite }!.message
        let two = Self.nodeTwo()
        let outcome = Self.takeOver(record, on: two)
        let cancel = try #require(two.next(to: Self.backend))
        #expect(cancel.method == .cancel)
        #expect(cancel.topViaBranch?.string == invite.topViaBranch?.string, "§9.1: the INVITE's branch")
        #expect(cancel.requestURIBytes?.string == invite.requestURIBytes?.string && cancel.callID?.string == invite.callID?.string)
        let (c1, c2) = (try cancel.cseq().number, try invite.cseq().number)
        #expect(c1 == c2)
        let answer = try #require(two.next(to: Self.caller))
        #expect(answer.statusCode == 503)
        #expect(answer.values(.via).map(\.string).count == 2, "every Via of the caller's INVITE")
        #expect(answer.tag(of: .to)?.string == record.client.localTag && answer.callID?.string == "call-1@192.0.2.10")
        #expect(try answer.cseq().method == .invite)
        #expect(outcome.value == .endedEarly && two.b2bua.activeCalls == 0)
        #expect(two.sink.records.last?.state == .ended, "every node is told it is over")
        // No transaction holds the 503 (its ACK goes to the dead node): it goes twice more, at T1 and 3*T1.
        two.wait(499)
        #expect(two.unread(to: Self.caller).isEmpty)
        two.wait(1_001)
        #expect(two.unread(to: Self.caller).map(\.statusCode) == [503, 503])
        two.wait(10_000)
        #expect(two.unread(to: Self.caller).isEmpty)
    }

    static func nodeTwoWithTCP() -> Stage {
        nodeTwo { config in
            config.listeners[.tcp] = [LocalAddress(host: "198.51.100.2", port: 5060, tag: "public"), LocalAddress(host: "10.0.0.2", port: 5060, tag: "farm")]
        }
    }

    @Test func a_backend_leg_over_tcp_is_rehomed_over_a_new_connection_to_its_contact() throws {
        var (record, _, _) = try Self.callOnNodeOne()
        // Node 1 had opened a connection to the backend from an ephemeral port of its own.
        record.backend.hop = Hop(.tcp, SocketAddress(ip: "127.0.0.1", port: 5080)!, worker: 1)
        record.backend.remoteTarget = Array("sip:ast@127.0.0.1:5090;transport=tcp".utf8)
        let two = Self.nodeTwoWithTCP()
        let outcome = Self.takeOver(record, on: two)
        let sent = two.sender.log.filter { $0.message.method == .invite && $0.hop.transport == .tcp }
        #expect(sent.count == 1)
        #expect(sent.first?.hop.address == SocketAddress(ip: "127.0.0.1", port: 5090), "the Contact's address, on a new connection")
        #expect(sent.first?.hop.worker == nil)
        #expect(sent.first?.message.value(.contact) == "<sip:edge@198.51.100.2:5060;transport=tcp>")
        _ = outcome
    }

    @Test func a_phone_over_tcp_that_cannot_be_reached_is_rehomed_when_it_connects_again_or_the_call_ends() throws {
        var (record, toTag, _) = try Self.callOnNodeOne()
        record.client.hop = Hop(.tcp, SocketAddress(ip: "192.0.2.10", port: 49_152)!)
        record.client.remoteTarget = Array("sip:alice@192.0.2.10:5060;transport=tcp".utf8)
        let two = Self.nodeTwoWithTCP()
        let outcome = Self.takeOver(record, on: two)
        let phone = Hop(.tcp, SocketAddress(ip: "192.0.2.10", port: 5060)!)
        let backendInvite = try #require(two.next(to: Self.backend))
        two.fromBackend(Stage.response(to: backendInvite, 200, toTag: nil, body: Stage.answerSDP))
        // Behind NAT, nobody listens where its Contact points: the connection is refused.
        two.b2bua.unreachable(phone)
        two.clock.endIteration()
        #expect(outcome.value == nil && two.b2bua.activeCalls == 1, "the call waits for the phone")
        // The phone reconnects (from a new port) and sends a request in the dialog: re-homed over it.
        let reconnected = Hop(.tcp, SocketAddress(ip: "192.0.2.10", port: 49_200)!, worker: 0)
        two.fromCaller(two.callerRequest("INFO", cseq: 2, toTag: toTag), hop: reconnected)
        let again = two.sender.log.last { $0.message.method == .invite && $0.hop.address == reconnected.address }
        #expect(again != nil, "a new re-INVITE over the phone's new connection")
        if let again { two.fromCaller(Stage.response(to: again.message, 200, toTag: nil, body: Stage.sdp), hop: reconnected) }
        #expect(outcome.value == .rehomed)

        // Another phone that never comes back: the call ends after the bounded wait.
        let three = Self.nodeTwoWithTCP()
        let ended = Self.takeOver(record, on: three)
        let toBackend = try #require(three.next(to: Self.backend))
        three.fromBackend(Stage.response(to: toBackend, 200, toTag: nil, body: Stage.answerSDP))
        three.b2bua.unreachable(phone)
        three.clock.endIteration()
        _ = three.unread(to: Self.backend)
        three.wait(59_000)
        #expect(ended.value == nil)
        three.wait(1_100)
        #expect(three.unread(to: Self.backend).contains { $0.method == .bye }, "ended on the other leg after 60 s")
        #expect(ended.value == .failed)
    }

    @Test func a_confirmed_record_keeps_no_early_fields() throws {
        let (record, _, _) = try Self.callOnNodeOne()
        #expect(record.clientInviteVias.isEmpty && record.backendInviteBranch.isEmpty && record.backendInviteURI.isEmpty)
        let decoded = try DialogRecord(decoding: record.encoded())
        #expect(decoded == record)
    }
}
