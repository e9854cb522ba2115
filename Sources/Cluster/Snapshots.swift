import Dialog

// Snapshots (DESIGN.md, Cluster, Sync): a starting node pulls one from a synced peer, a node whose
// copy of a peer's stream cannot be repaired piecemeal pulls one from that peer, and every node
// serves them, paced.
extension ClusterNode {
    func pullSnapshot(from peer: Int, repair: Bool) {
        // One pull at a time: a repair asked for meanwhile is asked again (its gap stays missing).
        guard sync == nil else { return }
        let pull = SnapshotPull(peer: peer, id: UInt32.random(in: 1...UInt32.max), repair: repair, started: loop.now)
        sync = pull
        log("cluster: node \(settings.nodeID) pulls a snapshot from node \(peer)\(repair ? " (to repair its copy of node \(peer)'s stream)" : "")")
        send(.snapshotRequest(id: pull.id, fromChunk: 0), to: peer)
    }

    func finishSync(_ pull: SnapshotPull) {
        sync = nil
        guard !pull.repair else {
            incoming[pull.peer] = nil
            log("cluster: copy of node \(pull.peer)'s dialogs repaired")
            return
        }
        // Each stream continues from where the snapshot had it, then what arrived meanwhile.
        for position in pull.positions where position.node != settings.nodeID {
            incoming[position.node] = IncomingStream(incarnation: position.incarnation, highest: position.sequence)
        }
        for (node, heard) in pull.heardDuring {
            var stream = incoming[node].flatMap { $0.incarnation == heard.incarnation ? $0 : nil } ?? IncomingStream(incarnation: heard.incarnation, highest: 0)
            for s in heard.sequences.sorted() { _ = stream.received(s) }
            incoming[node] = stream
        }
        synced = true
        log("cluster: synced from node \(pull.peer): \(replicas.count) dialogs in \(loop.now &- pull.started) ms")
        decideTags(now: loop.now)
    }

    func serveSnapshot(to peer: Int, id: UInt32, fromChunk: Int, now: UInt64) {
        if let i = serving.firstIndex(where: { $0.peer == peer && $0.id == id }) {
            serving[i].restart(at: fromChunk)
            serving[i].lastAsked = now
        } else {
            guard serving.count < 4 else { return }   // the asker asks again
            // Where each stream stands in this copy: this node's own, and each peer's up to its first gap.
            var positions = [StreamPosition(node: settings.nodeID, incarnation: incarnation, sequence: outgoing.lastSequence)]
            for (node, stream) in incoming {
                let contiguous = stream.missing.min().map { $0 - 1 } ?? stream.highest
                positions.append(StreamPosition(node: node, incarnation: stream.incarnation, sequence: contiguous))
            }
            let users = registrations.values.filter { !$0.bindings.isEmpty }
            serving.append(SnapshotServe(peer: peer, id: id, records: replicas.all, registrations: users, positions: positions, next: fromChunk, lastAsked: now))
            statistics.snapshotsServed += 1
        }
        paceSnapshots()
    }

    /// Chunks go out 16 per millisecond at most, so that the asker's socket buffer keeps up.
    func paceSnapshots() {
        guard !snapshotTimer else { return }
        var more = false
        for i in serving.indices {
            var sent = 0
            while !serving[i].done && sent < 16 {
                let chunk = serving[i].take()
                let s = serving[i]
                send(.snapshotChunk(id: s.id, index: UInt32(chunk.index), last: chunk.last, positions: s.positions, entries: chunk.entries), to: s.peer)
                sent += 1
            }
            more = more || !serving[i].done
        }
        guard more else { return }
        snapshotTimer = true
        _ = loop.schedule(afterMilliseconds: 1) { [self] in
            snapshotTimer = false
            paceSnapshots()
        }
    }
}

/// A snapshot this node is pulling from a peer: which chunks came, where the streams stood in it,
/// and what each peer's live stream brought meanwhile (to continue from there).
struct SnapshotPull {
    let peer: Int
    let id: UInt32
    /// Pulled to repair a stream (after a gap too large, or `gone`), not to start.
    let repair: Bool
    let started: UInt64
    var lastProgress: UInt64
    private(set) var chunks: Set<UInt32> = []
    private(set) var lastIndex: UInt32?
    private(set) var positions: [StreamPosition] = []
    private(set) var heardDuring: [Int: (incarnation: UInt64, sequences: Set<UInt64>)] = [:]

    init(peer: Int, id: UInt32, repair: Bool, started: UInt64) {
        self.peer = peer
        self.id = id
        self.repair = repair
        self.started = started
        lastProgress = started
    }

    mutating func received(chunk: UInt32, last: Bool, positions: [StreamPosition], now: UInt64) {
        chunks.insert(chunk)
        if last { lastIndex = chunk }
        self.positions = positions
        lastProgress = now
    }

    mutating func heard(_ sequence: UInt64, from node: Int, incarnation: UInt64) {
        if heardDuring[node]?.incarnation != incarnation { heardDuring[node] = (incarnation, []) }
        if heardDuring[node]!.sequences.count < IncomingStream.maxMissing { heardDuring[node]!.sequences.insert(sequence) }
    }

    var firstMissing: UInt32 {
        var i: UInt32 = 0
        while chunks.contains(i) { i += 1 }
        return i
    }

    var complete: Bool {
        guard let lastIndex else { return false }
        return chunks.count == Int(lastIndex) + 1
    }
}

/// A snapshot being sent to a peer: the records as they were when it was asked for, sent in
/// chunks that fit a datagram (a chunk's end is found as it is first encoded, and kept, so that a
/// chunk asked for again is the same chunk).
struct SnapshotServe {
    let peer: Int
    let id: UInt32
    let records: [DialogRecord]
    /// Registrations go in the first chunks, before the dialogs (one list: registrations, then records).
    let registrations: [RegistrationRecord]
    let positions: [StreamPosition]
    /// Where each chunk found so far starts (the last entry: where the next one starts).
    private(set) var starts: [Int] = [0]
    var next: Int
    var lastAsked: UInt64

    init(peer: Int, id: UInt32, records: [DialogRecord], registrations: [RegistrationRecord], positions: [StreamPosition], next: Int, lastAsked: UInt64) {
        self.peer = peer
        self.id = id
        self.records = records
        self.registrations = registrations
        self.positions = positions
        self.next = 0
        self.lastAsked = lastAsked
        restart(at: next)
    }

    private var count: Int { registrations.count + records.count }

    var done: Bool { starts.count > next && starts[next] >= count && next > 0 }

    /// Send from chunk `chunk` again (not past the chunks found so far).
    mutating func restart(at chunk: Int) { next = min(chunk, starts.count - 1) }

    /// The next chunk: its index, entries, and whether it is the last.
    mutating func take() -> (index: Int, entries: [ReplicatedEntry], last: Bool) {
        var entries: [ReplicatedEntry] = []
        var size = 0
        var i = starts[next]
        while i < count {
            let entry = i < registrations.count ? ReplicatedEntry.registration(registrations[i].encoded())
                : ReplicatedEntry.dialog(records[i - registrations.count].encoded())
            if size + entry.wireSize > ClusterWire.maxDatagram - 1_024 && !entries.isEmpty { break }
            entries.append(entry)
            size += entry.wireSize
            i += 1
        }
        let index = next
        if starts.count == index + 1 { starts.append(i) }
        next += 1
        return (index, entries, i >= count)
    }
}
