import SIPParser
import Transport

/// Where dialog records go when they change: persistence, replication (DESIGN.md: Dialog declares
/// the protocol, the layers above implement it). Called on the owning loop; must not block. Every
/// new version comes here, early and confirmed alike; the last has state `.ended`.
public protocol DialogStateSink: AnyObject {
    func dialogChanged(_ record: DialogRecord)
    /// Whether early dialogs interest it (replication: yes; a store for restarts: no). Asked
    /// before the record is handed over, so that a sink that would drop it costs nothing.
    var wantsEarlyDialogs: Bool { get }
}

extension DialogStateSink {
    public var wantsEarlyDialogs: Bool { true }
}

/// A call through the edge: its dialog record (both legs), which only `DialogTable` writes, and
/// what lives only while this node carries it: transactions in flight, timers, failover progress.
final class Call {
    let number: UInt32
    /// The dialog's state: read anywhere, written only through `DialogTable.update` (the gate).
    fileprivate(set) var record: DialogRecord
    /// A passive copy (replicated, or kept for a sharing tag this node does not hold): no timers,
    /// nothing sent, until `B2BUA.activate`.
    fileprivate(set) var active: Bool
    /// Changed in this loop iteration: its new version goes to the sinks at `DialogTable.flush`.
    fileprivate var changed = false
    /// The client's INVITE server transaction, while responses still flow back to it.
    var clientInvite: ServerTxRecord?
    /// The 2xx sent to the client, retransmitted until its ACK comes (RFC 3261 §13.3.1.4).
    var answer: [UInt8]?
    var answerInterval: UInt64 = 0
    var answerTimer: TimerID?
    var answerDeadline: UInt64 = 0
    /// Serial failover: the destinations tried (picker indices), the current one, and whether a
    /// backend has committed to the call (a provisional with a To tag, or a 2xx).
    var tried: [Int] = []
    var destination: Int?
    var committed = false
    /// The session interval asked of the current backend (raised by a 422's Min-SE).
    var askedSessionExpires: UInt32 = 0
    /// The client cancelled: a late 2xx from the backend is ACKed and then ended with a BYE.
    var cancelled = false
    /// The ACK for the last relayed re-INVITE's 2xx, resent if that 2xx is retransmitted.
    var reinviteACK: [UInt8]?
    /// Ends the call when its maximum lifetime is up.
    var lifetimeTimer: TimerID?
    /// RFC 4028, per leg: when to refresh (we refresh) or give up (the peer refreshes).
    var sessionTimers: (client: TimerID?, backend: TimerID?) = (nil, nil)
    var pingTimer: TimerID?
    /// The pings, session refreshes and other requests of the edge's own this call has in flight
    /// (ended with the call).
    var ownRequests: [ClientTxRecord] = []
    /// Re-homing under way (this node took the call over), leg by leg.
    var rehoming: Rehoming?
    /// A new backend leg under way (the call's backend died).
    var recovery: Recovery?
    /// While the relay works on one of its session descriptions: what came for it meanwhile.
    var mediaWaiting: [() -> Void]?
    /// The edge's own re-INVITEs in flight (re-homing, `dlg_send_sequential`), and the ACK of the
    /// last one answered on each leg (sent again if its 2xx is).
    var edgeReinvites = 0
    var edgeACKs: (client: [UInt8]?, backend: [UInt8]?) = (nil, nil)
    /// The Request-URI user, to address each backend.
    var user = ""
    /// What the picker is told of this call.
    var request: CallRequest?
    /// The source counted by the call admission, to release when the call ends.
    var admitted: SocketAddress?

    fileprivate init(number: UInt32, record: DialogRecord, active: Bool) {
        self.number = number
        self.record = record
        self.active = active
    }

    subscript(side: DialogRecord.Side) -> LegRecord { _read { yield record[side] } }

    /// The leg whose Call-ID `id` is (read in place: no copy).
    func side(ofCallID id: ByteView) -> DialogRecord.Side? {
        if id.equals(record.backend.callID) { return .backend }
        if id.equals(record.client.callID) { return .client }
        return nil
    }

    func side(ofCallID id: String) -> DialogRecord.Side? {
        if id == record.backend.callID { return .backend }
        if id == record.client.callID { return .client }
        return nil
    }

    var isConfirmed: Bool { record.state == .confirmed }
    var isEnded: Bool { record.state == .ended }
}

/// The dialogs of one worker, and the one gate their state passes: `update` is the only way to
/// change a call's record. The changes one loop iteration makes to a call are one new version:
/// `flush` (at the iteration's end) bumps it and hands the record to every sink (the database now,
/// the cluster next), so a sink gets one record per changed call per iteration, not one per field.
/// Calls are found by either leg's Call-ID and by number (timers).
final class DialogTable {
    private(set) var byCallID: [String: Call] = [:]
    /// By our own tag on either leg: short identifiers we made (no allocation to look one up),
    /// which every in-dialog request and every response names.
    private(set) var byTag: [String: Call] = [:]
    private(set) var byNumber: [UInt32: Call] = [:]
    private(set) var sinks: [any DialogStateSink] = []
    private var nextNumber: UInt32 = 1
    /// Calls changed since the last `flush`, in the order of their first change (and the array
    /// `flush` works through, swapped with it so that neither is reallocated).
    private var changed: [Call] = []
    private var flushing: [Call] = []
    /// Records whose key a call left (its backend leg was rebuilt: a new Call-ID), as ended
    /// versions: the next `flush` tells the sinks, so no copy stays under the old key.
    private var retired: [DialogRecord] = []
    /// Told when the first change after a `flush` is made (to have `flush` run at the iteration's end).
    var firstChange: () -> Void = {}

    var count: Int { byNumber.count }

    func add(sink: any DialogStateSink) { sinks.append(sink) }

    subscript(callID: String) -> Call? { byCallID[callID] }

    /// The call and leg a message belongs to, by our tag in it (To of a request we receive, From
    /// of a response) and its Call-ID, both read in place.
    func call(ourTag: ByteView?, callID: ByteView?) -> (call: Call, side: DialogRecord.Side)? {
        guard let ourTag, let callID, let call = byTag[ourTag.string], let side = call.side(ofCallID: callID),
              ourTag.equals(call.record[side].localTag) else { return nil }
        return (call, side)
    }

    /// A new call, from its first record (told to the sinks at the next `flush`).
    func insert(_ record: DialogRecord) -> Call {
        var record = record
        record.version = 0
        let call = Call(number: takeNumber(), record: record, active: true)
        index(call)
        markChanged(call)
        return call
    }

    /// A record that came from elsewhere (the database, another node), as it is: its version is
    /// kept and it is not told back to the sinks it came from. `active`: whether this node carries it.
    func adopt(_ record: DialogRecord, active: Bool) -> Call {
        let call = Call(number: takeNumber(), record: record, active: active)
        index(call)
        return call
    }

    /// A newer version of an adopted record, for a passive copy (a replica catching up).
    func replace(_ call: Call, with record: DialogRecord) {
        guard record.version > call.record.version else { return }
        unindex(call)
        call.record = record
        index(call)
    }

    func activate(_ call: Call) { call.active = true }

    /// The call stays known (listed, found) but this node no longer carries it.
    func deactivate(_ call: Call) { call.active = false }

    /// Another node carries the call now: it leaves this table without a version of ours (the
    /// sinks already have the newer one from that node).
    func forget(_ call: Call) { unindex(call) }

    /// The gate: `change` edits the call's record, whose new version goes to every sink at the next
    /// `flush`. `newIdentifiers`: the change gives a leg a new Call-ID or tag (a new backend
    /// attempt), so the call moves in the indexes; any other change must leave them as they are.
    func update(_ call: Call, newIdentifiers: Bool = false, _ change: (inout DialogRecord) -> Void) {
        if newIdentifiers { unindex(call) }
        let before = newIdentifiers && call.record.state == .confirmed ? call.record : nil
        change(&call.record)
        if newIdentifiers { index(call) }
        if var gone = before, gone.key != call.record.key, !retired.contains(where: { $0.key == gone.key }) {
            gone.state = .ended
            retired.append(gone)
        }
        assert(newIdentifiers || call.isEnded || byTag[call.record.client.localTag] === call, "identifiers changed outside a new-identifiers update")
        markChanged(call)
    }

    /// Each call changed since the last flush gets its next version, which every sink is told.
    func flush() {
        guard !changed.isEmpty else { return }
        for var gone in retired where byCallID[gone.key] == nil {
            gone.version &+= 1
            for sink in sinks { sink.dialogChanged(gone) }
        }
        retired.removeAll()
        swap(&changed, &flushing)
        for call in flushing {
            call.changed = false
            call.record.version &+= 1
            let early = call.record.state == .early
            for sink in sinks where !early || sink.wantsEarlyDialogs { sink.dialogChanged(call.record) }
        }
        flushing.removeAll(keepingCapacity: true)
    }

    private func markChanged(_ call: Call) {
        guard !call.changed else { return }
        call.changed = true
        if changed.isEmpty { firstChange() }
        changed.append(call)
    }

    /// The call is over: its last version (state `.ended`) goes to the sinks, and it leaves the table.
    func end(_ call: Call) {
        guard !call.isEnded else { return }
        unindex(call)
        call.record.state = .ended
        markChanged(call)
    }

    private func takeNumber() -> UInt32 {
        defer { nextNumber &+= 1 }
        return nextNumber
    }

    private func index(_ call: Call) {
        byNumber[call.number] = call
        index(call, callID: call.record.client.callID, tag: call.record.client.localTag)
        index(call, callID: call.record.backend.callID, tag: call.record.backend.localTag)
    }

    private func index(_ call: Call, callID: String, tag: String) {
        if !callID.isEmpty { byCallID[callID] = call }
        if !tag.isEmpty { byTag[tag] = call }
    }

    private func unindex(_ call: Call) {
        byNumber[call.number] = nil
        forget(call, callID: call.record.client.callID, tag: call.record.client.localTag)
        forget(call, callID: call.record.backend.callID, tag: call.record.backend.localTag)
    }

    private func forget(_ call: Call, callID: String, tag: String) {
        if byCallID[callID] === call { byCallID[callID] = nil }
        if byTag[tag] === call { byTag[tag] = nil }
    }
}
