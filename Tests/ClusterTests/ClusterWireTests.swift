@testable import Cluster
import Dialog
import Testing
import Transport

/// The cluster link's datagrams: every kind survives the trip; anything cut short, padded, of an
/// unknown kind or version, or sealed with another secret is refused with a reason, never a crash.
@Suite struct ClusterWireTests {
    static let record = ClusterLogicTests.record(version: 9).encoded()
    static let messages: [ClusterMessage] = [
        .heartbeat(sees: 0b101, lastSequence: 77, synced: true, claims: [TagClaim(tag: "node1", holder: 2, epoch: 514), TagClaim(tag: "b", holder: 3, epoch: 3)]),
        .records(sequence: 1 << 40, entries: [.dialog(record), .registration([1, 2, 3])]),
        .resend(from: 5, through: 9),
        .gone(from: 1, through: 4),
        .snapshotRequest(id: 0xDEAD_BEEF, fromChunk: 3),
        .snapshotChunk(id: 7, index: 2, last: true, positions: [StreamPosition(node: 1, incarnation: 123, sequence: 456)], entries: [.dialog(record)]),
        .snapshotChunk(id: 7, index: 0, last: true, positions: [], entries: []),
    ]

    @Test func every_message_kind_survives_encoding_in_network_byte_order() throws {
        for message in Self.messages {
            let bytes = message.encoded(sender: 3, incarnation: 0x0102_0304_0506_0708)
            #expect(Array(bytes[0..<6]) == [0x53, 0x45, ClusterWire.version, message.kind, 3, 0])
            #expect(Array(bytes[6..<14]) == [1, 2, 3, 4, 5, 6, 7, 8], "big-endian incarnation")
            let (header, decoded) = try ClusterMessage.decode(bytes[...])
            #expect(header.sender == 3 && header.incarnation == 0x0102_0304_0506_0708)
            #expect(decoded == message)
        }
    }

    @Test func a_datagram_cut_short_or_padded_anywhere_is_refused_with_a_reason() {
        for message in Self.messages {
            let bytes = message.encoded(sender: 1, incarnation: 1)
            for n in 0..<bytes.count {
                #expect(throws: WireError.self) { try ClusterMessage.decode(bytes[0..<n]) }
            }
            #expect(throws: WireError.self) { try ClusterMessage.decode((bytes + [0])[...]) }
        }
    }

    @Test func unknown_kinds_versions_and_entry_types_and_huge_counts_are_refused() {
        var bytes = ClusterMessage.resend(from: 1, through: 2).encoded(sender: 1, incarnation: 1)
        bytes[3] = 99
        #expect(throws: WireError("unknown kind 99")) { try ClusterMessage.decode(bytes[...]) }
        bytes[3] = 3
        bytes[2] = 9
        #expect(throws: WireError("wire version 9 (this node reads \(ClusterWire.version))")) { try ClusterMessage.decode(bytes[...]) }
        var records = ClusterMessage.records(sequence: 1, entries: [.registration([7])]).encoded(sender: 1, incarnation: 1)
        records[24] = 5   // the entry's type byte
        #expect(throws: WireError("unknown entry type 5")) { try ClusterMessage.decode(records[...]) }
        records[22] = 0xFF   // entry count 0xFF01
        #expect(throws: WireError.self) { try ClusterMessage.decode(records[...]) }
        #expect(throws: WireError("not a cluster datagram")) { try ClusterMessage.decode(Array("OPTIONS sip:x SIP/2.0\r\n".utf8)[...]) }
    }

    @Test func a_sealed_datagram_opens_only_with_the_same_secret_and_untouched() {
        let bytes = ClusterMessage.resend(from: 1, through: 2).encoded(sender: 1, incarnation: 1)
        let sealed = MessageAuthentication(key: "s3cret").sealed(bytes)
        #expect(sealed.count == bytes.count + MessageAuthentication.tagBytes)
        #expect(MessageAuthentication(key: "s3cret").opened(sealed).map(Array.init) == bytes)
        #expect(MessageAuthentication(key: "other").opened(sealed) == nil)
        var tampered = sealed
        tampered[10] ^= 1
        #expect(MessageAuthentication(key: "s3cret").opened(tampered) == nil)
        #expect(MessageAuthentication(key: "s3cret").opened(Array(sealed.prefix(20))) == nil)
    }
}
