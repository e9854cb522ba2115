import Dialog
import SIPParser
import Testing
import Transport

/// A media relay that records what the B2BUA hands it and answers when the test says (or at
/// once, with its own address and a port of its own per call).
final class RecordingRelay: MediaRelay {
    struct Request { let kind: String; let session: MediaSession; let sdp: String }
    private(set) var requests: [Request] = []
    private(set) var deletes: [MediaSession] = []
    private var waiting: [([UInt8]?) -> Void] = []
    /// Answer each request at once with `relaySDP(port:)`.
    var immediate = false

    static func relaySDP(port: Int) -> String {
        "v=0\r\no=rtpengine 1 1 IN IP4 203.0.113.9\r\ns=-\r\nc=IN IP4 203.0.113.9\r\nt=0 0\r\nm=audio \(port) RTP/AVP 0\r\n"
    }

    func offer(_ session: MediaSession, sdp: [UInt8], done: @escaping ([UInt8]?) -> Void) { take("offer", session, sdp, done) }
    func answer(_ session: MediaSession, sdp: [UInt8], done: @escaping ([UInt8]?) -> Void) { take("answer", session, sdp, done) }
    func delete(_ session: MediaSession) { deletes.append(session) }

    private func take(_ kind: String, _ session: MediaSession, _ sdp: [UInt8], _ done: @escaping ([UInt8]?) -> Void) {
        requests.append(Request(kind: kind, session: session, sdp: String(decoding: sdp, as: UTF8.self)))
        // The caller's side gets port 30000, the backend's 30002: the same for a session's life.
        if immediate { done(Array(Self.relaySDP(port: kind == "offer" && session.fromTag == "a1" || kind == "answer" && session.fromTag != "a1" ? 30_002 : 30_000).utf8)) } else { waiting.append(done) }
    }

    /// Answers the oldest request still waiting (nil: as a relay that never answered).
    func reply(_ sdp: String?) { waiting.removeFirst()(sdp.map { Array($0.utf8) }) }
    var waitingCount: Int { waiting.count }
}

/// Media anchoring (issue 16): every session description crossing the edge goes through the
/// relay, by the session the caller's leg names for the call's whole life.
@Suite struct MediaAnchoringTests {
    typealias Stage = B2BUAStage
    static let backend = Stage.backends[0]

    static func stage(_ relay: RecordingRelay, recovering: Bool = false) -> Stage {
        let s = Stage { $0.picker = RecordingPicker(Stage.backends, recovering: recovering); $0.pingSeconds = 30 }
        s.b2bua.media = relay
        return s
    }

    @Test func rfc3264_the_callers_offer_reaches_the_backend_as_the_relay_rewrote_it() throws {
        let relay = RecordingRelay()
        let s = Self.stage(relay)
        s.fromCaller(s.invite())
        #expect(s.unread(to: Self.backend).isEmpty, "nothing goes on before the relay answers")
        let offer = try #require(relay.requests.first)
        #expect(offer.kind == "offer" && offer.session.callID == "call-1@192.0.2.10" && offer.session.fromTag == "a1" && offer.sdp == Stage.sdp)
        relay.reply(RecordingRelay.relaySDP(port: 30_002))
        let invite = try #require(s.next(to: Self.backend))
        #expect(invite.method == .invite && invite.body.string == RecordingRelay.relaySDP(port: 30_002))
        #expect(s.b2bua.dialogRecords().isEmpty, "(early)")
    }

    @Test func rfc3264_the_backends_answer_reaches_the_caller_rewritten_and_a_response_meanwhile_waits_its_turn() throws {
        let relay = RecordingRelay()
        let s = Self.stage(relay)
        s.fromCaller(s.invite())
        relay.reply(RecordingRelay.relaySDP(port: 30_002))
        let invite = try #require(s.next(to: Self.backend))
        s.fromBackend(Stage.response(to: invite, 183, body: Stage.answerSDP))
        s.fromBackend(Stage.response(to: invite, 200, body: Stage.answerSDP))
        #expect(s.unread(to: Stage.caller).filter { $0.statusCode != 100 }.isEmpty, "both wait for the relay")
        #expect(relay.waitingCount == 1, "the 200 waits behind the 183's answer")
        let first = try #require(relay.requests.last)
        #expect(first.kind == "answer" && first.session.fromTag == "a1" && first.session.toTag == offerTag(relay) && first.sdp == Stage.answerSDP)
        relay.reply(RecordingRelay.relaySDP(port: 30_000))
        #expect(s.unread(to: Stage.caller).filter { $0.statusCode != 100 }.map(\.statusCode) == [183])
        relay.reply(RecordingRelay.relaySDP(port: 30_000))
        let ok = try #require(s.unread(to: Stage.caller).first { $0.statusCode == 200 })
        #expect(ok.body.string == RecordingRelay.relaySDP(port: 30_000))
        #expect(relay.requests.map(\.kind) == ["offer", "answer", "answer"])
    }

    /// The edge's tag toward the caller: what names everything behind the edge to the relay.
    func offerTag(_ relay: RecordingRelay) -> String { relay.requests.first?.session.toTag ?? "" }

    @Test func rfc3264_a_reinvite_from_the_backend_is_an_offer_from_the_edges_side_and_the_callers_answer_goes_back_rewritten() throws {
        let relay = RecordingRelay()
        relay.immediate = true
        let s = Self.stage(relay)
        let (tag, invite) = try #require(s.establish())
        relay.immediate = false
        let hold = Stage.answerSDP + "a=sendonly\r\n"
        s.fromBackend(s.backendRequest("INVITE", cseq: 2, on: invite, body: hold))
        let offer = try #require(relay.requests.last)
        #expect(offer.kind == "offer" && offer.session.fromTag == tag && offer.session.toTag == "a1" && offer.sdp == hold)
        relay.reply(RecordingRelay.relaySDP(port: 30_000) + "a=sendonly\r\n")
        let reinvite = try #require(s.unread(to: Stage.caller).first { $0.method == .invite })
        #expect(reinvite.body.string == RecordingRelay.relaySDP(port: 30_000) + "a=sendonly\r\n")
        s.fromCaller(Stage.response(to: reinvite, 200, toTag: nil, body: Stage.sdp + "a=recvonly\r\n"))
        let answer = try #require(relay.requests.last)
        #expect(answer.kind == "answer" && answer.session.fromTag == tag && answer.session.toTag == "a1")
        relay.reply(RecordingRelay.relaySDP(port: 30_002) + "a=recvonly\r\n")
        let ok = try #require(s.unread(to: Self.backend).first { $0.statusCode == 200 })
        #expect(ok.body.string == RecordingRelay.relaySDP(port: 30_002) + "a=recvonly\r\n")
    }

    @Test func the_relay_forgets_the_call_when_it_ends() throws {
        let relay = RecordingRelay()
        relay.immediate = true
        let s = Self.stage(relay)
        let (tag, _) = try #require(s.establish())
        s.fromCaller(s.callerRequest("BYE", cseq: 2, toTag: tag))
        #expect(relay.deletes.count == 1 && relay.deletes.first?.callID == "call-1@192.0.2.10" && relay.deletes.first?.fromTag == "a1")
    }

    @Test func rfc3261_9_2_a_call_cancelled_while_the_relay_works_goes_there_too_and_never_reaches_the_backend() throws {
        let relay = RecordingRelay()
        let s = Self.stage(relay)
        let branch = s.newBranch()
        s.fromCaller(s.invite(branch: branch))
        s.fromCaller(s.cancel(branch: branch))
        #expect(s.unread(to: Stage.caller).compactMap(\.statusCode).contains(487))
        relay.reply(RecordingRelay.relaySDP(port: 30_002))
        #expect(s.unread(to: Self.backend).isEmpty && relay.deletes.count == 1 && s.b2bua.activeCalls == 0)
    }

    @Test func with_no_relay_answering_the_call_goes_on_with_its_own_media() throws {
        let relay = RecordingRelay()
        let s = Self.stage(relay)
        s.fromCaller(s.invite())
        relay.reply(nil)
        let invite = try #require(s.next(to: Self.backend))
        #expect(invite.body.string == Stage.sdp)
        s.fromBackend(Stage.response(to: invite, 200, body: Stage.answerSDP))
        #expect(relay.requests.count == 1, "not anchored: the answer does not go to the relay")
        #expect(s.unread(to: Stage.caller).first { $0.statusCode == 200 }?.body.string == Stage.answerSDP)
    }

    @Test func a_recovered_call_with_media_anchored_changes_only_the_relays_backend_side() throws {
        let relay = RecordingRelay()
        relay.immediate = true
        let s = Self.stage(relay, recovering: true)
        try #require(s.establish() != nil)
        s.wait(30_000)
        _ = s.unread(to: Stage.caller)
        s.b2bua.unreachable(Self.backend)
        s.clock.endIteration()
        let invite = try #require(s.next(to: Stage.backends[1]))
        #expect(invite.body.string == RecordingRelay.relaySDP(port: 30_002), "the relay's side, as the lost backend had it")
        let moved = Stage.answerSDP.replacingOccurrences(of: "m=audio 10000", with: "m=audio 20000")
        s.fromBackend(Stage.response(to: invite, 200, body: moved), hop: Stage.backends[1])
        #expect(relay.requests.last?.kind == "answer" && relay.requests.last?.sdp == moved)
        #expect(s.unread(to: Stage.caller).filter { $0.method == .invite }.isEmpty, "the caller keeps sending to the relay: no re-INVITE")
        #expect(s.b2bua.statistics.recoveriesDone == 1)
    }

    @Test func a_call_taken_over_by_another_worker_or_node_stays_anchored_and_its_end_deletes_the_session() throws {
        let first = RecordingRelay()
        first.immediate = true
        let one = Self.stage(first)
        let (tag, _) = try #require(one.establish())
        let record = try #require(one.b2bua.dialogRecords().first)
        #expect(record.mediaAnchored, "the record says so: replicated and stored with the call")
        // Another node takes the call over (or this one restarts): its relay client has never
        // heard of the session, but the record tells it the relay holds one.
        let second = RecordingRelay()
        second.immediate = true
        let two = Self.stage(second)
        two.b2bua.adopt(record, active: true)
        let hold = Stage.sdp + "a=sendonly\r\n"
        two.fromCaller(two.callerRequest("INVITE", cseq: 2, toTag: tag, body: hold))
        let offer = try #require(second.requests.first)
        #expect(offer.kind == "offer" && offer.session.established && offer.session.fromTag == "a1" && offer.sdp == hold)
        let reinvite = try #require(two.unread(to: Self.backend).first { $0.method == .invite })
        #expect(reinvite.body.string == RecordingRelay.relaySDP(port: 30_002), "the backend gets the relay's side")
        two.fromBackend(Stage.response(to: reinvite, 200, body: Stage.answerSDP))
        #expect(second.requests.last?.kind == "answer")
        two.fromCaller(two.callerRequest("ACK", cseq: 2, toTag: tag))
        two.fromCaller(two.callerRequest("BYE", cseq: 3, toTag: tag))
        #expect(second.deletes.count == 1 && second.deletes.first?.established == true && second.deletes.first?.callID == "call-1@192.0.2.10")
    }

    @Test func rfc3264_a_late_offer_from_the_backend_goes_through_the_relay_and_so_does_the_callers_answer_in_its_ack() throws {
        let relay = RecordingRelay()
        let s = Self.stage(relay)
        s.fromCaller(s.invite(body: ""))
        let invite = try #require(s.next(to: Self.backend))
        #expect(invite.body.isEmpty && relay.requests.isEmpty, "no offer yet: the backend makes it")
        s.fromBackend(Stage.response(to: invite, 200, body: Stage.answerSDP))
        let offer = try #require(relay.requests.first)
        let edgeTag = try #require(offer.session.fromTag == "a1" ? nil : offer.session.fromTag)
        #expect(offer.kind == "offer" && offer.sdp == Stage.answerSDP && offer.session.toTag == "a1", "the backend's offer, from the edge's side")
        relay.reply(RecordingRelay.relaySDP(port: 30_000))
        let ok = try #require(s.unread(to: Stage.caller).first { $0.statusCode == 200 })
        #expect(ok.body.string == RecordingRelay.relaySDP(port: 30_000) && ok.tag(of: .to)?.string == edgeTag)
        #expect(s.unread(to: Self.backend).isEmpty, "the backend's ACK waits for the caller's answer")
        s.fromCaller(s.callerRequest("ACK", cseq: 1, toTag: edgeTag, body: Stage.sdp))
        let answer = try #require(relay.requests.last)
        #expect(answer.kind == "answer" && answer.sdp == Stage.sdp && answer.session.fromTag == edgeTag && answer.session.toTag == "a1")
        #expect(s.unread(to: Self.backend).isEmpty, "nor before the relay answers")
        relay.reply(RecordingRelay.relaySDP(port: 30_002))
        let ack = try #require(s.next(to: Self.backend))
        #expect(ack.method == .ack && ack.body.string == RecordingRelay.relaySDP(port: 30_002))
        #expect(s.b2bua.dialogRecords().first?.mediaAnchored == true)
        s.fromCaller(s.callerRequest("BYE", cseq: 2, toTag: edgeTag))
        #expect(relay.deletes.count == 1)
    }
}
