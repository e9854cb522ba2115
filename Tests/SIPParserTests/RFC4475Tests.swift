import Foundation
import Testing
@testable import SIPParser

/// RFC 4475 torture messages: every file gets the verdict `../shared/corpus/rfc4475/INDEX.md` gives.
@Suite struct RFC4475Tests {
    /// (file, verdict) rows read from INDEX.md, so the oracle is the index itself.
    static func indexRows() throws -> [(file: String, verdict: String)] {
        let text = try String(contentsOf: Corpus.root.appendingPathComponent("rfc4475/INDEX.md"), encoding: .utf8)
        return text.split(separator: "\n").compactMap { line in
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 3, cells[0].hasSuffix(".dat") else { return nil }
            return (cells[0], cells[2])
        }
    }

    @Test func index_covers_all_49_files() throws {
        let rows = try Self.indexRows()
        #expect(rows.count == 49)
        #expect(Set(rows.map(\.file)) == Set(try Corpus.files("rfc4475", suffix: ".dat")))
    }

    @Test func every_file_gets_its_verdict() throws {
        for row in try Self.indexRows() {
            let result = Corpus.check(try Corpus.bytes("rfc4475/\(row.file)"))
            switch row.verdict {
            case "accept" where row.file != "insuf.dat":
                #expect(result.error == nil, "\(row.file): \(String(describing: result.error))")
            case "reject":
                #expect(result.value == nil, "\(row.file) must be refused")
            default:
                break // may-accept (and insuf, checked below)
            }
        }
    }

    @Test func rfc4475_3_1_1_1_wsinv() throws {
        let m = try #require(Corpus.check(try Corpus.bytes("rfc4475/wsinv.dat")).value)
        #expect(try m.cseq() == CSeqValue(number: 9, method: .invite))
        #expect(m.valueCount(.via) == 3)
        #expect(m.body.count == 150)
        #expect(try m.maxForwards() == 68)
        #expect(try m.requestURI().text == "sip:vivekg@chair-dnrc.example.com;unknownparam")
        #expect(try m.requestURI().parameter("unknownparam") != nil)
        #expect(try m.from().displayName == "\"J Rosenberg \\\\\\\"\"")
        #expect(m.firstValue(named: "UnknownHeaderWithUnusualValue") == ";;,,;;,;")
        #expect(m.firstValue(.subject)?.isEmpty == true)
        let vias = try m.vias()
        #expect(vias[0].transport == "UDP" && vias[0].protocolVersion == "2.0")
    }

    @Test func rfc4475_3_1_1_2_intmeth() throws {
        let m = try #require(Corpus.check(try Corpus.bytes("rfc4475/intmeth.dat")).value)
        #expect(m.method == .other("!interesting-Method0123456789_*+`.%indeed'~"))
        #expect(try m.cseq().method == m.method)
        #expect(m.firstValue(named: "extensionHeader-!.%*+_`'~") != nil)
    }

    @Test func rfc4475_3_1_1_3_esc01_unescapes_once() throws {
        let m = try #require(Corpus.check(try Corpus.bytes("rfc4475/esc01.dat")).value)
        let uri = try m.requestURI()
        #expect(uri.user == "sips%3Auser%40example.com")
        #expect(uri.user?.unescaped == Array("sips:user@example.com".utf8))
        #expect(uri.host == "example.net")
        #expect(m.body.count == 150)
    }

    @Test func rfc4475_3_1_1_4_escnull() throws {
        let m = try #require(Corpus.check(try Corpus.bytes("rfc4475/escnull.dat")).value)
        guard case .addresses(let contacts)? = try m.contact() else { Issue.record("no contacts"); return }
        #expect(contacts.count == 2)
        #expect(contacts[0].uri.user?.unescaped == [0])
        #expect(contacts[1].uri.user?.unescaped == [0, 0])
        #expect(m.contentLength == 0)
    }

    @Test func rfc4475_3_1_1_5_esc02_unknown_method_and_two_contacts() throws {
        let m = try #require(Corpus.check(try Corpus.bytes("rfc4475/esc02.dat")).value)
        #expect(m.method == .other("RE%47IST%45R"))
        #expect(m.valueCount(.contact) == 2)
        #expect(try m.topVia().branch == "z9hG4bK209%fzsnel234")
    }

    @Test func rfc4475_3_1_1_6_lwsdisp() throws {
        let m = try #require(Corpus.check(try Corpus.bytes("rfc4475/lwsdisp.dat")).value)
        #expect(try m.from().displayName == "caller")
        #expect(try m.from().tag == "323")
    }

    @Test func rfc4475_3_1_1_7_longreq() throws {
        let m = try #require(Corpus.check(try Corpus.bytes("rfc4475/longreq.dat")).value)
        #expect(m.valueCount(.via) == 34)
        #expect(m.body.count == 150)
    }

    @Test func rfc4475_3_1_1_8_dblreq_ignores_trailing_bytes() throws {
        let bytes = try Corpus.bytes("rfc4475/dblreq.dat")
        let m = try #require(Corpus.check(bytes).value)
        #expect(m.method == .register)
        #expect(m.body.isEmpty)
        #expect(m.messageLength < bytes.count)
    }

    @Test func rfc4475_3_1_1_9_semiuri() throws {
        let m = try #require(Corpus.check(try Corpus.bytes("rfc4475/semiuri.dat")).value)
        let uri = try m.requestURI()
        #expect(uri.user?.unescaped == Array("user;par=u@example.net".utf8))
        #expect(uri.host == "example.com")
        #expect(uri.parameters.isEmpty)
    }

    @Test func rfc4475_3_1_1_10_transports() throws {
        let m = try #require(Corpus.check(try Corpus.bytes("rfc4475/transports.dat")).value)
        #expect(try m.vias().map { $0.transport.string } == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"])
    }

    @Test func rfc4475_3_1_1_11_mpart01_binary_body() throws {
        let m = try #require(Corpus.check(try Corpus.bytes("rfc4475/mpart01.dat")).value)
        #expect(m.body.count == 553)
        #expect(m.contentType == "multipart/mixed")
    }

    @Test func rfc4475_3_1_1_12_and_13_reason_phrases() throws {
        let u = try #require(Corpus.check(try Corpus.bytes("rfc4475/unreason.dat")).value)
        #expect(u.statusCode == 200 && u.body.count == 154)
        let n = try #require(Corpus.check(try Corpus.bytes("rfc4475/noreason.dat")).value)
        #expect(n.statusCode == 100 && n.reasonPhrase?.isEmpty == true)
    }

    @Test func rfc4475_3_1_2_16_badvers_is_505() throws {
        let e = try #require(Corpus.check(try Corpus.bytes("rfc4475/badvers.dat")).error)
        #expect(e.code == .unsupportedVersion && e.status == 505)
    }

    @Test func rfc4475_3_1_2_rejections_name_reason_and_status() throws {
        let expected: [(String, SIPParseError.Code, Int?)] = [
            ("badinv01.dat", .badVia, 400),
            ("clerr.dat", .bodyBeyondMessage, 400),
            ("ncl.dat", .badContentLength, 400),
            ("scalar02.dat", .badCSeq, 400),
            ("scalarlg.dat", .badCSeq, nil),
            ("mismatch01.dat", .cseqMethodMismatch, 400),
            ("mismatch02.dat", .cseqMethodMismatch, 501),
            ("bigcode.dat", .malformedStatusCode, nil),
            ("multi01.dat", .duplicateHeader, 400),
            ("mcl01.dat", .conflictingContentLength, 400),
            ("insuf.dat", .missingHeader, 400),
        ]
        for (file, code, status) in expected {
            let e = Corpus.check(try Corpus.bytes("rfc4475/\(file)")).error
            #expect(e?.code == code, "\(file): \(String(describing: e))")
            #expect(e?.status == status, "\(file): status \(String(describing: e?.status))")
        }
    }

    @Test func rfc4475_3_3_application_layer_facts() throws {
        let unkscm = try #require(Corpus.check(try Corpus.bytes("rfc4475/unkscm.dat")).value)
        #expect(try unkscm.requestURI().scheme == .other)
        let novelsc = try #require(Corpus.check(try Corpus.bytes("rfc4475/novelsc.dat")).value)
        #expect(try novelsc.requestURI().scheme == .other)
        let zeromf = try #require(Corpus.check(try Corpus.bytes("rfc4475/zeromf.dat")).value)
        #expect(try zeromf.maxForwards() == 0)
        let bext = try #require(Corpus.check(try Corpus.bytes("rfc4475/bext01.dat")).value)
        #expect(try bext.optionTags(.require).count >= 1)
        #expect(try bext.optionTags(.proxyRequire).count >= 1)
        let inv2543 = try #require(Corpus.check(try Corpus.bytes("rfc4475/inv2543.dat")).value)
        #expect(inv2543.body.count == 105 && inv2543.contentLength == nil)
        #expect(try inv2543.from().tag == nil)
    }

    @Test func rfc4475_3_3_12_and_13_contact_params() throws {
        let c1 = try #require(Corpus.check(try Corpus.bytes("rfc4475/cparam01.dat")).value)
        guard case .addresses(let a1)? = try c1.contact() else { Issue.record("no contact"); return }
        #expect(a1[0].parameter("unknownparam") != nil && a1[0].uri.parameters.isEmpty)
        let c2 = try #require(Corpus.check(try Corpus.bytes("rfc4475/cparam02.dat")).value)
        guard case .addresses(let a2)? = try c2.contact() else { Issue.record("no contact"); return }
        #expect(a2[0].parameter("unknownparam") == nil && a2[0].uri.parameter("unknownparam") != nil)
    }

    @Test func rfc4475_3_3_14_regescrt_keeps_uri_headers() throws {
        let m = try #require(Corpus.check(try Corpus.bytes("rfc4475/regescrt.dat")).value)
        guard case .addresses(let a)? = try m.contact() else { Issue.record("no contact"); return }
        #expect(a[0].uri.headersText == "Route=%3Csip:sip.example.com%3E")
    }

    @Test func rfc4475_3_2_1_badbranch() throws {
        let m = try #require(Corpus.check(try Corpus.bytes("rfc4475/badbranch.dat")).value)
        #expect(m.topViaBranch == "z9hG4bK")
    }

    @Test func archive_original_baddn_is_truncated() throws {
        #expect(throws: SIPParseError(.truncated, at: 0)) {
            try SIPMessage(parsing: try Corpus.bytes("rfc4475/archive-extras/baddn.archive-original.dat"))
        }
        #expect(Corpus.check(try Corpus.bytes("rfc4475/archive-extras/test.dat")).value == nil)
    }
}
