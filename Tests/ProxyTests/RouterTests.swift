import Dialog
import Logging
import Proxy
import Testing
import Transport

/// Where the router sends calls, by source, listener tag, domain and prefix.
@Suite struct RouterTests {
    static func set(_ id: Int, _ ports: [Int]) -> Dispatcher {
        var s = DispatcherSettings()
        s.setID = id
        s.destinations = ports.map { DestinationSettings(hop: Hop(.udp, SocketAddress(ip: "10.0.0.\(id)", port: $0)!), uri: "10.0.0.\(id):\($0)") }
        return Dispatcher(s, logger: Logger(label: "test"))
    }

    static func call(from ip: String, tag: String = "public", user: String = "100", host: String = "edge.example", port: Int = 5060) -> CallRequest {
        CallRequest(callID: Array("c1".utf8), fromUser: Array("alice".utf8), source: Hop(.udp, SocketAddress(ip: ip, port: 5060)!),
                    listenerTag: tag, requestURI: Array("sip:\(user)@\(host):\(port)".utf8), requestUser: user, requestHost: host,
                    requestPort: port)
    }

    let router = Router(sets: [set(1, [5080]), set(2, [6080]), set(3, [7080])],
                        routes: [RouteSettings(listenerTag: "trunks", set: 2),
                                 RouteSettings(domain: "pbx.example", set: 3),
                                 RouteSettings(domain: "pbx.example", prefix: "+44", set: 2)],
                        trusted: try! NetworkList(["192.0.2.0/24"]), localHosts: ["edge.example:5060"])

    @Test func calls_from_outside_follow_the_first_matching_route_else_the_first_set() throws {
        #expect(try router.pick(Self.call(from: "198.51.100.7"), excluding: [])?.hop.address.ipString == "10.0.0.1")
        #expect(try router.pick(Self.call(from: "198.51.100.7", tag: "trunks"), excluding: [])?.hop.address.ipString == "10.0.0.2")
        #expect(try router.pick(Self.call(from: "198.51.100.7", host: "PBX.example"), excluding: [])?.hop.address.ipString == "10.0.0.3")
        // The first route that matches wins: the domain route comes before the domain + prefix one.
        #expect(try router.pick(Self.call(from: "198.51.100.7", user: "+4420", host: "pbx.example"), excluding: [])?.hop.address.ipString == "10.0.0.3")
    }

    @Test func a_set_that_is_exhausted_gives_nil_and_without_sets_a_call_is_refused_with_403() throws {
        let first = try #require(try router.pick(Self.call(from: "198.51.100.7"), excluding: []))
        #expect(try router.pick(Self.call(from: "198.51.100.7"), excluding: [first.index]) == nil)
        let empty = Router(sets: [], routes: [], trusted: try NetworkList([]), localHosts: [])
        #expect(throws: CallRefusal(status: 403, reason: "no route for this call")) { try empty.pick(Self.call(from: "198.51.100.7"), excluding: []) }
    }

    @Test func the_first_algorithm_sends_every_call_to_the_first_active_destination_as_written() throws {
        var settings = DispatcherSettings()
        settings.algorithm = .first
        settings.destinations = [5082, 5080, 5081].map { DestinationSettings(hop: Hop(.udp, SocketAddress(ip: "10.0.0.9", port: $0)!), uri: "10.0.0.9:\($0)") }
        let set = Dispatcher(settings, logger: Logger(label: "test"))
        let picks = (0..<4).compactMap { _ in set.pick(callID: Array("c\(Int.random(in: 0...999))".utf8), fromUser: [], excluding: [])?.hop.address.port }
        #expect(picks == [5082, 5082, 5082, 5082])
        #expect(set.pick(callID: [], fromUser: [], excluding: [0])?.hop.address.port == 5080, "failover: the next as written")
        #expect(set.setState(uri: "sip:10.0.0.9:5082", to: .inactive))
        #expect(set.pick(callID: [], fromUser: [], excluding: [])?.hop.address.port == 5080)
    }

    @Test func trusted_callers_go_to_their_request_uri_or_a_registered_user() throws {
        let direct = try #require(try router.pick(Self.call(from: "192.0.2.9", host: "203.0.113.5", port: 5070), excluding: []))
        #expect(direct.hop == Hop(.udp, SocketAddress(ip: "203.0.113.5", port: 5070)!) && direct.requestURI != nil)
        // A user of the edge itself, with no registrar: 404.
        #expect(throws: CallRefusal.self) { try router.pick(Self.call(from: "192.0.2.9"), excluding: []) }
        // A name the edge cannot resolve (no DNS): 404 with the reason.
        #expect(throws: CallRefusal.self) { try router.pick(Self.call(from: "192.0.2.9", host: "pbx.example"), excluding: []) }
    }

    @Test func networks_match_by_prefix() throws {
        let list = try NetworkList(["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"])
        #expect(list.contains(SocketAddress(ip: "10.200.3.4", port: 1)!))
        #expect(!list.contains(SocketAddress(ip: "11.0.0.1", port: 1)!))
        #expect(list.contains(SocketAddress(ip: "2001:db8:ffff::1", port: 1)!))
        #expect(!list.contains(SocketAddress(ip: "2001:db9::1", port: 1)!))
        #expect(list.contains(SocketAddress(ip: "127.0.0.1", port: 9)!) && !list.contains(SocketAddress(ip: "127.0.0.2", port: 9)!))
        #expect(throws: NetworkListError.self) { try NetworkList(["10.0.0.0/33"]) }
    }
}
