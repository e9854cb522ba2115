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

    static func lines(_ file: URL, prefix: String) -> Set<String> {
        guard let text = try? String(contentsOf: file, encoding: .utf8) else { return [] }
        return Set(text.split(whereSeparator: \.isNewline).filter { $0.lowercased().hasPrefix(prefix.lowercased()) }.map(String.init))
    }

    /// Runs `calls` SIPp calls through a sipedge whose destinations are `destinations(uasPort)`.
    /// Returns the UAC's exit status, the working directory (message traces), ports and edge output.
    static func runCalls(_ calls: Int, timeout: Int = 30, uacScenario: String? = nil, uasScenario: String? = nil,
                         destinations: (Int) -> [String]) throws
        -> (status: Int32, dir: URL, uacPort: Int, uasPort: Int, output: String)? {
        guard let sipp = try? Self.requireSIPp() else { return nil }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sipedge-calls-\(getpid())-\(UInt16.random(in: 0...9999))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let base = Int.random(in: 20_000...40_000)
        let (edgePort, uasPort, uacPort) = (base, base + 10, base + 20)
        let list = destinations(uasPort).map { "\"\($0)\"" }.joined(separator: ", ")
        let config = """
            workers = 2
            [dispatcher]
            destinations = [\(list)]
            [[listener]]
            proto = "udp"
            address = "127.0.0.1"
            port = \(edgePort)
            tag = "public"
            """
        let (edge, output) = try CommandTests.start(config)
        defer { if edge.isRunning { edge.terminate() } }
        #expect(CommandTests.waitFor(output, "listening udp"))
        if let uacScenario { try uacScenario.write(to: dir.appendingPathComponent("uac.xml"), atomically: true, encoding: .utf8) }
        if let uasScenario { try uasScenario.write(to: dir.appendingPathComponent("uas.xml"), atomically: true, encoding: .utf8) }
        let uasKind = uasScenario == nil ? ["-sn", "uas"] : ["-sf", "uas.xml"]
        let uacKind = uacScenario == nil ? ["-sn", "uac"] : ["-sf", "uac.xml"]
        let uas = try Self.process(sipp, uasKind + ["-i", "127.0.0.1", "-p", "\(uasPort)", "-cp", "\(base + 1)", "-nostdin",
                                          "-trace_msg", "-message_file", "uas.msg"], in: dir)
        // SIPp ignores SIGTERM while it waits for calls: it is stopped with SIGKILL.
        defer { if uas.isRunning { kill(uas.processIdentifier, SIGKILL) } }
        usleep(300_000)
        let uac = try Self.process(sipp, uacKind + ["127.0.0.1:\(edgePort)", "-i", "127.0.0.1", "-p", "\(uacPort)", "-cp", "\(base + 2)",
                                          "-m", "\(calls)", "-r", "50", "-timeout", "\(timeout)s", "-nostdin",
                                          "-trace_msg", "-message_file", "uac.msg"], in: dir)
        // Bounded: the UAC stops by itself after 50 calls or its 30 s timeout; this is a backstop.
        for _ in 0..<600 where uac.isRunning { usleep(100_000) }
        if uac.isRunning { kill(uac.processIdentifier, SIGKILL) }
        uac.waitUntilExit()
        kill(uas.processIdentifier, SIGKILL)
        uas.waitUntilExit()
        edge.terminate()
        edge.waitUntilExit()
        #expect(CommandTests.waitFor(output, "stopped:"))
        return (uac.terminationStatus, dir, uacPort, uasPort, output())
    }

    @Test func sipp_calls_cross_the_b2bua_and_neither_side_sees_the_other() throws {
        guard let run = try Self.runCalls(50, destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "SIPp's exit status is 0 only when every call succeeded")
        let (dir, uacPort, uasPort) = (run.dir, run.uacPort, run.uasPort)

        // Topology hiding, from what each SIPp actually received and sent.
        let uacLog = dir.appendingPathComponent("uac.msg"), uasLog = dir.appendingPathComponent("uas.msg")
        let uacText = try String(contentsOf: uacLog, encoding: .utf8), uasText = try String(contentsOf: uasLog, encoding: .utf8)
        let uacCallIDs = Self.lines(uacLog, prefix: "Call-ID:"), uasCallIDs = Self.lines(uasLog, prefix: "Call-ID:")
        #expect(uacCallIDs.count >= 50 && uasCallIDs.count >= 50)
        #expect(uacCallIDs.isDisjoint(with: uasCallIDs), "no Call-ID crosses from one side to the other")
        #expect(!uasText.contains("127.0.0.1:\(uacPort)"), "the Asterisk side never sees the client's address")
        #expect(!uacText.contains("127.0.0.1:\(uasPort)"), "the client never sees the Asterisk's address")
        let uacBranches = Self.lines(uacLog, prefix: "Via:"), uasBranches = Self.lines(uasLog, prefix: "Via:")
        #expect(uacBranches.isDisjoint(with: uasBranches))
    }

    @Test func rfc3261_9_cancel_reaches_the_backend_and_the_caller_gets_487() throws {
        guard let run = try Self.runCalls(10, timeout: 15, uacScenario: Scenarios.cancellingCaller, uasScenario: Scenarios.ringingCallee,
                                          destinations: { ["127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every caller got 200 for its CANCEL and 487 for its INVITE\n\(run.output)")
        let uasLog = try String(contentsOf: run.dir.appendingPathComponent("uas.msg"), encoding: .utf8)
        #expect(uasLog.components(separatedBy: "CANCEL sip:").count - 1 >= 10, "the backend saw each CANCEL")
    }

    @Test func calls_fail_over_from_an_unreachable_backend_at_once() throws {
        // Every other call starts with a port nobody listens on: the ICMP refusal moves it on.
        // Waiting for Timer B instead (32 s) would run into SIPp's 10 s limit and fail the calls.
        guard let run = try Self.runCalls(20, timeout: 10, destinations: { ["127.0.0.1:\($0 + 5)", "127.0.0.1:\($0)"] }) else { return }
        #expect(run.status == 0, "every call reached the live backend within SIPp's 10 s")
        #expect(run.output.contains("unreachable"))
    }
}

/// SIPp scenarios the built-in ones do not cover.
enum Scenarios {
    /// Caller: INVITE, wait for 180, CANCEL, expect 200 (CANCEL) and 487 (INVITE), ACK.
    static let cancellingCaller = """
        <?xml version="1.0" encoding="ISO-8859-1" ?>
        <scenario name="cancelling caller">
          <send retrans="500"><![CDATA[
        INVITE sip:service@[remote_ip]:[remote_port] SIP/2.0
        Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
        From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
        To: service <sip:service@[remote_ip]:[remote_port]>
        Call-ID: [call_id]
        CSeq: 1 INVITE
        Contact: sip:sipp@[local_ip]:[local_port]
        Max-Forwards: 70
        Content-Length: 0

          ]]></send>
          <recv response="100" optional="true"/>
          <recv response="180"/>
          <send><![CDATA[
        CANCEL sip:service@[remote_ip]:[remote_port] SIP/2.0
        [last_Via:]
        From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
        To: service <sip:service@[remote_ip]:[remote_port]>
        Call-ID: [call_id]
        CSeq: 1 CANCEL
        Max-Forwards: 70
        Content-Length: 0

          ]]></send>
          <recv response="200"/>
          <recv response="487"/>
          <send><![CDATA[
        ACK sip:service@[remote_ip]:[remote_port] SIP/2.0
        [last_Via:]
        From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
        [last_To:]
        Call-ID: [call_id]
        CSeq: 1 ACK
        Max-Forwards: 70
        Content-Length: 0

          ]]></send>
        </scenario>
        """

    /// Callee: rings, then answers the CANCEL with 200 and the INVITE with 487, waits for the ACK.
    static let ringingCallee = """
        <?xml version="1.0" encoding="ISO-8859-1" ?>
        <scenario name="ringing callee">
          <recv request="INVITE"/>
          <send><![CDATA[
        SIP/2.0 180 Ringing
        [last_Via:]
        [last_From:]
        [last_To:];tag=[pid]SIPpTag01[call_number]
        [last_Call-ID:]
        [last_CSeq:]
        Contact: <sip:[local_ip]:[local_port]>
        Content-Length: 0

          ]]></send>
          <recv request="CANCEL"/>
          <send><![CDATA[
        SIP/2.0 200 OK
        [last_Via:]
        [last_From:]
        [last_To:];tag=[pid]SIPpTag01[call_number]
        [last_Call-ID:]
        [last_CSeq:]
        Content-Length: 0

          ]]></send>
          <send><![CDATA[
        SIP/2.0 487 Request Terminated
        [last_Via:]
        [last_From:]
        [last_To:];tag=[pid]SIPpTag01[call_number]
        [last_Call-ID:]
        CSeq: 1 INVITE
        Content-Length: 0

          ]]></send>
          <recv request="ACK"/>
        </scenario>
        """
}
