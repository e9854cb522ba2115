import Testing
@testable import SIPParser

/// Header indexing, names, URIs, limits and hostile input.
@Suite struct ParserTests {
    func msg(_ text: String) throws(SIPParseError) -> SIPMessage { try SIPMessage(parsing: Array(text.utf8)) }

    static let base = "Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\n"

    @Test func rfc3261_7_1_methods_are_case_sensitive_tokens() {
        #expect(SIPMethod("INVITE") == .invite && SIPMethod("PUBLISH") == .publish)
        #expect(SIPMethod("invite") == .other("invite") && SIPMethod("NEWMETHOD") == .other("NEWMETHOD"))
        #expect(SIPMethod("") == nil && SIPMethod("A B") == nil && SIPMethod("X:") == nil)
        #expect(SIPMethod.invite.description == "INVITE")
    }

    @Test func rfc3261_25_1_and_rfc5118_4_5_a_via_received_may_be_a_bare_ipv6_address() throws {
        func via(_ params: String) throws(SIPParseError) -> ViaValue {
            let m = try msg("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::9]:5060\(params)\r\n"
                            + "From: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
            try m.validate()
            return try m.topVia()
        }
        for received in ["2001:db8::9", "2001:db8:0:0:0:0:0:9", "::1", "::", "fe80::1:2", "::ffff:192.0.2.1", "1:2:3:4:5:6:7:8",
                         "1:2:3:4:5:6:192.0.2.1", "[2001:db8::9]", "192.0.2.1"] {
            let v = try via(";received=\(received);branch=z9hG4bK1;rport=5060")
            #expect(v.received?.string == received)
            #expect(v.branch?.string == "z9hG4bK1", "parameters after it are still read")
        }
        for bad in ["2001:db8:::9", "1:2:3:4:5:6:7:8:9", "12345::1", "2001:db8::9:", "::ffff:192.0.2.256", "1::2::3", "1:2:3:4:5:6:7:192.0.2.1"] {
            #expect(throws: SIPParseError.self, "received=\(bad)") { try via(";received=\(bad);branch=z9hG4bK1") }
        }
        #expect(try via(";maddr=[2001:db8::1];ttl=16;branch=z9hG4bK1").maddr?.string == "[2001:db8::1]")
    }

    @Test func a_received_with_a_colon_and_a_long_run_of_digits_is_an_error_not_a_crash() throws {
        // Found by the fuzzer: the dotted IPv4 tail of an IPv6 candidate overflowed its counter.
        let digits = String(repeating: "1", count: 120)
        for received in ["203.019.131.5\(digits)0:52", "::\(digits)", "::1.\(digits)", "1::2.3.4.\(digits)"] {
            let text = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;received=\(received);branch=z9hG4bK1\r\n"
                + "From: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            let m = try msg(text)
            #expect(throws: SIPParseError.self, "\(received)") { try m.validate() }
        }
    }

    @Test func header_kinds_fit_their_table() {
        #expect(HeaderKind.allCases.count <= HeaderKind.tableSize)
    }

    @Test func rfc3261_7_3_3_compact_and_long_names_case_insensitively() throws {
        for kind in HeaderKind.allCases where kind != .other {
            for name in [kind.canonicalName, kind.canonicalName.uppercased(), kind.canonicalName.lowercased()] {
                let bytes = Array(name.utf8)
                let found = bytes.withUnsafeBytes { HeaderKind.lookup($0.baseAddress!, 0, bytes.count) }
                #expect(found == kind, "\(name)")
            }
        }
        let compact: [(String, HeaderKind)] = [("i", .callID), ("m", .contact), ("e", .contentEncoding), ("l", .contentLength),
            ("c", .contentType), ("f", .from), ("s", .subject), ("k", .supported), ("t", .to), ("v", .via), ("o", .event),
            ("u", .allowEvents), ("r", .referTo), ("b", .referredBy), ("x", .sessionExpires), ("y", .identity), ("V", .via)]
        for (name, kind) in compact {
            let bytes = Array(name.utf8)
            #expect(bytes.withUnsafeBytes { HeaderKind.lookup($0.baseAddress!, 0, 1) } == kind)
        }
        let m = try msg("OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:x@y>;tag=1\r\nt: <sip:a@b>\r\ni: c\r\nCSEQ: 1 OPTIONS\r\nX-Custom: yes\r\nl: 0\r\n\r\n")
        try m.validate()
        #expect(m.firstValue(named: "x-custom") == "yes" && m.header(at: 5).kind == .other)
    }

    @Test func rfc3261_7_3_1_list_values_split_outside_quotes_and_brackets() throws {
        let m = try msg("REGISTER sip:b SIP/2.0\r\n" + Self.base + "CSeq: 1 REGISTER\r\n" +
            "Contact: \"a, b\" <sip:a,b@c;x=1>;q=0.5, <sip:c@d>\r\nContact: sip:e@f\r\n\r\n")
        try m.validate()
        #expect(m.values(.contact).map(\.string) == ["\"a, b\" <sip:a,b@c;x=1>;q=0.5", "<sip:c@d>", "sip:e@f"])
        #expect(try m.contact().map { if case .addresses(let a) = $0 { a.count } else { -1 } } == 3)
    }

    @Test func contact_star() throws {
        let m = try msg("REGISTER sip:b SIP/2.0\r\n" + Self.base + "CSeq: 1 REGISTER\r\nContact: *\r\nExpires: 0\r\n\r\n")
        try m.validate()
        guard case .star? = try m.contact() else { Issue.record("expected *"); return }
    }

    @Test func uri_forms() throws {
        let v6 = try SIPURI("sips:alice:secret@[2001:db8::1]:5061;transport=tcp;lr?subject=hi&x=y")
        #expect(v6.scheme == .sips && v6.user == "alice" && v6.password == "secret")
        #expect(v6.host == "[2001:db8::1]" && v6.port == 5061)
        #expect((v6.parameter("transport") ?? nil) == "tcp")
        #expect(v6.isLooseRouter && v6.headersText == "subject=hi&x=y")
        let tel = try SIPURI("tel:+1-201-555-0123;phone-context=example.com")
        #expect(tel.scheme == .tel && tel.user == "+1-201-555-0123")
        for bad in ["sip:", "sip:a@", "sip:a@b:99999", "sip:a@[::1", "sip:a b@c", "<sip:a@b>", "sip:a@b;=x", "sip:%zz@b"] {
            #expect(throws: SIPParseError.self, "\(bad)") { try SIPURI(bad) }
        }
    }

    @Test func via_fields() throws {
        let m = try msg("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP / 2.0 / TCP [::1] : 5070 ; branch = z9hG4bKx ; rport=5070; received=192.0.2.1;ttl=16\r\n" +
            "From: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n")
        try m.validate()
        let via = try m.topVia()
        #expect(via.transport == "TCP" && via.host == "[::1]" && via.port == 5070)
        #expect(via.branch == "z9hG4bKx" && via.rport == 5070 && via.received == "192.0.2.1" && via.ttl == 16)
        #expect(m.topViaBranch == "z9hG4bKx")
    }

    @Test func session_timer_and_option_tags() throws {
        let m = try msg("INVITE sip:a@b SIP/2.0\r\n" + Self.base + "CSeq: 1 INVITE\r\nSupported: timer, 100rel\r\nRequire: timer\r\n" +
            "Session-Expires: 1800;refresher=uac\r\nMin-SE: 90\r\n\r\n")
        try m.validate()
        #expect(try m.sessionExpires() == SessionExpiresValue(seconds: 1800, refresher: .uac))
        #expect(try m.minSE() == 90)
        #expect(try m.optionTags(.supported).map(\.string) == ["timer", "100rel"])
        #expect(try m.optionTags(.require).map(\.string) == ["timer"])
    }

    @Test func numbers_are_range_checked() throws {
        let cases: [(String, SIPParseError.Code)] = [
            ("Max-Forwards: 256\r\n", .badMaxForwards), ("Max-Forwards: -1\r\n", .badMaxForwards),
            ("Expires: 4294967296\r\n", .badExpires), ("Session-Expires: 99999999999\r\n", .badNumber),
        ]
        for (header, code) in cases {
            let m = try msg("OPTIONS sip:a@b SIP/2.0\r\n" + Self.base + "CSeq: 1 OPTIONS\r\n" + header + "\r\n")
            #expect(throws: SIPParseError(code, at: 0), "\(header)") { try m.validate() }
        }
        #expect(throws: SIPParseError(.badCSeq, at: 0)) {
            try self.msg("OPTIONS sip:a@b SIP/2.0\r\n" + Self.base + "CSeq: 4294967296 OPTIONS\r\n\r\n").validate()
        }
    }

    @Test func control_bytes_are_refused_outside_quoted_pairs() throws {
        #expect(throws: SIPParseError(.controlCharacter, at: 0)) {
            try self.msg("OPTIONS sip:a@b SIP/2.0\r\nSubject: a\u{0}b\r\n\r\n")
        }
        #expect(throws: SIPParseError(.controlCharacter, at: 0)) {
            try self.msg("OPTIONS sip:a@b SIP/2.0\r\nSubject: bare\nlf\r\n\r\n")
        }
        let ok = try msg("OPTIONS sip:a@b SIP/2.0\r\nSubject: \"a\\\u{7}b\"\tc\r\n\r\n")
        #expect(ok.firstValue(.subject)?.count == 8)
        #expect(throws: SIPParseError(.controlCharacter, at: 0)) {
            try self.msg("OPTIONS sip:a@b SIP/2.0\r\nSubject: \"a\u{7}b\"\r\n\r\n")
        }
    }

    @Test func start_line_errors() throws {
        let bad: [(String, SIPParseError.Code)] = [
            ("OPTIONS sip:a@b SIP/2.0", .truncated), ("OPTIONS sip:a@b\r\n\r\n", .malformedStartLine),
            ("SIP/2.0 20 OK\r\n\r\n", .malformedStatusCode), ("SIP/2.0 700 X\r\n\r\n", .malformedStatusCode),
            ("SIP/3.0 200 OK\r\n\r\n", .unsupportedVersion), ("OPTIONS sip:a@b HTTP/1.1\r\n\r\n", .malformedStartLine),
            ("OPTIONS sip:a@b SIP/2.0\r\nBad Name: x\r\n\r\n", .malformedHeaderName),
            ("OPTIONS sip:a@b SIP/2.0\r\nNoColon\r\n\r\n", .missingColon),
            ("", .truncated),
        ]
        for (text, code) in bad {
            #expect(throws: SIPParseError(code, at: 0), "\(text)") { try self.msg(text) }
        }
        #expect(try msg("\r\n\r\nOPTIONS sip:a@b sip/2.0\r\n\r\n").isRequest)
    }

    @Test func limits_refuse_before_allocating() throws {
        let limits = SIPParserLimits(maxMessageBytes: 1000, maxHeaders: 8, maxHeaderBytes: 100, maxVias: 2)
        let many = "OPTIONS sip:a@b SIP/2.0\r\n" + String(repeating: "X-A: 1\r\n", count: 9) + "\r\n"
        #expect(throws: SIPParseError(.tooManyHeaders, at: 0)) { try SIPMessage(parsing: Array(many.utf8), limits: limits) }
        let long = "OPTIONS sip:a@b SIP/2.0\r\nX-A: " + String(repeating: "a", count: 200) + "\r\n\r\n"
        #expect(throws: SIPParseError(.headerTooLong, at: 0)) { try SIPMessage(parsing: Array(long.utf8), limits: limits) }
        let huge = Array(repeating: UInt8(ascii: "a"), count: 1001)
        let e = #expect(throws: SIPParseError.self) { try SIPMessage(parsing: huge, limits: limits) }
        #expect(e?.code == .messageTooLarge && e?.status == 513)
        let vias = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP a, SIP/2.0/UDP b, SIP/2.0/UDP c\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n"
        #expect(throws: SIPParseError(.tooManyVias, at: 0)) { try SIPMessage(parsing: Array(vias.utf8), limits: limits).validate(limits: limits) }
        let bigCL = "OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 99999999999999999999999\r\n\r\n"
        #expect(throws: SIPParseError(.badContentLength, at: 0)) { try self.msg(bigCL) }
    }

    @Test func rfc3261_16_3_unsupported_scheme_is_416_and_big_body_413() throws {
        let unkscm = try SIPMessage(parsing: try Corpus.bytes("rfc4475/unkscm.dat"))
        let e = #expect(throws: SIPParseError.self) { try unkscm.checkRequestURIScheme() }
        #expect(e?.code == .unsupportedURIScheme && e?.status == 416)
        for file in ["rfc4475/novelsc.dat"] {
            #expect(throws: SIPParseError(.unsupportedURIScheme, at: 0)) { try SIPMessage(parsing: try Corpus.bytes(file)).checkRequestURIScheme() }
        }
        try SIPMessage(parsing: try Corpus.bytes("realistic/invite_sdp.sip")).checkRequestURIScheme()
        let limits = SIPParserLimits(maxBodyBytes: 100)
        let big = try #require(#expect(throws: SIPParseError.self) {
            try SIPMessage(parsing: try Corpus.bytes("realistic/invite_sdp.sip"), limits: limits)
        })
        #expect(big.code == .bodyTooLarge && big.status == 413)
    }

    @Test func many_headers_spill_past_the_inline_index() throws {
        let text = "OPTIONS sip:a@b SIP/2.0\r\n" + Self.base + "CSeq: 1 OPTIONS\r\n" +
            (0..<100).map { "X-H\($0): \($0)\r\n" }.joined() + "Content-Length: 0\r\n\r\n"
        let m = try msg(text)
        try m.validate()
        #expect(m.headerCount == 106 && m.firstValue(named: "X-H99") == "99" && m.contentLength == 0)
    }

    @Test func every_truncation_of_a_message_is_an_error_not_a_crash() throws {
        let bytes = try Corpus.bytes("rfc4475/wsinv.dat")
        for cut in 0..<bytes.count {
            let prefix = Array(bytes[0..<cut])
            if let m = try? SIPMessage(parsing: prefix) { _ = try? m.validate(); _ = m.body.count }
        }
    }
}
