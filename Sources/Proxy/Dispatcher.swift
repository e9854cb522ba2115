import Dialog
import Logging
import Synchronization
import Transport

/// How a dispatcher set spreads new calls over its destinations.
public enum DispatchAlgorithm: String, Sendable, CaseIterable {
    case roundRobin = "round-robin"
    /// In proportion to the weights, smoothly (no two picks of one destination in a row when others are due).
    case weighted
    case hashCallID = "hash-callid"
    case hashFromUser = "hash-from-user"
    case leastCalls = "least-calls"
    /// The first active destination in the order written (OpenSIPS's algorithm 8): the others
    /// stand by, taking calls only while those before them are out.
    case first
}

/// One destination of a dispatcher set as configured.
public struct DestinationSettings: Sendable, Equatable {
    public var hop: Hop
    /// As written in the config ("sip:10.0.0.5:5080;transport=tcp" or "10.0.0.5:5080").
    public var uri: String
    public var weight: Int
    /// Lower first: a destination is used only while no active one has a lower priority.
    public var priority: Int
    /// Free text for the operator (shown by `ds_list`).
    public var attrs: String

    public init(hop: Hop, uri: String, weight: Int = 1, priority: Int = 0, attrs: String = "") {
        self.hop = hop
        self.uri = uri
        self.weight = weight
        self.priority = priority
        self.attrs = attrs
    }

    /// The canonical "sip:host:port[;transport=x]" form `ds_list` shows and `ds_set_state` takes.
    public var canonicalURI: String { hop.sipURI }
}

/// The `[dispatcher]` section: one set of destinations, its algorithm and its probing.
public struct DispatcherSettings: Sendable, Equatable {
    public var setID = 1
    public var algorithm = DispatchAlgorithm.roundRobin
    /// OPTIONS to every destination this often (0: no probing; destinations are never marked down).
    public var probeIntervalSeconds = 0
    /// Consecutive failed probes (or refusals and timeouts of calls) that make a destination inactive.
    public var probeFailures = 1
    /// Consecutive answered probes that bring an inactive destination back.
    public var probeSuccesses = 1
    /// Calls up on a destination that dies are moved to another of the set (issue 16).
    public var recoverCalls = false
    /// How many such calls get a new backend leg a second, at most (read from `[dispatcher]`; it
    /// paces every set): each worker moves its own calls, from one budget they share.
    public var recoverPerSecond = 200
    public var destinations: [DestinationSettings] = []

    public init() {}
}

/// A dispatcher set: picks each new call's destination by its algorithm among the active ones of
/// the best priority, counts the calls each carries, and keeps each destination's state from
/// OPTIONS probes and from failed calls. Shared by every worker (a short lock per pick).
public final class Dispatcher: Sendable {
    /// A destination's state: `active` takes calls; `inactive` failed its probes; `probing` has
    /// begun to answer again; `draining` (set by an operator) takes no new calls and keeps its own.
    public enum State: String, Sendable, CaseIterable { case active, inactive, probing, draining }

    struct Entry {
        var settings: DestinationSettings
        var state = State.active
        var activeCalls = 0
        var failures = 0
        var successes = 0
        /// Smooth weighted round-robin credit.
        var credit = 0
        /// Gone from the config since a reload: no new calls, kept so calls in progress can end.
        var removed = false
    }

    struct Shared {
        var settings: DispatcherSettings
        var entries: [Entry]
        var next = 0
    }

    /// One destination as `ds_list` shows it.
    public struct Snapshot: Sendable, Equatable {
        public let uri: String
        public let state: State
        public let weight: Int
        public let priority: Int
        public let attrs: String
        public let activeCalls: Int
    }

    private let shared: Mutex<Shared>
    private let logger: Logger
    /// Told (this set's index) when a destination goes inactive.
    private let lost = Mutex<(@Sendable (Int) -> Void)?>(nil)

    /// `handler` is told each destination that goes inactive (failed probes or calls).
    public func onDestinationLost(_ handler: @escaping @Sendable (Int) -> Void) { lost.withLock { $0 = handler } }

    public init(_ settings: DispatcherSettings, logger: Logger) {
        shared = Mutex(Shared(settings: settings, entries: settings.destinations.map { Entry(settings: $0) }))
        self.logger = logger
    }

    public var settings: DispatcherSettings { shared.withLock { $0.settings } }

    // MARK: - Choosing

    /// The destination for a call's next attempt among the active ones of the best priority,
    /// none of `tried` (this set's indices); counted as one of its active calls until `release`.
    public func pick(callID: [UInt8], fromUser: [UInt8], excluding tried: [Int]) -> (index: Int, hop: Hop)? {
        shared.withLock { s -> (index: Int, hop: Hop)? in
            var eligible = s.entries.indices.filter { s.entries[$0].state == .active && !s.entries[$0].removed && !tried.contains($0) }
            guard let best = eligible.map({ s.entries[$0].settings.priority }).min() else { return nil }
            eligible = eligible.filter { s.entries[$0].settings.priority == best }
            let chosen: Int
            switch s.settings.algorithm {
            case .roundRobin:
                chosen = eligible[s.next % eligible.count]
                s.next &+= 1
            case .weighted:
                // Smooth weighted round-robin: each gains its weight, the richest is chosen and pays the total.
                var total = 0
                var richest = eligible[0]
                for i in eligible {
                    s.entries[i].credit += s.entries[i].settings.weight
                    total += s.entries[i].settings.weight
                    if s.entries[i].credit > s.entries[richest].credit { richest = i }
                }
                s.entries[richest].credit -= total
                chosen = richest
            case .hashCallID:
                chosen = eligible[Int(Self.hash(callID) % UInt64(eligible.count))]
            case .hashFromUser:
                chosen = eligible[Int(Self.hash(fromUser) % UInt64(eligible.count))]
            case .leastCalls:
                let fewest = eligible.map { s.entries[$0].activeCalls }.min()!
                let tied = eligible.filter { s.entries[$0].activeCalls == fewest }
                chosen = tied[s.next % tied.count]
                s.next &+= 1
            case .first:
                chosen = eligible[0]
            }
            s.entries[chosen].activeCalls += 1
            return (chosen, s.entries[chosen].settings.hop)
        }
    }

    public func claim(_ index: Int) {
        shared.withLock { s in if s.entries.indices.contains(index) { s.entries[index].activeCalls += 1 } }
    }

    public func release(_ index: Int) {
        shared.withLock { s in
            if s.entries.indices.contains(index) { s.entries[index].activeCalls = max(0, s.entries[index].activeCalls - 1) }
        }
    }

    public func failed(_ index: Int) {
        probeResult(index, alive: false, why: "a call found it unreachable or silent")
    }

    public func index(of hop: Hop) -> Int? {
        shared.withLock { s in s.entries.firstIndex { $0.settings.hop == hop.withoutWorker && !$0.removed } }
    }

    /// FNV-1a (also what spreads calls by Call-ID over the workers).
    static func hash(_ bytes: some Sequence<UInt8>) -> UInt64 { MessageIntake.fnv1a(bytes) }

    // MARK: - States

    /// A probe's outcome (or a call's failure, `alive` false), moving the destination's state.
    /// Without probing nothing is ever marked down: nothing would bring it back.
    public func probeResult(_ index: Int, alive: Bool, why: String) {
        let change: (String, State, State)? = shared.withLock { s in
            guard s.settings.probeIntervalSeconds > 0, s.entries.indices.contains(index) else { return nil }
            var e = s.entries[index]
            let before = e.state
            switch (e.state, alive) {
            case (.draining, _):
                break
            case (.active, false):
                e.failures += 1
                if e.failures >= s.settings.probeFailures { e.state = .inactive; e.successes = 0 }
            case (.active, true):
                e.failures = 0
            case (.inactive, true), (.probing, true):
                e.successes += 1
                if e.successes >= s.settings.probeSuccesses { e.state = .active; e.failures = 0 } else { e.state = .probing }
            case (.inactive, false), (.probing, false):
                e.state = .inactive
                e.successes = 0
            }
            s.entries[index] = e
            return before == e.state ? nil : (e.settings.canonicalURI, before, e.state)
        }
        if let (uri, before, after) = change {
            logger.notice("dispatcher: \(uri) \(before.rawValue) -> \(after.rawValue) (\(why))")
            if after == .inactive, let handler = lost.withLock({ $0 }) { handler(index) }
        }
    }

    /// The destination named `uri` (as `ds_list` shows it, or as configured).
    public func index(ofURI uri: String) -> Int? { shared.withLock { Self.position(of: uri, in: $0) } }

    private static func position(of uri: String, in s: Shared) -> Int? {
        s.entries.firstIndex { !$0.removed && ($0.settings.canonicalURI == uri || $0.settings.uri == uri) }
    }

    /// Sets a destination's state by its URI (`ds_set_state`); false when no destination has it.
    public func setState(uri: String, to state: State) -> Bool {
        let found: (String, State)? = shared.withLock { s in
            guard let i = Self.position(of: uri, in: s) else { return nil }
            let before = s.entries[i].state
            s.entries[i].state = state
            s.entries[i].failures = 0
            s.entries[i].successes = 0
            return (s.entries[i].settings.canonicalURI, before)
        }
        if let (name, before) = found { logger.notice("dispatcher: \(name) \(before.rawValue) -> \(state.rawValue) (set by MI)") }
        return found != nil
    }

    /// Every destination still configured, in order.
    public func snapshot() -> [Snapshot] {
        shared.withLock { s in
            s.entries.filter { !$0.removed }.map {
                Snapshot(uri: $0.settings.canonicalURI, state: $0.state, weight: $0.settings.weight, priority: $0.settings.priority,
                         attrs: $0.settings.attrs, activeCalls: $0.activeCalls)
            }
        }
    }

    /// Takes new settings (`ds_reload`): destinations still listed keep their state and calls, new
    /// ones start active, removed ones take no new calls (their calls end normally).
    public func reload(_ settings: DispatcherSettings) {
        shared.withLock { s in
            s.settings.algorithm = settings.algorithm
            s.settings.probeFailures = settings.probeFailures
            s.settings.probeSuccesses = settings.probeSuccesses
            for i in s.entries.indices where !settings.destinations.contains(where: { $0.hop == s.entries[i].settings.hop }) {
                s.entries[i].removed = true
            }
            for d in settings.destinations {
                if let i = s.entries.firstIndex(where: { $0.settings.hop == d.hop }) {
                    s.entries[i].settings = d
                    s.entries[i].removed = false
                } else {
                    s.entries.append(Entry(settings: d))
                }
            }
        }
    }

    /// Probes every destination every `probeIntervalSeconds` from `prober` (worker 0's B2BUA).
    public func startProbing(from prober: LoopBound<B2BUA>) {
        let interval = UInt64(settings.probeIntervalSeconds) * 1_000
        guard interval > 0 else { return }
        prober.loop.execute { [self] in self.probeRound(prober, every: interval) }
    }

    /// A probe now of the destination `hop` names, if it is one of this set's and active (its
    /// connection closed: is it still there?).
    public func probeNow(_ hop: Hop, from prober: LoopBound<B2BUA>) {
        guard settings.probeIntervalSeconds > 0, let index = index(of: hop),
              shared.withLock({ $0.entries[index].state == .active }) else { return }
        let target = shared.withLock { $0.entries[index].settings.hop }
        prober.loop.execute { [self] in
            prober.value.probe(target) { [self] status in
                let alive = status.map { $0 < 500 && $0 != 408 } ?? false
                self.probeResult(index, alive: alive, why: status.map { "probe after its connection closed answered \($0)" }
                                 ?? "its connection closed and a probe was not answered")
            }
        }
    }

    private func probeRound(_ prober: LoopBound<B2BUA>, every interval: UInt64) {
        _ = prober.loop.schedule(afterMilliseconds: interval) { [self] in
            let targets = shared.withLock { s in s.entries.indices.filter { !s.entries[$0].removed }.map { ($0, s.entries[$0].settings.hop) } }
            for (index, hop) in targets {
                prober.value.probe(hop) { [self] status in
                    // Any final answer but 408 and 5xx means the server is there and takes requests.
                    let alive = status.map { $0 < 500 && $0 != 408 } ?? false
                    self.probeResult(index, alive: alive, why: status.map { "probe answered \($0)" } ?? "probe not answered")
                }
            }
            probeRound(prober, every: interval)
        }
    }
}

/// One `[[route]]`: calls from outside that match every condition given go to `set`.
public struct RouteSettings: Sendable, Equatable {
    public var listenerTag: String?
    /// The Request-URI host (case-insensitive).
    public var domain: String?
    /// The start of the Request-URI user (e.g. "+44").
    public var prefix: String?
    public var set: Int

    public init(listenerTag: String? = nil, domain: String? = nil, prefix: String? = nil, set: Int) {
        self.listenerTag = listenerTag
        self.domain = domain
        self.prefix = prefix
        self.set = set
    }

    func matches(_ call: CallRequest) -> Bool {
        (listenerTag.map { $0 == call.listenerTag } ?? true)
            && (domain.map { $0.lowercased() == call.requestHost.lowercased() } ?? true)
            && (prefix.map { call.requestUser.hasPrefix($0) } ?? true)
    }
}

/// Where each new call goes. From a trusted network (the Asterisk farm): to the Request-URI's own
/// target (a registered user when the registrar comes; for now a numeric address). From outside:
/// to the dispatcher set of the first `[[route]]` it matches (listener tag, Request-URI domain,
/// user prefix), else the first set; with no set at all, it is refused with 403.
public final class Router: DestinationPicker, Sendable {
    public let sets: [Dispatcher]
    let routes: [RouteSettings]
    private let trusted: Mutex<NetworkList>
    /// "host:port" pairs that name this edge (a Request-URI to one of them is for a registered user).
    let localHosts: Set<String>
    /// A destination's index is its set's position times this, plus its place in the set.
    static let stride = 1 << 20
    /// The index of a call sent straight to its Request-URI.
    static let direct = -1

    /// Where users registered from (nil: no registrar).
    let registrar: Registrar?

    public init(sets: [Dispatcher], routes: [RouteSettings], trusted: NetworkList, localHosts: Set<String>, registrar: Registrar? = nil) {
        self.sets = sets
        self.registrar = registrar
        self.routes = routes
        self.trusted = Mutex(trusted)
        self.localHosts = Set(localHosts.map { $0.lowercased() })
    }

    public func reloadTrusted(_ list: NetworkList) { trusted.withLock { $0 = list } }

    public func set(id: Int) -> Dispatcher? { sets.first { $0.settings.setID == id } }

    public func pick(_ call: CallRequest, excluding tried: [Int]) throws(CallRefusal) -> CallDestination? {
        if trusted.withLock({ $0.contains(call.source.address) }) {
            if localHosts.contains("\(call.requestHost.lowercased()):\(call.requestPort)") {
                // A user of this edge: where it registered from (over its own connection, or its NAT binding).
                guard let binding = registrar?.lookup(call.requestUser) else {
                    throw CallRefusal(status: 404, reason: "no registered user \(call.requestUser)")
                }
                return tried.contains(Self.direct) ? nil
                    : CallDestination(index: Self.direct, hop: binding.target, requestURI: Array(binding.contact.utf8))
            }
            guard let hop = Hop(destination: String(decoding: call.requestURI, as: UTF8.self)) else {
                throw CallRefusal(status: 404, reason: "cannot route to \(call.requestHost): a numeric address is needed")
            }
            return tried.contains(Self.direct) ? nil : CallDestination(index: Self.direct, hop: hop, requestURI: call.requestURI)
        }
        let chosen = routes.first { $0.matches(call) }.flatMap { set(id: $0.set) } ?? sets.first
        guard let chosen, let position = sets.firstIndex(where: { $0 === chosen }) else {
            throw CallRefusal(status: 403, reason: "no route for this call")
        }
        let base = position * Self.stride
        let local = tried.filter { $0 >= base && $0 < base + Self.stride }.map { $0 - base }
        guard let (index, hop) = chosen.pick(callID: call.callID, fromUser: call.fromUser, excluding: local) else { return nil }
        return CallDestination(index: base + index, hop: hop)
    }

    private func locate(_ index: Int) -> (Dispatcher, Int)? {
        guard index >= 0, index / Self.stride < sets.count else { return nil }
        return (sets[index / Self.stride], index % Self.stride)
    }

    public func recovers(_ index: Int) -> Bool { locate(index)?.0.settings.recoverCalls ?? false }

    public func replacement(for index: Int, callID: [UInt8], excluding tried: [Int]) -> CallDestination? {
        guard let (set, _) = locate(index) else { return nil }
        let base = index - index % Self.stride
        let local = tried.filter { $0 >= base && $0 < base + Self.stride }.map { $0 - base }
        return set.pick(callID: callID, fromUser: [], excluding: local).map { CallDestination(index: base + $0.index, hop: $0.hop) }
    }

    /// `handler` is told (by the index `pick` uses) each destination of any set that goes inactive.
    public func onDestinationLost(_ handler: @escaping @Sendable (Int) -> Void) {
        for (position, set) in sets.enumerated() { set.onDestinationLost { handler(position * Self.stride + $0) } }
    }

    public func claim(_ index: Int) { if let (set, i) = locate(index) { set.claim(i) } }
    public func release(_ index: Int) { if let (set, i) = locate(index) { set.release(i) } }
    public func failed(_ index: Int) { if let (set, i) = locate(index) { set.failed(i) } }

    /// Every destination (as `pick` indexes them) named `uri`, in any set.
    public func indices(ofURI uri: String) -> [Int] {
        sets.enumerated().compactMap { position, set in set.index(ofURI: uri).map { position * Self.stride + $0 } }
    }

    public func index(of hop: Hop) -> Int? {
        for (position, set) in sets.enumerated() {
            if let i = set.index(of: hop) { return position * Self.stride + i }
        }
        return nil
    }
}
