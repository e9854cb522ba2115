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
        // 500 is eight turns away: the wheel offers an earlier wake-up, never a later one.
        #expect(wheel.nextDeadline().map { $0 <= 500 } == true)
        _ = wheel.arm(at: 7, 3)
        #expect(wheel.nextDeadline() == 7)
        var out: [Int] = []
        wheel.advance(to: 10, into: &out)
        #expect(out == [3])
        wheel.advance(to: 499, into: &out)
        // The exact deadline once it lies in the next slot the wheel looks at.
        #expect(out == [3] && wheel.nextDeadline() == 500)
        wheel.advance(to: 500, into: &out)
        #expect(out == [3, 2] && wheel.nextDeadline() == nil)
    }

    @Test func sleeping_until_each_next_deadline_fires_every_timer_on_time() {
        // Thousands of timers over many turns (a loop's retransmission and dialog timers): waking
        // at each offered deadline never oversleeps one.
        var wheel = TimerWheel<UInt64>(slotCount: 1_024)
        var generator = SystemRandomNumberGenerator()
        var pending: [UInt64: Int] = [:]
        for _ in 0..<5_000 {
            let d = UInt64.random(in: 1...100_000, using: &generator)
            _ = wheel.arm(at: d, d)
            pending[d, default: 0] += 1
        }
        var fired: [UInt64] = []
        var wakes = 0
        while let next = wheel.nextDeadline() {
            let earliest = pending.keys.min()!
            #expect(next <= earliest)
            wheel.advance(to: next, into: &fired)
            for d in fired {
                #expect(d <= next && d >= next, "fired at its own tick")
                pending[d]! -= 1
                if pending[d] == 0 { pending[d] = nil }
            }
            fired.removeAll()
            wakes += 1
        }
        #expect(pending.isEmpty && wakes <= 100_000)
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
