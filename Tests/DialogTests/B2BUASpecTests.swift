import Foundation
import Dialog
import SIPParser
import Testing
import Transport

/// The B2BUA driven message by message on a manual clock, each test named after the rule it
/// checks. No sockets: what it sends is recorded (B2BUAStage).
@Suite struct B2BUASpecTests {
    typealias Stage = B2BUAStage
    static let caller = Stage.caller
    static let backend = Stage.backends[0]

    // MARK: - RFC 3261: set-up and topology hiding

    @Test func rfc3261_17_2_1_a_100_trying_goes_only_when_the_backend_is_silent_for_200_ms() {
        let s = Stage()
        s.fromCaller(s.invite())
        #expect(s.unread(to: Self.backend).first?.method == .invite)
        s.wait(199)
        #expect(s.unread(to: Self.caller).isEmpty)
        s.wait(2)
        #expect(s.unread(to: Self.caller).map(\.statusCode) == [100])
    }

    @Test func rfc3261_16_a_backend_leg_carries_nothing_of_the_callers_topology() throws {
        let s = Stage()
        s.fromCaller(s.invite())
        let forwarded = try #require(s.next(to: Self.backend))
        #expect(forwarded.callID?.string != "call-1@192.0.2.10")
        #expect(forwarded.tag(of: .from)?.string != "a1")
        let head = String(forwarded.text.prefix(forwarded.text.count - forwarded.body.count))
        #expect(!head.contains("192.0.2.10"), "the caller's address stays behind (but in its SDP):\n\(head)")
        #expect(!forwarded.text.contains("proxy.example.com"), "its Record-Route too")
        #expect(forwarded.lineCount(.via) == 1)
        #expect(forwarded.value(.from)?.hasPrefix("\"Alice\" <sip:alice@198.51.100.1:5060>") == true, "identity kept, host ours")
        #expect(try forwarded.maxForwards() == 69)
        #expect(forwarded.body.string == Stage.sdp)
    }

    @Test func rfc3261_12_1_1_each_leg_gets_our_contact_for_the_listener_it_belongs_to() throws {
        let s = Stage()
        s.fromCaller(s.invite(), listenerTag: "farm")   // the caller came in on the second listener
        let forwarded = try #require(s.next(to: Self.backend))
        s.fromBackend(Stage.response(to: forwarded, 200, body: Stage.answerSDP))
        let ok = try #require(s.unread(to: Self.caller).last)
        #expect(ok.value(.contact) == "<sip:edge@10.0.0.1:5060>", "the farm listener's address, by tag")
        #expect(s.b2bua.dialogRecords().first?.client.listenerTag == "farm")
    }

    @Test func rfc3261_13_3_1_4_the_2xx_is_retransmitted_until_the_ack_and_no_longer() throws {
        let s = Stage()
        s.fromCaller(s.invite())
        let forwarded = try #require(s.next(to: Self.backend))
        s.fromBackend(Stage.response(to: forwarded, 200, body: Stage.answerSDP))
        let ok = try #require(s.unread(to: Self.caller).last)
        s.wait(500)
        s.wait(1_000)
        #expect(s.unread(to: Self.caller).map(\.statusCode) == [200, 200], "T1, then 2*T1")
        s.fromCaller(s.callerRequest("ACK", cseq: 1, toTag: ok.tag(of: .to)!.string))
        s.wait(10_000)
        #expect(s.unread(to: Self.caller).filter { $0.statusCode == 200 }.isEmpty)
    }

    @Test func rfc3261_13_3_1_4_no_ack_within_64_t1_ends_the_call_with_a_bye_to_the_backend() throws {
        let s = Stage()
        s.fromCaller(s.invite())
        let forwarded = try #require(s.next(to: Self.backend))
        s.fromBackend(Stage.response(to: forwarded, 200, body: Stage.answerSDP))
        _ = s.unread(to: Self.backend)   // the edge's ACK
        s.wait(32_000)
        #expect(s.unread(to: Self.backend).isEmpty)
        s.wait(4_000)   // the first retransmission due after 64*T1 finds the deadline past
        let bye = s.unread(to: Self.backend).first { $0.method == .bye }
        #expect(bye?.value(.reason)?.contains("No ACK") == true)
        #expect(s.b2bua.activeCalls == 0)
    }

    @Test func rfc3261_13_2_2_4_the_backends_2xx_is_acked_and_a_retransmission_is_acked_again() throws {
        let s = Stage()
        s.fromCaller(s.invite())
        let forwarded = try #require(s.next(to: Self.backend))
        let ok = Stage.response(to: forwarded, 200, body: Stage.answerSDP)
        s.fromBackend(ok)
        let ack = try #require(s.next(to: Self.backend))
        #expect(ack.method == .ack)
        #expect(try ack.cseq().number == forwarded.cseq().number)
        #expect(ack.requestURIBytes?.string == "sip:ast@127.0.0.1:5080", "to the backend's Contact")
        s.fromBackend(ok)
        #expect(s.unread(to: Self.backend).map(\.method) == [.ack])
    }

    @Test func rfc3261_17_1_3_a_response_matches_its_transaction_by_the_whole_branch_and_method() throws {
        let s = Stage()
        s.fromCaller(s.invite())
        let forwarded = try #require(s.next(to: Self.backend))
        let branch = try #require(forwarded.topViaBranch?.string)
        #expect(branch.contains("."), "our branch names its transaction's slot: \(branch)")
        // The same slot under another id, and the right branch with another method: no match.
        let forged = branch.replacingFirst("z9hG4bKs0x", with: "z9hG4bKs0xq")
        let wrongBranch = Stage.message(Stage.response(to: forwarded, 200, body: Stage.answerSDP).text.replacingFirst(branch, with: forged)
                                            .replacingFirst("Content-Length: \(Stage.answerSDP.utf8.count)\r\n\r\n\(Stage.answerSDP)", with: ""),
                                        body: Stage.answerSDP)
        s.fromBackend(wrongBranch)
        let wrongMethod = Stage.message(Stage.response(to: forwarded, 200).text.replacingFirst("INVITE", with: "UPDATE")
                                            .replacingFirst("Content-Length: 0\r\n\r\n", with: ""))
        s.fromBackend(wrongMethod)
        #expect(s.unread(to: Self.caller).allSatisfy { $0.statusCode != 200 }, "neither reached the caller")
        s.fromBackend(Stage.response(to: forwarded, 200, body: Stage.answerSDP))
        #expect(s.unread(to: Self.caller).last?.statusCode == 200)
    }

    @Test func rfc3261_9_2_a_cancel_gets_200_the_invite_487_and_the_backend_its_own_cancel() throws {
        let s = Stage()
        let branch = s.newBranch()
        s.fromCaller(s.invite(branch: branch))
        let forwarded = try #require(s.next(to: Self.backend))
        s.fromBackend(Stage.response(to: forwarded, 180))
        s.fromCaller(s.cancel(branch: branch))
        let answers = s.unread(to: Self.caller).compactMap(\.statusCode)
        #expect(answers.contains(200) && answers.last == 487)
        let cancel = try #require(s.next(to: Self.backend))
        #expect(cancel.method == .cancel)
        #expect(cancel.topViaBranch?.string == forwarded.topViaBranch?.string, "§9.1: the INVITE's branch")
        #expect(cancel.requestURIBytes?.string == forwarded.requestURIBytes?.string)
        #expect(cancel.callID?.string == forwarded.callID?.string)
        #expect(try cancel.cseq().number == forwarded.cseq().number)
    }

    @Test func rfc3261_9_1_the_answer_to_our_cancel_ends_its_own_transaction_and_goes_nowhere() throws {
        let s = Stage()
        let branch = s.newBranch()
        s.fromCaller(s.invite(branch: branch))
        let forwarded = try #require(s.next(to: Self.backend))
        s.fromBackend(Stage.response(to: forwarded, 180))
        s.fromCaller(s.cancel(branch: branch))
        _ = s.unread(to: Self.caller)
        let cancel = try #require(s.unread(to: Self.backend).first { $0.method == .cancel })
        let clients = s.b2bua.transactionCounts.client
        s.fromBackend(Stage.response(to: cancel, 200, toTag: nil, contact: nil))
        #expect(s.unread(to: Self.caller).isEmpty, "nothing of it reaches the caller")
        s.wait(5_000)   // Timer E would have resent an unanswered CANCEL by now; Timer K (T4) ends it
        #expect(s.unread(to: Self.backend).allSatisfy { $0.method != .cancel }, "no retransmission of the answered CANCEL")
        #expect(s.b2bua.transactionCounts.client == clients - 1, "the CANCEL's transaction found (through its INVITE) and done")
    }

    @Test func rfc3261_9_1_a_2xx_that_crosses_the_cancel_is_acked_and_ended_with_a_bye() throws {
        let s = Stage()
        let branch = s.newBranch()
        s.fromCaller(s.invite(branch: branch))
        let forwarded = try #require(s.next(to: Self.backend))
        s.fromCaller(s.cancel(branch: branch))
        _ = s.unread(to: Self.backend)   // its CANCEL
        s.fromBackend(Stage.response(to: forwarded, 200, body: Stage.answerSDP))
        #expect(s.unread(to: Self.backend).map(\.method) == [.ack, .bye])
        #expect(s.b2bua.activeCalls == 0)
    }

    @Test func rfc3261_15_1_2_a_bye_from_the_caller_is_answered_and_ends_the_backend_leg() throws {
        let s = Stage()
        let (tag, forwarded) = try #require(s.establish())
        s.fromCaller(s.callerRequest("BYE", cseq: 2, toTag: tag))
        #expect(s.unread(to: Self.caller).map(\.statusCode) == [200])
        let bye = try #require(s.next(to: Self.backend))
        #expect(bye.method == .bye)
        #expect(bye.callID?.string == forwarded.callID?.string)
        #expect(bye.tag(of: .to)?.string == "b1")
        #expect(s.b2bua.activeCalls == 0)
    }

    @Test func rfc3261_15_1_2_a_bye_without_a_to_tag_gets_481() {
        let s = Stage()
        s.fromCaller(Stage.message("""
            BYE sip:edge@198.51.100.1 SIP/2.0
            Via: SIP/2.0/UDP 192.0.2.10:5060;branch=\(s.newBranch())
            From: <sip:alice@192.0.2.10>;tag=a1
            To: <sip:100@198.51.100.1>
            Call-ID: nothing@192.0.2.10
            CSeq: 2 BYE
            """))
        #expect(s.unread(to: Self.caller).map(\.statusCode) == [481])
    }

    @Test func rfc3261_12_2_2_a_request_with_a_forged_tag_gets_481_and_changes_nothing() throws {
        let s = Stage()
        let (tag, _) = try #require(s.establish())
        s.fromCaller(s.callerRequest("BYE", cseq: 2, toTag: tag + "x"))
        #expect(s.unread(to: Self.caller).map(\.statusCode) == [481])
        #expect(s.unread(to: Self.backend).isEmpty)
        #expect(s.b2bua.activeCalls == 1)
    }

    @Test func rfc3261_12_2_2_a_request_older_than_the_last_gets_500() throws {
        let s = Stage()
        let (tag, _) = try #require(s.establish())
        s.fromCaller(s.callerRequest("INFO", cseq: 5, toTag: tag))
        _ = s.unread(to: Self.backend)
        s.fromCaller(s.callerRequest("INFO", cseq: 4, toTag: tag))
        #expect(s.unread(to: Self.caller).map(\.statusCode) == [500])
    }

    @Test func rfc3261_12_2_1_1_the_backends_route_set_is_used_reversed_and_its_target_is_the_request_uri() throws {
        let s = Stage()
        s.fromCaller(s.invite())
        let forwarded = try #require(s.next(to: Self.backend))
        s.fromBackend(Stage.response(to: forwarded, 200, extra: [("Record-Route", "<sip:p2.farm;lr>"), ("Record-Route", "<sip:p1.farm;lr>")],
                                     body: Stage.answerSDP))
        let tag = try #require(s.unread(to: Self.caller).last?.tag(of: .to)?.string)
        s.fromCaller(s.callerRequest("ACK", cseq: 1, toTag: tag))
        _ = s.unread(to: Self.backend)
        s.fromCaller(s.callerRequest("BYE", cseq: 2, toTag: tag))
        let bye = try #require(s.next(to: Self.backend))
        #expect(bye.requestURIBytes?.string == "sip:ast@127.0.0.1:5080")
        #expect(bye.values(.route).map(\.string) == ["<sip:p1.farm;lr>", "<sip:p2.farm;lr>"])
    }

    @Test func rfc3261_14_1_a_reinvite_is_relayed_and_its_contact_refreshes_the_callers_target() throws {
        let s = Stage()
        let (tag, forwarded) = try #require(s.establish())
        s.fromCaller(s.callerRequest("INVITE", cseq: 2, toTag: tag, extra: "Contact: <sip:alice@192.0.2.99:5070>",
                                     body: Stage.sdp.replacingFirst("4000", with: "4002")))
        let reinvite = try #require(s.unread(to: Self.backend).first)
        #expect(reinvite.method == .invite)
        #expect(reinvite.callID?.string == forwarded.callID?.string)
        #expect(reinvite.value(.contact) == "<sip:edge@198.51.100.1:5060>", "the backend leg's listener: the first (it sends from it)")
        #expect(reinvite.body.string.contains("4002"))
        s.fromBackend(Stage.response(to: reinvite, 200, body: Stage.answerSDP))
        #expect(s.unread(to: Self.backend).map(\.method) == [.ack])
        let ok = try #require(s.unread(to: Self.caller).last)
        #expect(ok.statusCode == 200)
        #expect(ok.value(.contact) == "<sip:edge@198.51.100.1:5060>")
        // The backend hangs up: the BYE goes to the caller's new target.
        s.fromBackend(s.backendRequest("BYE", cseq: 2, on: forwarded))
        let bye = try #require(s.unread(to: Self.caller).first { $0.method == .bye })
        #expect(bye.requestURIBytes?.string == "sip:alice@192.0.2.99:5070")
    }

    @Test func rfc3261_14_2_a_reinvite_that_meets_one_in_progress_gets_491() throws {
        let s = Stage()
        let (tag, forwarded) = try #require(s.establish())
        s.fromCaller(s.callerRequest("INVITE", cseq: 2, toTag: tag, body: Stage.sdp))
        _ = s.unread(to: Self.backend)
        s.fromBackend(s.backendRequest("INVITE", cseq: 2, on: forwarded, body: Stage.answerSDP))
        #expect(s.unread(to: Self.backend).compactMap(\.statusCode) == [100, 491])
    }

    @Test func rfc3261_17_1_1_2_timer_b_fails_the_call_over_to_the_next_backend() throws {
        let s = Stage()
        s.fromCaller(s.invite())
        let first = try #require(s.next(to: Self.backend))
        s.wait(32_000)
        let second = try #require(s.unread(to: Stage.backends[1]).first)
        #expect(second.method == .invite)
        #expect(second.callID?.string != first.callID?.string, "a fresh backend leg")
        s.fromBackend(Stage.response(to: second, 200, body: Stage.answerSDP), hop: Stage.backends[1])
        #expect(s.unread(to: Self.caller).last?.statusCode == 200)
        #expect(s.b2bua.dialogRecords().first?.backend.hop == Stage.backends[1])
    }

    @Test func rfc3261_16_7_a_503_fails_over_and_a_486_reaches_the_caller() throws {
        let s = Stage()
        s.fromCaller(s.invite())
        let first = try #require(s.next(to: Self.backend))
        s.fromBackend(Stage.response(to: first, 503))
        let second = try #require(s.unread(to: Stage.backends[1]).first)
        s.fromBackend(Stage.response(to: second, 486), hop: Stage.backends[1])
        #expect(s.unread(to: Self.caller).compactMap(\.statusCode).last == 486)
        #expect(s.b2bua.activeCalls == 0)
    }

    @Test func rfc3261_8_2_2_2_a_late_copy_of_an_ended_calls_invite_starts_nothing() throws {
        let s = Stage()
        let (tag, _) = try #require(s.establish())
        s.fromCaller(s.callerRequest("BYE", cseq: 2, toTag: tag))
        _ = s.unread(to: Self.backend)
        s.fromCaller(s.invite())
        #expect(s.unread(to: Self.backend).isEmpty)
        #expect(s.b2bua.activeCalls == 0)
    }

    @Test func rfc3261_16_3_an_invite_that_comes_back_to_us_gets_482() {
        let s = Stage()
        s.fromCaller(Stage.message("""
            INVITE sip:100@198.51.100.1 SIP/2.0
            Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKs0x1234abc
            Max-Forwards: 69
            From: <sip:alice@198.51.100.1>;tag=a9
            To: <sip:100@198.51.100.1>
            Call-ID: loop@198.51.100.1
            CSeq: 1 INVITE
            """))
        #expect(s.unread(to: Self.caller).map(\.statusCode) == [482])
        #expect(s.unread(to: Self.backend).isEmpty)
    }

    // MARK: - RFC 3262, 3311: PRACK and UPDATE

    @Test func rfc3262_7_2_a_pracks_rack_names_the_backend_legs_invite() throws {
        let s = Stage()
        s.fromCaller(s.invite(extra: "Supported: 100rel"))
        let forwarded = try #require(s.next(to: Self.backend))
        s.fromBackend(Stage.response(to: forwarded, 183, extra: [("Require", "100rel"), ("RSeq", "1")], body: Stage.answerSDP))
        let progress = try #require(s.unread(to: Self.caller).last)
        #expect(progress.value(.rseq) == "1")
        s.fromCaller(s.callerRequest("PRACK", cseq: 2, toTag: progress.tag(of: .to)!.string, extra: "RAck: 1 1 INVITE"))
        let prack = try #require(s.next(to: Self.backend))
        #expect(prack.method == .prack)
        #expect(prack.value(.rack) == "1 \(try forwarded.cseq().number) INVITE")
    }

    @Test func rfc3311_update_is_relayed_both_ways() throws {
        let s = Stage()
        let (tag, forwarded) = try #require(s.establish())
        s.fromCaller(s.callerRequest("UPDATE", cseq: 2, toTag: tag, extra: "Contact: <sip:alice@192.0.2.10:5060>", body: Stage.sdp))
        let update = try #require(s.next(to: Self.backend))
        #expect(update.method == .update)
        s.fromBackend(Stage.response(to: update, 200, body: Stage.answerSDP))
        #expect(s.unread(to: Self.caller).last?.statusCode == 200)
        s.fromBackend(s.backendRequest("UPDATE", cseq: 2, on: forwarded, extra: "Contact: <sip:ast@127.0.0.1:5080>", body: Stage.answerSDP))
        let back = try #require(s.unread(to: Self.caller).last)
        #expect(back.method == .update)
        #expect(back.tag(of: .to)?.string == "a1")
        #expect(back.callID?.string == "call-1@192.0.2.10")
        s.fromCaller(Stage.response(to: back, 200, toTag: nil, contact: "<sip:alice@192.0.2.10:5060>", body: Stage.sdp))
        #expect(s.unread(to: Self.backend).compactMap(\.statusCode) == [200])
    }

    // MARK: - RFC 4028: session timers

    @Test func rfc4028_8_an_interval_below_min_se_gets_422_with_ours() {
        let s = Stage()
        s.fromCaller(s.invite(extra: "Session-Expires: 30\nSupported: timer"))
        let answer = s.unread(to: Self.caller).last
        #expect(answer?.statusCode == 422)
        #expect(answer?.value(.minSE) == "90")
        #expect(s.unread(to: Self.backend).isEmpty)
    }

    @Test func rfc4028_refresh_by_edge_when_the_caller_asks_the_uas_to_refresh() throws {
        let s = Stage()
        try #require(s.establish(inviteExtra: "Session-Expires: 120;refresher=uas\nSupported: timer") != nil)
        s.wait(59_000)
        #expect(s.unread(to: Self.caller).isEmpty)
        s.wait(1_001)
        let refresh = try #require(s.unread(to: Self.caller).first)
        #expect(refresh.method == .invite, "the caller did not allow UPDATE: a re-INVITE")
        #expect(refresh.value(.sessionExpires) == "120;refresher=uac")
        #expect(refresh.body.string == Stage.answerSDP, "the session as it stands")
        #expect(s.unread(to: Self.backend).isEmpty, "a refresh stays on its leg")
    }

    @Test func rfc4028_10_a_leg_that_stops_refreshing_ends_the_call_on_both() throws {
        let s = Stage()
        try #require(s.establish(inviteExtra: "Session-Expires: 90;refresher=uac\nSupported: timer") != nil)
        s.wait(59_000)   // 90 - min(32, 90/3)
        #expect(s.unread(to: Self.caller).isEmpty)
        s.wait(1_001)
        #expect(s.unread(to: Self.caller).map(\.method) == [.bye])
        #expect(s.unread(to: Self.backend).map(\.method) == [.bye])
        #expect(s.b2bua.activeCalls == 0)
    }

    @Test func rfc4028_a_refresh_from_the_caller_is_answered_by_the_edge_and_not_relayed() throws {
        let s = Stage()
        let (tag, _) = try #require(s.establish(inviteExtra: "Session-Expires: 90;refresher=uac\nSupported: timer"))
        s.fromCaller(s.callerRequest("UPDATE", cseq: 2, toTag: tag, extra: "Session-Expires: 90;refresher=uac\nSupported: timer"))
        let ok = try #require(s.unread(to: Self.caller).last)
        #expect(ok.statusCode == 200)
        #expect(ok.value(.sessionExpires) == "90;refresher=uac")
        #expect(s.unread(to: Self.backend).isEmpty)
        s.wait(59_000)
        #expect(s.b2bua.activeCalls == 1, "the refresh restarted the leg's timer")
    }

    // MARK: - Pings

    @Test func a_dialog_is_pinged_from_the_callers_ack_and_a_481_ends_it() throws {
        let s = Stage { $0.pingSeconds = 10 }
        s.fromCaller(s.invite())
        let forwarded = try #require(s.next(to: Self.backend))
        s.fromBackend(Stage.response(to: forwarded, 200, body: Stage.answerSDP))
        let tag = try #require(s.unread(to: Self.caller).last?.tag(of: .to)?.string)
        s.wait(20_000)
        #expect(s.unread(to: Self.caller).allSatisfy { $0.method != .options }, "no ping before the ACK")
        s.fromCaller(s.callerRequest("ACK", cseq: 1, toTag: tag))
        _ = s.unread(to: Self.backend)
        s.wait(10_000)
        let ping = try #require(s.unread(to: Self.backend).first)
        #expect(ping.method == .options)
        s.fromBackend(Stage.response(to: ping, 481, toTag: nil))
        #expect(s.unread(to: Self.caller).contains { $0.method == .bye })
        #expect(s.b2bua.activeCalls == 0)
    }

    // MARK: - RFC 3515, 3891: transfers

    @Test func rfc3515_a_refer_crosses_with_refer_to_referred_by_and_our_contact() throws {
        let s = Stage()
        let (_, forwarded) = try #require(s.establish())
        s.fromBackend(s.backendRequest("REFER", cseq: 2, on: forwarded,
                                       extra: "Refer-To: <sip:200@127.0.0.1:5080>\nReferred-By: <sip:100@127.0.0.1>\nContact: <sip:ast@127.0.0.1:5080>"))
        let refer = try #require(s.unread(to: Self.caller).last)
        #expect(refer.method == .refer)
        #expect(refer.value(.referTo) == "<sip:200@127.0.0.1:5080>")
        #expect(refer.value(.referredBy) == "<sip:100@127.0.0.1>")
        #expect(refer.value(.contact) == "<sip:edge@198.51.100.1:5060>")
        s.fromCaller(Stage.response(to: refer, 202, toTag: nil, contact: "<sip:alice@192.0.2.10:5060>"))
        let accepted = try #require(s.unread(to: Self.backend).last)
        #expect(accepted.statusCode == 202)
        #expect(accepted.value(.contact) == "<sip:edge@198.51.100.1:5060>")
    }

    @Test func rfc3891_a_replaces_in_refer_to_is_translated_to_the_other_legs_dialog() throws {
        let s = Stage { $0.backends = [Stage.backends[0]] }
        let (tag1, _) = try #require(s.establish(callID: "call-1@192.0.2.10"))
        s.fromCaller(s.invite(callID: "call-2@192.0.2.10"))
        let second = try #require(s.next(to: Self.backend))
        s.fromBackend(Stage.response(to: second, 200, toTag: "b2", body: Stage.answerSDP))
        let tag2 = try #require(s.unread(to: Self.caller).last?.tag(of: .to)?.string)
        s.fromCaller(s.callerRequest("ACK", cseq: 1, toTag: tag2, callID: "call-2@192.0.2.10"))
        _ = s.unread(to: Self.backend)
        // Attended transfer: the caller refers call 1's far end to call 2's, replacing call 2 as
        // the caller knows it (to-tag: the far end's, i.e. ours; from-tag: its own).
        s.fromCaller(s.callerRequest("REFER", cseq: 2, toTag: tag1, extra: """
            Refer-To: <sip:edge@198.51.100.1:5060?Replaces=call-2%40192.0.2.10%3Bto-tag%3D\(tag2)%3Bfrom-tag%3Da1>
            Referred-By: <sip:alice@192.0.2.10>
            Contact: <sip:alice@192.0.2.10:5060>
            """))
        let refer = try #require(s.next(to: Self.backend))
        let escaped = "\(second.callID!.string)%3Bto-tag%3Db2%3Bfrom-tag%3D\(second.tag(of: .from)!.string)"
        #expect(refer.value(.referTo) == "<sip:ast@127.0.0.1:5080?Replaces=\(escaped)>",
                "call 2's backend leg, as the backend knows it; the URI its Contact")
        #expect(refer.value(.referredBy) == "<sip:alice@192.0.2.10>")
    }

    @Test func rfc3891_a_replaces_in_a_new_invite_names_the_backend_leg() throws {
        let s = Stage { $0.backends = [Stage.backends[0]] }
        let (tag, forwarded) = try #require(s.establish())
        s.fromCaller(s.invite(callID: "call-3@192.0.2.10", extra: "Replaces: call-1@192.0.2.10;to-tag=\(tag);from-tag=a1"))
        let invite = try #require(s.next(to: Self.backend))
        #expect(invite.value(.replaces) == "\(forwarded.callID!.string);to-tag=b1;from-tag=\(forwarded.tag(of: .from)!.string)")
    }

    // MARK: - The dialog gate

    @Test func every_change_of_a_dialog_passes_the_gate_with_a_higher_version() throws {
        let s = Stage()
        let (tag, forwarded) = try #require(s.establish())
        s.fromCaller(s.callerRequest("BYE", cseq: 2, toTag: tag))
        let versions = s.sink.records.map(\.version)
        #expect(versions == Array(1...UInt64(versions.count)), "one version per change, none skipped")
        #expect(s.sink.records.first?.state == .early)
        #expect(s.sink.records.contains { $0.state == .confirmed && $0.backend.remoteTag == "b1" && $0.backendAcknowledged })
        #expect(s.sink.records.last?.state == .ended)
        #expect(Set(s.sink.records.dropFirst().map(\.key)) == [forwarded.callID!.string])
    }

    @Test func a_passive_copy_answers_no_request_until_activated() throws {
        let s = Stage()
        let (tag, _) = try #require(s.establish())
        let record = try #require(s.b2bua.dialogRecords().first)
        let other = Stage()
        other.b2bua.adopt(record, active: false)
        other.fromCaller(other.callerRequest("BYE", cseq: 2, toTag: tag))
        #expect(other.sender.log.isEmpty, "no 481, no BYE: the caller retransmits until a node carries the call")
        #expect(other.b2bua.isActive(key: record.key) == false)
        #expect(other.b2bua.activate(key: record.key))
        other.fromCaller(other.callerRequest("BYE", cseq: 2, toTag: tag))
        #expect(other.unread(to: Self.caller).map(\.statusCode) == [200])
        #expect(other.unread(to: Self.backend).map(\.method) == [.bye])
    }

    @Test func a_passive_copy_arms_no_timer_and_sends_nothing_until_activated() throws {
        let s = Stage { $0.pingSeconds = 30 }
        try #require(s.establish(inviteExtra: "Session-Expires: 90;refresher=uas\nSupported: timer") != nil)
        let record = try #require(s.b2bua.dialogRecords().first)
        let other = Stage { $0.pingSeconds = 30 }
        other.b2bua.adopt(record, active: false)
        #expect(other.b2bua.dialogRecords().count == 1)
        #expect(other.clock.armedTimers == 0)
        other.wait(120_000)
        #expect(other.sender.log.isEmpty)
        #expect(other.b2bua.activate(key: record.key))
        other.wait(30_000)
        let pings = other.unread(to: Self.caller) + other.unread(to: Self.backend)
        #expect(pings.map(\.method) == [.options, .options], "pinged once active")
        for ping in pings { other.b2bua.receive(Stage.response(to: ping, 200, toTag: nil), from: Self.caller) }
        other.wait(15_000)
        #expect(other.unread(to: Self.caller).contains { $0.method == .invite }, "its session refreshed at half the interval")
        #expect(other.b2bua.activeCalls == 1)
    }
}

extension String {
    func replacingFirst(_ target: String, with replacement: String) -> String {
        guard let r = range(of: target) else { return self }
        return replacingCharacters(in: r, with: replacement)
    }
}
