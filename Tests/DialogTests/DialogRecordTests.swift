import Dialog
import Testing
import Transport

@Suite struct DialogRecordTests {
    static func sample() -> DialogRecord {
        var client = LegRecord(callID: "a84b4c76e66710@pc33.example.com", localTag: "s1xk2j3h4", remoteTag: "1928301774",
                               localCSeq: 3, remoteCSeq: 314_159, inviteCSeq: 314_159,
                               localURI: Array("<sip:bob@biloxi.example.com>".utf8), remoteURI: Array("Alice <sip:alice@atlanta.example.com>".utf8),
                               remoteTarget: Array("sip:alice@192.0.2.4:5062;transport=tcp".utf8),
                               routeSet: [Array("<sip:p1.example.com;lr>".utf8), Array("<sip:[2001:db8::1]:5070;lr>".utf8)],
                               hop: Hop(.tcp, SocketAddress(ip: "192.0.2.4", port: 40_122)!, worker: 1), listenerTag: "public")
        client.lastSDPReceived = Array("v=0\r\no=alice 1 1 IN IP4 192.0.2.4\r\n".utf8)
        client.lastSDPSent = Array("v=0\r\no=ast 7 7 IN IP4 10.0.0.5\r\n".utf8)
        client.sessionInterval = 1_800
        client.refresher = .peer
        client.peerAllowsUpdate = true
        var backend = LegRecord(callID: "s1x9f2k1c8d0a7b6e5", localTag: "s1xq8w7e6", remoteTag: "as5f3e2d1",
                                localCSeq: UInt32.max, localURI: Array("<sip:alice@10.0.0.1:5060>".utf8),
                                remoteURI: Array("<sip:bob@biloxi.example.com>".utf8), remoteTarget: Array("sip:bob@[2001:db8::5]:5080".utf8),
                                hop: Hop(.udp, SocketAddress(ip: "2001:db8::5", port: 5080)!), listenerTag: "backend", contactUser: "b2b")
        backend.sessionInterval = 90
        backend.refresher = .edge
        var record = DialogRecord(client: client, backend: backend, sharingTag: "service", startedAt: 1_795_000_000)
        record.version = 42
        record.state = .confirmed
        record.answeredAt = 1_795_000_003
        record.endsAt = 1_795_043_203
        record.reinvite = .relayed(from: .backend)
        record.lateOffer = true
        record.backendAcknowledged = true
        return record
    }

    /// LEB128 length of `value`, as the encoding writes it.
    static func intLength(_ value: UInt64) -> Int {
        var n = 1, v = value
        while v >= 0x80 { v >>= 7; n += 1 }
        return n
    }

    @Test func a_record_of_the_first_format_is_still_read_with_no_reinvite_and_no_flags() throws {
        var record = Self.sample()
        record.reinvite = .none
        record.lateOffer = false
        record.backendAcknowledged = false
        var bytes = record.encoded()
        // Format 1 had no re-INVITE state and flags (two one-byte zeros here) after endsAt.
        let offset = 1 + Self.intLength(record.version) + 1 + Self.intLength(UInt64(record.sharingTag.utf8.count)) + record.sharingTag.utf8.count
            + Self.intLength(record.startedAt) + Self.intLength(record.answeredAt) + Self.intLength(record.endsAt)
        #expect(Array(bytes[offset..<offset + 2]) == [0, 0])
        bytes.removeSubrange(offset..<offset + 2)
        // Nor the early-dialog fields of format 3, the recovery count of format 4, the variables
        // of format 5 and the Call-ID recovered from of format 6 at the end (three empty ones,
        // two zeros and an empty one).
        #expect(Array(bytes.suffix(6)) == [0, 0, 0, 0, 0, 0])
        bytes.removeLast(6)
        bytes[0] = 1
        var decoded = try DialogRecord(decoding: bytes)
        decoded.client.hop = record.client.hop
        #expect(decoded == record)
    }

    @Test func a_record_of_the_second_format_is_read_with_no_early_fields() throws {
        var bytes = Self.sample().encoded()
        #expect(Array(bytes.suffix(6)) == [0, 0, 0, 0, 0, 0])
        bytes.removeLast(6)
        bytes[0] = 2
        var decoded = try DialogRecord(decoding: bytes)
        decoded.client.hop = Self.sample().client.hop
        #expect(decoded == Self.sample())
    }

    @Test func a_record_of_the_third_format_is_read_with_no_recoveries_and_a_recovered_one_keeps_its_count() throws {
        var record = Self.sample()
        var bytes = record.encoded()
        #expect(Array(bytes.suffix(3)) == [0, 0, 0])
        bytes.removeLast(3)
        bytes[0] = 3
        var decoded = try DialogRecord(decoding: bytes)
        decoded.client.hop = record.client.hop
        #expect(decoded == record)
        record.recoveries = 300
        decoded = try DialogRecord(decoding: record.encoded())
        decoded.client.hop = record.client.hop
        #expect(decoded.recoveries == 300 && decoded == record)
    }

    @Test func an_early_record_keeps_what_ends_it_cleanly_elsewhere() throws {
        var record = Self.sample()
        record.state = .early
        record.clientInviteVias = [Array("SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1".utf8), Array("SIP/2.0/TCP [2001:db8::1];branch=z9hG4bK2".utf8)]
        record.backendInviteURI = Array("sip:100@127.0.0.1:5080".utf8)
        record.backendInviteBranch = Array("z9hG4bKs0x1.2".utf8)
        var decoded = try DialogRecord(decoding: record.encoded())
        decoded.client.hop = record.client.hop
        #expect(decoded == record)
        // A corrupt count of Via values does not allocate.
        var bytes = record.encoded()
        let tail = 1 + record.clientInviteVias.map { 1 + $0.count }.reduce(0, +) + 1 + record.backendInviteURI.count + 1 + record.backendInviteBranch.count
            + 3   // the recovery count, the variables, the Call-ID recovered from
        bytes[bytes.count - tail] = 0x7F
        #expect(throws: DialogRecordError(reason: "127 Via values")) { try DialogRecord(decoding: bytes) }
    }

    @Test func a_record_of_the_fourth_format_is_read_with_no_variables_and_variables_survive_the_encoding() throws {
        var record = Self.sample()
        var bytes = record.encoded()
        bytes.removeLast(2)
        bytes[0] = 4
        var decoded = try DialogRecord(decoding: bytes)
        decoded.client.hop = record.client.hop
        #expect(decoded == record)
        record.variables = [DialogVariable(name: "Queue", value: "support"), DialogVariable(name: "Agent", value: "")]
        decoded = try DialogRecord(decoding: record.encoded())
        decoded.client.hop = record.client.hop
        #expect(decoded.variables == record.variables)
        // A corrupt count does not allocate.
        bytes = Self.sample().encoded()
        bytes[bytes.count - 2] = 0x7F
        #expect(throws: DialogRecordError(reason: "127 variables")) { try DialogRecord(decoding: bytes) }
    }

    @Test func a_record_of_the_fifth_format_is_read_as_not_anchored_and_not_recovering_and_both_survive_the_encoding() throws {
        var record = Self.sample()
        record.mediaAnchored = true
        var bytes = record.encoded()
        #expect(bytes[0] == 6)
        #expect(try DialogRecord(decoding: bytes).mediaAnchored)
        // Format 5 knew no such flag: a record of it with the bit set is corrupt.
        bytes[0] = 5
        let flags = (record.lateOffer ? 1 : 0) | (record.backendAcknowledged ? 2 : 0) | 4
        #expect(throws: DialogRecordError(reason: "bad flags \(flags)")) { try DialogRecord(decoding: bytes) }
        record.mediaAnchored = false
        bytes = record.encoded()
        #expect(bytes.last == 0, "no recovery under way: an empty Call-ID")
        bytes.removeLast()
        bytes[0] = 5
        var decoded = try DialogRecord(decoding: bytes)
        decoded.client.hop = record.client.hop
        #expect(decoded == record)
        record.recoveringFrom = "lost-leg@10.0.0.1"
        decoded = try DialogRecord(decoding: record.encoded())
        #expect(decoded.recoveringFrom == "lost-leg@10.0.0.1")
    }

    @Test func a_record_survives_its_encoding_field_for_field() throws {
        let record = Self.sample()
        let bytes = record.encoded()
        var decoded = try DialogRecord(decoding: bytes)
        // The worker holding a connection is this process's business, not the record's.
        #expect(decoded.client.hop == record.client.hop.withoutWorker)
        decoded.client.hop = record.client.hop
        #expect(decoded == record)
        #expect(decoded.key == "s1x9f2k1c8d0a7b6e5")
        #expect(bytes.count < 700, "compact: \(bytes.count) bytes for a dialog with two SDPs and a route set")
    }

    @Test func every_truncation_of_a_record_is_refused_with_a_reason() {
        let bytes = Self.sample().encoded()
        for length in 0..<bytes.count {
            #expect(throws: DialogRecordError.self) { try DialogRecord(decoding: Array(bytes[0..<length])) }
        }
        #expect(throws: DialogRecordError.self) { try DialogRecord(decoding: bytes + [0]) }
    }

    @Test func a_record_of_another_format_or_with_a_huge_length_is_refused() {
        var bytes = Self.sample().encoded()
        bytes[0] = 99
        #expect(throws: DialogRecordError(reason: "unknown format 99")) { try DialogRecord(decoding: bytes) }
        // Format byte, version 1, state 0, then a sharing tag claiming 2^35 bytes.
        let huge: [UInt8] = [DialogRecord.formatVersion, 1, 0, 0x80, 0x80, 0x80, 0x80, 0x7F]
        #expect(throws: DialogRecordError.self) { try DialogRecord(decoding: huge) }
    }

    @Test func random_bytes_never_crash_the_decoder() {
        var generator = SystemRandomNumberGenerator()
        let valid = Self.sample().encoded()
        for round in 0..<5_000 {
            var bytes = valid
            // Flip a few bytes of a valid record, or make up bytes outright.
            if round % 2 == 0 {
                for _ in 0..<3 { bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator) }
            } else {
                bytes = (0..<Int.random(in: 0..<200, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            }
            _ = try? DialogRecord(decoding: bytes)
        }
    }
}
