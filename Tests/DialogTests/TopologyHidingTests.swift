import SIPParser
import Testing
@testable import Dialog

/// The pieces of topology hiding that read a message without parsing all of it.
@Suite struct TopologyHidingTests {
    static func contact(_ value: String) throws -> String? {
        let text = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>;tag=2\r\n"
            + "Call-ID: c\r\nCSeq: 1 INVITE\r\nContact: \(value)\r\nContent-Length: 0\r\n\r\n"
        let m = try SIPMessage(parsing: Array(text.utf8))
        try m.validate()
        return B2BUA.contactURI(of: m).map { String(decoding: $0, as: UTF8.self) }
    }

    @Test func rfc3261_20_10_the_first_contacts_uri_is_found_in_each_form() throws {
        #expect(try Self.contact("<sip:ast@10.0.0.5:5080;transport=tcp>;expires=60") == "sip:ast@10.0.0.5:5080;transport=tcp")
        #expect(try Self.contact("\"A <b>, c; d\" <sip:x@192.0.2.1>") == "sip:x@192.0.2.1")
        #expect(try Self.contact("sip:alice@192.0.2.4;expires=30") == "sip:alice@192.0.2.4")
        #expect(try Self.contact("sip:one@192.0.2.4, <sip:two@192.0.2.5>") == "sip:one@192.0.2.4")
        #expect(try Self.contact("Bob <sips:bob@[2001:db8::1]:5061>, sip:c@d") == "sips:bob@[2001:db8::1]:5061")
        #expect(try Self.contact("*") == nil)
    }

    @Test func option_tags_naming_the_session_timer_are_found_in_any_case() {
        #expect(B2BUA.mentionsTimer(ByteView(text: "100rel, TIMER")))
        #expect(B2BUA.mentionsTimer(ByteView(text: "timer")))
        #expect(!B2BUA.mentionsTimer(ByteView(text: "100rel, replaces, tim")))
    }
}
