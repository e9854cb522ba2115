import Testing
@testable import SIPParser

/// Stream framing for TCP/TLS (RFC 3261 §18.3) and RFC 5626 keep-alives.
@Suite struct FramingTests {
    func frame(_ bytes: [UInt8], limits: SIPParserLimits = .default) throws(SIPParseError) -> StreamFrame {
        let r = bytes.withUnsafeBytes { raw in Result { () throws(SIPParseError) in try frameSIPStream(raw, limits: limits) } }
        return try r.get()
    }

    @Test func rfc3261_18_3_frames_by_content_length_across_every_split() throws {
        let a = try Corpus.bytes("realistic/invite_sdp.sip")
        let b = try Corpus.bytes("realistic/bye.sip")
        let stream = a + b
        for cut in 0..<a.count {
            #expect(try frame(Array(stream[0..<cut])) == .needMoreData, "cut \(cut)")
        }
        #expect(try frame(stream) == .message(length: a.count))
        #expect(try frame(Array(stream[a.count...])) == .message(length: b.count))
    }

    @Test func rfc5626_4_4_1_ping_and_pong() throws {
        #expect(try frame(Array("\r\n\r\n".utf8)) == .keepAlivePing(length: 4))
        #expect(try frame(Array("\r\n".utf8)) == .keepAlivePong(length: 2))
        #expect(try frame(Array("\r\nINVITE".utf8)) == .keepAlivePong(length: 2))
        #expect(try frame(Array("\r\n\r".utf8)) == .needMoreData)
        #expect(try frame(Array("\r".utf8)) == .needMoreData)
    }

    @Test func rfc4475_stream_rejections() throws {
        // clerr waits for more bytes (never reads past the buffer); ncl, mcl01 and inv2543 cannot be framed.
        #expect(try frame(try Corpus.bytes("rfc4475/clerr.dat")) == .needMoreData)
        #expect(throws: SIPParseError(.badContentLength, at: 0)) { try frame(try Corpus.bytes("rfc4475/ncl.dat")) }
        #expect(throws: SIPParseError(.conflictingContentLength, at: 0)) { try frame(try Corpus.bytes("rfc4475/mcl01.dat")) }
        #expect(throws: SIPParseError(.missingContentLength, at: 0)) { try frame(try Corpus.bytes("rfc4475/inv2543.dat")) }
        #expect(try frame(try Corpus.bytes("rfc4475/archive-extras/baddn.archive-original.dat")) == .needMoreData)
    }

    @Test func garbage_and_oversize_are_errors() throws {
        #expect(throws: SIPParseError(.streamGarbage, at: 0)) { try frame([0x00, 0x01, 0x02]) }
        #expect(throws: SIPParseError(.streamGarbage, at: 0)) { try frame(Array("\r\nX".utf8).dropFirst(1).map { $0 }) }
        let limits = SIPParserLimits(maxMessageBytes: 512)
        let endless = Array("INVITE sip:a@b SIP/2.0\r\n".utf8) + Array(repeating: UInt8(ascii: "a"), count: 600)
        #expect(throws: SIPParseError(.messageTooLarge, at: 0)) { try frame(endless, limits: limits) }
        let big = Array("INVITE sip:a@b SIP/2.0\r\nContent-Length: 100000\r\n\r\n".utf8)
        #expect(throws: SIPParseError(.bodyTooLarge, at: 0)) { try frame(big, limits: limits) }
    }

    @Test func content_length_faults_carry_the_status_to_answer_before_closing() {
        func status(_ value: String, limits: SIPParserLimits = .default) -> (SIPParseError.Code, Int?)? {
            let bytes = Array("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nContent-Length: \(value)\r\n\r\n".utf8)
            do {
                _ = try frame(bytes, limits: limits)
                return nil
            } catch {
                return (error.code, error.status)
            }
        }
        // A body over the limit is 413 (RFC 3261 §21.4.11), whatever the number's size; other faults 400.
        for value in ["99999999", "70000", "18446744073709551616"] {
            #expect(status(value)! == (.bodyTooLarge, 413), "\(value)")
        }
        #expect(status("600", limits: SIPParserLimits(maxBodyBytes: 500))! == (.bodyTooLarge, 413))
        for value in ["-1", "1x", "", "0x10"] {
            #expect(status(value)! == (.badContentLength, 400), "\(value)")
        }
    }

    @Test func folded_content_length_is_framed() throws {
        let msg = Array("MESSAGE sip:a@b SIP/2.0\r\nContent-Length:\r\n  5\r\n\r\nhello".utf8)
        #expect(try frame(msg) == .message(length: msg.count))
    }
}
