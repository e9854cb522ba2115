import Glibc
import Synchronization
import Testing
@testable import Transport

/// Event loops on real threads: hand-over, timers, failing handlers, UDP over loopback.
@Suite(.serialized) struct LoopTests {
    /// Waits (bounded) until `condition` holds.
    static func eventually(_ seconds: Double = 5, _ condition: () -> Bool) -> Bool {
        let deadline = EventLoop.monotonicMilliseconds() + UInt64(seconds * 1000)
        while EventLoop.monotonicMilliseconds() < deadline {
            if condition() { return true }
            usleep(2_000)
        }
        return condition()
    }

    @Test func work_from_other_threads_runs_on_the_loop() throws {
        let loop = try EventLoop(index: 3)
        try loop.start()
        defer { loop.stop() }
        let counter = Atomic<Int>(0)
        for _ in 0..<1_000 {
            loop.execute { counter.add(1, ordering: .relaxed) }
        }
        #expect(Self.eventually { counter.load(ordering: .relaxed) == 1_000 })
        let onLoop = try loop.submitAndWait { loop.inLoop }
        #expect(onLoop && !loop.inLoop && loop.index == 3)
    }

    @Test func timers_fire_on_the_loop_and_cancelled_ones_do_not() throws {
        let loop = try EventLoop()
        try loop.start()
        defer { loop.stop() }
        let fired = Mutex<[String]>([])
        try loop.submitAndWait {
            loop.schedule(afterMilliseconds: 20) { fired.withLock { $0.append("a") } }
            let b = loop.schedule(afterMilliseconds: 30) { fired.withLock { $0.append("b") } }
            loop.schedule(afterMilliseconds: 40) { fired.withLock { $0.append("c") } }
            loop.cancel(b)
        }
        #expect(Self.eventually { fired.withLock { $0.count } == 2 })
        usleep(50_000)
        #expect(fired.withLock { $0 } == ["a", "c"])
    }

    /// Records the loop's clock at each firing, by token.
    final class FiringClock: TimerTarget, @unchecked Sendable {
        let firings = Mutex<[(token: UInt64, at: UInt64)]>([])
        func timerFired(_ token: UInt64) {
            firings.withLock { $0.append((token, EventLoop.monotonicMilliseconds())) }
        }
    }

    @Test func timers_that_only_end_a_wait_fire_no_earlier_than_asked_and_share_wake_ups() throws {
        // 40 waits of 1600-1639 ms, armed a millisecond apart: one wake-up each with exact timers;
        // with a tolerance of a sixteenth (64 ms boundaries here) they end in at most two.
        let loop = try EventLoop()
        try loop.start()
        defer { loop.stop() }
        let clock = FiringClock()
        var armedAt: [UInt64] = []
        for i in 0..<40 {
            armedAt.append(try loop.submitAndWait {
                let now = EventLoop.monotonicMilliseconds()
                loop.schedule(atLeastMilliseconds: 1_600 + UInt64(i), target: clock, token: UInt64(i))
                return now
            })
            usleep(1_000)
        }
        #expect(Self.eventually(4) { clock.firings.withLock { $0.count } == 40 })
        let firings = clock.firings.withLock { $0 }
        for f in firings {
            #expect(f.at >= armedAt[Int(f.token)] + 1_600 + f.token, "timer \(f.token) fired early")
            #expect(f.at <= armedAt[Int(f.token)] + 1_600 + f.token + 100 + 50, "timer \(f.token) fired more than its tolerance late")
        }
        let wakeUps = Set(firings.map(\.at)).count
        #expect(wakeUps <= 3, "\(wakeUps) distinct firing times")
    }

    final class Thrower: EventHandler, Sendable {
        let failures = Atomic<Int>(0)
        func handle(_ events: IOEvents, on loop: EventLoop) throws { throw SystemError("test", errno: EIO) }
        func failed(_ error: any Error, on loop: EventLoop) { failures.add(1, ordering: .relaxed) }
    }

    @Test func a_handler_that_throws_is_removed_and_the_loop_goes_on() throws {
        let loop = try EventLoop()
        loop.log = { _ in }
        try loop.start()
        defer { loop.stop() }
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let (readEnd, writeEnd) = (fds[0], fds[1])
        defer { close(readEnd); close(writeEnd) }
        let thrower = Thrower()
        _ = try loop.submitAndWait { try loop.register(readEnd, for: .readable, handler: thrower) }
        #expect(write(writeEnd, "x", 1) == 1)
        #expect(Self.eventually { thrower.failures.load(ordering: .relaxed) == 1 })
        #expect(try loop.submitAndWait { loop.registrationCount } == 0)
        let alive = try loop.submitAndWait { 42 }
        #expect(alive == 42)
    }
}
