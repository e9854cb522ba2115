import Testing
@testable import Transport

/// The hashed timing wheel, driven by hand (no sleeping).
@Suite struct TimerWheelTests {
    @Test func fires_in_time_and_not_before() {
        var wheel = TimerWheel<Int>(slotCount: 8, startTick: 100)
        _ = wheel.arm(at: 105, 1)
        _ = wheel.arm(at: 103, 2)
        _ = wheel.arm(at: 130, 3)   // more than one turn of 8 slots away
        var out: [Int] = []
        wheel.advance(to: 102, into: &out)
        #expect(out.isEmpty)
        wheel.advance(to: 105, into: &out)
        #expect(out.sorted() == [1, 2])
        out.removeAll()
        wheel.advance(to: 129, into: &out)
        #expect(out.isEmpty && wheel.count == 1)
        wheel.advance(to: 130, into: &out)
        #expect(out == [3] && wheel.count == 0)
    }

    @Test func cancel_is_exact_and_stale_handles_do_nothing() {
        var wheel = TimerWheel<String>(slotCount: 16)
        let a = wheel.arm(at: 10, "a")
        let b = wheel.arm(at: 10, "b")
        #expect(wheel.cancel(a) == "a")
        #expect(wheel.cancel(a) == nil)
        var out: [String] = []
        wheel.advance(to: 10, into: &out)
        #expect(out == ["b"])
        #expect(!wheel.isArmed(b))
        // The freed node is reused; the old handle must not cancel the new timer.
        let c = wheel.arm(at: 20, "c")
        #expect(wheel.cancel(b) == nil && wheel.isArmed(c))
    }

    @Test func a_long_jump_fires_everything_due() {
        var wheel = TimerWheel<Int>(slotCount: 4)
        for i in 1...100 { _ = wheel.arm(at: UInt64(i * 3), i) }
        var out: [Int] = []
        wheel.advance(to: 150, into: &out)
        #expect(out.sorted() == Array(1...50))
        #expect(wheel.count == 50)
    }

    @Test func next_deadline_tracks_arm_cancel_and_fire() {
        var wheel = TimerWheel<Int>(slotCount: 64)
        #expect(wheel.nextDeadline() == nil)
        let early = wheel.arm(at: 40, 1)
        _ = wheel.arm(at: 500, 2)
        #expect(wheel.nextDeadline() == 40)
        wheel.cancel(early)
        #expect(wheel.nextDeadline() == 500)
        _ = wheel.arm(at: 7, 3)
        #expect(wheel.nextDeadline() == 7)
        var out: [Int] = []
        wheel.advance(to: 10, into: &out)
        #expect(out == [3] && wheel.nextDeadline() == 500)
    }

    @Test func steady_state_reuses_nodes() {
        var wheel = TimerWheel<Int>(slotCount: 32)
        var out: [Int] = []
        var t: UInt64 = 0
        for round in 0..<1_000 {
            let h = wheel.arm(at: t + 5, round)
            if round % 2 == 0 { wheel.cancel(h) }
            t += 10
            wheel.advance(to: t, into: &out)
        }
        #expect(out.count == 500 && wheel.count == 0)
    }
}
