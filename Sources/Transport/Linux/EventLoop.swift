import CTransportShim
import Glibc
import Synchronization

/// Readiness reported by the loop for a registered descriptor (EPOLLIN, EPOLLOUT, ...).
public struct IOEvents: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// EPOLLIN
    public static let readable = IOEvents(rawValue: UInt32(TSHIM_EPOLLIN))
    /// EPOLLOUT
    public static let writable = IOEvents(rawValue: UInt32(TSHIM_EPOLLOUT))
    /// EPOLLERR (for UDP: an ICMP error is queued)
    public static let error = IOEvents(rawValue: UInt32(TSHIM_EPOLLERR))
    /// EPOLLHUP
    public static let hangUp = IOEvents(rawValue: UInt32(TSHIM_EPOLLHUP))
    /// EPOLLRDHUP: the peer closed its side
    public static let readHangUp = IOEvents(rawValue: UInt32(TSHIM_EPOLLRDHUP))
}

/// Something registered with a loop: it is told when its descriptor is ready. Called on the loop
/// thread only. A handler that throws is deregistered and told why; the loop carries on.
public protocol EventHandler: AnyObject {
    func handle(_ events: IOEvents, on loop: EventLoop) throws
    /// The handler threw `error` and was deregistered.
    func failed(_ error: any Error, on loop: EventLoop)
}

extension EventHandler {
    public func failed(_ error: any Error, on loop: EventLoop) {}
}

/// Names one registration; events for a reused descriptor slot are told apart by the generation.
public struct RegistrationID: Hashable, Sendable {
    let slot: UInt32
    let generation: UInt32
    var packed: UInt64 { UInt64(generation) << 32 | UInt64(slot) }
}

/// Names one armed timer of a loop.
public typealias TimerID = TimerWheel<LoopTimer>.Handle

/// What a loop timer runs when it fires.
public enum LoopTimer {
    case closure(() -> Void)
    /// No allocation per timer: the target is told the token.
    case target(any TimerTarget, UInt64)
}

/// An object that owns many timers and tells them apart by a token (transactions, connections).
public protocol TimerTarget: AnyObject {
    func timerFired(_ token: UInt64)
}

/// One event-loop thread: its own epoll set, an eventfd to wake it, a queue for work handed over
/// from other threads, and a timing wheel with 1 ms ticks. Everything registered with a loop is
/// touched on the loop's thread only.
///
/// `@unchecked Sendable`: the only state touched from other threads is `inbox` (a Mutex) and
/// `wakePending` / `running` (atomics); every other property is used only on the loop thread, which
/// `assertInLoop()` checks in debug builds.
public final class EventLoop: @unchecked Sendable {
    /// The worker number (the shard); identifiers the node generates carry it.
    public let index: Int
    private let epoll: Int32
    private let wakeFD: Int32
    private let inbox = Mutex<[@Sendable () -> Void]>([])
    private let wakePending = Atomic<Bool>(false)
    private let running = Atomic<Bool>(false)
    private var thread: pthread_t?
    /// The loop thread's id while it runs (0 before): read from any thread, so atomic.
    private let loopThread = Atomic<UInt>(0)

    private struct Registration {
        var handler: (any EventHandler)?
        var descriptor: Int32
        var generation: UInt32
    }
    private var registrations: [Registration] = []
    private var freeSlots: [UInt32] = []
    private var timers = TimerWheel<LoopTimer>(slotCount: 4_096)
    private var expired: [LoopTimer] = []
    private var events = [tshim_epoll_event](repeating: tshim_epoll_event(), count: 256)
    /// Work run at the end of every iteration (batched sends flush here).
    private var endOfIteration: [any IterationEndHandler] = []
    /// The arrays the inbox and the end-of-iteration hooks are swapped into while they run, kept
    /// so that a turn allocates nothing for them.
    private var inboxRunning: [@Sendable () -> Void] = []
    private var endOfIterationRunning: [any IterationEndHandler] = []
    /// Coalescing (0: off): when a wait for events slept, but less than `4 ×` this many
    /// microseconds (the loop is woken often), the loop pauses this long before its next look, and
    /// goes on pausing while each look finds work, so that one wake-up serves the datagrams of a
    /// whole pause instead of one each. It stops when a look finds nothing (quiet: the next wait
    /// blocks) or a turn's work took more than a quarter of the pause (busy: batches are already
    /// large). Trades at most this much latency per message for fewer wake-ups.
    public var coalesceMicroseconds: UInt32 = 0
    private var pauseBeforeNextWait = false
    /// Coalescing pauses taken so far (read on the loop).
    public private(set) var pauses = 0
    /// Where the loop reports what it cannot hand to anyone (a handler that threw...).
    public var log: @Sendable (String) -> Void = { line in tshim_log_line("event loop: \(line)") }

    public init(index: Int = 0) throws(SystemError) {
        self.index = index
        epoll = try blocking("epoll_create1") { tshim_epoll_create() }
        let fd = tshim_eventfd()
        guard fd >= 0 else { let e = Glibc.errno; Glibc.close(epoll); throw SystemError("eventfd", errno: e) }
        wakeFD = fd
        // The eventfd is registration 0's descriptor with a reserved data value.
        if tshim_epoll_ctl(epoll, tshim_epoll_op_add(), wakeFD, UInt32(TSHIM_EPOLLIN), UInt64.max) != 0 {
            let e = Glibc.errno
            Glibc.close(epoll); Glibc.close(wakeFD)
            throw SystemError("epoll_ctl(eventfd)", errno: e)
        }
        timers = TimerWheel(slotCount: 4_096, startTick: Self.monotonicMilliseconds())
    }

    deinit {
        Glibc.close(wakeFD)
        Glibc.close(epoll)
    }

    // MARK: - Time

    static func monotonicNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// Milliseconds of CLOCK_MONOTONIC: the loop's clock.
    public static func monotonicMilliseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000 + UInt64(ts.tv_nsec) / 1_000_000
    }

    /// The loop's current time in ticks (milliseconds).
    public var now: UInt64 { timers.currentTick }

    // MARK: - Work from other threads

    /// Runs `work` on the loop thread, soon. Safe from any thread; at most one wake-up per turn.
    public func execute(_ work: @escaping @Sendable () -> Void) {
        inbox.withLock { $0.append(work) }
        if !wakePending.exchange(true, ordering: .acquiringAndReleasing) {
            _ = tshim_eventfd_signal(wakeFD)
        }
    }

    /// Whether the caller runs on this loop's thread.
    public var inLoop: Bool { loopThread.load(ordering: .acquiring) == UInt(pthread_self()) }

    /// Loop state may be set up from any thread before the loop starts, then only from the loop.
    @inline(__always)
    public func assertInLoop() {
        assert(loopThread.load(ordering: .relaxed) == 0 || inLoop, "loop state touched from another thread")
    }

    // MARK: - Registrations (loop thread)

    /// Watches `descriptor` for `events`; the handler is kept until `deregister`.
    public func register(_ descriptor: Int32, for events: IOEvents, handler: any EventHandler) throws(SystemError) -> RegistrationID {
        assertInLoop()
        let slot: UInt32
        if let free = freeSlots.popLast() {
            slot = free
            registrations[Int(slot)].handler = handler
            registrations[Int(slot)].descriptor = descriptor
        } else {
            slot = UInt32(registrations.count)
            registrations.append(Registration(handler: handler, descriptor: descriptor, generation: 0))
        }
        let id = RegistrationID(slot: slot, generation: registrations[Int(slot)].generation)
        if tshim_epoll_ctl(epoll, tshim_epoll_op_add(), descriptor, events.rawValue | UInt32(TSHIM_EPOLLRDHUP), id.packed) != 0 {
            let e = Glibc.errno
            release(slot)
            throw SystemError("epoll_ctl(add)", errno: e)
        }
        return id
    }

    /// Changes the events watched for a registration.
    public func modify(_ id: RegistrationID, for events: IOEvents) throws(SystemError) {
        assertInLoop()
        guard let fd = descriptor(of: id) else { return }
        try blocking("epoll_ctl(mod)") {
            tshim_epoll_ctl(epoll, tshim_epoll_op_mod(), fd, events.rawValue | UInt32(TSHIM_EPOLLRDHUP), id.packed)
        }
    }

    /// Stops watching; the handler is released. Call before closing the descriptor.
    public func deregister(_ id: RegistrationID) {
        assertInLoop()
        guard let fd = descriptor(of: id) else { return }
        _ = tshim_epoll_ctl(epoll, tshim_epoll_op_del(), fd, 0, 0)
        release(id.slot)
    }

    private func descriptor(of id: RegistrationID) -> Int32? {
        let i = Int(id.slot)
        guard i < registrations.count, registrations[i].generation == id.generation, registrations[i].handler != nil else { return nil }
        return registrations[i].descriptor
    }

    private func release(_ slot: UInt32) {
        registrations[Int(slot)].handler = nil
        registrations[Int(slot)].generation &+= 1
        freeSlots.append(slot)
    }

    /// Live registrations (for tests and statistics).
    public var registrationCount: Int { registrations.count - freeSlots.count }

    // MARK: - Timers (loop thread)

    @discardableResult
    public func schedule(afterMilliseconds delay: UInt64, _ body: @escaping () -> Void) -> TimerID {
        assertInLoop()
        return timers.arm(at: Self.monotonicMilliseconds() &+ delay, .closure(body))
    }

    /// Arms a timer that tells `target` the `token`: no allocation per timer.
    @discardableResult
    public func schedule(afterMilliseconds delay: UInt64, target: any TimerTarget, token: UInt64) -> TimerID {
        assertInLoop()
        return timers.arm(at: Self.monotonicMilliseconds() &+ delay, .target(target, token))
    }

    /// Arms a timer that fires no earlier than `delay` and at most a sixteenth of it later (256 ms
    /// at most), on a boundary every such timer with the same tolerance shares: for timers that only
    /// release state (a finished transaction's wait for retransmissions), so that thousands of them
    /// end in a few wake-ups instead of one each.
    @discardableResult
    public func schedule(atLeastMilliseconds delay: UInt64, target: any TimerTarget, token: UInt64) -> TimerID {
        assertInLoop()
        let deadline = Self.monotonicMilliseconds() &+ delay
        var granularity: UInt64 = 256
        while granularity > delay / 16 { granularity >>= 1 }
        let shared = granularity > 1 ? (deadline + granularity - 1) & ~(granularity - 1) : deadline
        return timers.arm(at: shared, .target(target, token))
    }

    public func cancel(_ timer: TimerID) {
        assertInLoop()
        timers.cancel(timer)
    }

    /// Calls `handler.iterationEnded()` once at the end of the current iteration (e.g. to flush a
    /// batch of sends). The handler is held only until then.
    public func atEndOfIteration(_ handler: any IterationEndHandler) {
        assertInLoop()
        endOfIteration.append(handler)
    }

    // MARK: - Running

    /// Starts the loop on a new thread.
    public func start() throws(SystemError) {
        precondition(!running.load(ordering: .acquiring), "loop already running")
        running.store(true, ordering: .releasing)
        let box = Unmanaged.passRetained(self)
        var tid = pthread_t()
        let r = pthread_create(&tid, nil, { raw in
            let loop = Unmanaged<EventLoop>.fromOpaque(raw!).takeRetainedValue()
            loop.runOnThisThread()
            return nil
        }, box.toOpaque())
        if r != 0 {
            box.release()
            running.store(false, ordering: .releasing)
            throw SystemError("pthread_create", errno: r)
        }
        thread = tid
    }

    /// Asks the loop to stop and waits for its thread to end. Registrations stay as they are.
    public func stop() {
        guard running.exchange(false, ordering: .acquiringAndReleasing) else { return }
        _ = tshim_eventfd_signal(wakeFD)
        if let thread, !inLoop { pthread_join(thread, nil) }
        thread = nil
    }

    /// Runs `work` on the loop and waits for its result (for set-up and tests, not the hot path).
    public func submitAndWait<T: Sendable>(_ work: @escaping @Sendable () throws -> T) throws -> T {
        if inLoop { return try work() }
        let done = DispatchlessSemaphore()
        let result = Mutex<Result<T, any Error>?>(nil)
        execute {
            let r = Result { try work() }
            result.withLock { $0 = r }
            done.signal()
        }
        done.wait()
        return try result.withLock { $0! }.get()
    }

    private func runOnThisThread() {
        loopThread.store(UInt(pthread_self()), ordering: .releasing)
        while running.load(ordering: .acquiring) {
            runOnce()
        }
        loopThread.store(0, ordering: .releasing)
    }

    /// One turn: wait for events (no longer than the next timer), dispatch them, run handed-over
    /// work, fire due timers, then the end-of-iteration hooks.
    func runOnce() {
        var timeout: Int32 = -1
        if let deadline = timers.nextDeadline() {
            let now = Self.monotonicMilliseconds()
            timeout = deadline <= now ? 0 : Int32(clamping: deadline - now)
        }
        if !endOfIteration.isEmpty { timeout = 0 }
        let window = UInt64(coalesceMicroseconds) * 1_000
        if window > 0, timeout != 0, pauseBeforeNextWait {
            var pause = timespec(tv_sec: 0, tv_nsec: Int(min(window, UInt64(timeout < 0 ? Int32.max : timeout) * 1_000_000)))
            _ = nanosleep(&pause, nil)
            pauses += 1
            timeout = 0
        }
        let paused = pauseBeforeNextWait && timeout == 0
        pauseBeforeNextWait = false
        let before = window > 0 ? Self.monotonicNanoseconds() : 0
        let n = events.withUnsafeMutableBufferPointer { tshim_epoll_wait(epoll, $0.baseAddress, Int32($0.count), timeout) }
        let woke = window > 0 ? Self.monotonicNanoseconds() : 0
        if window > 0 && n > 0 {
            let slept = woke &- before
            pauseBeforeNextWait = paused || (timeout != 0 && slept < 4 * window)
        }
        defer {
            // A turn whose work took long: the loop is loaded, batches fill by themselves.
            if pauseBeforeNextWait && Self.monotonicNanoseconds() &- woke > window / 4 { pauseBeforeNextWait = false }
        }
        if n < 0 && Glibc.errno != EINTR {
            log("epoll_wait: \(SystemError("epoll_wait", errno: Glibc.errno))")
        }
        var i = 0
        while i < Int(n) {
            let event = events[i]
            i += 1
            if event.data == UInt64.max {
                _ = tshim_eventfd_drain(wakeFD)
                continue
            }
            let slot = Int(UInt32(truncatingIfNeeded: event.data))
            let generation = UInt32(truncatingIfNeeded: event.data >> 32)
            guard slot < registrations.count, registrations[slot].generation == generation,
                  let handler = registrations[slot].handler else { continue }
            do {
                try handler.handle(IOEvents(rawValue: event.events), on: self)
            } catch {
                deregister(RegistrationID(slot: UInt32(slot), generation: generation))
                log("handler for descriptor \(registrations[slot].descriptor) failed and was removed: \(error)")
                handler.failed(error, on: self)
            }
        }
        runInbox()
        fireTimers()
        runEndOfIteration()
    }

    private func runInbox() {
        wakePending.store(false, ordering: .releasing)
        var work = inboxRunning
        inboxRunning = []
        inbox.withLock { queue in swap(&queue, &work) }
        for w in work { w() }
        work.removeAll(keepingCapacity: true)
        inboxRunning = work
    }

    private func fireTimers() {
        timers.advance(to: Self.monotonicMilliseconds(), into: &expired)
        guard !expired.isEmpty else { return }
        for timer in expired {
            switch timer {
            case .closure(let body): body()
            case .target(let target, let token): target.timerFired(token)
            }
        }
        expired.removeAll(keepingCapacity: true)
    }

    private func runEndOfIteration() {
        while !endOfIteration.isEmpty {
            swap(&endOfIteration, &endOfIterationRunning)
            for h in endOfIterationRunning { h.iterationEnded() }
            endOfIterationRunning.removeAll(keepingCapacity: true)
        }
    }
}

/// Something that wants to act once at the end of a loop iteration (a batch of sends to flush).
public protocol IterationEndHandler: AnyObject {
    func iterationEnded()
}

/// A one-shot wait between threads for set-up paths (a mutex-guarded flag and a condition variable).
public final class DispatchlessSemaphore: @unchecked Sendable {
    // @unchecked: `signalled` is touched only with `mutex` held; the pthread objects live in
    // allocated memory, so their addresses never move.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var signalled = false

    public init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    public func signal() {
        pthread_mutex_lock(mutex)
        signalled = true
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
    }

    public func wait() {
        pthread_mutex_lock(mutex)
        while !signalled { pthread_cond_wait(condition, mutex) }
        pthread_mutex_unlock(mutex)
    }

    /// Waits at most `milliseconds`; whether it was signalled.
    public func wait(milliseconds: Int) -> Bool {
        var deadline = timespec()
        clock_gettime(CLOCK_REALTIME, &deadline)
        let nanoseconds = Int(deadline.tv_nsec) + (milliseconds % 1_000) * 1_000_000
        deadline.tv_sec += milliseconds / 1_000 + nanoseconds / 1_000_000_000
        deadline.tv_nsec = nanoseconds % 1_000_000_000
        pthread_mutex_lock(mutex)
        while !signalled, pthread_cond_timedwait(condition, mutex, &deadline) == 0 {}
        let done = signalled
        pthread_mutex_unlock(mutex)
        return done
    }
}
