import Testing
import Transport
@testable import Proxy

/// rtpengine's ng protocol as written and read (bencode), and the `[media]` section.
@Suite struct RTPEngineTests {
    @Test func bencode_round_trips_what_ng_speaks_with_keys_sorted() throws {
        let value = Bencode.dict([("sdp", .string("v=0\r\n")), ("command", .string("offer")), ("flags", .list([.string("port-latching")])),
                                  ("delete-delay", .int(-3))])
        let bytes = value.encoded()
        #expect(String(decoding: bytes, as: UTF8.self) == "d7:command5:offer12:delete-delayi-3e5:flagsl13:port-latchinge3:sdp5:v=0\r\ne")
        let decoded = try Bencode(decoding: bytes[...])
        #expect(decoded["command"]?.text == "offer" && decoded["delete-delay"]?.integer == -3 && decoded["flags"]?.items.count == 1)
        #expect(try Bencode(decoding: Array("d6:result4:ponge".utf8)[...])["result"]?.text == "pong")
    }

    @Test func bencode_refuses_what_is_not_one_value_without_building_much() {
        let bad = ["", "i12", "ie", "i1-2e", "5:abc", "d3:keye", "di1ei2ee", "l", "i1ei2e", "99999999999999999999:x",
                   String(repeating: "l", count: 100) + String(repeating: "e", count: 100)]
        for text in bad {
            #expect(throws: BencodeError.self, "\(text.prefix(30))") { _ = try Bencode(decoding: Array(text.utf8)[...]) }
        }
    }

    @Test func the_command_of_an_answer_names_the_session_and_keeps_ports() {
        let command = RTPEngineClient.command("answer", .init(callID: "c1", fromTag: "a", toTag: "b"), sdp: Array("v=0".utf8), toTag: true)
        #expect(command["to-tag"]?.text == "b" && command["from-tag"]?.text == "a" && command["call-id"]?.text == "c1")
        #expect(command["flags"] == .list([.string("port-latching")]))
        #expect(RTPEngineClient.command("offer", .init(callID: "c1", fromTag: "a", toTag: "b"), sdp: [], toTag: false)["to-tag"] == nil)
    }

    @Test func media_lists_rtpengines_with_weights() throws {
        let config = try EdgeConfig.parse(EdgeConfigTests.minimal + "[media]\nrtpengine = [\"127.0.0.1:2223\", \"udp:[::1]:2224=3\"]\n")
        let engines = try #require(config.media?.rtpengines)
        #expect(engines.map(\.address.description) == ["127.0.0.1:2223", "[::1]:2224"] && engines.map(\.weight) == [1, 3])
        let cases = [("rtpengine = []", "lists at least one rtpengine"), ("rtpengine = [\"localhost:2223\"]", "is not IP:PORT"),
                     ("rtpengine = [\"127.0.0.1:2223=0\"]", "the weight after = is a number in 1...1000"), ("rtpengine = [\"127.0.0.1:2223\"]\nrtpengines = 1", "unknown key")]
        for (line, expected) in cases {
            do {
                _ = try EdgeConfig.parse(EdgeConfigTests.minimal + "[media]\n\(line)\n")
                Issue.record("accepted: \(line)")
            } catch {
                #expect(error.description.contains(expected), "\(error.description) / expected \(expected)")
            }
        }
    }

    @Test func new_sessions_spread_by_weight_and_an_instance_that_is_silent_is_skipped_for_a_while() throws {
        let settings = EdgeConfig.MediaSettings(rtpengines: [(SocketAddress(ip: "127.0.0.1", port: 2223)!, 1), (SocketAddress(ip: "127.0.0.1", port: 2224)!, 3)])
        let engines = RTPEngines(settings, log: { _ in })
        let picks = (0..<400).map { engines.choose(hash: UInt64($0), excluding: [], now: 0)! }
        #expect(picks.filter { $0 == 0 }.count == 100 && picks.filter { $0 == 1 }.count == 300)
        engines.heard(1, alive: false, now: 1_000)
        #expect((0..<50).allSatisfy { engines.choose(hash: UInt64($0), excluding: [], now: 2_000) == 0 })
        #expect(engines.choose(hash: 3, excluding: [0], now: 2_000) == 1, "when no other is left, a skipped one is still tried")
        #expect(engines.choose(hash: 3, excluding: [], now: 1_000 + RTPEngines.downMilliseconds) == 1, "back after the pause")
        #expect(engines.choose(hash: 3, excluding: [0, 1], now: 0) == nil)
    }
}
