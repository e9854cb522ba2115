import Dialog
import SIPParser
import Testing
import Transport

/// Destinations that record what the B2BUA tells them (which failed), for the rules on how a
/// backend is found dead from its calls.
final class RecordingPicker: DestinationPicker, @unchecked Sendable {
    let hops: [Hop]
    private(set) var failures: [Int] = []

    init(_ hops: [Hop]) { self.hops = hops }

    func pick(_ call: CallRequest, excluding tried: [Int]) throws(CallRefusal) -> CallDestination? {
        hops.indices.first { !tried.contains($0) }.map { CallDestination(index: $0, hop: hops[$0]) }
    }
    func claim(_ index: Int) {}
    func release(_ index: Int) {}
    func failed(_ index: Int) { failures.append(index) }
    func index(of hop: Hop) -> Int? { hops.firstIndex { $0.address == hop.address } }
}

/// A backend is dead when requests in its calls go unanswered or are refused by the transport
/// (issue 16, detection): each such request counts against its destination as a failed probe.
@Suite struct BackendFailureTests {
    typealias Stage = B2BUAStage
    static let backend = Stage.backends[0]

    @Test func rfc3261_17_1_2_2_a_ping_to_the_backend_unanswered_until_timer_f_counts_against_it() throws {
        let picker = RecordingPicker(Stage.backends)
        let s = Stage { $0.picker = picker; $0.pingSeconds = 30 }
        try #require(s.establish() != nil)
        s.wait(30_000)
        let pings = s.unread(to: Self.backend).filter { $0.method == .options }
        #expect(pings.count == 1)
        // The caller answers its ping; the backend never does.
        if let toCaller = s.unread(to: Stage.caller).last(where: { $0.method == .options }) {
            s.fromCaller(Stage.response(to: toCaller, 200, toTag: nil))
        }
        s.wait(31_000)
        #expect(picker.failures.isEmpty, "not before Timer F")
        s.wait(1_100)
        #expect(picker.failures == [0], "Timer F (64*T1) fired for the backend's ping")
    }

    @Test func an_icmp_refusal_of_a_request_relayed_to_the_backend_counts_against_it_at_once() throws {
        let picker = RecordingPicker(Stage.backends)
        let s = Stage { $0.picker = picker }
        let (tag, _) = try #require(s.establish())
        s.fromCaller(s.callerRequest("INFO", cseq: 2, toTag: tag))
        #expect(s.unread(to: Self.backend).map(\.method) == [.info])
        s.b2bua.unreachable(Self.backend)
        s.clock.endIteration()
        #expect(picker.failures == [0])
        #expect(s.unread(to: Stage.caller).compactMap(\.statusCode).last == 408, "the caller's INFO gets 408")
    }

    @Test func a_request_to_the_caller_unanswered_does_not_count_against_the_backend() throws {
        let picker = RecordingPicker(Stage.backends)
        let s = Stage { $0.picker = picker; $0.pingSeconds = 30 }
        try #require(s.establish() != nil)
        s.wait(30_000)
        if let toBackend = s.unread(to: Self.backend).last(where: { $0.method == .options }) {
            s.fromBackend(Stage.response(to: toBackend, 200, toTag: nil))
        }
        s.wait(33_000)
        #expect(picker.failures.isEmpty)
    }
}
