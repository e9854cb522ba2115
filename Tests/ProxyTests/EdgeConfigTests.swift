import Foundation
import Testing
@testable import Proxy

/// The TOML configuration: the shipped default, and clear errors with line and key.
@Suite struct EdgeConfigTests {
    static let minimal = "[[listener]]\nproto = \"udp\"\naddress = \"127.0.0.1\"\n"

    @Test func shipped_default_config_is_valid() throws {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        let text = try String(contentsOf: url.appendingPathComponent("conf/sipedge.toml"), encoding: .utf8)
        let config = try EdgeConfig.parse(text)
        #expect(config.workers == 2 && config.listeners.count == 2)
        #expect(config.listeners.map(\.proto) == [.udp, .tcp] && config.listeners.allSatisfy { $0.port == 5060 && $0.tag == "public" })
    }

    @Test func defaults_fill_optional_keys() throws {
        let config = try EdgeConfig.parse(Self.minimal)
        #expect(config.workers == 2 && config.logLevel == "info" && config.listeners[0].port == 5060 && config.listeners[0].tag == "default")
    }

    @Test func errors_name_line_and_key() {
        let cases: [(String, String)] = [
            ("workers = 0\n" + Self.minimal, "line 1: workers: must be in 1...256, not 0"),
            ("workers = \"two\"\n" + Self.minimal, "line 1: workers: must be an integer"),
            ("colour = 1\n" + Self.minimal, "line 1: colour: unknown key"),
            ("[log]\nlevel = \"loud\"\n" + Self.minimal, "line 2: log.level: must be one of"),
            ("[[listener]]\nproto = \"http\"\naddress = \"x\"\n", "line 2: listener[1].proto: must be one of"),
            ("[[listener]]\nproto = \"udp\"\n", "listener[1].address: is required"),
            ("workers = 2\n", "listener: at least one [[listener]] is required"),
            ("workers = = 2\n", "line 1:"),
        ]
        for (text, expected) in cases {
            do {
                _ = try EdgeConfig.parse(text)
                Issue.record("accepted: \(text)")
            } catch {
                #expect(error.description.contains(expected), "\(error.description)")
            }
        }
    }
}
