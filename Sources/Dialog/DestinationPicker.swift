import SIPParser
import Synchronization
import Transport

/// Chooses the backend of each new call and hears how its choices fared: the edge's dispatcher
/// implements it (sets, algorithms, probing, draining); `RoundRobinDestinations` is the plain one.
/// Called from every worker's loop, so implementations are thread-safe.
public protocol DestinationPicker: AnyObject, Sendable {
    /// The destination for a call's next attempt, none of `tried`; nil when none is left. The
    /// destination counts the attempt as one of its active calls until `release`.
    func pick(callID: [UInt8], fromUser: [UInt8], excluding tried: [Int]) -> (index: Int, hop: Hop)?
    /// A restored dialog's call counts at `index` again (as `pick` would have counted it).
    func claim(_ index: Int)
    /// The call that `pick` gave to `index` is over there (ended, or moved on to another).
    func release(_ index: Int)
    /// `index` failed outright (ICMP refusal, refused connection, no answer): a failed probe.
    func failed(_ index: Int)
    /// The destination a restored dialog's backend leg goes to, if it is still configured.
    func index(of hop: Hop) -> Int?
}

/// Every destination in turn, none ever marked down: what the edge uses without a dispatcher.
public final class RoundRobinDestinations: DestinationPicker, Sendable {
    public let destinations: [Hop]
    private let next = Atomic<Int>(0)

    public init(_ destinations: [Hop]) { self.destinations = destinations }

    public func pick(callID: [UInt8], fromUser: [UInt8], excluding tried: [Int]) -> (index: Int, hop: Hop)? {
        guard !destinations.isEmpty else { return nil }
        let start = next.add(1, ordering: .relaxed).oldValue % destinations.count
        for offset in 0..<destinations.count {
            let i = (start + offset) % destinations.count
            if !tried.contains(i) { return (i, destinations[i]) }
        }
        return nil
    }

    public func claim(_ index: Int) {}
    public func release(_ index: Int) {}
    public func failed(_ index: Int) {}
    public func index(of hop: Hop) -> Int? { destinations.firstIndex(of: hop.withoutWorker) }
}


/// Decides whether a source may start another call (concurrent calls per source address); the
/// edge's ACL and limits implement it. Thread-safe: every worker asks.
public protocol CallAdmission: AnyObject, Sendable {
    /// Counts a new call from `source`, or refuses it (false).
    func admit(_ source: SocketAddress) -> Bool
    /// A call `admit` counted is over.
    func release(_ source: SocketAddress)
}
