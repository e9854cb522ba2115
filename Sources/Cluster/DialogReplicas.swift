import Dialog

/// Every dialog of the cluster as this node knows it (its own, from its workers' gate, and its
/// peers', from their streams), at the newest version seen. Replicas are data: nothing here arms a
/// timer or sends a message. A record is applied only if its version is newer; an ended dialog
/// leaves a tombstone for a while, so that an older copy arriving late (a snapshot taken before
/// the end) cannot bring it back.
final class DialogReplicas {
    /// How long an ended dialog's tombstone stays (ms), and how many at most.
    static let tombstoneMilliseconds: UInt64 = 120_000
    static let maxTombstones = 1_000_000

    /// By the client leg's local tag: ours, made when the call came in, kept for the call's life
    /// (the backend leg's Call-ID changes when set-up fails over to another backend).
    private(set) var records: [String: DialogRecord] = [:]
    private var tombstones: [String: UInt64] = [:]
    private var tombstoneOrder: [(key: String, at: UInt64)] = []
    private var tombstoneHead = 0

    static func key(of record: DialogRecord) -> String { record.client.localTag }

    var count: Int { records.count }

    /// Applies `record` if it is newer than what is known; true when it was.
    @discardableResult
    func apply(_ record: DialogRecord, now: UInt64) -> Bool {
        let key = Self.key(of: record)
        if let known = records[key], known.version >= record.version { return false }
        if let ended = tombstones[key], ended >= record.version { return false }
        if record.state == .ended {
            records[key] = nil
            tombstones[key] = record.version
            tombstoneOrder.append((key, now))
            expireTombstones(now: now)
        } else {
            records[key] = record
        }
        return true
    }

    private func expireTombstones(now: UInt64) {
        while tombstoneHead < tombstoneOrder.count,
              now &- tombstoneOrder[tombstoneHead].at > Self.tombstoneMilliseconds || tombstoneOrder.count - tombstoneHead > Self.maxTombstones {
            let old = tombstoneOrder[tombstoneHead]
            tombstoneHead += 1
            // A dialog ends once (its key is never reused), so its one entry removes it.
            tombstones[old.key] = nil
        }
        if tombstoneHead > 4_096 && tombstoneHead * 2 > tombstoneOrder.count {
            tombstoneOrder.removeFirst(tombstoneHead)
            tombstoneHead = 0
        }
    }

    /// Every live record (a snapshot for a peer).
    var all: [DialogRecord] { Array(records.values) }

    /// The live records with sharing tag `tag`, oldest first.
    func records(tagged tag: String) -> [DialogRecord] {
        records.values.filter { $0.sharingTag == tag }.sorted { ($0.startedAt, $0.key) < ($1.startedAt, $1.key) }
    }
}
