/// A hashed timing wheel (Varghese & Lauck): arm and cancel in O(1), expiry in O(timers due + slots
/// passed). Nodes come from a pool that only grows, so a loop in its steady state arms and cancels
/// without allocating. Time is a tick count the owner supplies: tests drive it by hand.
public struct TimerWheel<Payload> {
    /// Names one armed timer; stale after it fired or was cancelled (the generation tells).
    public struct Handle: Hashable, Sendable {
        fileprivate let index: Int32
        fileprivate let generation: UInt32
    }

    private struct Node {
        var deadline: UInt64
        var next: Int32
        var prev: Int32
        var generation: UInt32
        var armed: Bool
        var payload: Payload?
    }

    private var nodes: [Node] = []
    private var freeHead: Int32 = -1
    private var slots: [Int32]
    /// One bit per slot: set while the slot holds a timer, so the next occupied slot is found by
    /// looking at words, not at timers.
    private var occupied: [UInt64]
    private let mask: UInt64
    /// The last tick `advance` reached.
    public private(set) var currentTick: UInt64
    /// Armed timers.
    public private(set) var count = 0
    /// The earliest armed deadline, when known (`earliestKnown`); a scan refreshes it on demand.
    private var earliest: UInt64 = .max
    private var earliestKnown = true

    /// `slotCount` is rounded up to a power of two; more slots, fewer timers per slot to look at.
    public init(slotCount: Int = 1_024, startTick: UInt64 = 0) {
        var n = 1
        while n < slotCount { n <<= 1 }
        slots = Array(repeating: -1, count: n)
        occupied = Array(repeating: 0, count: (n + 63) / 64)
        mask = UInt64(n - 1)
        currentTick = startTick
    }

    /// Arms a timer for `tick` (a tick already past fires at the next `advance`).
    public mutating func arm(at tick: UInt64, _ payload: Payload) -> Handle {
        let deadline = Swift.max(tick, currentTick &+ 1)
        let index: Int32
        if freeHead >= 0 {
            index = freeHead
            freeHead = nodes[Int(index)].next
            nodes[Int(index)].deadline = deadline
            nodes[Int(index)].armed = true
            nodes[Int(index)].payload = payload
        } else {
            index = Int32(nodes.count)
            nodes.append(Node(deadline: deadline, next: -1, prev: -1, generation: 0, armed: true, payload: payload))
        }
        if earliestKnown && deadline < earliest { earliest = deadline }
        let slot = Int(deadline & mask)
        let head = slots[slot]
        nodes[Int(index)].prev = -1
        nodes[Int(index)].next = head
        if head >= 0 { nodes[Int(head)].prev = index }
        slots[slot] = index
        occupied[slot >> 6] |= 1 << UInt64(slot & 63)
        count += 1
        return Handle(index: index, generation: nodes[Int(index)].generation)
    }

    /// Cancels a timer; returns its payload, or nil if it already fired or was cancelled.
    @discardableResult
    public mutating func cancel(_ handle: Handle) -> Payload? {
        let i = Int(handle.index)
        guard i < nodes.count, nodes[i].armed, nodes[i].generation == handle.generation else { return nil }
        return release(handle.index)
    }

    /// Whether `handle` is still armed.
    public func isArmed(_ handle: Handle) -> Bool {
        let i = Int(handle.index)
        return i < nodes.count && nodes[i].armed && nodes[i].generation == handle.generation
    }

    /// Moves time to `tick` and appends the payloads of every timer due by then to `expired`
    /// (a buffer the caller reuses). The caller runs them: they may arm new timers.
    public mutating func advance(to tick: UInt64, into expired: inout [Payload]) {
        guard tick > currentTick else { return }
        let steps = tick - currentTick
        // Past a whole turn every slot is visited once; otherwise only the slots time passed over.
        let visit = steps > mask ? mask + 1 : steps
        var t = currentTick &+ 1
        for _ in 0..<visit {
            var i = slots[Int(t & mask)]
            while i >= 0 {
                let next = nodes[Int(i)].next
                if nodes[Int(i)].deadline <= tick, let payload = release(i) {
                    expired.append(payload)
                }
                i = next
            }
            t &+= 1
        }
        currentTick = tick
    }

    /// How long an event loop may sleep: the earliest deadline when it is known or lies in the next
    /// occupied slot, else that slot's tick (earlier than any deadline: the loop wakes, nothing is
    /// due, it asks again). Never later than the earliest deadline; nil when nothing is armed.
    /// Costs a look at the slot bitmap and one slot's timers, however many timers are armed.
    public mutating func nextDeadline() -> UInt64? {
        guard count > 0 else { return nil }
        if earliestKnown { return earliest }
        let t = nextOccupiedTick()
        // Every armed deadline is past `currentTick` and lies in the slot of its tick, so the
        // first occupied slot's timers are due at `t` or whole turns later.
        var i = slots[Int(t & mask)]
        while i >= 0 {
            if nodes[Int(i)].deadline == t {
                earliest = t
                earliestKnown = true
                return t
            }
            i = nodes[Int(i)].next
        }
        return t
    }

    /// The tick of the first occupied slot after `currentTick` (within one turn).
    private func nextOccupiedTick() -> UInt64 {
        let n = Int(mask) + 1
        let start = Int((currentTick &+ 1) & mask)
        var position = start
        var scanned = 0
        while scanned < n {
            let word = position >> 6
            let bit = position & 63
            let bits = occupied[word] >> UInt64(bit)
            if bits != 0 {
                let found = position + bits.trailingZeroBitCount
                if found < n {
                    let distance = (found - start + n) % n
                    return currentTick &+ 1 &+ UInt64(distance)
                }
            }
            let step = 64 - bit
            scanned += step
            position = (position + step) % n
        }
        return currentTick &+ 1 &+ mask
    }

    private mutating func release(_ index: Int32) -> Payload? {
        let i = Int(index)
        let (prev, next) = (nodes[i].prev, nodes[i].next)
        if prev >= 0 {
            nodes[Int(prev)].next = next
        } else {
            let slot = Int(nodes[i].deadline & mask)
            slots[slot] = next
            if next < 0 { occupied[slot >> 6] &= ~(1 << UInt64(slot & 63)) }
        }
        if next >= 0 { nodes[Int(next)].prev = prev }
        if nodes[i].deadline <= earliest { earliestKnown = false }
        if count == 1 { earliest = .max; earliestKnown = true }
        let payload = nodes[i].payload
        nodes[i].payload = nil
        nodes[i].armed = false
        nodes[i].generation &+= 1
        nodes[i].next = freeHead
        freeHead = index
        count -= 1
        return payload
    }
}
