import Testing
@testable import SIPParser

/// Asterisk/PJSIP traffic from `../shared/corpus/realistic`: parses, validates, round-trips.
@Suite struct RealisticTrafficTests {
    static let files = ["register_auth.sip", "401_unauthorized.sip", "options.sip", "invite_sdp.sip",
                        "100_trying.sip", "180_ringing.sip", "200_ok_invite_sdp.sip", "ack.sip",
                        "reinvite_hold.sip", "bye.sip"]

    @Test func corpus_lists_these_files() throws {
        #expect(Set(try Corpus.files("realistic", suffix: ".sip")) == Set(Self.files))
    }

    @Test(arguments: files)
    func parses_validates_and_round_trips(_ file: String) throws {
        let bytes = try Corpus.bytes("realistic/\(file)")
        let m = try SIPMessage(parsing: bytes)
        try m.validate()
        #expect(m.messageLength == bytes.count)
        #expect(m.callID != nil && m.topViaBranch != nil && m.tag(of: .from) != nil)
    }

    @Test func call_fields_match_across_the_dialog() throws {
        let invite = try SIPMessage(parsing: try Corpus.bytes("realistic/invite_sdp.sip"))
        let ok = try SIPMessage(parsing: try Corpus.bytes("realistic/200_ok_invite_sdp.sip"))
        let bye = try SIPMessage(parsing: try Corpus.bytes("realistic/bye.sip"))
        #expect(invite.callID == ok.callID && ok.callID == bye.callID)
        #expect(invite.tag(of: .from) == ok.tag(of: .from))
        #expect(ok.tag(of: .to) == bye.tag(of: .to))
        #expect(try invite.cseq() == CSeqValue(number: 2, method: .invite))
        #expect(invite.body.count == 306 && invite.contentType == "application/sdp")
        #expect(ok.body.count == 261 && ok.statusCode == 200)
        #expect(ok.valueCount(.via) == 2)
        #expect(try ok.vias()[1].received == "198.51.100.23")
        #expect(try ok.addresses(.recordRoute).count == ok.valueCount(.recordRoute))
        #expect(try ok.sessionExpires() != nil)
        let route = try bye.addresses(.route)
        #expect(!route.isEmpty && route[0].uri.isLooseRouter)
        let reinvite = try SIPMessage(parsing: try Corpus.bytes("realistic/reinvite_hold.sip"))
        #expect(try reinvite.minSE() != nil)
        let register = try SIPMessage(parsing: try Corpus.bytes("realistic/register_auth.sip"))
        #expect(try register.expires() == 3600)
        guard case .addresses(let contacts)? = try register.contact() else { Issue.record("no contact"); return }
        #expect(contacts[0].parameter("+sip.instance") != nil && contacts[0].parameter("reg-id") != nil)
    }
}
