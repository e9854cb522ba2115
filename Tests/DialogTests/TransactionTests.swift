import Foundation
import SIPParser
import Testing
@testable import Dialog

/// RFC 3261 §17 transactions driven by hand: events in, actions out, no sockets, no clock.
@Suite struct TransactionTests {
    static func message(_ text: String) -> SIPMessage {
        try! SIPMessage(parsing: Array(text.replacingOccurrences(of: "\n", with: "\r\n").utf8))
    }

    static let invite = message("""
        INVITE sip:bob@192.0.2.20 SIP/2.0
        Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKs0xclient1
        Route: <sip:192.0.2.30;lr>
        Max-Forwards: 70
        From: <sip:alice@example.com>;tag=a1
        To: <sip:bob@example.com>
        Call-ID: tx-test-1
        CSeq: 7 INVITE
        Content-Length: 0


        """)

    static func response(_ status: Int, method: String = "INVITE", toTag: String? = "b2") -> SIPMessage {
        message("""
            SIP/2.0 \(status) Reason
            Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKs0xclient1
            From: <sip:alice@example.com>;tag=a1
            To: <sip:bob@example.com>\(toTag.map { ";tag=\($0)" } ?? "")
            Call-ID: tx-test-1
            CSeq: 7 \(method)
            Content-Length: 0


            """)
    }

    static let options = message("""
        OPTIONS sip:bob@192.0.2.20 SIP/2.0
        Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKs0xclient2
        From: <sip:alice@example.com>;tag=a1
        To: <sip:bob@example.com>
        Call-ID: tx-test-2
        CSeq: 8 OPTIONS
        Content-Length: 0


        """)

    static var inviteBytes: [UInt8] { Array(invite.bytes[0..<invite.messageLength]) }

    @Test func rfc3261_17_1_1_2_timerA_doubles_until_timerB() {
        var t = ClientTransaction(request: Self.invite, reliability: .unreliable)
        #expect(t.start() == [.send(Self.inviteBytes), .arm(.a, milliseconds: 500), .arm(.b, milliseconds: 32_000)])
        #expect(t.handle(.timerFired(.a)) == [.send(Self.inviteBytes), .arm(.a, milliseconds: 1_000)])
        #expect(t.handle(.timerFired(.a)) == [.send(Self.inviteBytes), .arm(.a, milliseconds: 2_000)])
        #expect(t.handle(.timerFired(.a)) == [.send(Self.inviteBytes), .arm(.a, milliseconds: 4_000)])
        #expect(t.handle(.timerFired(.b)) == [.disarm(.a), .timedOut, .terminate])
        #expect(t.state == .terminated)
    }

    @Test func rfc3261_17_1_1_2_no_retransmission_over_reliable_transports() {
        var t = ClientTransaction(request: Self.invite, reliability: .reliable)
        #expect(t.start() == [.send(Self.inviteBytes), .arm(.b, milliseconds: 32_000)])
    }

    @Test func rfc3261_17_1_1_3_non_2xx_final_is_acked_hop_by_hop() throws {
        var t = ClientTransaction(request: Self.invite, reliability: .unreliable)
        _ = t.start()
        #expect(t.handle(.response(Self.response(180))) == [.disarm(.a), .passUp])
        let busy = Self.response(486)
        let actions = t.handle(.response(busy))
        let ack = ClientTransaction.nonSuccessACK(request: Self.invite, response: busy)
        #expect(actions == [.disarm(.a), .disarm(.b), .send(ack), .passUp, .arm(.d, milliseconds: 32_000)])
        // The ACK: same Request-URI, top Via, Route, From, Call-ID, CSeq number; To with the tag.
        let parsed = try SIPMessage(parsing: ack)
        try parsed.validate()
        #expect(parsed.method == .ack && parsed.requestURIBytes == "sip:bob@192.0.2.20")
        #expect(parsed.topViaBranch == "z9hG4bKs0xclient1" && parsed.tag(of: .to) == "b2")
        #expect(try parsed.cseq() == CSeqValue(number: 7, method: .ack) && parsed.valueCount(.route) == 1)
        // A retransmitted 486 gets the ACK again, and does not reach the TU.
        #expect(t.handle(.response(busy)) == [.send(ack)])
        #expect(t.handle(.timerFired(.d)) == [.terminate])
    }

    @Test func rfc6026_8_4_2xx_moves_to_accepted_and_retransmissions_reach_the_tu() {
        var t = ClientTransaction(request: Self.invite, reliability: .unreliable)
        _ = t.start()
        #expect(t.handle(.response(Self.response(200))) == [.disarm(.a), .disarm(.b), .passUp, .arm(.m, milliseconds: 32_000)])
        #expect(t.state == .accepted)
        #expect(t.handle(.response(Self.response(200))) == [.passUp])
        #expect(t.handle(.timerFired(.m)) == [.terminate])
    }

    @Test func rfc3261_17_1_2_2_timerE_doubles_to_T2_then_F_times_out() {
        var t = ClientTransaction(request: Self.options, reliability: .unreliable)
        _ = t.start()
        let bytes = Array(Self.options.bytes[0..<Self.options.messageLength])
        let intervals = (0..<5).map { _ -> UInt64? in
            if case .arm(.e, let ms) = t.handle(.timerFired(.e)).last { return ms }
            return nil
        }
        #expect(intervals == [1_000, 2_000, 4_000, 4_000, 4_000])
        #expect(t.handle(.timerFired(.e)).first == .send(bytes))
        #expect(t.handle(.response(Self.response(100, method: "OPTIONS"))) == [.passUp])
        #expect(t.handle(.timerFired(.e)) == [.send(bytes), .arm(.e, milliseconds: 4_000)])
        #expect(t.handle(.timerFired(.f)) == [.disarm(.e), .timedOut, .terminate])
    }

    @Test func rfc3261_17_1_2_2_final_response_then_timerK() {
        var t = ClientTransaction(request: Self.options, reliability: .unreliable)
        _ = t.start()
        #expect(t.handle(.response(Self.response(200, method: "OPTIONS"))) == [.disarm(.e), .disarm(.f), .passUp, .arm(.k, milliseconds: 5_000)])
        #expect(t.handle(.response(Self.response(200, method: "OPTIONS"))) == [])
        #expect(t.handle(.timerFired(.k)) == [.terminate])
        var reliable = ClientTransaction(request: Self.options, reliability: .reliable)
        _ = reliable.start()
        #expect(reliable.handle(.response(Self.response(404, method: "OPTIONS"))).last == .arm(.k, milliseconds: 0))
    }

    @Test func rfc3261_17_2_1_invite_server_retransmits_final_until_ack() {
        var t = ServerTransaction(method: .invite, reliability: .unreliable)
        let trying = Array("SIP/2.0 100 Trying\r\n\r\n".utf8)
        let busy = Array("SIP/2.0 486 Busy Here\r\n\r\n".utf8)
        #expect(t.start(trying: trying) == [.send(trying)])
        #expect(t.handle(.retransmission) == [.send(trying)])
        #expect(t.handle(.respond(status: 486, bytes: busy)) == [.send(busy), .arm(.g, milliseconds: 500), .arm(.h, milliseconds: 32_000)])
        #expect(t.handle(.retransmission) == [.send(busy)])
        #expect(t.handle(.timerFired(.g)) == [.send(busy), .arm(.g, milliseconds: 1_000)])
        #expect(t.handle(.timerFired(.g)) == [.send(busy), .arm(.g, milliseconds: 2_000)])
        #expect(t.handle(.timerFired(.g)) == [.send(busy), .arm(.g, milliseconds: 4_000)])
        #expect(t.handle(.timerFired(.g)) == [.send(busy), .arm(.g, milliseconds: 4_000)])
        #expect(t.handle(.ack) == [.disarm(.g), .disarm(.h), .arm(.i, milliseconds: 5_000)])
        #expect(t.state == .confirmed)
        #expect(t.handle(.ack) == [] && t.handle(.retransmission) == [])
        #expect(t.handle(.timerFired(.i)) == [.terminate])
    }

    @Test func rfc3261_17_2_1_timerH_without_ack_times_out() {
        var t = ServerTransaction(method: .invite, reliability: .unreliable)
        _ = t.start(trying: nil)
        _ = t.handle(.respond(status: 503, bytes: [1]))
        #expect(t.handle(.timerFired(.h)) == [.disarm(.g), .timedOut, .terminate])
    }

    @Test func rfc6026_7_1_invite_server_2xx_accepted_passes_ack_up() {
        var t = ServerTransaction(method: .invite, reliability: .reliable)
        _ = t.start(trying: nil)
        let ok = Array("SIP/2.0 200 OK\r\n\r\n".utf8)
        #expect(t.handle(.respond(status: 200, bytes: ok)) == [.send(ok), .arm(.l, milliseconds: 32_000)])
        #expect(t.handle(.respond(status: 200, bytes: ok)) == [.send(ok)])
        #expect(t.handle(.retransmission) == [])
        #expect(t.handle(.ack) == [.passUp])
        #expect(t.handle(.timerFired(.l)) == [.terminate])
    }

    @Test func rfc3261_17_2_2_non_invite_server() {
        var t = ServerTransaction(method: .options, reliability: .unreliable)
        #expect(t.start(trying: nil) == [])
        #expect(t.handle(.retransmission) == [], "Trying discards retransmissions")
        let ok = Array("SIP/2.0 200 OK\r\n\r\n".utf8)
        #expect(t.handle(.respond(status: 200, bytes: ok)) == [.send(ok), .arm(.j, milliseconds: 32_000)])
        #expect(t.handle(.retransmission) == [.send(ok)])
        #expect(t.handle(.timerFired(.j)) == [.terminate])
    }

    @Test func transport_errors_end_transactions() {
        var c = ClientTransaction(request: Self.options, reliability: .reliable)
        _ = c.start()
        #expect(c.handle(.transportError) == [.timedOut, .terminate])
        var s = ServerTransaction(method: .invite, reliability: .reliable)
        #expect(s.handle(.transportError) == [.timedOut, .terminate] && s.state == .terminated)
    }

    @Test func rfc3261_17_2_3_matching_keys() throws {
        let serverKey = try #require(TransactionKey.server(forRequest: Self.invite))
        let ack = try SIPMessage(parsing: Array(String(decoding: Self.inviteBytes, as: UTF8.self)
            .replacingOccurrences(of: "INVITE sip", with: "ACK sip").replacingOccurrences(of: "7 INVITE", with: "7 ACK").utf8))
        #expect(TransactionKey.server(forRequest: ack) == serverKey, "the ACK for a non-2xx finds its INVITE")
        #expect(serverKey.sentBy == Array("192.0.2.10:5060".utf8))
        // The scan reads sent-by as the Via parser does, in each form.
        for (via, sentBy) in [("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1", "192.0.2.1:5060"), ("SIP / 2.0 / TCP  h.example.com : 05070 ;rport", "h.example.com:5070"),
                              ("SIP/2.0/UDP [2001:db8::1]:5062;branch=x", "[2001:db8::1]:5062"), ("SIP/2.0/TLS [::1]", "[::1]:5060")] {
            let bytes = Array(via.utf8)
            let parsed = try ViaValue(bytes, 0, bytes.count)
            #expect(bytes.withUnsafeBytes(TransactionKey.sentBy).map { String(decoding: $0, as: UTF8.self) } == sentBy)
            #expect(sentBy == parsed.host.string + ":\(parsed.port ?? 5060)")
        }
        let old = try SIPMessage(parsing: try Data(contentsOf: URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("shared/corpus/rfc4475/badbranch.dat")).map { $0 })
        #expect(TransactionKey.server(forRequest: old) == nil, "a bare magic cookie is not an RFC 3261 branch")
    }
}
