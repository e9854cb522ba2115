import Cluster
import Dialog
import SIPParser
import Transport

/// The edge's workers as the cluster drives them: which sharing tags they act for, dialogs they
/// take over or let go. Each request is handed to the worker that owns the dialog (by our tag in
/// it), or to every worker for a whole tag. New calls are refused while the node may not act for
/// its own tag (a backup after a restart, or cut off from the majority).
final class ClusteredWorkers: ClusterHost, @unchecked Sendable {
    private let routing: CallRouting
    private let settings: ClusterSettings
    private let registrar: Registrar?

    init(routing: CallRouting, settings: ClusterSettings, registrar: Registrar?) {
        self.routing = routing
        self.settings = settings
        self.registrar = registrar
        // Until the cluster says this node holds its tag.
        for b in routing.b2buas { b.loop.execute { b.value.refusesNewCalls = Self.notActing(settings) } }
    }

    static func notActing(_ settings: ClusterSettings) -> String {
        "node \(settings.nodeID) does not act for its sharing tag \(settings.sharingTag)"
    }

    func startActing(for tag: String) {
        registrar?.keepAlive(tag: tag, true)
        let own = tag == settings.sharingTag
        for b in routing.b2buas {
            b.loop.execute {
                b.value.startActing(for: tag)
                if own { b.value.refusesNewCalls = nil }
            }
        }
    }

    func stopActing(for tag: String) {
        registrar?.keepAlive(tag: tag, false)
        let refusal = tag == settings.sharingTag ? Self.notActing(settings) : nil
        for b in routing.b2buas {
            b.loop.execute {
                b.value.stopActing(for: tag)
                if let refusal { b.value.refusesNewCalls = refusal }
            }
        }
    }

    func takeOver(_ record: DialogRecord, retag: String?, done: @escaping @Sendable (TakeOverOutcome) -> Void) {
        let b = owner(of: record)
        b.loop.execute { b.value.takeOver(record, retag: retag, done: done) }
    }

    func release(_ record: DialogRecord) {
        let b = owner(of: record)
        b.loop.execute { b.value.release(key: record.key) }
    }

    func registrationReplicated(user: String, bindings: [UInt8], tag: String) {
        registrar?.replace(user: user, bindings: Registrar.decoded(bindings), tag: tag)
    }

    /// The worker the caller's in-dialog requests reach (our tag on the client leg names it).
    private func owner(of record: DialogRecord) -> LoopBound<B2BUA> {
        let index = routing.owner(tag: ByteView(text: record.client.localTag), callID: ByteView(text: record.client.callID)) ?? 0
        return routing.b2buas[min(index, routing.b2buas.count - 1)]
    }
}
