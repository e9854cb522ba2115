import SIPParser

// RFC 3261 §17 transactions as values: `handle(event)` changes state and returns what the owner
// must do (send bytes, arm or disarm a timer, pass a message up, report a timeout). No sockets, no
// clock: the owner performs the I/O and feeds timer expiries back as events. RFC 6026 states
// (Accepted) replace the RFC 3261 handling of 2xx to INVITE.

/// The RFC 3261 transaction timers (§17, Table 4) plus RFC 6026's L and M.
public enum TransactionTimer: UInt8, Sendable, Hashable, CaseIterable {
    /// A: INVITE request retransmit (UDP), doubling from T1.
    case a
    /// B: INVITE transaction timeout, 64*T1.
    case b
    /// D: wait for response retransmits, 32 s on UDP, 0 on reliable transports.
    case d
    /// E: non-INVITE request retransmit (UDP), doubling from T1 up to T2.
    case e
    /// F: non-INVITE transaction timeout, 64*T1.
    case f
    /// G: INVITE final response retransmit (UDP), doubling from T1 up to T2.
    case g
    /// H: wait for ACK receipt, 64*T1.
    case h
    /// I: wait for ACK retransmits, T4 on UDP, 0 on reliable.
    case i
    /// J: wait for non-INVITE request retransmits, 64*T1 on UDP, 0 on reliable.
    case j
    /// K: wait for non-INVITE response retransmits, T4 on UDP, 0 on reliable.
    case k
    /// L (RFC 6026): server INVITE in Accepted, 64*T1.
    case l
    /// M (RFC 6026): client INVITE in Accepted, 64*T1.
    case m

    /// D, I, J, K, L and M: a finished transaction waits for retransmissions, then ends. Nothing
    /// is sent when they fire, so they may fire a little late, in bulk.
    public var onlyEndsAWait: Bool {
        switch self {
        case .d, .i, .j, .k, .l, .m: true
        case .a, .b, .e, .f, .g, .h: false
        }
    }
}

/// RFC 3261 timer base values (milliseconds); configurable, the RFC's by default.
public struct TransactionTimerValues: Sendable, Equatable {
    /// T1: RTT estimate, 500 ms.
    public var t1: UInt64
    /// T2: maximum retransmit interval for non-INVITE requests and INVITE responses, 4 s.
    public var t2: UInt64
    /// T4: maximum time a message stays in the network, 5 s.
    public var t4: UInt64
    /// Timer D on unreliable transports: at least 32 s (§17.1.1.2).
    public var d: UInt64

    public init(t1: UInt64 = 500, t2: UInt64 = 4_000, t4: UInt64 = 5_000, d: UInt64 = 32_000) {
        self.t1 = t1
        self.t2 = t2
        self.t4 = t4
        self.d = d
    }

    public static let rfc3261 = TransactionTimerValues()
}

/// What a transaction asks its owner to do, in order.
public enum TransactionAction: Sendable, Equatable {
    /// Send these bytes to the peer (a first transmission or a retransmission).
    case send([UInt8])
    /// Arm `timer` to fire after this many milliseconds (re-arming replaces it).
    case arm(TransactionTimer, milliseconds: UInt64)
    /// Stop `timer`.
    case disarm(TransactionTimer)
    /// Hand the message of the current event to the transaction user.
    case passUp
    /// Tell the transaction user it timed out (B, F, or H without an ACK) or the transport failed.
    case timedOut
    /// The transaction is over: forget it.
    case terminate
}

/// Whether retransmissions are the transaction's job (UDP) or the transport's (TCP, TLS, SCTP).
public enum TransportReliability: Sendable, Equatable {
    case unreliable, reliable
}

// MARK: - Matching (§17.2.3)

/// What finds a server transaction: the top Via branch, the sent-by and the method (ACK finds its
/// INVITE; CANCEL has its own). Client transactions are found by the slot in our own branch.
public struct TransactionKey: Hashable, Sendable {
    private static let magicCookie = Array("z9hG4bK".utf8)
    public let branch: [UInt8]
    public let method: String
    public let sentBy: [UInt8]
    /// The branch's hash, computed once. Branches are unique per transaction (ours carry 60 random
    /// bits), so it spreads keys as well as all three fields would. Kept in the key because the
    /// transaction tables hold tens of thousands of lingering transactions (Timers J, K, L, M): a
    /// lookup that probes past other keys, and a removal that moves the keys after it, then compare
    /// and rehash from the table's own memory instead of reading every probed key's arrays.
    private let branchHash: Int

    public init(branch: [UInt8], method: String, sentBy: [UInt8]) {
        self.branch = branch
        self.method = method
        self.sentBy = sentBy
        var hasher = Hasher()
        branch.withUnsafeBytes { hasher.combine(bytes: $0) }
        branchHash = hasher.finalize()
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(branchHash)
    }

    public static func == (a: TransactionKey, b: TransactionKey) -> Bool {
        a.branchHash == b.branchHash && a.branch == b.branch && a.method == b.method && a.sentBy == b.sentBy
    }

    // (Client transactions are found by the slot their branch names: TransactionLayer.)

    /// The server transaction a request belongs to (§17.2.3): branch with the RFC 3261 magic
    /// cookie, sent-by, and method (an ACK looks for its INVITE). Nil for RFC 2543 branches,
    /// which the owner matches by dialog instead.
    public static func server(forRequest request: SIPMessage) -> TransactionKey? {
        guard request.isRequest, let branch = request.topViaBranch, branch.count > 7,
              branch.withUnsafeBytes({ $0.starts(with: Self.magicCookie) }),
              let via = request.topValue(.via), let method = request.method,
              let sentBy = via.withUnsafeBytes(Self.sentBy) else { return nil }
        let name = method == .ack ? "INVITE" : method.description
        return TransactionKey(branch: branch.bytes, method: name, sentBy: sentBy)
    }

    /// `host:port` of a validated Via value (`SIP / 2.0 / UDP host[:port];...`), the port written
    /// out (5060 when absent), read by a scan rather than a parse of the whole value.
    static func sentBy(_ via: UnsafeRawBufferPointer) -> [UInt8]? {
        let n = via.count
        func blank(_ i: Int) -> Bool { via[i] == 0x20 || via[i] == 0x09 || via[i] == 0x0D || via[i] == 0x0A }
        var i = 0, slashes = 0
        while i < n, slashes < 2 {
            if via[i] == UInt8(ascii: "/") { slashes += 1 }
            i += 1
        }
        while i < n, blank(i) { i += 1 }
        while i < n, !blank(i) { i += 1 }   // the transport
        while i < n, blank(i) { i += 1 }
        let hostStart = i
        if i < n, via[i] == UInt8(ascii: "[") {
            while i < n, via[i] != UInt8(ascii: "]") { i += 1 }
            i += 1
        } else {
            while i < n, via[i] != UInt8(ascii: ":"), via[i] != UInt8(ascii: ";"), via[i] != UInt8(ascii: ","), !blank(i) { i += 1 }
        }
        guard i > hostStart, i <= n else { return nil }
        let hostEnd = i
        while i < n, blank(i) { i += 1 }
        var port = 5060
        if i < n, via[i] == UInt8(ascii: ":") {
            i += 1
            while i < n, blank(i) { i += 1 }
            var value = 0, digits = 0
            while i < n, via[i] &- 0x30 < 10, digits < 10 {
                value = value * 10 + Int(via[i] &- 0x30)
                digits += 1
                i += 1
            }
            guard digits > 0 else { return nil }
            port = value
        }
        var out: [UInt8] = []
        out.reserveCapacity(hostEnd - hostStart + 6)
        out.append(contentsOf: UnsafeRawBufferPointer(rebasing: via[hostStart..<hostEnd]))
        out.append(UInt8(ascii: ":"))
        out.appendDecimal(port)
        return out
    }
}
