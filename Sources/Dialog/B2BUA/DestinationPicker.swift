import SIPParser
import Synchronization
import Transport

/// What the edge knows of a new call when it chooses where the call goes.
public struct CallRequest: Sendable {
    public var callID: [UInt8]
    public var fromUser: [UInt8]
    /// Where the INVITE came from, and the tag of the listener it came in on.
    public var source: Hop
    public var listenerTag: String
    /// The Request-URI as received, and its user and host parts.
    public var requestURI: [UInt8]
    public var requestUser: String
    public var requestHost: String
    /// The Request-URI port (5060 when it names none; 5061 for sips).
    public var requestPort: Int

    public init(callID: [UInt8], fromUser: [UInt8], source: Hop, listenerTag: String, requestURI: [UInt8],
                requestUser: String, requestHost: String, requestPort: Int) {
        self.callID = callID
        self.fromUser = fromUser
        self.source = source
        self.listenerTag = listenerTag
        self.requestURI = requestURI
        self.requestUser = requestUser
        self.requestHost = requestHost
        self.requestPort = requestPort
    }
}

/// Where one attempt of a call goes: the picker's index for it, the hop, and the Request-URI to
/// send (nil: "sip:USER@HOST:PORT" of the hop, USER from the caller's Request-URI).
public struct CallDestination: Sendable {
    public var index: Int
    public var hop: Hop
    public var requestURI: [UInt8]?

    public init(index: Int, hop: Hop, requestURI: [UInt8]? = nil) {
        self.index = index
        self.hop = hop
        self.requestURI = requestURI
    }
}

/// A call with nowhere to go by the routing rules: answered with this status (e.g. 403, 404).
public struct CallRefusal: Error, Sendable, Equatable {
    public var status: Int
    public var reason: String

    public init(status: Int, reason: String) {
        self.status = status
        self.reason = reason
    }
}

/// Chooses the destination of each new call and hears how its choices fared: the edge's router
/// implements it (routes, dispatcher sets, probing, draining); `RoundRobinDestinations` is the
/// plain one. Called from every worker's loop, so implementations are thread-safe.
public protocol DestinationPicker: AnyObject, Sendable {
    /// The destination for a call's next attempt, none of `tried`; nil when none is left, a
    /// refusal when the call has no route at all. The destination counts the attempt as one of its
    /// active calls until `release`.
    func pick(_ call: CallRequest, excluding tried: [Int]) throws(CallRefusal) -> CallDestination?
    /// A restored dialog's call counts at `index` again (as `pick` would have counted it).
    func claim(_ index: Int)
    /// The call that `pick` gave to `index` is over there (ended, or moved on to another).
    func release(_ index: Int)
    /// `index` failed outright (ICMP refusal, refused connection, no answer): a failed probe.
    func failed(_ index: Int)
    /// The destination a restored dialog's backend leg goes to, if it is still configured.
    func index(of hop: Hop) -> Int?
    /// Whether calls up on `index` are moved to another destination when it dies.
    func recovers(_ index: Int) -> Bool
    /// Another destination of `index`'s set for a call recovered off it, none of `tried`
    /// (counted as `pick` counts).
    func replacement(for index: Int, callID: [UInt8], excluding tried: [Int]) -> CallDestination?
}

extension DestinationPicker {
    public func recovers(_ index: Int) -> Bool { false }
    public func replacement(for index: Int, callID: [UInt8], excluding tried: [Int]) -> CallDestination? { nil }
}

/// Every destination in turn, none ever marked down: what the edge uses without a dispatcher.
public final class RoundRobinDestinations: DestinationPicker, Sendable {
    public let destinations: [Hop]
    private let next = Atomic<Int>(0)

    public init(_ destinations: [Hop]) { self.destinations = destinations }

    public func pick(_ call: CallRequest, excluding tried: [Int]) throws(CallRefusal) -> CallDestination? {
        guard !destinations.isEmpty else { return nil }
        let start = next.add(1, ordering: .relaxed).oldValue % destinations.count
        for offset in 0..<destinations.count {
            let i = (start + offset) % destinations.count
            if !tried.contains(i) { return CallDestination(index: i, hop: destinations[i]) }
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

/// A REGISTER the registrar wants sent on to the upstream registrar (mid-registrar).
public struct UpstreamRegistration: Sendable {
    public var hop: Hop
    public var requestURI: [UInt8]
    public var user: String
    /// The edge's own Call-ID and CSeq for this user's upstream registration.
    public var callID: String
    public var cseq: UInt32
    public var expires: Int

    public init(hop: Hop, requestURI: [UInt8], user: String, callID: String, cseq: UInt32, expires: Int) {
        self.hop = hop
        self.requestURI = requestURI
        self.user = user
        self.callID = callID
        self.cseq = cseq
        self.expires = expires
    }
}

/// What to do with a REGISTER: answer it now, or send it on upstream first.
public enum RegistrationStep: Sendable {
    case answer(status: Int, headers: [(String, String)])
    case forward(UpstreamRegistration)
}

/// Answers REGISTER requests (the edge's registrar); called on the receiving worker's loop.
public protocol RegistrationHandler: AnyObject, Sendable {
    /// Answer now (the bindings' Contacts, Min-Expires...), or forward upstream.
    func register(_ request: SIPMessage, from hop: Hop) -> RegistrationStep
    /// The upstream registrar answered a forwarded REGISTER (nil: it did not): the answer for the phone.
    func upstreamAnswered(_ request: SIPMessage, from hop: Hop, upstream: UpstreamRegistration, response: SIPMessage?)
        -> (status: Int, headers: [(String, String)])
}
