import SIPParser
import Testing
import Transport
@testable import Dialog

/// The builder writes numbers, Via, Contact and tagged addresses straight into the message: the
/// result must be exactly what SIP expects, and parse back.
@Suite struct MessageBuilderTests {
    @Test func numbers_via_contact_and_tags_are_written_as_sip_expects() throws {
        var ids = ShardedIdentifiers(worker: 3)
        var b = MessageBuilder(requestLine: "OPTIONS", uri: Array("sip:10.0.0.5:5080".utf8))
        b.via(.udp, host: "192.0.2.1", port: 5060, ids: &ids)
        b.header("Max-Forwards", number: 70)
        b.header("From", Array("<sip:edge@192.0.2.1>".utf8), tag: "abc")
        b.header("To", Array("<sip:10.0.0.5>".utf8), tag: "")
        b.header("Call-ID", "s3xcall")
        b.cseq(0, "OPTIONS")
        b.contact(.init(user: "edge", host: "192.0.2.1", port: 65_535, transport: .tcp))
        let bytes = b.finish()
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.contains("\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKs3x"))
        #expect(text.contains(";rport\r\nMax-Forwards: 70\r\n"))
        #expect(text.contains("\r\nFrom: <sip:edge@192.0.2.1>;tag=abc\r\nTo: <sip:10.0.0.5>\r\n"))
        #expect(text.contains("\r\nCSeq: 0 OPTIONS\r\n"))
        #expect(text.contains("\r\nContact: <sip:edge@192.0.2.1:65535;transport=tcp>\r\n"))
        #expect(text.hasSuffix("\r\nContent-Length: 0\r\n\r\n"))
        let m = try SIPMessage(parsing: bytes)
        try m.validate(limits: .init())
        let branch = try #require(m.topViaBranch)
        #expect(branch.string.hasPrefix("z9hG4bKs3x") && branch.count <= "z9hG4bK".count + 15)
        #expect(branch.withUnsafeBytes { ShardedIdentifiers.worker(of: $0.dropFirst(7), workers: 4) } == 3)
        #expect(try m.cseq().number == 0)
    }

    @Test func a_response_copies_the_request_and_tags_its_to_once() throws {
        let request = try SIPMessage(parsing: Array((
            "BYE sip:a@192.0.2.9 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP 192.0.2.8;branch=z9hG4bK2\r\n"
            + "From: <sip:b@192.0.2.9>;tag=f\r\nTo: <sip:a@192.0.2.1>\r\nCall-ID: c1\r\nCSeq: 12 BYE\r\nContent-Length: 0\r\n\r\n").utf8))
        let text = String(decoding: MessageBuilder.response(to: request, status: 200, toTag: "t9"), as: UTF8.self)
        #expect(text.hasPrefix("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP 192.0.2.8;branch=z9hG4bK2\r\n"))
        #expect(text.contains("\r\nTo: <sip:a@192.0.2.1>;tag=t9\r\nCall-ID: c1\r\nCSeq: 12 BYE\r\n"))
        let tagged = try SIPMessage(parsing: Array(text.utf8))
        let again = String(decoding: MessageBuilder.response(to: tagged, status: 200, toTag: "other"), as: UTF8.self)
        #expect(again.contains(";tag=t9\r\n") && !again.contains("other"), "a To that has a tag keeps it")
    }

    @Test func identifiers_are_short_and_name_their_worker() {
        for worker in [0, 7, 12, 1234] {
            var ids = ShardedIdentifiers(worker: worker)
            var seen = Set<String>()
            for _ in 0..<1_000 {
                let id = ids.make()
                #expect(ShardedIdentifiers.worker(of: Array(id.utf8), workers: 10_000) == worker)
                #expect(id.utf8.count <= "s\(worker)x".utf8.count + 12)
                seen.insert(id)
            }
            #expect(seen.count == 1_000)
        }
    }

    @Test func generated_identifiers_carry_their_worker() {
        var ids = ShardedIdentifiers(worker: 5)
        var seen = Set<String>()
        for _ in 0..<1_000 {
            let id = ids.make()
            seen.insert(id)
            #expect(ShardedIdentifiers.worker(of: Array(id.utf8), workers: 8) == 5)
            #expect(id.utf8.allSatisfy { ($0 | 0x20) &- 0x61 < 26 || $0 &- 0x30 < 10 })
        }
        #expect(seen.count == 1_000)
        #expect(ShardedIdentifiers.worker(of: Array("s5x1".utf8), workers: 4) == nil)   // no such worker
        #expect(ShardedIdentifiers.worker(of: Array("abc".utf8), workers: 4) == nil)
        #expect(ShardedIdentifiers.worker(of: Array("s12345x1".utf8), workers: 99_999) == nil)
    }
}
