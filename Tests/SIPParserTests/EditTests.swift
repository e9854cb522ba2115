import Testing
@testable import SIPParser

/// The serializer: edit lists applied in one pass, Content-Length kept right.
@Suite struct EditTests {
    static let invite = Array(("INVITE sip:bob@example.com SIP/2.0\r\n" +
        "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKaaa, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKbbb\r\n" +
        "Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n" +
        "Call-ID: abc@10.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@10.0.0.1>\r\n" +
        "Content-Type: application/sdp\r\nl: 4\r\n\r\nv=0\n").utf8)

    @Test func typical_proxy_edit_list() throws {
        let m = try SIPMessage(parsing: Self.invite)
        var edits = MessageEdits(m)
        edits.addTopVia("SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bKnew".utf8)
        edits.setRequestURI("sip:bob@10.1.1.1:5080".utf8)
        edits.replaceHeaderValue(at: 1, with: "69".utf8)
        edits.addHeaderAtTop("Record-Route", "<sip:192.0.2.5;lr>".utf8)
        edits.removeHeaders(.contact)
        let out = try SIPMessage(parsing: try edits.serialized())
        try out.validate()
        #expect(out.requestURIBytes == "sip:bob@10.1.1.1:5080")
        #expect(out.valueCount(.via) == 3)
        #expect(out.topViaBranch == "z9hG4bKnew")
        #expect(try out.maxForwards() == 69)
        #expect(out.valueCount(.recordRoute) == 1 && out.lineCount(.contact) == 0)
        #expect(out.body == "v=0\n")
        #expect(out.header(at: 0).name == "Via" && out.header(at: 1).name == "Record-Route")
    }

    @Test func new_body_rewrites_compact_content_length() throws {
        let m = try SIPMessage(parsing: Self.invite)
        var edits = MessageEdits(m)
        edits.setBody(Array("v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\n".utf8))
        let out = try SIPMessage(parsing: try edits.serialized())
        #expect(out.contentLength == 31 && out.body.count == 31)
        #expect(out.firstValue(.contentLength) == "31")
    }

    @Test func content_length_added_for_streams_when_missing() throws {
        let noLength = Array("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\nxyz".utf8)
        let m = try SIPMessage(parsing: noLength)
        #expect(try MessageEdits(m).serialized() == noLength)
        let framed = try MessageEdits(m).serialized(ensureContentLength: true)
        let out = try SIPMessage(parsing: framed)
        #expect(out.contentLength == 3 && out.body == "xyz")
    }

    @Test func remove_top_via_value_keeps_the_rest_of_the_line() throws {
        let m = try SIPMessage(parsing: Self.invite)
        var edits = MessageEdits(m)
        edits.removeTopVia()
        let out = try SIPMessage(parsing: try edits.serialized())
        #expect(out.valueCount(.via) == 1 && out.topViaBranch == "z9hG4bKbbb")
    }

    @Test func overlapping_edits_are_refused() throws {
        let m = try SIPMessage(parsing: Self.invite)
        var edits = MessageEdits(m)
        edits.replace(10..<20, with: "x".utf8)
        edits.replace(15..<25, with: "y".utf8)
        #expect(throws: SIPParseError.self) { try edits.serialized() }
    }
}
