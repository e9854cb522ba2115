import SIPParser
import Transport

/// Who refreshes a leg's session (RFC 4028): nobody (no session timer), the edge, or the peer.
public enum SessionRefresher: UInt8, Sendable, Equatable {
    case none = 0, edge = 1, peer = 2
}

/// What the edge keeps of one leg of a dialog: its identity (Call-ID, tags), CSeq spaces, route set,
/// remote target, the hop its messages take, our Contact by listener tag and user part, the last
/// SDP each way and its session timer. Nothing of one leg is written into the other's messages.
public struct LegRecord: Sendable, Equatable {
    public var callID: String
    public var localTag: String
    /// Empty until the peer has tagged the dialog.
    public var remoteTag: String
    public var localCSeq: UInt32
    /// The highest CSeq seen from the peer (0: none yet).
    public var remoteCSeq: UInt32
    /// The CSeq of the INVITE that set the leg up (a PRACK's RAck names it, RFC 3262 §7.2).
    public var inviteCSeq: UInt32
    /// Our address-of-record on this leg and the peer's (From/To values without tags).
    public var localURI: [UInt8]
    public var remoteURI: [UInt8]
    /// Where in-dialog requests are addressed: the peer's Contact URI.
    public var remoteTarget: [UInt8]
    /// Route header values for in-dialog requests, in the order they are written (§12.1).
    public var routeSet: [[UInt8]]
    public var hop: Hop
    /// Our Contact on this leg: the listener (by tag, so any node can speak for it) and the user part.
    public var listenerTag: String
    public var contactUser: String
    /// The last session description we sent on this leg and the last one the peer sent.
    public var lastSDPSent: [UInt8]
    public var lastSDPReceived: [UInt8]
    /// RFC 4028: the session interval in seconds (0: no session timer on this leg) and who refreshes.
    public var sessionInterval: UInt32
    public var refresher: SessionRefresher
    /// Whether the peer accepts UPDATE (its Allow said so): refreshes then need no SDP.
    public var peerAllowsUpdate: Bool

    public init(callID: String, localTag: String, remoteTag: String = "", localCSeq: UInt32, remoteCSeq: UInt32 = 0,
                inviteCSeq: UInt32 = 1, localURI: [UInt8], remoteURI: [UInt8], remoteTarget: [UInt8], routeSet: [[UInt8]] = [],
                hop: Hop, listenerTag: String, contactUser: String = "edge") {
        self.callID = callID
        self.localTag = localTag
        self.remoteTag = remoteTag
        self.localCSeq = localCSeq
        self.remoteCSeq = remoteCSeq
        self.inviteCSeq = inviteCSeq
        self.localURI = localURI
        self.remoteURI = remoteURI
        self.remoteTarget = remoteTarget
        self.routeSet = routeSet
        self.hop = hop
        self.listenerTag = listenerTag
        self.contactUser = contactUser
        self.lastSDPSent = []
        self.lastSDPReceived = []
        self.sessionInterval = 0
        self.refresher = .none
        self.peerAllowsUpdate = false
    }
}

/// A dialog through the edge as one versioned value: both legs, state, sharing tag and the
/// wall-clock deadlines of its timers. One binary encoding of it serves replication, the SQLite
/// row that survives a restart, and `dlg_list` (DESIGN.md, Dialog records). A receiver applies an
/// update only if its version is newer.
public struct DialogRecord: Sendable, Equatable {
    public enum State: UInt8, Sendable, Equatable { case early = 0, confirmed = 1, ended = 2 }

    /// Which leg: the caller's (client) or the farm's (backend).
    public enum Side: UInt8, Sendable, Equatable {
        case client = 0, backend = 1
        public var other: Side { self == .client ? .backend : .client }
    }

    /// A re-INVITE under way in the dialog (at most one: another meets 491, RFC 3261 §14.2): one
    /// relayed from a leg to the other, a session refresh the edge sent on a leg, or the edge's
    /// own on one or both legs (re-homing, `dlg_send_sequential`).
    public enum PendingReinvite: Sendable, Equatable {
        case none
        case relayed(from: Side)
        case refresh(Side)
        case edge

        var code: UInt8 {
            switch self {
            case .none: 0
            case .relayed(let side): 1 + side.rawValue
            case .refresh(let side): 3 + side.rawValue
            case .edge: 5
            }
        }

        init?(code: UInt64) {
            switch code {
            case 0: self = .none
            case 1, 2: self = .relayed(from: code == 1 ? .client : .backend)
            case 3, 4: self = .refresh(code == 3 ? .client : .backend)
            case 5: self = .edge
            default: return nil
            }
        }
    }

    public var version: UInt64
    public var state: State
    /// The sharing tag the dialog belongs to (the node where it is active pings and times it out).
    public var sharingTag: String
    public var client: LegRecord
    public var backend: LegRecord
    /// Wall-clock seconds (Unix time): when the call started and was answered (0: not yet).
    public var startedAt: UInt64
    public var answeredAt: UInt64
    /// Wall-clock seconds when the maximum lifetime ends the call (0: never).
    public var endsAt: UInt64
    /// The re-INVITE under way, if any.
    public var reinvite: PendingReinvite
    /// The caller's INVITE had no SDP: the backend's ACK carries the caller's answer (from its ACK).
    public var lateOffer: Bool
    /// The backend's 2xx was ACKed (a retransmitted 2xx gets the ACK again, rebuilt).
    public var backendAcknowledged: Bool
    /// Its media goes through the relay (rtpengine), which holds a session for it: whichever node
    /// or worker carries the call goes on giving it the call's descriptions and ends it.
    public var mediaAnchored: Bool
    /// While the dialog is early, what ending it cleanly needs: the backend INVITE's Request-URI
    /// and branch (to CANCEL it, RFC 3261 §9.1, from this node or another) and, in a cluster, the
    /// Via values of the caller's INVITE (for another node to answer it if this one dies).
    /// Emptied once the call is answered.
    public var clientInviteVias: [[UInt8]]
    public var backendInviteURI: [UInt8]
    public var backendInviteBranch: [UInt8]
    /// Times the backend leg was rebuilt on another destination after its backend died (issue 16).
    public var recoveries: UInt32
    /// What the backend asked the edge to keep for the call (`X-SIPEdge-Var-NAME: value` in its
    /// answer or its requests): given back to the Asterisk a recovery moves the call to.
    public var variables: [DialogVariable]
    /// While a new backend leg is being built (the backend died): the lost leg's Call-ID, so
    /// that whoever carries the call next (after a take-over or a restart) can finish the
    /// recovery and name the call it recovers. Empty otherwise.
    public var recoveringFrom: String

    public init(client: LegRecord, backend: LegRecord, sharingTag: String = "", startedAt: UInt64) {
        self.version = 1
        self.state = .early
        self.sharingTag = sharingTag
        self.client = client
        self.backend = backend
        self.startedAt = startedAt
        self.answeredAt = 0
        self.endsAt = 0
        self.reinvite = .none
        self.lateOffer = false
        self.backendAcknowledged = false
        self.mediaAnchored = false
        self.clientInviteVias = []
        self.backendInviteURI = []
        self.backendInviteBranch = []
        self.recoveries = 0
        self.variables = []
        self.recoveringFrom = ""
    }

    /// One leg, by side. The backend leg's hop is the backend destination the call went to.
    /// (Read and changed in place: reading one field of a leg does not copy the whole leg.)
    public subscript(side: Side) -> LegRecord {
        _read { if side == .client { yield client } else { yield backend } }
        _modify { if side == .client { yield &client } else { yield &backend } }
    }

    /// A session description crossing from `side` to the other leg: the last SDP each way.
    mutating func carry(_ body: [UInt8], from side: Side) {
        self[side].lastSDPReceived = body
        self[side.other].lastSDPSent = body
    }

    /// The key a dialog is stored and replicated under: the backend leg's Call-ID, which we made
    /// (unique, and it names the owning worker).
    public var key: String { backend.callID }
}

/// A name and value the backend keeps on a dialog (`X-SIPEdge-Var-NAME: value`).
public struct DialogVariable: Sendable, Equatable {
    public var name: String
    public var value: String
    /// What a backend can make a dialog hold: this many variables, names and values this long.
    public static let maxCount = 16
    public static let maxNameBytes = 64
    public static let maxValueBytes = 256

    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}

/// Why a dialog record's bytes could not be decoded.
public struct DialogRecordError: Error, Sendable, Equatable, CustomStringConvertible {
    public let reason: String
    public init(reason: String) { self.reason = reason }
    public var description: String { "dialog record: \(reason)" }
}

extension DialogRecord {
    /// The format's first byte; a decoder refuses any other but the previous ones (format 1 lacked
    /// the re-INVITE and offer/ACK state, read as none and false; format 2 the early-dialog fields,
    /// read as empty; format 3 the recovery count, read as 0; format 4 the variables, read as none;
    /// format 5 the media-anchored flag and the Call-ID a recovery comes from, read as false and
    /// empty).
    public static let formatVersion: UInt8 = 6
    /// The most bytes one string or byte field may claim (a corrupt length must not allocate much).
    static let maxFieldBytes = 65_536

    /// The compact binary form: the format byte, then every field in a fixed order as LEB128
    /// integers and length-prefixed bytes.
    public func encoded() -> [UInt8] {
        var w = RecordWriter()
        w.bytes.reserveCapacity(512 + client.lastSDPSent.count * 2 + backend.lastSDPSent.count * 2)
        w.bytes.append(Self.formatVersion)
        w.int(version)
        w.int(UInt64(state.rawValue))
        w.string(sharingTag)
        w.int(startedAt)
        w.int(answeredAt)
        w.int(endsAt)
        w.int(UInt64(reinvite.code))
        w.int((lateOffer ? 1 : 0) | (backendAcknowledged ? 2 : 0) | (mediaAnchored ? 4 : 0))
        w.leg(client)
        w.leg(backend)
        w.int(UInt64(clientInviteVias.count))
        for via in clientInviteVias { w.data(via) }
        w.data(backendInviteURI)
        w.data(backendInviteBranch)
        w.int(UInt64(recoveries))
        w.int(UInt64(variables.count))
        for v in variables {
            w.string(v.name)
            w.string(v.value)
        }
        w.string(recoveringFrom)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(DialogRecordError) {
        var r = RecordReader(bytes: bytes)
        let format = try r.byte()
        guard (1...Self.formatVersion).contains(format) else { throw DialogRecordError(reason: "unknown format \(format)") }
        let version = try r.int()
        guard let state = State(rawValue: UInt8(truncatingIfNeeded: try r.int())) else { throw DialogRecordError(reason: "bad state") }
        let sharingTag = try r.string()
        let startedAt = try r.int(), answeredAt = try r.int(), endsAt = try r.int()
        var reinvite = PendingReinvite.none
        var flags: UInt64 = 0
        if format >= 2 {
            guard let pending = PendingReinvite(code: try r.int()) else { throw DialogRecordError(reason: "bad re-INVITE state") }
            reinvite = pending
            flags = try r.int()
            guard flags & ~(format >= 6 ? 7 : 3) == 0 else { throw DialogRecordError(reason: "bad flags \(flags)") }
        }
        let client = try r.leg(), backend = try r.leg()
        var vias: [[UInt8]] = [], inviteURI: [UInt8] = [], branch: [UInt8] = []
        if format >= 3 {
            let count = try r.int()
            guard count <= 64 else { throw DialogRecordError(reason: "\(count) Via values") }
            for _ in 0..<count { vias.append(try r.data()) }
            inviteURI = try r.data()
            branch = try r.data()
        }
        var recoveries: UInt64 = 0
        if format >= 4 {
            recoveries = try r.int()
            guard recoveries <= UInt64(UInt32.max) else { throw DialogRecordError(reason: "\(recoveries) recoveries") }
        }
        var variables: [DialogVariable] = []
        if format >= 5 {
            let count = try r.int()
            guard count <= UInt64(DialogVariable.maxCount) else { throw DialogRecordError(reason: "\(count) variables") }
            for _ in 0..<count { variables.append(DialogVariable(name: try r.string(), value: try r.string())) }
        }
        let recoveringFrom = format >= 6 ? try r.string() : ""
        guard r.offset == bytes.count else { throw DialogRecordError(reason: "\(bytes.count - r.offset) bytes left over") }
        self.init(client: client, backend: backend, sharingTag: sharingTag, startedAt: startedAt)
        self.version = version
        self.state = state
        self.answeredAt = answeredAt
        self.endsAt = endsAt
        self.reinvite = reinvite
        self.lateOffer = flags & 1 != 0
        self.backendAcknowledged = flags & 2 != 0
        self.mediaAnchored = flags & 4 != 0
        self.clientInviteVias = vias
        self.backendInviteURI = inviteURI
        self.backendInviteBranch = branch
        self.recoveries = UInt32(recoveries)
        self.variables = variables
        self.recoveringFrom = recoveringFrom
    }
}

private struct RecordWriter {
    var bytes: [UInt8] = []

    mutating func int(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    mutating func data(_ value: some Collection<UInt8>) {
        int(UInt64(value.count))
        bytes.append(contentsOf: value)
    }

    mutating func string(_ value: String) { data(value.utf8) }

    mutating func leg(_ leg: LegRecord) {
        string(leg.callID)
        string(leg.localTag)
        string(leg.remoteTag)
        int(UInt64(leg.localCSeq))
        int(UInt64(leg.remoteCSeq))
        int(UInt64(leg.inviteCSeq))
        data(leg.localURI)
        data(leg.remoteURI)
        data(leg.remoteTarget)
        int(UInt64(leg.routeSet.count))
        for route in leg.routeSet { data(route) }
        int(UInt64(TransportProtocol.allCases.firstIndex(of: leg.hop.transport)!))
        string(leg.hop.address.ipString)
        int(UInt64(leg.hop.address.port))
        string(leg.listenerTag)
        string(leg.contactUser)
        data(leg.lastSDPSent)
        data(leg.lastSDPReceived)
        int(UInt64(leg.sessionInterval))
        int(UInt64(leg.refresher.rawValue) | (leg.peerAllowsUpdate ? 0x10 : 0))
    }
}

private struct RecordReader {
    let bytes: [UInt8]
    var offset = 0

    mutating func byte() throws(DialogRecordError) -> UInt8 {
        guard offset < bytes.count else { throw DialogRecordError(reason: "truncated at byte \(offset)") }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func int() throws(DialogRecordError) -> UInt64 {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let b = try byte()
            guard shift < 64 else { throw DialogRecordError(reason: "integer too long at byte \(offset)") }
            value |= UInt64(b & 0x7F) << shift
            if b < 0x80 { return value }
            shift += 7
        }
    }

    mutating func u32() throws(DialogRecordError) -> UInt32 {
        let v = try int()
        guard v <= UInt64(UInt32.max) else { throw DialogRecordError(reason: "value \(v) out of range at byte \(offset)") }
        return UInt32(v)
    }

    mutating func data() throws(DialogRecordError) -> [UInt8] {
        let count = try int()
        guard count <= UInt64(DialogRecord.maxFieldBytes), count <= UInt64(bytes.count - offset) else {
            throw DialogRecordError(reason: "field of \(count) bytes at byte \(offset) runs past the end")
        }
        defer { offset += Int(count) }
        return Array(bytes[offset..<offset + Int(count)])
    }

    mutating func string() throws(DialogRecordError) -> String { String(decoding: try data(), as: UTF8.self) }

    mutating func leg() throws(DialogRecordError) -> LegRecord {
        let callID = try string(), localTag = try string(), remoteTag = try string()
        let localCSeq = try u32(), remoteCSeq = try u32(), inviteCSeq = try u32()
        let localURI = try data(), remoteURI = try data(), remoteTarget = try data()
        let routes = try int()
        guard routes <= 64 else { throw DialogRecordError(reason: "\(routes) routes") }
        var routeSet: [[UInt8]] = []
        for _ in 0..<routes { routeSet.append(try data()) }
        let transportIndex = Int(try int())
        guard transportIndex < TransportProtocol.allCases.count else { throw DialogRecordError(reason: "bad transport") }
        let ip = try string()
        let port = try int()
        guard port <= 65_535, let address = SocketAddress(ip: ip, port: Int(port)) else {
            throw DialogRecordError(reason: "bad address \(ip):\(port)")
        }
        let listenerTag = try string(), contactUser = try string()
        var leg = LegRecord(callID: callID, localTag: localTag, remoteTag: remoteTag, localCSeq: localCSeq, remoteCSeq: remoteCSeq,
                            inviteCSeq: inviteCSeq, localURI: localURI, remoteURI: remoteURI, remoteTarget: remoteTarget,
                            routeSet: routeSet, hop: Hop(TransportProtocol.allCases[transportIndex], address),
                            listenerTag: listenerTag, contactUser: contactUser)
        leg.lastSDPSent = try data()
        leg.lastSDPReceived = try data()
        leg.sessionInterval = try u32()
        let flags = try int()
        guard let refresher = SessionRefresher(rawValue: UInt8(flags & 0x0F)), flags & ~0x1F == 0 else {
            throw DialogRecordError(reason: "bad session flags \(flags)")
        }
        leg.refresher = refresher
        leg.peerAllowsUpdate = flags & 0x10 != 0
        return leg
    }
}
