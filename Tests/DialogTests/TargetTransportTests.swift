import SIPParser
import Testing
import Transport
@testable import Dialog

/// Which transport a request toward a URI takes (RFC 3263 §4.1, without DNS).
@Suite struct TargetTransportTests {
    @Test func rfc3263_4_1_transport_from_uri() throws {
        let cases: [(String, TransportProtocol?)] = [
            ("sip:alice@192.0.2.1", .udp),
            ("sip:alice@192.0.2.1;transport=TCP", .tcp),
            ("sip:alice@192.0.2.1;transport=tls", .tls),
            ("sip:alice@192.0.2.1;transport=sctp", .sctp),
            ("sips:alice@192.0.2.1", .tls),
            ("sips:alice@192.0.2.1;transport=tcp", .tls),
            ("sips:alice@192.0.2.1;transport=udp", nil),
            ("sip:alice@192.0.2.1;transport=tls-sctp", nil),
            ("sip:alice@192.0.2.1;transport=ws", nil),
            ("tel:+15551234567", nil),
        ]
        for (text, expected) in cases {
            #expect(TransportProtocol(toward: try SIPURI(text)) == expected, "\(text)")
        }
    }

    @Test func the_chosen_listener_follows_the_uri() throws {
        let tag = ListenerTag("public")!
        let selector = ListenerSelector([
            ListenerSpec(proto: .udp, address: SocketAddress(ip: "127.0.0.1", port: 5060)!, tag: tag),
            ListenerSpec(proto: .tls, address: SocketAddress(ip: "127.0.0.1", port: 5061)!, tag: tag),
        ])
        let uri = try SIPURI("sips:bob@198.51.100.7")
        let proto = try #require(TransportProtocol(toward: uri))
        #expect(selector.select(proto: proto, family: .inet, tag: tag)?.address.port == 5061)
    }
}
