import Dialog
import Glibc
import Logging
import SIPParser
import Synchronization
import Transport

/// One place a registered user can be reached: the Contact it registered, where the REGISTER came
/// from (for a phone behind NAT or on its own TCP connection, the only way back to it), and when
/// the binding ends.
public struct Binding: Sendable, Equatable {
    public var contact: String
    /// The source of the REGISTER: transport, address and, for a connection, the worker holding it.
    public var source: Hop
    /// The Contact does not name the address the REGISTER came from (NAT), or it came over a
    /// connection: requests to the user go to `source`.
    public var natted: Bool
    /// Wall-clock seconds.
    public var expiresAt: UInt64
    public var callID: String
    public var cseq: UInt32
    public var userAgent: String

    /// Where requests for this binding go.
    public var target: Hop {
        if natted || source.transport != .udp { return source }
        return Hop(destination: contact).map { Hop($0.transport, $0.address) } ?? source
    }
}

/// The `[registrar]` section.
public struct RegistrarSettings: Sendable, Equatable {
    public var minExpires = 60
    public var maxExpires = 3_600
    public var defaultExpires = 3_600
    public var maxContacts = 10
    public var maxUsers = 100_000
    /// Keep-alive (a CRLF datagram) toward NATed UDP contacts every this many seconds (0: none).
    public var keepaliveSeconds = 30
    /// The registrar of the farm (the Asterisk) REGISTERs are sent on to, mid-registrar style
    /// (nil: the edge is the only registrar).
    public var upstream: Hop?
    /// A user's registration goes upstream at most once per this many seconds; in between the
    /// edge answers its refreshes itself.
    public var upstreamIntervalSeconds = 600

    public init() {}
}

/// The location table: REGISTER is answered by the edge itself (RFC 3261 §10.3) and calls from
/// the farm to a user go to where it registered from. Shared by the workers (a short lock per
/// REGISTER or lookup); bounded in users and contacts per user; every change goes to the store.
public final class Registrar: RegistrationHandler, Sendable {
    public let settings: RegistrarSettings
    private let table = Mutex<[String: [Binding]]>([:])
    private let logger: Logger
    /// Persistence of the table (the dialog database's writer thread).
    let store: DialogStore?
    /// Where this node's changes are replicated (the cluster), set before the loops start.
    private let replication = Mutex<(@Sendable (String, [UInt8]) -> Void)?>(nil)
    /// In a cluster, whose NAT bindings this node keeps open: each user's sharing tag (the tag of
    /// the node it registered through; this node's own is ""), and the tags this node acts for.
    private let keepaliveScope = Mutex<(tags: [String: String], acting: Set<String>)?>(nil)

    public init(_ settings: RegistrarSettings, store: DialogStore?, logger: Logger) {
        self.settings = settings
        self.store = store
        self.logger = logger
    }

    static func now() -> UInt64 { UInt64(max(0, time(nil))) }

    /// Bindings loaded from the database at start.
    func restore(_ saved: [String: [Binding]]) {
        let now = Self.now()
        table.withLock { t in
            for (user, bindings) in saved {
                let live = bindings.filter { $0.expiresAt > now }
                if !live.isEmpty { t[user] = live }
            }
        }
    }

    /// Every change a REGISTER makes here goes to `replicate` too (user, bindings as `encoded`).
    /// `ownTag`: this node's sharing tag (its own registrations' keep-alives go while it acts for it).
    func attach(ownTag: String, replication replicate: @escaping @Sendable (String, [UInt8]) -> Void) {
        replication.withLock { $0 = replicate }
        keepaliveScope.withLock { $0 = (["": ownTag], []) }
    }

    /// The cluster says whether this node acts for `tag`: keep-alives for its users start or stop.
    func keepAlive(tag: String, _ acting: Bool) {
        keepaliveScope.withLock { scope in
            if acting { scope?.acting.insert(tag) } else { scope?.acting.remove(tag) }
        }
    }

    /// A user's bindings as one byte string (a line per binding; empty: none), as the database
    /// and the cluster carry them.
    static func encoded(_ bindings: [Binding]) -> [UInt8] { Array(bindings.map(\.encodedLine).joined(separator: "\n").utf8) }

    static func decoded(_ bytes: [UInt8]) -> [Binding] {
        String(decoding: bytes, as: UTF8.self).split(separator: "\n").compactMap { Binding(encodedLine: $0) }
    }

    /// A user's bindings as another node wrote them: they replace this node's (kept on disk too,
    /// not sent back to the cluster). Bounded like a REGISTER: contacts per user, users in all.
    func replace(user: String, bindings: [Binding], tag: String) {
        keepaliveScope.withLock { $0?.tags[user] = bindings.isEmpty ? nil : tag }
        let now = Self.now()
        let live = Array(bindings.filter { $0.expiresAt > now }.suffix(settings.maxContacts))
        let applied = table.withLock { t -> Bool in
            if t[user] == nil && !live.isEmpty && t.count >= settings.maxUsers { return false }
            t[user] = live.isEmpty ? nil : live
            return true
        }
        if applied { store?.registrationChanged(user: user, bindings: live) }
    }

    /// A REGISTER read and checked (RFC 3261 §10.3), not yet applied.
    struct Request {
        var user: String
        var callID: String
        var cseq: UInt32
        var removeAll: Bool
        var contacts: [(uri: String, expires: Int)]
        var userAgent: String
        var isQuery: Bool { contacts.isEmpty && !removeAll }
    }

    func read(_ request: SIPMessage) -> Result<Request, Refusal> {
        guard let to = try? request.to(), let user = to.uri.user?.string, !user.isEmpty,
              let callID = request.callID?.string, let cseq = try? request.cseq().number else {
            return .failure(Refusal(400, [("Warning", "399 sipedge \"REGISTER needs a To user, a Call-ID and a CSeq\"")]))
        }
        let headerExpires = ((try? request.expires()) ?? nil).map(Int.init)
        var r = Request(user: user, callID: callID, cseq: cseq, removeAll: false, contacts: [],
                        userAgent: request.firstValue(.userAgent)?.string ?? "")
        switch (try? request.contact()) ?? nil {
        case .star?:
            guard headerExpires == 0 else { return .failure(Refusal(400, [("Warning", "399 sipedge \"Contact: * needs Expires: 0\"")])) }
            r.removeAll = true
        case .addresses(let list)?:
            for c in list {
                var expires = (c.parameter("expires") ?? nil).flatMap { Int($0.string) } ?? headerExpires ?? settings.defaultExpires
                if expires > 0 && expires < settings.minExpires {
                    return .failure(Refusal(423, [("Min-Expires", "\(settings.minExpires)")]))
                }
                expires = min(expires, settings.maxExpires)
                r.contacts.append((c.uri.text.string, expires))
            }
        case nil:
            break   // a query: the answer lists the bindings
        }
        return .success(r)
    }

    struct Refusal: Error {
        let status: Int
        let headers: [(String, String)]
        init(_ status: Int, _ headers: [(String, String)] = []) {
            self.status = status
            self.headers = headers
        }
    }

    /// The edge's own upstream registration of each user: its Call-ID, last CSeq, and until when
    /// refreshes are answered without going upstream.
    struct Upstream {
        var callID: String
        var cseq: UInt32
        var until: UInt64
    }

    private let upstreamState = Mutex<[String: Upstream]>([:])

    public func register(_ request: SIPMessage, from hop: Hop) -> RegistrationStep {
        let r: Request
        switch read(request) {
        case .failure(let refusal): return .answer(status: refusal.status, headers: refusal.headers)
        case .success(let read): r = read
        }
        if let upstream = settings.upstream, !r.isQuery {
            let now = Self.now()
            let removing = r.removeAll || r.contacts.allSatisfy { $0.expires == 0 }
            // Up when the user is not registered there (or no longer; an answer to a challenge is
            // such a case) and when it leaves; otherwise the edge answers and the Asterisk hears nothing.
            let step: UpstreamRegistration? = upstreamState.withLock { u in
                let state = u[r.user]
                guard state == nil || state!.until <= now || removing else { return nil }
                var next = state ?? Upstream(callID: "reg-\(r.user)-\(UInt64.random(in: 0...UInt64.max))", cseq: 0, until: 0)
                next.cseq += 1
                u[r.user] = next
                let expires = removing ? 0 : settings.upstreamIntervalSeconds + settings.minExpires
                return UpstreamRegistration(hop: upstream, requestURI: request.requestURIBytes?.bytes ?? Array("sip:\(upstream)".utf8),
                                            user: r.user, callID: next.callID, cseq: next.cseq, expires: expires)
            }
            if let step { return .forward(step) }
        }
        let (status, headers) = apply(r, from: hop)
        return .answer(status: status, headers: headers)
    }

    public func upstreamAnswered(_ request: SIPMessage, from hop: Hop, upstream: UpstreamRegistration, response: SIPMessage?)
        -> (status: Int, headers: [(String, String)]) {
        guard let response, let status = response.statusCode else {
            logger.warning("registrar: the upstream registrar \(upstream.hop) did not answer for \(upstream.user)")
            return (503, [("Retry-After", "30"), ("Warning", "399 sipedge \"the registrar behind the edge does not answer\"")])
        }
        guard status >= 200 && status < 300 else {
            // A challenge (401/407) or a refusal goes back as it came, with what the phone needs.
            var headers: [(String, String)] = []
            for i in 0..<response.headerCount {
                let h = response.header(at: i)
                if [.wwwAuthenticate, .proxyAuthenticate, .minExpires, .retryAfter, .warning].contains(h.kind) {
                    headers.append((h.name.string, h.value.string))
                }
            }
            return (status, headers)
        }
        guard case .success(let r) = read(request) else { return (400, []) }
        let granted = ((try? response.expires()) ?? nil).map(Int.init) ?? upstream.expires
        upstreamState.withLock { u in
            if upstream.expires == 0 {
                u[upstream.user] = nil
            } else {
                u[upstream.user]?.until = Self.now() + UInt64(min(settings.upstreamIntervalSeconds, max(0, granted - 5)))
            }
        }
        return apply(r, from: hop)
    }

    /// Applies a REGISTER to the table and gives the answer: 200 with every live binding.
    private func apply(_ r: Request, from hop: Hop) -> (status: Int, headers: [(String, String)]) {
        let now = Self.now()
        let user = r.user
        let result: (Int, [Binding], String?) = table.withLock { t in
            var bindings = (t[user] ?? []).filter { $0.expiresAt > now }
            if r.removeAll {
                bindings.removeAll()
            }
            for (uri, expires) in r.contacts {
                if let i = bindings.firstIndex(where: { $0.contact == uri }) {
                    // §10.3 step 7: the same Call-ID with an older or equal CSeq is out of order.
                    if bindings[i].callID == r.callID && bindings[i].cseq >= r.cseq { return (500, [], "out-of-order CSeq") }
                    bindings.remove(at: i)
                }
                guard expires > 0 else { continue }
                let natted = Self.isNatted(contact: uri, source: hop)
                bindings.append(Binding(contact: uri, source: hop, natted: natted, expiresAt: now + UInt64(expires),
                                        callID: r.callID, cseq: r.cseq, userAgent: r.userAgent))
            }
            if bindings.count > settings.maxContacts { bindings.removeFirst(bindings.count - settings.maxContacts) }
            if t[user] == nil && !bindings.isEmpty && t.count >= settings.maxUsers { return (503, [], "location table full") }
            t[user] = bindings.isEmpty ? nil : bindings
            return (200, bindings, nil)
        }
        if let why = result.2 {
            logger.notice("registrar: REGISTER for \(user) from \(hop): \(why)")
            return (result.0, result.0 == 503 ? [("Retry-After", "60")] : [])
        }
        if !r.isQuery {
            store?.registrationChanged(user: user, bindings: result.1)
            keepaliveScope.withLock { $0?.tags[user] = nil }   // registered here: this node's own tag
            if let replicate = replication.withLock({ $0 }) { replicate(user, Self.encoded(result.1)) }
        }
        let headers = result.1.map { ("Contact", "<\($0.contact)>;expires=\($0.expiresAt > now ? $0.expiresAt - now : 0)") }
        return (200, headers)
    }

    /// Whether a Contact hides behind NAT: it does not name the address and port the REGISTER came
    /// from (RFC 3581's received/rport test), or the REGISTER came over a connection.
    static func isNatted(contact: String, source: Hop) -> Bool {
        guard source.transport == .udp else { return true }
        guard let named = Hop(destination: contact) else { return true }
        return named.address != source.address
    }

    /// The freshest live binding of `user`.
    public func lookup(_ user: String) -> Binding? {
        let now = Self.now()
        return table.withLock { t in t[user]?.filter { $0.expiresAt > now }.max { $0.expiresAt < $1.expiresAt } }
    }

    /// Every live binding, by user (`ul_dump`).
    public func dump() -> [String: [Binding]] {
        let now = Self.now()
        return table.withLock { t in t.compactMapValues { b in let live = b.filter { $0.expiresAt > now }; return live.isEmpty ? nil : live } }
    }

    /// Forgets expired bindings (and their rows).
    func sweep() {
        let now = Self.now()
        let gone: [String: [Binding]] = table.withLock { t in
            var changed: [String: [Binding]] = [:]
            for (user, bindings) in t {
                let live = bindings.filter { $0.expiresAt > now }
                if live.count != bindings.count {
                    changed[user] = live
                    t[user] = live.isEmpty ? nil : live
                }
            }
            return changed
        }
        for (user, live) in gone { store?.registrationChanged(user: user, bindings: live) }
        let left = gone.filter { $0.value.isEmpty }.map(\.key)
        if !left.isEmpty { keepaliveScope.withLock { scope in for user in left { scope?.tags[user] = nil } } }
    }

    /// NATed UDP bindings, for keep-alives.
    func nattedUDPTargets() -> [Hop] {
        // In a cluster, only the users of tags this node acts for (each tag's holder keeps them open).
        let scope = keepaliveScope.withLock { $0 }
        return table.withLock { t in
            t.filter { user, _ in
                guard let scope else { return true }
                return scope.acting.contains(scope.tags[user] ?? scope.tags[""] ?? "")
            }.values.flatMap { $0.filter { $0.natted && $0.source.transport == .udp }.map(\.source) }
        }
    }
}

extension Binding {
    /// One line of the registrations table's text encoding (tab-separated; a Contact URI holds no
    /// tab or newline once parsed).
    var encodedLine: String {
        [contact, source.transport.rawValue, source.address.ipString, "\(source.address.port)", natted ? "1" : "0",
         "\(expiresAt)", callID, "\(cseq)", userAgent.replacingOccurrences(of: "\t", with: " ")].joined(separator: "\t")
    }

    init?(encodedLine line: Substring) {
        let f = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
        guard f.count == 9, let transport = TransportProtocol(rawValue: f[1]), let port = Int(f[3]),
              let address = SocketAddress(ip: f[2], port: port), let expiresAt = UInt64(f[5]), let cseq = UInt32(f[7]) else { return nil }
        self.init(contact: f[0], source: Hop(transport, address), natted: f[4] == "1", expiresAt: expiresAt, callID: f[6],
                  cseq: cseq, userAgent: f[8])
    }
}
