import Foundation
import Testing
import Transport
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
        #expect(config.listeners.map(\.proto) == [.udp, .tcp])
        #expect(config.listeners.allSatisfy { $0.address.port == 5060 && $0.tag.name == "public" && $0.address.ipString == "127.0.0.1" })
        #expect(config.tls == nil && config.streamLimits == StreamLimits())
        #expect(config.databasePath == "var/sipedge.db" && config.databaseWriteIntervalMilliseconds == 100)
    }

    @Test func the_database_write_interval_is_read() throws {
        let config = try EdgeConfig.parse("[database]\npath = \"d.db\"\nwrite_interval_milliseconds = 250\n" + Self.minimal)
        #expect(config.databasePath == "d.db" && config.databaseWriteIntervalMilliseconds == 250)
    }

    @Test func a_section_left_out_reads_as_the_same_section_left_empty() throws {
        // Each key's default is written once, where its section reads it.
        let empty = ["log", "limits", "tcp", "dispatcher", "calls", "security"].map { "[\($0)]\n" }.joined()
        #expect(try EdgeConfig.parse(Self.minimal) == EdgeConfig.parse(empty + Self.minimal))
        let full = try EdgeConfig.parse(Self.minimal)
        #expect(full.streamLimits == StreamLimits() && full.parserLimits == .default && full.calls == EdgeConfig.CallSettings())
        #expect(full.security == EdgeConfig.SecuritySettings() && full.logLevel == "info" && full.logSummarySeconds == 10)
    }

    @Test func defaults_fill_optional_keys() throws {
        let config = try EdgeConfig.parse(Self.minimal)
        #expect(config.workers == 2 && config.logLevel == "info" && config.listeners[0].address.port == 5060 && config.listeners[0].tag.name == "default")
    }

    @Test func advertise_and_tls_sections() throws {
        let text = """
        [tls]
        certificate = "server.pem"
        private_key = "server.key"
        verify_clients = true

        [[listener]]
        proto = "tls"
        address = "::1"
        advertise = "[2001:db8::1]:5061"
        tag = "public"

        [[listener]]
        proto = "udp"
        address = "127.0.0.1"
        advertise = "sip.example.com"
        """
        let config = try EdgeConfig.parse(text)
        #expect(config.listeners[0].address.port == 5061 && config.listeners[0].advertised.host == "[2001:db8::1]")
        #expect(config.listeners[1].advertised.host == "sip.example.com" && config.listeners[1].advertised.port == 5060)
        #expect(config.tls?.verifyClients == true && config.tls?.verifyServers == true)
    }

    @Test func worker_ports_and_coalescing_are_read() throws {
        let config = try EdgeConfig.parse("coalesce_microseconds = 1500\n[[listener]]\nproto = \"udp\"\naddress = \"127.0.0.1\"\nworker_ports = 6100\nspread_calls_by = \"call-id\"\n")
        #expect(config.coalesceMicroseconds == 1_500 && config.listeners[0].workerPorts == 6_100 && config.listeners[0].spreadByCallID)
        let plain = try EdgeConfig.parse(Self.minimal)
        #expect(plain.coalesceMicroseconds == 2_000 && plain.listeners[0].workerPorts == nil && !plain.listeners[0].spreadByCallID)
    }

    static func cluster(_ lines: String, nodes: String = "[\"1@127.0.0.11:5566\", \"2@127.0.0.12:5566\", \"3@127.0.0.13:5566\"]") -> String {
        Self.minimal + "[cluster]\nnode_id = 1\naddress = \"127.0.0.11:5566\"\nnodes = \(nodes)\nsharing_tag = \"node1\"\n" + lines
    }

    @Test func the_cluster_section_is_read_with_its_defaults() throws {
        let config = try EdgeConfig.parse(Self.cluster(""))
        let c = try #require(config.cluster)
        #expect(c.nodeID == 1 && c.members.map(\.id) == [1, 2, 3] && c.members[1].address.description == "127.0.0.12:5566")
        #expect(c.heartbeatMilliseconds == 100 && c.downAfterMilliseconds == 500 && c.rehomePerSecond == 1_000 && c.secret.isEmpty)
        #expect(c.majority == 2 && c.leaseMilliseconds == 250)
        #expect(try EdgeConfig.parse(Self.minimal).cluster == nil, "without [cluster] a node runs alone")
    }

    @Test func check_config_refuses_a_cluster_that_cannot_work() {
        // Line numbers: minimal has 3 lines, [cluster] is line 4, node_id 5, address 6, nodes 7, sharing_tag 8.
        let cases: [(String, String)] = [
            (Self.cluster("", nodes: "[\"2@127.0.0.12:5566\", \"3@127.0.0.13:5566\"]"), "line 7: cluster.nodes: node_id 1 is not in nodes"),
            (Self.cluster("", nodes: "[\"1@127.0.0.11:5566\", \"1@127.0.0.12:5566\"]"), "line 7: cluster.nodes: node id 1 is listed twice"),
            (Self.cluster("", nodes: "[\"1@127.0.0.11:5566\", \"2@127.0.0.11:5566\"]"), "line 7: cluster.nodes: address 127.0.0.11:5566 is listed twice"),
            (Self.cluster("", nodes: "[\"1@127.0.0.11:5566\", \"2@192.0.2.7:5566\"]"), "cluster.secret: a secret is required when a member is off loopback (192.0.2.7:5566)"),
            (Self.cluster("", nodes: "[\"1@127.0.0.11:5566\", \"x@127.0.0.12:5566\"]"), "line 7: cluster.nodes: each member is \"ID@IP:PORT\""),
            (Self.cluster("", nodes: "[\"1@127.0.0.11:5566\", \"65@127.0.0.12:5566\"]"), "line 7: cluster.nodes: each member is"),
            (Self.cluster("", nodes: "[\"1@127.0.0.99:5566\", \"2@127.0.0.12:5566\"]"), "line 6: cluster.address: 127.0.0.11:5566 is not the address nodes gives node 1"),
            (Self.cluster("down_after_milliseconds = 150\n"), "line 9: cluster.down_after_milliseconds: must be at least two heartbeats (200)"),
            (Self.cluster("colour = 1\n"), "line 9: cluster.colour: unknown key"),
            (Self.minimal + "[cluster]\nnode_id = 1\n", "cluster.address: is required"),
        ]
        for (text, expected) in cases {
            do {
                _ = try EdgeConfig.parse(text)
                Issue.record("accepted: \(expected)")
            } catch {
                #expect(error.description.contains(expected), "\(error.description) / expected \(expected)")
            }
        }
        // With a secret, members off loopback are fine.
        #expect(throws: Never.self) { _ = try EdgeConfig.parse(Self.cluster("secret = \"s\"\n", nodes: "[\"1@127.0.0.11:5566\", \"2@192.0.2.7:5566\"]")) }
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
            ("[[listener]]\nproto = \"udp\"\naddress = \"localhost\"\n", "line 3: listener[1].address: must be a numeric IPv4 or IPv6 address"),
            ("[[listener]]\nproto = \"udp\"\naddress = \"::1\"\ntag = \"no spaces\"\n", "line 4: listener[1].tag: must be 1-64"),
            ("[[listener]]\nproto = \"udp\"\naddress = \"::1\"\nadvertise = \"a:b:c\"\n", "line 4: listener[1].advertise: must be host or host:port"),
            ("[[listener]]\nproto = \"tls\"\naddress = \"::1\"\n", "tls: a TLS listener needs a [tls] section"),
            ("[tcp]\nmax_buffered_bytes = 1\n" + Self.minimal, "line 2: tcp.max_buffered_bytes: must be in 4096...16777216"),
            ("[tls]\ncertificate = \"a.pem\"\n" + Self.minimal, "tls.private_key: is required"),
            ("coalesce_microseconds = 30000\n" + Self.minimal, "line 1: coalesce_microseconds: must be in 0...20000"),
            ("[database]\nwrite_interval_milliseconds = 0\n" + Self.minimal, "line 2: database.write_interval_milliseconds: must be in 1...60000"),
            ("[[listener]]\nproto = \"tcp\"\naddress = \"::1\"\nworker_ports = 6000\n", "listener[1].worker_ports: only a udp listener"),
            ("[[listener]]\nproto = \"udp\"\naddress = \"::1\"\nspread_calls_by = \"tag\"\n", "listener[1].spread_calls_by: must be \"source\" or \"call-id\""),
            ("workers = 4\n[[listener]]\nproto = \"udp\"\naddress = \"::1\"\nworker_ports = 65534\n", "worker_ports: 4 workers need ports 65534-65537, past 65535"),
            ("[[listener]]\nproto = \"udp\"\naddress = \"::1\"\nport = 5061\nworker_ports = 5060\n", "worker_ports: ports 5060-5061 include the listener port 5061"),
            // The same listener twice (or under a wildcard of its family), at the second one's line.
            (Self.minimal + "[[listener]]\nproto = \"tcp\"\naddress = \"127.0.0.1\"\n" + Self.minimal,
             "line 7: listener[3]: udp 127.0.0.1:5060 is already listener[1]'s"),
            (Self.minimal + "[[listener]]\nproto = \"udp\"\naddress = \"0.0.0.0\"\n", "line 4: listener[2]: udp 0.0.0.0:5060 is already listener[1]'s"),
            // A key that several sections have is reported in the section where it is wrong.
            ("[mi]\naddress = \"127.0.0.1\"\n[[listener]]\nproto = \"udp\"\naddress = \"::1\"\n[[listener]]\nproto = \"udp\"\naddress = \"here\"\n",
             "line 8: listener[2].address: must be a numeric"),
            ("[[listener]]\nproto = \"udp\"\naddress = \"::1\"\n[mi]\naddress = \"there\"\n", "line 5: mi.address: must be a numeric"),
            ("[dispatcher]\nalgorithm = \"round-robin\"\n[[dispatcher.set]]\nid = 2\nalgorithm = \"dice\"\ndestinations = [\"127.0.0.1\"]\n" + Self.minimal,
             "line 5: dispatcher.set[1].algorithm: must be one of"),
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

    @Test func an_address_this_host_does_not_have_is_an_error_when_the_host_is_checked() throws {
        // 192.0.2.0/24 is TEST-NET-1 (RFC 5737): no host has it. Only a bind is tried; nothing is sent.
        let text = "[[listener]]\nproto = \"udp\"\naddress = \"127.0.0.1\"\n[[listener]]\nproto = \"tcp\"\naddress = \"192.0.2.1\"\n"
        #expect(throws: Never.self) { _ = try EdgeConfig.parse(text) }
        #expect { _ = try EdgeConfig.parse(text, checkingHost: true) } throws: { error in
            "\(error)".contains("line 6: listener[2].address: 192.0.2.1 is not an address of this host")
        }
        #expect { _ = try EdgeConfig.parse(Self.minimal + "[mi]\naddress = \"192.0.2.7\"\n", checkingHost: true) } throws: { error in
            "\(error)".contains("line 5: mi.address: 192.0.2.7 is not an address of this host")
        }
        #expect(throws: Never.self) { _ = try EdgeConfig.parse(Self.minimal + "[[listener]]\nproto = \"tcp\"\naddress = \"0.0.0.0\"\nport = 5070\n", checkingHost: true) }
    }
}

/// Where outgoing TCP/TLS connections leave from.
@Suite struct SourceAddressTests {
    static func listener(_ proto: TransportProtocol, _ ip: String) -> ListenerSpec {
        ListenerSpec(proto: proto, address: SocketAddress(ip: ip, port: 5060)!, tag: ListenerTag("public")!)
    }

    @Test func the_one_address_of_a_transports_listeners_per_family_and_none_when_ambiguous_or_wildcard() {
        let one = [Self.listener(.tcp, "192.0.2.12"), Self.listener(.udp, "192.0.2.99"), Self.listener(.tcp, "2001:db8::12")]
        #expect(Set(EdgeServer.sourceAddresses(one, .tcp).map(\.ipString)) == ["192.0.2.12", "2001:db8::12"])
        #expect(EdgeServer.sourceAddresses(one, .tls).isEmpty, "no TLS listener")
        let two = [Self.listener(.tcp, "192.0.2.12"), Self.listener(.tcp, "198.51.100.12")]
        #expect(EdgeServer.sourceAddresses(two, .tcp).isEmpty, "two addresses: the kernel's routes choose")
        #expect(EdgeServer.sourceAddresses([Self.listener(.tcp, "0.0.0.0")], .tcp).isEmpty)
    }
}
