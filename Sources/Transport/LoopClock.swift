/// What code that lives on one loop needs of it: its index, its time, its timers, and the check that
/// it is running there. `EventLoop` is the real one; `ManualClock` moves only when a test says so.
public protocol LoopClock: AnyObject {
    /// The worker number (the shard); identifiers the node generates carry it.
    var index: Int { get }
    /// Milliseconds on the loop's monotonic clock.
    var now: UInt64 { get }
    @discardableResult func schedule(afterMilliseconds delay: UInt64, target: any TimerTarget, token: UInt64) -> TimerID
    /// A timer that may fire a little late (it only ends a wait), so that many share a wake-up.
    @discardableResult func schedule(atLeastMilliseconds delay: UInt64, target: any TimerTarget, token: UInt64) -> TimerID
    func cancel(_ timer: TimerID)
    /// `handler.iterationEnded()` once, when the work at hand is done (a batch to flush).
    func atEndOfIteration(_ handler: any IterationEndHandler)
    func assertInLoop()
}

extension EventLoop: LoopClock {}

/// A loop clock for tests without sockets or threads: time stands still until `advance` moves it,
/// and the timers due by then fire in deadline order, on the caller's thread.
public final class ManualClock: LoopClock {
    public let index: Int
    private var timers = TimerWheel<LoopTimer>(slotCount: 256)
    private var expired: [LoopTimer] = []
    private var endOfIteration: [any IterationEndHandler] = []

    public init(index: Int = 0, startMilliseconds: UInt64 = 1_000) {
        self.index = index
        timers = TimerWheel(slotCount: 256, startTick: startMilliseconds)
    }

    public var now: UInt64 { timers.currentTick }

    /// Timers armed and not yet fired.
    public var armedTimers: Int { timers.count }

    public func schedule(afterMilliseconds delay: UInt64, target: any TimerTarget, token: UInt64) -> TimerID {
        timers.arm(at: now &+ delay, .target(target, token))
    }

    public func schedule(atLeastMilliseconds delay: UInt64, target: any TimerTarget, token: UInt64) -> TimerID {
        timers.arm(at: now &+ delay, .target(target, token))
    }

    public func cancel(_ timer: TimerID) { timers.cancel(timer) }

    public func assertInLoop() {}

    public func atEndOfIteration(_ handler: any IterationEndHandler) { endOfIteration.append(handler) }

    /// Ends the "iteration" a test's message was handled in: what waits for its end runs now.
    /// (`advance` does this after each firing of timers.)
    public func endIteration() {
        while !endOfIteration.isEmpty {
            let handlers = endOfIteration
            endOfIteration.removeAll()
            for h in handlers { h.iterationEnded() }
        }
    }

    /// Moves time forward by `milliseconds`, firing every timer due on the way, earliest first
    /// (a timer a firing arms fires too, if it falls due within the step).
    public func advance(byMilliseconds milliseconds: UInt64) {
        let end = now &+ milliseconds
        while let next = timers.nextDeadline(), next <= end {
            timers.advance(to: next, into: &expired)
            fireExpired()
        }
        timers.advance(to: end, into: &expired)
        fireExpired()
    }

    private func fireExpired() {
        let due = expired
        expired.removeAll(keepingCapacity: true)
        for timer in due {
            switch timer {
            case .closure(let body): body()
            case .target(let target, let token): target.timerFired(token)
            }
        }
        endIteration()
    }
}
