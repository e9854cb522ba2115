import Foundation
import Glibc
import Testing

/// The MI refuses requests from outside loopback that lack the secret. The "outside" is a network
/// namespace this test makes (a veth pair with addresses from 198.18.0.0/15 on both ends), so the
/// traffic never leaves the machine.
@Suite struct MISecretTests {
    static func sh(_ args: [String]) -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: args[0])
        p.arguments = Array(args.dropFirst())
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        do { try p.run() } catch { return (-1, "\(error)") }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    @Test func a_request_from_outside_loopback_needs_the_secret() throws {
        let ip = "/usr/sbin/ip"
        guard FileManager.default.isExecutableFile(atPath: ip), getuid() == 0 else {
            if ProcessInfo.processInfo.environment["CI"] == "true" { Issue.record("this test needs root and iproute2 (ip netns)") }
            return
        }
        let n = Int(getpid() % 250) + 1
        let (ns, outer, inner) = ("sipedge-mi-\(getpid())", "sem\(getpid())a", "sem\(getpid())b")
        let (here, there) = ("198.18.\(n).1", "198.18.\(n).2")
        defer {
            _ = Self.sh([ip, "link", "del", outer])
            _ = Self.sh([ip, "netns", "del", ns])
        }
        for step in [[ip, "netns", "add", ns],
                     [ip, "link", "add", outer, "type", "veth", "peer", "name", inner],
                     [ip, "link", "set", inner, "netns", ns],
                     [ip, "addr", "add", "\(here)/30", "dev", outer],
                     [ip, "link", "set", outer, "up"],
                     [ip, "netns", "exec", ns, ip, "addr", "add", "\(there)/30", "dev", inner],
                     [ip, "netns", "exec", ns, ip, "link", "set", inner, "up"],
                     [ip, "netns", "exec", ns, ip, "link", "set", "lo", "up"]] {
            let (status, output) = Self.sh(step)
            try #require(status == 0, "\(step.joined(separator: " ")): \(output)")
        }
        let edge = try CallTests.Edge(config: """
            workers = 1
            [mi]
            address = "\(here)"
            port = 0
            secret = "s3cret"
            \(CallTests.listeners(port: 0, tcp: false))
            """)
        defer { edge.stop() }
        #expect(edge.waitFor("mi listening udp"))
        let address = try #require(edge.bound("mi listening udp", ip: here))
        let mi = [ip, "netns", "exec", ns, CommandTests.binary.path, "mi", "--address", address, "--timeout", "3"]
        let refused = Self.sh(mi + ["version"])
        #expect(refused.0 == 1 && refused.1.contains("forbidden"), "without the secret: \(refused.1)")
        let wrong = Self.sh(mi + ["--secret", "guess", "version"])
        #expect(wrong.0 == 1 && wrong.1.contains("forbidden"), "with a wrong secret: \(wrong.1)")
        let allowed = Self.sh(mi + ["--secret", "s3cret", "version"])
        #expect(allowed.0 == 0 && allowed.1.contains("SIPEdge"), "with the secret: \(allowed.1)")
        #expect(edge.output.contains("mi: version from \(there)"), "the refusal is logged with its source")
    }
}
