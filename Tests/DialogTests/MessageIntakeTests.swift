import Dialog
import Foundation
import SIPParser
import Testing

/// The SIP stack's intake, without sockets: what bytes become, and which worker owns a message.
@Suite struct MessageIntakeTests {
    let intake = MessageIntake(worker: 1, workers: 4, limits: .default)

    static func bytes(_ text: String) -> [UInt8] { Array(text.replacingOccurrences(of: "\n", with: "\r\n").utf8) }

    static let options = bytes("""
        OPTIONS sip:edge@127.0.0.1 SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKa1
        Max-Forwards: 70
        From: <sip:a@127.0.0.1>;tag=f1
        To: <sip:edge@127.0.0.1>
        Call-ID: c1@127.0.0.1
        CSeq: 1 OPTIONS
        Content-Length: 0


        """)

    @Test func rfc5626_crlfs_are_a_keep_alive_and_a_valid_message_goes_on() {
        guard case .keepAlive = intake.take(Self.bytes("\n\n"), answerable: true) else { Issue.record("not a keep-alive"); return }
        guard case .message(let m) = intake.take(Self.options, answerable: true) else { Issue.record("not accepted"); return }
        #expect(m.method == .options)
    }

    @Test func rfc3261_8_2_an_invalid_request_is_answered_statelessly_with_its_reason() throws {
        let noCSeq = Array(String(decoding: Self.options, as: UTF8.self).replacingOccurrences(of: "CSeq: 1 OPTIONS\r\n", with: "").utf8)
        guard case .invalid(_, let answer?, let outcome) = intake.take(noCSeq, answerable: true) else {
            Issue.record("no answer")
            return
        }
        let response = try SIPMessage(parsing: answer)
        #expect(response.statusCode == 400)
        #expect(response.firstValue(.warning)?.string.contains("399 sipedge") == true)
        #expect(outcome.hasPrefix("answered 400"))
        guard case .invalid(_, nil, _) = intake.take(noCSeq, answerable: false) else { Issue.record("answered where it cannot be"); return }
    }

    @Test func a_message_is_owned_by_the_worker_its_branch_tag_or_call_id_names_else_by_the_receiver() throws {
        func owner(_ text: String, spread: Bool = false) throws -> Int {
            let m = try SIPMessage(parsing: Self.bytes(text + "\nContent-Length: 0\n\n"))
            return intake.owner(of: m, spreadByCallID: spread)
        }
        let base = "From: <sip:a@b>;tag=f\nCSeq: 1 INVITE"
        #expect(try owner("SIP/2.0 200 OK\nVia: SIP/2.0/UDP h;branch=z9hG4bKs3x99\nTo: <sip:b@c>;tag=t\nCall-ID: c\n\(base)") == 3)
        #expect(try owner("BYE sip:x@y SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bKq\nTo: <sip:b@c>;tag=s2xab\nCall-ID: c\n\(base)") == 2)
        #expect(try owner("BYE sip:x@y SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bKq\nTo: <sip:b@c>;tag=other\nCall-ID: s0xzz\n\(base)") == 0)
        #expect(try owner("INVITE sip:x@y SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bKq\nTo: <sip:b@c>\nCall-ID: new\n\(base)") == 1, "the receiver")
        #expect(try owner("SIP/2.0 200 OK\nVia: SIP/2.0/UDP h;branch=z9hG4bKs9x1\nTo: <sip:b@c>\nCall-ID: c\n\(base)") == 1, "no worker 9: the receiver")
        let spread = try (0..<40).map { try owner("INVITE sip:x@y SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bKq\nTo: <sip:b@c>\nCall-ID: call-\($0)\n\(base)", spread: true) }
        #expect(Set(spread).count > 1, "spread by Call-ID: \(spread)")
    }
}
