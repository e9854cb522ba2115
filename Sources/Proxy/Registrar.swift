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

    public func register(_ request: SIPMessage, from hop: Hop) -> (status: Int, headers: [(String, String)]) {
        guard let to = try? request.to(), let user = to.uri.user?.string, !user.isEmpty,
              let callID = request.callID?.string, let cseq = try? request.cseq().number else {
            return (400, [("Warning", "399 sipedge \"REGISTER needs a To user, a Call-ID and a CSeq\"")])
        }
        let headerExpires = ((try? request.expires()) ?? nil).map(Int.init)
        let contacts: [NameAddress]
        var removeAll = false
        switch (try? request.contact()) ?? nil {
        case .star?:
            guard headerExpires == 0 else { return (400, [("Warning", "399 sipedge \"Contact: * needs Expires: 0\"")]) }
            removeAll = true
            contacts = []
        case .addresses(let list)?:
            contacts = list
        case nil:
            contacts = []   // a query: the answer lists the bindings
        }
        let now = Self.now()
        let userAgent = request.firstValue(.userAgent)?.string ?? ""
        var requested: [(String, Int)] = []
        for c in contacts {
            let uri = c.uri.text.string
            var expires = (c.parameter("expires") ?? nil).flatMap { Int($0.string) } ?? headerExpires ?? settings.defaultExpires
            if expires > 0 && expires < settings.minExpires {
                return (423, [("Min-Expires", "\(settings.minExpires)")])
            }
            expires = min(expires, settings.maxExpires)
            requested.append((uri, expires))
        }
        let result: (Int, [Binding], String?) = table.withLock { t in
            var bindings = (t[user] ?? []).filter { $0.expiresAt > now }
            if removeAll {
                bindings.removeAll()
            }
            for (uri, expires) in requested {
                if let i = bindings.firstIndex(where: { $0.contact == uri }) {
                    // §10.3 step 7: the same Call-ID with an older or equal CSeq is out of order.
                    if bindings[i].callID == callID && bindings[i].cseq >= cseq { return (500, [], "out-of-order CSeq") }
                    bindings.remove(at: i)
                }
                guard expires > 0 else { continue }
                let natted = Self.isNatted(contact: uri, source: hop)
                bindings.append(Binding(contact: uri, source: hop, natted: natted, expiresAt: now + UInt64(expires),
                                        callID: callID, cseq: cseq, userAgent: userAgent))
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
        if !contacts.isEmpty || removeAll { store?.registrationChanged(user: user, bindings: result.1) }
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
    }

    /// NATed UDP bindings, for keep-alives.
    func nattedUDPTargets() -> [Hop] {
        table.withLock { t in t.values.flatMap { $0.filter { $0.natted && $0.source.transport == .udp }.map(\.source) } }
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
