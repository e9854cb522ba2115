import SIPParser
import Transport

/// Where the B2BUA's messages go out; the edge implements it over its listeners and connections.
public protocol MessageSender: AnyObject {
    /// Sends `bytes` along `hop`; false when that cannot even be tried (no connection and none can
    /// be opened), which fails the transaction at once.
    func send(_ bytes: [UInt8], to hop: Hop) -> Bool
}

/// The address the edge writes into Via and Contact for one listener, with the listener's tag.
public struct LocalAddress: Sendable, Equatable {
    public var host: String
    public var port: UInt16
    public var tag: String

    public init(host: String, port: UInt16, tag: String) {
        self.host = host
        self.port = port
        self.tag = tag
    }
}

/// What a B2BUA needs to know of its surroundings.
public struct B2BUAConfig: Sendable {
    /// Our advertised addresses per transport, in the order of the config's listeners. A leg's
    /// Via and Contact use the one with the leg's listener tag (so any node with a listener of that
    /// tag can speak for the leg with its own address), else the transport's first.
    public var listeners: [TransportProtocol: [LocalAddress]]
    /// Where new calls go, in turn, when there is no `picker`.
    public var backends: [Hop]
    /// The dispatcher: chooses each call's backend, hears of failures.
    public var picker: (any DestinationPicker)?
    /// Limits on calls per source (nil: none).
    public var admission: (any CallAdmission)?
    /// The registrar that answers REGISTER (nil: 501).
    public var registrar: (any RegistrationHandler)?
    public var timers: TransactionTimerValues
    /// A call still up after this many seconds is ended with a BYE to both legs (0: never).
    public var maxCallSeconds: UInt64
    /// RFC 4028: the session interval asked of backends (0: none), and the smallest accepted.
    public var sessionExpires: UInt32
    public var minSE: UInt32
    /// In-dialog OPTIONS toward both legs every this many seconds (0: never); a leg that does not
    /// answer, or answers 408/481, ends the call.
    public var pingSeconds: UInt64
    /// The sharing tag written into new dialog records.
    public var sharingTag: String
    /// New backend legs for calls whose backend died, at most this many a second on this worker
    /// (0: no limit), unless the workers share `recoveryBudget`.
    public var recoveriesPerSecond = 0
    /// The edge's pace of recoveries, shared by its workers (`recover_per_second`).
    public var recoveryBudget: RecoveryBudget?
    /// Where this worker says how its recoveries are going (a line a second while any is pending).
    public var log: (@Sendable (String) -> Void)?
    /// Each worker's own UDP address, by worker index (`worker_ports`; empty: none). Legs toward
    /// dispatcher destinations use it, so their answers arrive at the worker that owns the call.
    public var workerUDP: [LocalAddress] = []

    public init(listeners: [TransportProtocol: [LocalAddress]], backends: [Hop], timers: TransactionTimerValues = .rfc3261,
                maxCallSeconds: UInt64 = 43_200, sessionExpires: UInt32 = 0, minSE: UInt32 = 90, pingSeconds: UInt64 = 0,
                sharingTag: String = "", picker: (any DestinationPicker)? = nil, admission: (any CallAdmission)? = nil,
                registrar: (any RegistrationHandler)? = nil) {
        self.listeners = listeners
        self.admission = admission
        self.registrar = registrar
        self.backends = backends
        self.picker = picker
        self.timers = timers
        self.maxCallSeconds = maxCallSeconds
        self.sessionExpires = sessionExpires
        self.minSE = minSE
        self.pingSeconds = pingSeconds
        self.sharingTag = sharingTag
    }
}

/// `B2BUAConfig.listeners` as a B2BUA looks them up for every message it writes: an array per
/// transport, indexed by the transport's position (no hashing), the fallbacks resolved once.
struct ListenerAddresses {
    private let byTransport: [[LocalAddress]]
    private let fallback: LocalAddress

    init(_ config: B2BUAConfig) {
        let udp = config.listeners[.udp] ?? []
        byTransport = [TransportProtocol.udp, .tcp, .tls, .sctp].map { config.listeners[$0] ?? udp }
        fallback = udp.first ?? config.listeners.values.first?.first ?? LocalAddress(host: "127.0.0.1", port: 5060, tag: "default")
    }

    /// Host and port for our Via/Contact on `transport`: the listener with `tag` when there is one,
    /// else the transport's first (UDP's when that transport has no listener).
    func address(for transport: TransportProtocol, tag: String? = nil) -> LocalAddress {
        let candidates = byTransport[Self.position(transport)]
        if let tag {
            for candidate in candidates where candidate.tag == tag { return candidate }
        }
        return candidates.first ?? fallback
    }

    private static func position(_ transport: TransportProtocol) -> Int {
        switch transport {
        case .udp: 0
        case .tcp: 1
        case .tls: 2
        case .sctp: 3
        }
    }
}

extension B2BUAConfig {

    /// Whether `host:port` is one of our own addresses.
    func isOurs(host: String, port: Int) -> Bool {
        func ours(_ a: LocalAddress) -> Bool { Int(a.port) == port && (a.host == host || a.host == "[\(host)]") }
        return listeners.values.contains { $0.contains(where: ours) } || workerUDP.contains(where: ours)
    }
}

/// Counters of one B2BUA, for `get_statistics`: kept as enum keys and a small array (nothing
/// to build per message), named when asked for.
public struct B2BUAStatistics: Sendable, Equatable {
    var requestCounts: [SIPMethod: Int] = [:]
    /// Responses by class: index 1 is 1xx ... 6 is 6xx.
    var replyCounts = [Int](repeating: 0, count: 7)
    /// In-dialog OPTIONS and session refreshes this worker sent, and calls it ended because their
    /// lifetime or session timer ran out: what only the node acting for a dialog's tag does.
    public internal(set) var pingsSent = 0
    public internal(set) var sessionRefreshesSent = 0
    public internal(set) var callsTimedOut = 0
    /// Dialogs taken over and re-homed (both legs answered), ended because a leg failed its
    /// re-homing, and early dialogs of a dead node ended on both sides.
    public internal(set) var dialogsRehomed = 0
    public internal(set) var rehomeFailures = 0
    public internal(set) var earlyDialogsEnded = 0
    /// Calls whose backend died: recoveries begun, done (a new backend answered), failed (no
    /// destination left: the caller got a BYE; or the call ended first) and handed over (another node carries the call
    /// now, and finishes the recovery from its record).
    public internal(set) var recoveriesStarted = 0
    public internal(set) var recoveriesDone = 0
    public internal(set) var recoveriesFailed = 0
    public internal(set) var recoveriesHandedOver = 0
    /// Recoveries under way.
    public var recoveriesPending: Int { recoveriesStarted - recoveriesDone - recoveriesFailed - recoveriesHandedOver }

    public init() {}

    /// Requests received, by method name.
    public var requests: [String: Int] {
        Dictionary(requestCounts.map { ($0.key.description, $0.value) }, uniquingKeysWith: +)
    }

    /// Responses received, by class ("2xx").
    public var replies: [String: Int] {
        Dictionary(uniqueKeysWithValues: (1...6).filter { replyCounts[$0] > 0 }.map { ("\($0)xx", replyCounts[$0]) })
    }
}
