import Foundation
import Glibc
import Testing

/// Calls through the real `sipedge` binary between real SIPp peers on loopback.
@Suite(.serialized) struct CallTests {
    /// SIPp from Debian's sip-tester; under CI=true its absence fails the test rather than skipping it.
    static var sipp: String? {
        for path in ["/usr/bin/sipp", "/usr/local/bin/sipp"] where FileManager.default.isExecutableFile(atPath: path) { return path }
        return nil
    }

    static func requireSIPp() throws -> String {
        if let sipp { return sipp }
        if ProcessInfo.processInfo.environment["CI"] == "true" {
            Issue.record("sipp is not installed (make test installs sip-tester)")
        }
        throw SkipInfo()
    }

    struct SkipInfo: Error {}

    static var underCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }

    static func process(_ path: String, _ args: [String], in dir: URL) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        p.currentDirectoryURL = dir
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        p.standardInput = FileHandle.nullDevice
        try p.run()
        return p
    }

    static func lines(_ text: String, prefix: String) -> Set<String> {
        Set(text.split(whereSeparator: \.isNewline).filter { $0.lowercased().hasPrefix(prefix.lowercased()) }.map(String.init))
    }

    /// `[[listener]]` sections on 127.0.0.1:`port` (0: any free port), tag "public": UDP, and TCP too.
    /// `workerPorts`: the UDP listener gives each worker a port of its own from there.
    static func listeners(port: Int, tcp: Bool = true, workerPorts: Int? = nil, spreadByCallID: Bool = false) -> String {
        (tcp ? ["udp", "tcp"] : ["udp"]).map {
            "[[listener]]\nproto = \"\($0)\"\naddress = \"127.0.0.1\"\nport = \(port)\ntag = \"public\""
                + ($0 == "udp" ? workerPorts.map { "\nworker_ports = \($0)" } ?? "" : "")
                + (spreadByCallID ? "\nspread_calls_by = \"call-id\"" : "")
        }.joined(separator: "\n")
    }

    /// The sipedge under test, restartable in place (same config, same ports).
    final class Edge {
        let config: String
        private(set) var process: Process
        private var read: () -> String
        private var earlier = ""

        /// The file it runs on (rewritten by tests of reloads).
        let file = Scratch.file("edge", "toml")

        init(config: String) throws {
            self.config = config
            (process, read) = try CommandTests.start(config, file: file)
        }

        /// Replaces the config file's text (the running edge reads it again on `ds_reload`...).
        func rewrite(_ text: String) throws { try text.write(to: file, atomically: true, encoding: .utf8) }

        /// Everything every run of it printed.
        var output: String { earlier + read() }

        func waitFor(_ needle: String) -> Bool { CommandTests.waitFor(read, needle) }

        /// "IP:PORT" from the first log line containing `what` (e.g. "listening udp"): where a
        /// configured port 0 ended up.
        func bound(_ what: String, ip: String = "127.0.0.1") -> String? {
            guard let line = output.split(whereSeparator: \.isNewline).first(where: { $0.contains(what) }),
                  let word = line.split(separator: " ").first(where: { $0.hasPrefix("\(ip):") }) else { return nil }
            return String(word)
        }

        /// The port of `bound(what)`.
        func boundPort(_ what: String) -> Int? { bound(what).flatMap { Int($0.split(separator: ":").last ?? "") } }

        /// SIGKILL (no goodbye, nothing flushed), then the same config again.
        func killAndRestart() throws {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            earlier += read() + "\n--- killed and restarted ---\n"
            (process, read) = try CommandTests.start(config, file: file)
        }

        /// SIGTERM, then waits for the exit and (bounded) for its last line, "stopped: ...", to
        /// have been read from the pipe: what it printed last is in `output` afterwards.
        func stop() {
            let wasRunning = process.isRunning
            if wasRunning { process.terminate() }
            process.waitUntilExit()
            if wasRunning { _ = CommandTests.waitFor(read, "stopped:") }
        }

        deinit {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            Scratch.remove(file)
        }
    }

    /// Runs `calls` SIPp calls through a sipedge whose destinations are `destinations(uasPort)`,
    /// over `transport` ("udp" or "tcp", both legs). `during` runs once the UAC has started (to
    /// kill a peer, restart the edge...). Returns the UAC's exit status, both message traces,
    /// the ports and the edge's output.
    static func runCalls(_ calls: Int, timeout: Int = 30, uacScenario: String? = nil, uasScenario: String? = nil,
                         lostPercent: Int = 0, extraConfig: String = "", transport: String = "udp", rate: Int = 50,
                         uacArguments: [String] = [], uasArguments: [String] = [], workerPorts: Bool = false, spreadByCallID: Bool = false,
                         during: ((Edge, Process) throws -> Void)? = nil,
                         destinations: (Int) -> [String]) throws -> CallRun? {
        guard let sipp = try? Self.requireSIPp() else { return nil }
        let dir = try Scratch.directory("calls")
        defer { Scratch.remove(dir) }
        // Ports below Linux's ephemeral range (32768 up), so no outgoing connection holds them; a
        // port another test run took after all means another try on other ports.
        var base = 0, edge: Edge?
        for _ in 0..<3 where edge == nil {
            base = Scratch.ports()
            let list = destinations(base + 10).map { "\"\($0)\"" }.joined(separator: ", ")
            let config = """
                workers = 2
                \(extraConfig)
                [dispatcher]
                destinations = [\(list)]
                \(CallTests.listeners(port: base, workerPorts: workerPorts ? base + 50 : nil, spreadByCallID: spreadByCallID))
                """
            let candidate = try Edge(config: config)
            if candidate.waitFor("listening tcp") { edge = candidate } else { candidate.stop() }
        }
        guard let edge else {
            Issue.record("sipedge did not start on three sets of ports")
            return nil
        }
        let (edgePort, uasPort, uacPort) = (base, base + 10, base + 20)
        defer { edge.stop() }
        if let uacScenario { try uacScenario.write(to: dir.appendingPathComponent("uac.xml"), atomically: true, encoding: .utf8) }
        if let uasScenario { try uasScenario.write(to: dir.appendingPathComponent("uas.xml"), atomically: true, encoding: .utf8) }
        let lost = lostPercent > 0 ? ["-lost", "\(lostPercent)"] : []
        let mode = transport == "tcp" ? ["-t", "t1"] : []
        let uasKind = (uasScenario == nil ? ["-sn", "uas"] : ["-sf", "uas.xml"]) + lost + mode + uasArguments
        let uacKind = (uacScenario == nil ? ["-sn", "uac"] : ["-sf", "uac.xml"]) + lost + mode + uacArguments
        let uas = try Self.process(sipp, uasKind + ["-i", "127.0.0.1", "-p", "\(uasPort)", "-cp", "\(base + 1)", "-nostdin",
                                          "-trace_msg", "-message_file", "uas.msg"], in: dir)
        // SIPp ignores SIGTERM while it waits for calls: it is stopped with SIGKILL.
        defer { if uas.isRunning { kill(uas.processIdentifier, SIGKILL) } }
        usleep(300_000)
        let uac = try Self.process(sipp, uacKind + ["127.0.0.1:\(edgePort)", "-i", "127.0.0.1", "-p", "\(uacPort)", "-cp", "\(base + 2)",
                                          "-m", "\(calls)", "-r", "\(rate)", "-timeout", "\(timeout)s", "-nostdin",
                                          "-trace_msg", "-message_file", "uac.msg"], in: dir)
        defer { if uac.isRunning { kill(uac.processIdentifier, SIGKILL) } }
        try during?(edge, uas)
        // Bounded: the UAC stops by itself after its calls or its `-timeout`; this is a backstop.
        for _ in 0..<(timeout * 10 + 100) where uac.isRunning { usleep(100_000) }
        if uac.isRunning { kill(uac.processIdentifier, SIGKILL) }
        uac.waitUntilExit()
        kill(uas.processIdentifier, SIGKILL)
        uas.waitUntilExit()
        edge.stop()
        #expect(CommandTests.waitFor({ edge.output }, "stopped:"))
        return CallRun(status: uac.terminationStatus, dir: dir, uacPort: uacPort, uasPort: uasPort, output: edge.output,
                       uacLog: (try? String(contentsOf: dir.appendingPathComponent("uac.msg"), encoding: .utf8)) ?? "",
                       uasLog: (try? String(contentsOf: dir.appendingPathComponent("uas.msg"), encoding: .utf8)) ?? "")
    }

    /// What a SIPp run through the edge left: the UAC's exit status (0 only when every call
    /// succeeded), each side's message trace, the ports, and the edge's output.
    struct CallRun {
        let status: Int32
        let dir: URL
        let uacPort: Int, uasPort: Int
        let output: String
        let uacLog: String, uasLog: String

        /// How many times `needle` appears in a trace.
        static func count(_ needle: String, in log: String) -> Int { log.components(separatedBy: needle).count - 1 }

        /// Neither side's trace holds the other side's address (topology hiding).
        var sidesHidden: Bool { !uasLog.contains("127.0.0.1:\(uacPort)") && !uacLog.contains("127.0.0.1:\(uasPort)") }
    }

    @Test(.needsSIPp) func sipp_calls_cross_the_b2bua_and_neither_side_sees_the_other() throws {
        guard let run = try Self.runCalls(50, destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "SIPp's exit status is 0 only when every call succeeded")
        #expect(run.output.contains("50 calls started, 0 still up"), "\(run.output)")
        // Topology hiding, from what each SIPp actually received and sent.
        let uacCallIDs = Self.lines(run.uacLog, prefix: "Call-ID:"), uasCallIDs = Self.lines(run.uasLog, prefix: "Call-ID:")
        #expect(uacCallIDs.count >= 50 && uasCallIDs.count >= 50)
        #expect(uacCallIDs.isDisjoint(with: uasCallIDs), "no Call-ID crosses from one side to the other")
        #expect(run.sidesHidden, "neither side sees the other's address")
        #expect(Self.lines(run.uacLog, prefix: "Via:").isDisjoint(with: Self.lines(run.uasLog, prefix: "Via:")))
    }

    @Test(.needsSIPp) func with_worker_ports_each_worker_reaches_the_backend_from_its_own_port() throws {
        // Two workers, each with a port of its own (listener port + 50, + 51): the INVITEs, ACKs
        // and BYEs the callee receives come from them (Via, Contact), its answers go back there,
        // and every call completes; no Via or Contact on the backend side names the shared port.
        // The caller opens a socket per call (SIPp -t un): the kernel spreads the calls over both
        // workers, each keeping the calls that reached it.
        guard let run = try Self.runCalls(40, uacArguments: ["-t", "un", "-max_socket", "1000"], workerPorts: true, destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every call succeeded\n\(run.output)")
        #expect(run.output.contains("40 calls started, 0 still up"), "\(run.output)")
        let edgePort = run.uasPort - 10
        let vias = Self.lines(run.uasLog, prefix: "Via:")
        let fromWorker0 = vias.filter { $0.contains("127.0.0.1:\(edgePort + 50);") }.count
        let fromWorker1 = vias.filter { $0.contains("127.0.0.1:\(edgePort + 51);") }.count
        #expect(fromWorker0 > 0 && fromWorker1 > 0, "both workers sent calls: \(fromWorker0) and \(fromWorker1) branches")
        #expect(fromWorker0 + fromWorker1 == vias.count, "every Via the callee saw names a worker's own port")
        #expect(Self.lines(run.uasLog, prefix: "Contact: <sip:edge@").allSatisfy {
            $0.contains(":\(edgePort + 50)>") || $0.contains(":\(edgePort + 51)>")
        })
        // (From and To keep the listener's address: they name the parties, not where to send.)
        #expect(!(vias.union(Self.lines(run.uasLog, prefix: "Contact:"))).contains { $0.contains("127.0.0.1:\(edgePort)") })
        #expect(run.sidesHidden)
    }

    @Test(.needsSIPp) func the_kernel_queues_each_answer_on_the_worker_its_via_branch_names() throws {
        // Two workers share the UDP port. The caller opens a socket per call (SIPp -t un), so the
        // kernel spreads new calls over both workers; the callee answers every call from one
        // address, which the kernel's hash alone queues on one worker. The edge's BPF program
        // (SO_ATTACH_REUSEPORT_CBPF) reads the worker from the top Via branch instead, so the
        // answers of both workers' calls reach their own worker: nothing is handed over.
        guard let run = try Self.runCalls(40, extraConfig: "[log]\nlevel = \"debug\"", uacArguments: ["-t", "un", "-max_socket", "1000"],
                                          destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every call succeeded\n\(run.output)")
        let lines = run.output.split(separator: "\n").map(String.init)
        let invites = (0...1).map { w in lines.filter { $0.contains("worker \(w): udp from") && $0.hasSuffix(": INVITE") }.count }
        let answers = (0...1).map { w in lines.filter { $0.contains("worker \(w): udp from 127.0.0.1:\(run.uasPort): 200") }.count }
        #expect(invites[0] > 0 && invites[1] > 0, "both workers took new calls: \(invites)")
        #expect(answers[0] > 0 && answers[1] > 0, "the callee's 200s reached both workers: \(answers)")
        #expect(run.output.contains("0 handed over between workers, 40 calls started"), "\(run.output.suffix(300))")
    }

    @Test(.needsSIPp) func spread_by_call_id_shares_one_sources_calls_between_the_workers() throws {
        // One caller, one source port: with spread_calls_by = "call-id" its calls still reach the
        // backend from both workers' own ports (without it, all would stay with one worker).
        guard let run = try Self.runCalls(40, workerPorts: true, spreadByCallID: true,
                                          destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every call succeeded\n\(run.output)")
        let edgePort = run.uasPort - 10
        let invites = Self.lines(run.uasLog, prefix: "Via:")
        let fromWorker0 = invites.filter { $0.contains("127.0.0.1:\(edgePort + 50);") }.count
        let fromWorker1 = invites.filter { $0.contains("127.0.0.1:\(edgePort + 51);") }.count
        #expect(fromWorker0 > 0 && fromWorker1 > 0, "both workers carried calls: \(fromWorker0) and \(fromWorker1) branches")
    }

    @Test(.needsSIPp) func calls_complete_with_wakeup_coalescing() throws {
        // Workers that pause up to 5 ms before looking for more datagrams still carry every call,
        // retransmission timers and all.
        guard let run = try Self.runCalls(60, extraConfig: "coalesce_microseconds = 5000", rate: 100,
                                          destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every call succeeded\n\(run.output)")
        #expect(run.output.contains("60 calls started, 0 still up"), "\(run.output)")
    }

    @Test(.needsSIPp) func rfc3261_9_cancel_reaches_the_backend_and_the_caller_gets_487() throws {
        guard let run = try Self.runCalls(10, timeout: 15, uacScenario: Scenarios.cancellingCaller, uasScenario: Scenarios.ringingCallee,
                                          destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every caller got 200 for its CANCEL and 487 for its INVITE\n\(run.output)")
        #expect(CallRun.count("CANCEL sip:", in: run.uasLog) >= 10, "the backend saw each CANCEL")
    }

    @Test(.needsSIPp) func a_cancel_from_another_source_port_finds_its_invite_on_another_worker() throws {
        // Two workers share the UDP port; the kernel queues each source's datagrams on one of them.
        // Callers (raw sockets) each send their CANCEL from a second port, until three CANCELs
        // have landed on the worker that does not hold their INVITE (the edge's debug log names
        // the worker of each message), which passes them on.
        var crossed = 0
        guard let run = try Self.runCalls(1, timeout: 30, uacScenario: Scenarios.cancellingCaller, uasScenario: Scenarios.ringingCallee,
                                          extraConfig: "[log]\nlevel = \"debug\"", during: { edge, _ in
            let port = edge.boundPort("listening udp")!
            func localPort(_ fd: Int32) -> Int {
                var address = sockaddr_in(), length = socklen_t(MemoryLayout<sockaddr_in>.size)
                _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
                return Int(UInt16(bigEndian: address.sin_port))
            }
            /// The worker whose log line says it received `method` from 127.0.0.4:`from`.
            func worker(of method: String, from: Int) -> Substring? {
                edge.output.split(whereSeparator: \.isNewline).first { $0.hasSuffix("udp from 127.0.0.4:\(from): \(method)") }
                    .flatMap { $0.split(separator: "worker ").last?.split(separator: ":").first }
            }
            for i in 0..<40 where crossed < 3 {
                let (a, b) = (ProtectionTests.socket(from: "127.0.0.4"), ProtectionTests.socket(from: "127.0.0.4"))
                defer { close(a); close(b) }
                let (portA, portB) = (localPort(a), localPort(b))
                let head = "Via: SIP/2.0/UDP 127.0.0.4:\(portA);branch=z9hG4bKother\(i)\r\nMax-Forwards: 70\r\n"
                    + "From: <sip:other@127.0.0.4>;tag=o\(i)\r\nTo: <sip:service@127.0.0.1>\r\nCall-ID: other-port-\(i)\r\n"
                ProtectionTests.send(a, "INVITE sip:service@127.0.0.1:\(port) SIP/2.0\r\n" + head
                    + "CSeq: 1 INVITE\r\nContact: <sip:other@127.0.0.4:\(portA)>\r\nContent-Length: 0\r\n\r\n", to: port)
                let ringing = ProtectionTests.statuses(a, waiting: 2_000)
                #expect(ringing.contains(180), "call \(i) rang: \(ringing)")
                ProtectionTests.send(b, "CANCEL sip:service@127.0.0.1:\(port) SIP/2.0\r\n" + head
                    + "CSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n", to: port)
                // Each answer goes back where its request came from.
                let cancelled = ProtectionTests.statuses(b, waiting: 2_000), finals = ProtectionTests.statuses(a, waiting: 2_000)
                #expect(cancelled == [200] && finals == [487], "call \(i): 200 for the CANCEL (\(cancelled)), 487 for the INVITE (\(finals))")
                let (invited, cancelling) = (worker(of: "INVITE", from: portA), worker(of: "CANCEL", from: portB))
                #expect(invited != nil && cancelling != nil, "the log names both workers")
                if invited != cancelling { crossed += 1 }
            }
        }, destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(crossed == 3, "three CANCELs reached the worker without their INVITE")
        #expect(CallRun.count("CANCEL sip:", in: run.uasLog) >= 4, "the backend saw every CANCEL")
    }

    @Test(.needsSIPp) func rfc3261_17_2_1_the_100_trying_goes_only_when_the_farm_is_slower_than_200_ms() throws {
        // A callee that rings at once: its 180 quenches the caller's retransmissions, no 100 from us.
        guard let fast = try Self.runCalls(5, destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(fast.status == 0, "\(fast.output)")
        #expect(CallRun.count("SIP/2.0 180", in: fast.uacLog) >= 5)
        #expect(CallRun.count("SIP/2.0 100", in: fast.uacLog) == 0, "no 100 ahead of a prompt 180")
        // A callee that takes a second: the 100 goes after 200 ms, before the caller's first retransmission at 500 ms.
        guard let slow = try Self.runCalls(5, uasScenario: Scenarios.thoughtfulCallee, destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(slow.status == 0, "\(slow.output)")
        #expect(CallRun.count("SIP/2.0 100", in: slow.uacLog) == 5, "one 100 per call")
        let invites = slow.uacLog.components(separatedBy: "INVITE sip:").count - 1
        #expect(invites == 5, "no INVITE was sent twice: \(invites)")
    }

    @Test(.needsSIPp) func rfc3261_14_a_reinvite_from_the_caller_reaches_the_callee_and_back() throws {
        guard let run = try Self.runCalls(10, timeout: 15, uacScenario: Scenarios.holdingCaller, uasScenario: Scenarios.answeringCallee,
                                          destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every caller's re-INVITE was answered\n\(run.output)")
        #expect(CallRun.count("a=sendonly", in: run.uasLog) >= 10, "the hold offer reached the callee")
        #expect(CallRun.count("a=recvonly", in: run.uacLog) >= 10, "the callee's answer reached the caller")
        #expect(run.sidesHidden)
    }

    @Test(.needsSIPp) func rfc3261_17_calls_survive_lost_packets_through_retransmissions() throws {
        // Both SIPp peers drop 10 % of what they send and receive, on purpose: every call must still
        // complete, through SIPp's retransmissions and the edge's (Timers A, E, G and the 2xx).
        guard let run = try Self.runCalls(30, timeout: 60, uasScenario: Scenarios.lossyCallee, lostPercent: 10,
                                          destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every call completed despite the losses\n\(run.output)")
    }

    @Test(.needsSIPp) func rfc3262_reliable_provisional_and_prack_cross_with_rack_renumbered() throws {
        guard let run = try Self.runCalls(10, timeout: 15, uacScenario: Scenarios.reliableCaller, uasScenario: Scenarios.reliableCallee,
                                          destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every caller PRACKed a reliable 183 and was answered\n\(run.output)")
        #expect(CallRun.count("PRACK sip:", in: run.uasLog) >= 10 && run.uasLog.contains("RAck: 1 1 INVITE"))
        #expect(run.uasLog.contains("Supported: 100rel"), "the caller's Supported reached the callee")
    }

    @Test(.needsSIPp) func a_call_past_its_maximum_lifetime_is_ended_on_both_legs() throws {
        // Neither SIPp peer hangs up: both wait for a BYE, which only the edge can send.
        guard let run = try Self.runCalls(5, timeout: 10, uacScenario: Scenarios.waitingCaller,
                                          extraConfig: "[calls]\nmax_duration_seconds = 1",
                                          destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every caller got the edge's BYE\n\(run.output)")
        #expect(CallRun.count("Call lifetime reached", in: run.uasLog) >= 5, "the callee side got its BYE too")
    }

    @Test(.needsSIPp) func rfc3311_an_update_from_the_callee_reaches_the_caller_and_back() throws {
        guard let run = try Self.runCalls(10, timeout: 15, uacScenario: Scenarios.updatedCaller, uasScenario: Scenarios.updatingCallee,
                                          destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every caller answered the callee's UPDATE\n\(run.output)")
        #expect(CallRun.count("UPDATE sip:", in: run.uacLog) >= 10 && run.uacLog.contains("a=sendonly"))
        #expect(CallRun.count("a=recvonly", in: run.uasLog) >= 10, "the caller's answer came back")
        #expect(run.sidesHidden)
    }

    @Test(.needsSIPp) func a_bye_from_the_callee_ends_both_legs() throws {
        guard let run = try Self.runCalls(10, timeout: 15, uacScenario: Scenarios.waitingCaller, uasScenario: Scenarios.hangingUpCallee,
                                          destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every caller received the BYE and its 200 reached the callee's side\n\(run.output)")
        #expect(CallRun.count("BYE sip:", in: run.uacLog) >= 10, "each caller got a BYE from the edge")
        #expect(run.sidesHidden)
    }

    @Test(.needsSIPp) func calls_fail_over_from_an_unreachable_backend_at_once() throws {
        // Every other call starts with a port nobody listens on: the ICMP refusal moves it on.
        // Waiting for Timer B instead (32 s) would run into SIPp's 10 s limit and fail the calls.
        guard let run = try Self.runCalls(20, timeout: 10, destinations: { ["127.0.0.1:\($0 + 5)", "127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every call reached the live backend within SIPp's 10 s")
        #expect(run.output.contains("unreachable"))
    }
    @Test(.needsSIPp) func calls_over_tcp_cross_the_b2bua_on_both_legs() throws {
        guard let run = try Self.runCalls(20, transport: "tcp", destinations: { ["sip:127.0.0.1:\($0);transport=tcp"] }) else { return }
        #expect(run.status == 0, "every call over TCP succeeded\n\(run.output)")
        #expect(run.output.contains("20 calls started, 0 still up"), "\(run.output)")
        #expect(CallRun.count("Via: SIP/2.0/TCP", in: run.uasLog) >= 20, "the backend leg ran over TCP")
        #expect(run.uacLog.contains("SIP/2.0/TCP") && run.uacLog.contains("transport=tcp"), "the caller's leg too, with a TCP Contact")
        #expect(Self.lines(run.uacLog, prefix: "Call-ID:").isDisjoint(with: Self.lines(run.uasLog, prefix: "Call-ID:")))
        #expect(run.sidesHidden)
    }

    @Test(.needsSIPp) func rfc3261_14_a_reinvite_from_the_callee_over_tcp_reaches_the_caller_and_back() throws {
        guard let run = try Self.runCalls(10, timeout: 15, uacScenario: Scenarios.reinvitedCaller, uasScenario: Scenarios.reinvitingCallee,
                                          transport: "tcp", destinations: { ["sip:127.0.0.1:\($0);transport=tcp"] }) else { return }
        #expect(run.status == 0, "every caller answered the callee's re-INVITE\n\(run.output)")
        #expect(CallRun.count("INVITE sip:sipp@", in: run.uacLog) >= 10 && run.uacLog.contains("a=sendonly"), "the re-INVITE reached the caller")
        #expect(CallRun.count("a=recvonly", in: run.uasLog) >= 10, "the caller's answer came back")
        #expect(run.sidesHidden)
    }

    @Test(.needsSIPp) func a_486_from_the_callee_reaches_the_caller_and_is_not_failed_over() throws {
        // Two destinations, both the same UAS: a failover on 486 would show as a second INVITE there.
        guard let run = try Self.runCalls(10, timeout: 15, uacScenario: Scenarios.rejectedCaller, uasScenario: Scenarios.busyCallee,
                                          destinations: { ["127.0.0.1:\($0)", "127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every caller got 486\n\(run.output)")
        #expect(CallRun.count("INVITE sip:", in: run.uasLog) == 10, "one INVITE per call reached the callee")
        #expect(run.output.contains("10 calls started, 0 still up"), "\(run.output)")
    }

    @Test(.needsSIPp) func rfc4028_session_timers_are_refreshed_per_leg() throws {
        // The caller refreshes its leg every 1.5 s (interval 4 s); the edge refreshes the backend
        // leg itself (UPDATE every 2 s), and the caller's refreshes never reach the callee.
        guard let run = try Self.runCalls(5, timeout: 20, uacScenario: Scenarios.refreshingCaller, uasScenario: Scenarios.refreshedCallee,
                                          extraConfig: "[calls]\nsession_expires = 4\nmin_session_expires = 2",
                                          destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every call outlived its session interval through refreshes\n\(run.output)")
        // Exactly two per call: the edge's own; the caller's four refreshes stayed on its leg.
        #expect(CallRun.count("UPDATE sip:", in: run.uasLog) == 10, "the edge refreshed the backend leg twice per call")
        #expect(CallRun.count("UPDATE sip:", in: run.uacLog) == 10, "the caller refreshed its own leg twice per call")
        #expect(run.uasLog.contains("Session-Expires: 4;refresher=uac"), "the edge refreshed as the UAC of its leg")
        #expect(run.output.contains("5 calls started, 0 still up"), "\(run.output)")
    }

    @Test(.needsSIPp) func rfc4028_a_leg_that_stops_refreshing_ends_the_call_on_both() throws {
        // The caller asks for a 3 s session it refreshes itself, then never does: the edge ends the
        // call (BYE to both) a second before the session would expire.
        guard let run = try Self.runCalls(5, timeout: 15, uacScenario: Scenarios.expiringCaller,
                                          extraConfig: "[calls]\nmin_session_expires = 2",
                                          destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every caller got the edge's BYE\n\(run.output)")
        #expect(CallRun.count("Session timer expired", in: run.uasLog) >= 5, "the callee got its BYE, with the reason")
    }

    @Test(.needsSIPp) func rfc4028_an_interval_below_the_minimum_is_refused_with_422() throws {
        guard let run = try Self.runCalls(3, timeout: 10, uacScenario: Scenarios.tooShortCaller,
                                          destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every caller got 422 with Min-SE: 90\n\(run.output)")
        #expect(!run.uasLog.contains("INVITE sip:"), "nothing reached the callee")
    }

    @Test(.needsSIPp) func a_dialog_whose_callee_is_gone_is_ended_by_the_ping() throws {
        // Both SIPp peers answer in-dialog OPTIONS (-aa). After 2.5 s the callee is killed: the
        // next ping toward it is refused (ICMP) and the caller gets the edge's BYE.
        guard let run = try Self.runCalls(5, timeout: 15, uacScenario: Scenarios.waitingCaller,
                                          extraConfig: "[calls]\nping_interval_seconds = 1",
                                          uacArguments: ["-aa"], uasArguments: ["-aa"],
                                          during: { _, uas in
                                              usleep(2_500_000)
                                              kill(uas.processIdentifier, SIGKILL)
                                          },
                                          destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every caller got a BYE once its callee was gone\n\(run.output)")
        #expect(CallRun.count("OPTIONS sip:", in: run.uacLog) >= 5, "the caller was pinged")
        #expect(run.uacLog.contains("Dialog ping failed"))
        #expect(run.output.contains("0 still up"), "\(run.output)")
    }
    @Test(.needsSIPp) func calls_survive_a_sigkill_of_the_edge_and_are_ended_after_its_restart() throws {
        // Calls are set up, the edge is killed (SIGKILL: nothing flushed on the way out) and started
        // again on the same database; the callers' BYEs, sent after that, reach the callees.
        let db = Scratch.file("dialogs", "db").path
        defer { for suffix in ["", "-wal", "-shm"] { unlink(db + suffix) } }
        guard let run = try Self.runCalls(5, timeout: 15, uacScenario: Scenarios.patientCaller,
                                          extraConfig: "[database]\npath = \"\(db)\"",
                                          during: { edge, _ in
                                              usleep(1_500_000)
                                              try edge.killAndRestart()
                                              #expect(edge.waitFor("listening udp"))
                                          },
                                          destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.output.contains("5 dialogs restored"), "\(run.output)")
        #expect(run.status == 0, "every caller's BYE was answered after the restart\n\(run.output)")
        #expect(CallRun.count("BYE sip:", in: run.uasLog) >= 5, "each callee got its BYE from the restarted edge")
        #expect(run.output.hasSuffix("still up\n") && run.output.contains("5 calls started, 0 still up"), "\(run.output)")
    }
    /// baresip from Debian; under CI=true its absence fails the test.
    static var baresip: String? {
        FileManager.default.isExecutableFile(atPath: "/usr/bin/baresip") ? "/usr/bin/baresip" : nil
    }

    /// A headless baresip peer's config directory: SIP on `port` (and port+1 for TCP), a 440 Hz
    /// tone as its microphone, auto-answer.
    static func baresipConfig(_ dir: URL, user: String, port: Int, rtp: ClosedRange<Int>) throws {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try """
            sip_listen 127.0.0.1:\(port)
            net_interface 127.0.0.1
            module_path /usr/lib/baresip/modules
            module g711.so
            module ausine.so
            module aubridge.so
            module account.so
            module contact.so
            module menu.so
            audio_source ausine,440
            ausrc_srate 48000
            ausrc_channels 2
            audio_player aubridge,\(user)
            rtp_ports \(rtp.lowerBound)-\(rtp.upperBound)
            """.write(to: dir.appendingPathComponent("config"), atomically: true, encoding: .utf8)
        try "<sip:\(user)@127.0.0.1:\(port)>;regint=0;answermode=auto\n"
            .write(to: dir.appendingPathComponent("accounts"), atomically: true, encoding: .utf8)
    }

    /// baresip started with `args`, its output (both streams) in `log`, which must exist.
    static func startBaresip(_ path: String, _ args: [String], log: URL) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        p.standardOutput = try FileHandle(forWritingTo: log)
        p.standardError = p.standardOutput
        p.standardInput = FileHandle.nullDevice
        try p.run()
        return p
    }

    /// The last "[h:mm:ss] audio=TX/RX (bit/s)" a baresip printed: what it sent and received.
    static func lastBitrates(_ log: String) -> (tx: Int, rx: Int)? {
        guard let range = log.range(of: "audio=", options: .backwards) else { return nil }
        let figures = log[range.upperBound...].prefix { $0 != " " }.split(separator: "/")
        guard figures.count == 2, let tx = Int(figures[0]), let rx = Int(figures[1]) else { return nil }
        return (tx, rx)
    }

    @Test(.enabled(if: CallTests.baresip != nil || CallTests.underCI, "needs baresip")) func two_baresip_phones_talk_through_the_edge_and_a_bye_ends_both_legs() throws {
        guard let baresip = Self.baresip else {
            if ProcessInfo.processInfo.environment["CI"] == "true" { Issue.record("baresip is not installed (make test installs baresip-core)") }
            return
        }
        let dir = try Scratch.directory("baresip")
        defer { Scratch.remove(dir) }
        let base = Scratch.ports()
        let (edgePort, alicePort, bobPort) = (base, base + 10, base + 20)
        try Self.baresipConfig(dir.appendingPathComponent("alice"), user: "alice", port: alicePort, rtp: (base + 100)...(base + 149))
        try Self.baresipConfig(dir.appendingPathComponent("bob"), user: "bob", port: bobPort, rtp: (base + 150)...(base + 199))
        let edge = try Edge(config: """
            workers = 2
            [dispatcher]
            destinations = ["127.0.0.1:\(bobPort)"]
            \(CallTests.listeners(port: edgePort, tcp: false))
            """)
        defer { edge.stop() }
        #expect(edge.waitFor("listening udp"))
        let bobLog = dir.appendingPathComponent("bob.log"), aliceLog = dir.appendingPathComponent("alice.log")
        FileManager.default.createFile(atPath: bobLog.path, contents: nil)
        FileManager.default.createFile(atPath: aliceLog.path, contents: nil)
        let run = { (args: [String], log: URL) throws -> Process in try Self.startBaresip(baresip, args, log: log) }
        // Bob answers by himself and quits after 12 s at the latest; Alice calls him through the
        // edge (sip:bob@edge), talks for 4 s, and hangs up as she quits.
        let bob = try run(["-f", dir.appendingPathComponent("bob").path, "-t", "12"], bobLog)
        defer { if bob.isRunning { kill(bob.processIdentifier, SIGKILL) } }
        usleep(500_000)
        let alice = try run(["-f", dir.appendingPathComponent("alice").path, "-e", "/dial sip:bob@127.0.0.1:\(edgePort)", "-t", "4"], aliceLog)
        defer { if alice.isRunning { kill(alice.processIdentifier, SIGKILL) } }
        for _ in 0..<100 where alice.isRunning { usleep(100_000) }
        // Bob's side ends when the BYE crosses the edge, well before his own 12 s.
        for _ in 0..<30 where !((try? String(contentsOf: bobLog, encoding: .utf8)) ?? "").contains("terminated") { usleep(100_000) }
        let a = (try? String(contentsOf: aliceLog, encoding: .utf8)) ?? "", b = (try? String(contentsOf: bobLog, encoding: .utf8)) ?? ""
        #expect(a.contains("Call established") && b.contains("Call established"), "alice:\n\(a)\nbob:\n\(b)")
        // RTP both ways: each phone received a stream and, at the end, sent and received 64 kbit/s.
        #expect(a.contains("incoming rtp for 'audio' established") && b.contains("incoming rtp for 'audio' established"))
        let aRates = Self.lastBitrates(a), bRates = Self.lastBitrates(b)
        #expect((aRates?.tx ?? 0) > 32_000 && (aRates?.rx ?? 0) > 32_000, "alice sent/received \(String(describing: aRates)) bit/s")
        #expect((bRates?.tx ?? 0) > 32_000 && (bRates?.rx ?? 0) > 32_000, "bob sent/received \(String(describing: bRates)) bit/s")
        // Bob saw the edge, never Alice: the caller's address did not cross.
        #expect(b.contains("Call established: sip:alice@127.0.0.1:\(edgePort)"), "\(b)")
        #expect(!b.contains("127.0.0.1:\(alicePort)"))
        #expect(b.contains("terminated") && bob.isRunning, "alice's BYE ended bob's call before his own timeout")
        kill(bob.processIdentifier, SIGKILL)
        edge.stop()
        #expect(edge.output.contains("1 calls started, 0 still up"), "\(edge.output)")
    }
    @Test(.needsSIPp) func rfc3264_a_late_offer_call_carries_the_callers_answer_in_the_backend_ack() throws {
        // The caller's INVITE has no SDP: the callee offers in its 200 and the caller answers in
        // its ACK, which the edge must carry to the callee's leg.
        guard let run = try Self.runCalls(10, timeout: 15, uacScenario: Scenarios.lateOfferCaller, uasScenario: Scenarios.lateOfferCallee,
                                          destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every late-offer call completed\n\(run.output)")
        #expect(run.output.contains("10 calls started, 0 still up"), "\(run.output)")
    }
}

/// SIPp scenarios the built-in ones do not cover.
enum Scenarios {
    static let sdp = """
        v=0
        o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
        s=-
        c=IN IP[media_ip_type] [media_ip]
        t=0 0
        m=audio [media_port] RTP/AVP 0
        a=rtpmap:0 PCMU/8000
        """

    /// A `<send>` of the caller: `method` with CSeq `cseq`, the callee's tag once it has one, an
    /// optional SDP body (plus `extraSDP` lines). `sameBranch`: the INVITE's Via (a CANCEL, or the
    /// ACK for a non-2xx final, belongs to the INVITE's transaction).
    static func callerSends(_ method: String, cseq: Int, withTag: Bool, sdp withSDP: Bool = false, extraSDP: String = "",
                            retransmit: Bool = true, sameBranch: Bool = false) -> String {
        let body = withSDP ? "Content-Type: application/sdp\nContent-Length: [len]\n\n\(sdp)\n\(extraSDP)" : "Content-Length: 0\n"
        return """
          <send\(retransmit ? " retrans=\"500\"" : "")><![CDATA[
        \(method) sip:service@[remote_ip]:[remote_port] SIP/2.0
        \(sameBranch ? "[last_Via:]" : "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]")
        From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
        To: service <sip:service@[remote_ip]:[remote_port]>\(withTag ? "[peer_tag_param]" : "")
        Call-ID: [call_id]
        CSeq: \(cseq) \(method)
        Contact: sip:sipp@[local_ip]:[local_port]
        Max-Forwards: 70
        \(body)
          ]]></send>
        """
    }

    /// A `<send>` of the callee: a response to the last request, with its tag and an optional SDP.
    static func calleeAnswers(_ status: String, tag: Bool, sdp withSDP: Bool = false, extraSDP: String = "", cseq: String = "[last_CSeq:]",
                              retransmit: Bool = false, neverLost: Bool = false) -> String {
        let body = withSDP ? "Content-Type: application/sdp\nContent-Length: [len]\n\n\(sdp)\n\(extraSDP)" : "Content-Length: 0\n"
        return """
          <send\(retransmit ? " retrans=\"500\"" : "")\(neverLost ? " lost=\"0\"" : "")><![CDATA[
        SIP/2.0 \(status)
        [last_Via:]
        [last_From:]
        [last_To:]\(tag ? ";tag=[pid]SIPpTag01[call_number]" : "")
        [last_Call-ID:]
        \(cseq)
        Contact: <sip:[local_ip]:[local_port]>
        \(body)
          ]]></send>
        """
    }

    static func scenario(_ name: String, _ steps: [String]) -> String {
        "<?xml version=\"1.0\" encoding=\"ISO-8859-1\" ?>\n<scenario name=\"\(name)\">\n" + steps.joined(separator: "\n") + "\n</scenario>\n"
    }

    /// Caller: INVITE, wait for 180, CANCEL, expect 200 (CANCEL) and 487 (INVITE), ACK.
    static let cancellingCaller = scenario("cancelling caller", [
        callerSends("INVITE", cseq: 1, withTag: false),
        #"<recv response="100" optional="true"/>"#, #"<recv response="180"/>"#,
        callerSends("CANCEL", cseq: 1, withTag: false, retransmit: false, sameBranch: true),
        #"<recv response="200"/>"#, #"<recv response="487"/>"#,
        callerSends("ACK", cseq: 1, withTag: true, retransmit: false, sameBranch: true),
    ])

    /// Callee: thinks for a second before it rings and answers, then waits for the ACK and BYE.
    static let thoughtfulCallee = scenario("thoughtful callee", [
        #"<recv request="INVITE"/>"#,
        #"<pause milliseconds="1000"/>"#,
        calleeAnswers("180 Ringing", tag: true),
        calleeAnswers("200 OK", tag: true, sdp: true),
        #"<recv request="ACK"/>"#,
        #"<recv request="BYE"/>"#,
        calleeAnswers("200 OK", tag: true),
    ])

    /// Callee: rings, then answers the CANCEL with 200 and the INVITE with 487, waits for the ACK.
    static let ringingCallee = scenario("ringing callee", [
        #"<recv request="INVITE"/>"#,
        calleeAnswers("180 Ringing", tag: true),
        #"<recv request="CANCEL"/>"#,
        calleeAnswers("200 OK", tag: true),
        calleeAnswers("487 Request Terminated", tag: true, cseq: "CSeq: 1 INVITE"),
        #"<recv request="ACK"/>"#,
    ])

    /// Caller: a call, then a re-INVITE putting it on hold (a=sendonly), then BYE.
    static let holdingCaller = scenario("caller that holds", [
        callerSends("INVITE", cseq: 1, withTag: false, sdp: true),
        #"<recv response="100" optional="true"/>"#, #"<recv response="180" optional="true"/>"#, #"<recv response="200" rtd="true"/>"#,
        callerSends("ACK", cseq: 1, withTag: true, retransmit: false),
        #"<pause milliseconds="50"/>"#,
        callerSends("INVITE", cseq: 2, withTag: true, sdp: true, extraSDP: "a=sendonly\n"),
        #"<recv response="100" optional="true"/>"#, #"<recv response="200"/>"#,
        callerSends("ACK", cseq: 2, withTag: true, retransmit: false),
        callerSends("BYE", cseq: 3, withTag: true),
        #"<recv response="200"/>"#,
    ])

    /// Callee like SIPp's built-in UAS (ring, answer, wait for ACK and BYE), but its INVITE and 180
    /// are never among the packets `-lost` drops: SIPp breaks a UAS call if it drops its first
    /// message, and takes the edge's INVITE retransmission (sent, rightly, while no provisional has
    /// come) for an unexpected message. Everything after the 180 may be lost.
    static let lossyCallee = scenario("callee for lossy runs", [
        #"<recv request="INVITE" lost="0"/>"#,
        calleeAnswers("180 Ringing", tag: true, neverLost: true),
        calleeAnswers("200 OK", tag: true, sdp: true, retransmit: true),
        #"<recv request="ACK" optional="true" next="bye"/>"#,
        #"<label id="bye"/>"#,
        #"<recv request="BYE"/>"#,
        calleeAnswers("200 OK", tag: false),
        #"<pause milliseconds="4000"/>"#,
    ])

    /// Caller with 100rel (RFC 3262): its INVITE has CSeq 7; it PRACKs the reliable 183.
    static let reliableCaller = scenario("caller with 100rel", [
        callerSends("INVITE", cseq: 7, withTag: false, sdp: true).replacingOccurrences(of: "Max-Forwards: 70", with: "Max-Forwards: 70\nSupported: 100rel"),
        #"<recv response="100" optional="true"/>"#,
        """
          <recv response="183">
            <action><ereg regexp="[0-9]+" search_in="hdr" header="RSeq:" assign_to="rseq"/></action>
          </recv>
        """,
        callerSends("PRACK", cseq: 8, withTag: true).replacingOccurrences(of: "Max-Forwards: 70", with: "Max-Forwards: 70\nRAck: [$rseq] 7 INVITE"),
        #"<recv response="200"/>"#,
        #"<recv response="200" rtd="true"/>"#,
        callerSends("ACK", cseq: 7, withTag: true, retransmit: false),
        callerSends("BYE", cseq: 9, withTag: true),
        #"<recv response="200"/>"#,
    ])

    /// Callee with 100rel: a reliable 183 (Require: 100rel, RSeq: 1); it checks the PRACK's RAck
    /// names its own INVITE (CSeq 1 on this leg, whatever the caller's was), then answers.
    static let reliableCallee = scenario("callee with 100rel", [
        """
          <recv request="INVITE">
            <action>
              <ereg regexp=".*" search_in="hdr" header="Via:" assign_to="via"/>
              <ereg regexp=".*" search_in="hdr" header="From:" assign_to="from"/>
              <ereg regexp=".*" search_in="hdr" header="To:" assign_to="to"/>
              <ereg regexp=".*" search_in="hdr" header="CSeq:" assign_to="cseq"/>
            </action>
          </recv>
        """,
        calleeAnswers("183 Session Progress", tag: true, sdp: true, retransmit: true)
            .replacingOccurrences(of: "Contact: <sip:[local_ip]:[local_port]>", with: "Contact: <sip:[local_ip]:[local_port]>\nRequire: 100rel\nRSeq: 1"),
        """
          <recv request="PRACK">
            <action><ereg regexp="^ *1 1 INVITE" search_in="hdr" header="RAck:" check_it="true" assign_to="rack"/></action>
          </recv>
        """,
        // SIPp insists that a captured variable be used: the PRACK's 200 echoes it.
        calleeAnswers("200 OK", tag: false).replacingOccurrences(of: "Content-Length: 0", with: "X-RAck-Seen: [$rack]\nContent-Length: 0"),
        """
          <send retrans="500"><![CDATA[
        SIP/2.0 200 OK
        Via:[$via]
        From:[$from]
        To:[$to];tag=[pid]SIPpTag01[call_number]
        [last_Call-ID:]
        CSeq:[$cseq]
        Contact: <sip:[local_ip]:[local_port]>
        Content-Length: 0

          ]]></send>
        """,
        #"<recv request="ACK"/>"#, #"<recv request="BYE"/>"#,
        calleeAnswers("200 OK", tag: false),
    ])

    /// Caller that answers what the callee asks mid-call (an UPDATE), then the callee's BYE.
    static let updatedCaller = scenario("caller that receives an UPDATE", [
        callerSends("INVITE", cseq: 1, withTag: false, sdp: true),
        #"<recv response="100" optional="true"/>"#, #"<recv response="180" optional="true"/>"#, #"<recv response="200" rtd="true"/>"#,
        callerSends("ACK", cseq: 1, withTag: true, retransmit: false),
        #"<recv request="UPDATE"/>"#,
        calleeAnswers("200 OK", tag: false, sdp: true, extraSDP: "a=recvonly\n"),
        #"<recv request="BYE"/>"#,
        calleeAnswers("200 OK", tag: false),
    ])

    /// Callee: answers, then hangs up itself. SIPp's keywords for a UAS's own request are not
    /// filled in, so the INVITE's Contact, From and To are captured and turned around.
    static let hangingUpCallee = scenario("callee that hangs up", [
        """
          <recv request="INVITE">
            <action>
              <ereg regexp="sip:[^>;]*" search_in="hdr" header="Contact:" assign_to="contact"/>
              <ereg regexp=".*" search_in="hdr" header="From:" assign_to="from"/>
              <ereg regexp=".*" search_in="hdr" header="To:" assign_to="to"/>
            </action>
          </recv>
        """,
        calleeAnswers("200 OK", tag: true, sdp: true),
        #"<recv request="ACK"/>"#,
        #"<pause milliseconds="50"/>"#,
        """
          <send retrans="500"><![CDATA[
        BYE [$contact] SIP/2.0
        Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
        From: [$to];tag=[pid]SIPpTag01[call_number]
        To: [$from]
        Call-ID: [call_id]
        CSeq: 2 BYE
        Max-Forwards: 70
        Content-Length: 0

          ]]></send>
        """,
        #"<recv response="200"/>"#,
    ])

    /// Callee: answers, sends an UPDATE (a=sendonly) through the edge, then hangs up.
    static let updatingCallee = hangingUpCallee.replacingOccurrences(of: "callee that hangs up", with: "callee that updates")
        .replacingOccurrences(of: #"<pause milliseconds="50"/>"#, with: #"""
        <pause milliseconds="50"/>
          <send retrans="500"><![CDATA[
        UPDATE [$contact] SIP/2.0
        Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
        From: [$to];tag=[pid]SIPpTag01[call_number]
        To: [$from]
        Call-ID: [call_id]
        CSeq: 2 UPDATE
        Contact: <sip:[local_ip]:[local_port]>
        Max-Forwards: 70
        Content-Type: application/sdp
        Content-Length: [len]

        \#(sdp)
        a=sendonly

          ]]></send>
          <recv response="200"/>
        """#)
        .replacingOccurrences(of: "CSeq: 2 BYE", with: "CSeq: 3 BYE")

    /// Caller: a call it does not end; it waits for the callee's BYE (through the edge) and answers it.
    static let waitingCaller = scenario("caller that is hung up on", [
        callerSends("INVITE", cseq: 1, withTag: false, sdp: true),
        #"<recv response="100" optional="true"/>"#, #"<recv response="180" optional="true"/>"#, #"<recv response="200" rtd="true"/>"#,
        callerSends("ACK", cseq: 1, withTag: true, retransmit: false),
        #"<recv request="BYE"/>"#,
        calleeAnswers("200 OK", tag: false),
    ])

    /// Callee: answers, accepts a re-INVITE (a=recvonly), then the BYE.
    static let answeringCallee = scenario("callee that accepts a re-INVITE", [
        #"<recv request="INVITE"/>"#,
        calleeAnswers("200 OK", tag: true, sdp: true),
        #"<recv request="ACK"/>"#, #"<recv request="INVITE"/>"#,
        calleeAnswers("200 OK", tag: false, sdp: true, extraSDP: "a=recvonly\n"),
        #"<recv request="ACK"/>"#, #"<recv request="BYE"/>"#,
        calleeAnswers("200 OK", tag: false),
    ])
    /// Caller: answers a re-INVITE from the callee (a=recvonly), then the callee's BYE.
    static let reinvitedCaller = scenario("caller that is re-INVITEd", [
        callerSends("INVITE", cseq: 1, withTag: false, sdp: true),
        #"<recv response="100" optional="true"/>"#, #"<recv response="180" optional="true"/>"#, #"<recv response="200" rtd="true"/>"#,
        callerSends("ACK", cseq: 1, withTag: true, retransmit: false),
        #"<recv request="INVITE"/>"#,
        calleeAnswers("200 OK", tag: false, sdp: true, extraSDP: "a=recvonly\n"),
        #"<recv request="ACK"/>"#,
        #"<recv request="BYE"/>"#,
        calleeAnswers("200 OK", tag: false),
    ])

    /// Callee: answers, re-INVITEs the caller through the edge (a=sendonly), ACKs its 200, hangs up.
    static let reinvitingCallee = hangingUpCallee.replacingOccurrences(of: "callee that hangs up", with: "callee that re-INVITEs")
        .replacingOccurrences(of: #"<pause milliseconds="50"/>"#, with: #"""
        <pause milliseconds="50"/>
          <send retrans="500"><![CDATA[
        INVITE [$contact] SIP/2.0
        Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
        From: [$to];tag=[pid]SIPpTag01[call_number]
        To: [$from]
        Call-ID: [call_id]
        CSeq: 2 INVITE
        Contact: <sip:[local_ip]:[local_port];transport=[transport]>
        Max-Forwards: 70
        Content-Type: application/sdp
        Content-Length: [len]

        \#(sdp)
        a=sendonly

          ]]></send>
          <recv response="100" optional="true"/>
          <recv response="200"/>
          <send><![CDATA[
        ACK [$contact] SIP/2.0
        Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
        From: [$to];tag=[pid]SIPpTag01[call_number]
        To: [$from]
        Call-ID: [call_id]
        CSeq: 2 ACK
        Max-Forwards: 70
        Content-Length: 0

          ]]></send>
        """#)
        .replacingOccurrences(of: "CSeq: 2 BYE", with: "CSeq: 3 BYE")

    /// Caller whose INVITE is refused with 486; it ACKs.
    static let rejectedCaller = scenario("caller that gets busy", [
        callerSends("INVITE", cseq: 1, withTag: false),
        #"<recv response="100" optional="true"/>"#, #"<recv response="486"/>"#,
        callerSends("ACK", cseq: 1, withTag: true, retransmit: false, sameBranch: true),
    ])

    /// Callee that is busy.
    static let busyCallee = scenario("busy callee", [
        #"<recv request="INVITE"/>"#,
        calleeAnswers("486 Busy Here", tag: true),
        #"<recv request="ACK"/>"#,
    ])

    static let timerHeaders = "Supported: timer\nSession-Expires: 4;refresher=uac"

    /// Caller with a 4 s session it refreshes by UPDATE every 1.5 s, for 5 s, then BYE.
    static let refreshingCaller = scenario("caller that refreshes", [
        callerSends("INVITE", cseq: 1, withTag: false, sdp: true).replacingOccurrences(of: "Max-Forwards: 70", with: "Max-Forwards: 70\n\(timerHeaders)"),
        #"<recv response="100" optional="true"/>"#, #"<recv response="180" optional="true"/>"#,
        """
          <recv response="200">
            <action><ereg regexp="4;refresher=uac" search_in="hdr" header="Session-Expires:" check_it="true" assign_to="se"/></action>
          </recv>
        """,
        callerSends("ACK", cseq: 1, withTag: true, retransmit: false).replacingOccurrences(of: "Max-Forwards: 70", with: "Max-Forwards: 70\nX-SE: [$se]"),
        #"<pause milliseconds="1500"/>"#,
        callerSends("UPDATE", cseq: 2, withTag: true).replacingOccurrences(of: "Max-Forwards: 70", with: "Max-Forwards: 70\n\(timerHeaders)"),
        #"<recv response="200"/>"#,
        #"<pause milliseconds="1500"/>"#,
        callerSends("UPDATE", cseq: 3, withTag: true).replacingOccurrences(of: "Max-Forwards: 70", with: "Max-Forwards: 70\n\(timerHeaders)"),
        #"<recv response="200"/>"#,
        #"<pause milliseconds="2000"/>"#,
        callerSends("BYE", cseq: 4, withTag: true),
        #"<recv response="200"/>"#,
    ])

    /// Callee that checks the edge asked for a 4 s session, leaves refreshing to the edge (the
    /// UAC of its leg), and answers two UPDATE refreshes before the BYE.
    static let refreshedCallee = scenario("callee refreshed by the edge", [
        """
          <recv request="INVITE">
            <action><ereg regexp="^ *4" search_in="hdr" header="Session-Expires:" check_it="true" assign_to="se"/></action>
          </recv>
        """,
        calleeAnswers("200 OK", tag: true, sdp: true)
            .replacingOccurrences(of: "Contact: <sip:[local_ip]:[local_port]>", with: "Contact: <sip:[local_ip]:[local_port]>\nAllow: INVITE, ACK, BYE, UPDATE\nRequire: timer\nSession-Expires: 4;refresher=uac\nX-SE: [$se]"),
        #"<recv request="ACK"/>"#,
        #"<recv request="UPDATE"/>"#,
        calleeAnswers("200 OK", tag: false).replacingOccurrences(of: "Content-Length: 0", with: "Session-Expires: 4;refresher=uac\nContent-Length: 0"),
        #"<recv request="UPDATE"/>"#,
        calleeAnswers("200 OK", tag: false).replacingOccurrences(of: "Content-Length: 0", with: "Session-Expires: 4;refresher=uac\nContent-Length: 0"),
        #"<recv request="BYE"/>"#,
        calleeAnswers("200 OK", tag: false),
    ])

    /// Caller that asks for a 3 s session it would refresh, never does, and is hung up on.
    static let expiringCaller = waitingCaller.replacingOccurrences(of: "caller that is hung up on", with: "caller that lets its session expire")
        .replacingOccurrences(of: "Max-Forwards: 70\nContent-Type", with: "Max-Forwards: 70\nSupported: timer\nSession-Expires: 3;refresher=uac\nContent-Type")

    /// Caller asking for a 30 s session, below the edge's minimum of 90: it expects 422 and Min-SE.
    static let tooShortCaller = scenario("caller with too short a session", [
        callerSends("INVITE", cseq: 1, withTag: false).replacingOccurrences(of: "Max-Forwards: 70", with: "Max-Forwards: 70\nSupported: timer\nSession-Expires: 30"),
        #"<recv response="100" optional="true"/>"#,
        """
          <recv response="422">
            <action><ereg regexp="90" search_in="hdr" header="Min-SE:" check_it="true" assign_to="minse"/></action>
          </recv>
        """,
        callerSends("ACK", cseq: 1, withTag: true, retransmit: false, sameBranch: true).replacingOccurrences(of: "Max-Forwards: 70", with: "Max-Forwards: 70\nX-Min-SE: [$minse]"),
    ])
    /// Caller that stays 4 s on the call before its BYE.
    static let patientCaller = scenario("caller that waits before hanging up", [
        callerSends("INVITE", cseq: 1, withTag: false, sdp: true),
        #"<recv response="100" optional="true"/>"#, #"<recv response="180" optional="true"/>"#, #"<recv response="200" rtd="true"/>"#,
        callerSends("ACK", cseq: 1, withTag: true, retransmit: false),
        #"<pause milliseconds="4000"/>"#,
        callerSends("BYE", cseq: 2, withTag: true),
        #"<recv response="200"/>"#,
    ])
    /// Caller without an offer: it answers the callee's SDP in its ACK.
    static let lateOfferCaller = scenario("late-offer caller", [
        callerSends("INVITE", cseq: 1, withTag: false),
        #"<recv response="100" optional="true"/>"#, #"<recv response="180" optional="true"/>"#, #"<recv response="200" rtd="true"/>"#,
        callerSends("ACK", cseq: 1, withTag: true, sdp: true, retransmit: false),
        callerSends("BYE", cseq: 2, withTag: true),
        #"<recv response="200"/>"#,
    ])

    /// Callee that offers in its 200 and insists on an answer in the ACK.
    static let lateOfferCallee = scenario("late-offer callee", [
        #"<recv request="INVITE"/>"#,
        calleeAnswers("200 OK", tag: true, sdp: true, retransmit: true),
        """
          <recv request="ACK">
            <action><ereg regexp="m=audio [0-9]+ RTP/AVP" search_in="body" check_it="true" assign_to="answer"/></action>
          </recv>
        """,
        #"<recv request="BYE"/>"#,
        calleeAnswers("200 OK", tag: false).replacingOccurrences(of: "Content-Length: 0", with: "X-Answer: [$answer]\nContent-Length: 0"),
    ])
}

extension Trait where Self == ConditionTrait {
    /// Runs where SIPp is installed and is reported as skipped where it is not, except under
    /// CI=true, where the test runs and fails for want of it.
    static var needsSIPp: Self {
        .enabled(if: CallTests.sipp != nil || CallTests.underCI, "needs SIPp (sip-tester, which make test installs)")
    }
}
