import Glibc
import Synchronization
import Transport

/// Log lines a peer can make us write at will (refused connections, invalid messages, refused MI
/// requests), summarised so that an attacker cannot fill the disk: per kind of event and source
/// address, the first line of each interval is written and the rest are only counted; the count
/// is written once the interval is over. Bounded: past `capacity` sources, the newcomers share one
/// entry per kind.
final class LogSummary: Sendable {
    private struct Key: Hashable {
        let kind: String
        /// nil: every source past the capacity.
        let source: SocketAddress?
    }

    private struct Entry {
        var since: UInt64
        var suppressed: Int
    }

    private let entries = Mutex<[Key: Entry]>([:])
    let intervalMilliseconds: UInt64
    let capacity: Int
    /// Where the counts go (one line per kind and source per interval).
    private let write: @Sendable (String) -> Void

    /// `intervalMilliseconds` 0: every line is written.
    init(intervalMilliseconds: UInt64, capacity: Int = 4_096, write: @escaping @Sendable (String) -> Void) {
        self.intervalMilliseconds = intervalMilliseconds
        self.capacity = capacity
        self.write = write
    }

    static func now() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) * 1_000 + UInt64(t.tv_nsec) / 1_000_000
    }

    /// Whether a line of `kind` from `source` is to be written now (else it was counted).
    func admit(_ kind: String, from source: SocketAddress, now: UInt64 = LogSummary.now()) -> Bool {
        guard intervalMilliseconds > 0 else { return true }
        var summary: String?
        let admitted = entries.withLock { table -> Bool in
            var key = Key(kind: kind, source: source.with(port: 0))
            if table[key] == nil && table.count >= capacity { key = Key(kind: kind, source: nil) }
            guard var entry = table[key] else {
                table[key] = Entry(since: now, suppressed: 0)
                return true
            }
            if now &- entry.since < intervalMilliseconds {
                entry.suppressed += 1
                table[key] = entry
                return false
            }
            summary = Self.summary(key, entry)
            table[key] = Entry(since: now, suppressed: 0)
            return true
        }
        if let summary { write(summary) }
        return admitted
    }

    /// Writes the counts of intervals that are over and forgets those entries (called every
    /// interval, so that the last burst of an attack is counted too).
    func flush(now: UInt64 = LogSummary.now()) {
        let lines = entries.withLock { table -> [String] in
            var lines: [String] = []
            for (key, entry) in table where now &- entry.since >= intervalMilliseconds {
                if let line = Self.summary(key, entry) { lines.append(line) }
                table[key] = nil
            }
            return lines
        }
        for line in lines { write(line) }
    }

    private static func summary(_ key: Key, _ entry: Entry) -> String? {
        guard entry.suppressed > 0 else { return nil }
        let from = key.source.map { "from \($0.ipString)" } ?? "from other sources"
        return "\(entry.suppressed) more \"\(key.kind)\" lines \(from) were not written (one per interval)"
    }
}
