import CSQLite
import Dialog
import Glibc
import Synchronization

/// Why the dialog database could not be opened or used.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    public let description: String
}

/// Dialog records on disk: one SQLite file in WAL mode, written by the store's own thread in
/// batches (one transaction per batch), so the event loops never wait on the disk. A lone node
/// that restarts reloads its dialogs from it (DESIGN.md, Persistence).
///
/// Loops hand records over through `pending`, where a dialog's newer version replaces its older
/// one: what waits is bounded by the number of live dialogs, whatever the rate of changes.
public final class DialogStore: DialogStateSink, Sendable {
    public let path: String
    /// The descriptor of `<path>.lock`, held with flock(2) until the store stops (-1 after).
    private let lock: Atomic<Int32>
    /// Key -> the latest record, or nil for a deletion. Records are encoded by the writer, and only
    /// those it writes: a call that ends before the next batch is never encoded.
    private let pending = Mutex<[String: DialogRecord?]>([:])
    /// User -> the registrar's bindings for it (empty: the row goes).
    private let pendingRegistrations = Mutex<[String: [Binding]]>([:])
    private let running = Atomic<Bool>(false)
    private let finished = Atomic<Bool>(false)
    /// The connection is used by the writer thread only, once it runs (and before, by `loadAll`).
    private nonisolated(unsafe) let db: OpaquePointer
    /// Keys that have a row, known to the writer (and `loadAll` before it): a dialog that ended
    /// before it was ever written costs no statement at all (most short calls).
    private nonisolated(unsafe) var stored: Set<String> = []
    /// Batches and rows written so far (tests, statistics).
    public let batchesWritten = Atomic<Int>(0)
    public let rowsWritten = Atomic<Int>(0)
    /// How long the writer sleeps between batches: what changes meanwhile goes in one transaction,
    /// and a call that starts and ends within it is never written (like OpenSIPS's delayed
    /// dialog writes, whose default period is a minute). A node that dies loses at most this much
    /// of the latest changes.
    private let idleMicroseconds: UInt32
    /// The writer's statements, prepared once (by their SQL text).
    private nonisolated(unsafe) var statements: [String: OpaquePointer] = [:]
    /// Where write failures are reported (the log).
    private let log: @Sendable (String) -> Void

    public init(path: String, idleMilliseconds: UInt32 = UInt32(EdgeConfig.defaultDatabaseWriteIntervalMilliseconds), log: @escaping @Sendable (String) -> Void = { _ in }) throws(StoreError) {
        self.path = path
        self.log = log
        self.idleMicroseconds = idleMilliseconds * 1_000
        if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            let directory = String(path[..<slash])
            if access(directory, F_OK) != 0 && mkdir(directory, 0o755) != 0 {
                throw StoreError(description: "\(path): cannot create \(directory): \(String(cString: strerror(errno)))")
            }
        }
        let lockDescriptor = try Self.lockExclusively(path)
        lock = Atomic(lockDescriptor)
        var handle: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        guard sqlite3_open_v2(path, &handle, flags, nil) == SQLITE_OK, let handle else {
            let reason = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close(handle)
            close(lockDescriptor)
            throw StoreError(description: "\(path): \(reason)")
        }
        db = handle
        for statement in ["PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL",
                          "CREATE TABLE IF NOT EXISTS dialogs (key TEXT PRIMARY KEY, record BLOB NOT NULL)",
                          "CREATE TABLE IF NOT EXISTS registrations (user TEXT PRIMARY KEY, bindings TEXT NOT NULL)"] {
            if let error = Self.exec(handle, statement) {
                sqlite3_close(handle)
                close(lockDescriptor)
                throw StoreError(description: "\(path): \(statement): \(error)")
            }
        }
    }

    deinit {
        for statement in statements.values { sqlite3_finalize(statement) }
        sqlite3_close(db)
        releaseLock()
    }

    /// Lets another process open the database (the store writes no more).
    private func releaseLock() {
        let fd = lock.exchange(-1, ordering: .acquiringAndReleasing)
        if fd >= 0 { close(fd) }
    }

    /// One process at a time: two edges restoring and writing the same dialogs would each end
    /// calls the other carries. `<path>.lock` is held with flock(2) while the store is open (the
    /// kernel lets go of it when the process ends, however it ends) and holds the holder's pid.
    private static func lockExclusively(_ path: String) throws(StoreError) -> Int32 {
        let lockPath = path + ".lock"
        let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw StoreError(description: "\(path): cannot open its lock file \(lockPath): \(String(cString: strerror(errno)))")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            var buffer = [UInt8](repeating: 0, count: 32)
            let n = pread(fd, &buffer, buffer.count, 0)
            let holder = String(decoding: buffer.prefix(max(n, 0)).filter { $0 >= 0x30 && $0 <= 0x39 }, as: UTF8.self)
            close(fd)
            throw StoreError(description: "\(path): in use by another process\(holder.isEmpty ? "" : " (pid \(holder))"); each sipedge needs a database of its own")
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pwrite(fd, pid, pid.count, 0)
        return fd
    }

    /// Every stored record that decodes (a row that does not is reported through `skipped`).
    /// Call before `start`.
    public func loadAll(skipped: (String, DialogRecordError) -> Void = { _, _ in }) -> [DialogRecord] {
        var statement: OpaquePointer?
        guard sqlite3_prepare_v2(db, "SELECT key, record FROM dialogs", -1, &statement, nil) == SQLITE_OK else { return [] }
        defer { sqlite3_finalize(statement) }
        var out: [DialogRecord] = []
        while sqlite3_step(statement) == SQLITE_ROW {
            let key = sqlite3_column_text(statement, 0).map { String(cString: $0) } ?? ""
            let count = Int(sqlite3_column_bytes(statement, 1))
            let bytes: [UInt8] = sqlite3_column_blob(statement, 1).map {
                Array(UnsafeRawBufferPointer(start: $0, count: count))
            } ?? []
            stored.insert(key)
            do throws(DialogRecordError) {
                out.append(try DialogRecord(decoding: bytes))
            } catch {
                skipped(key, error)
            }
        }
        return out
    }

    /// Every stored registration, by user. Call before `start`.
    func loadRegistrations() -> [String: [Binding]] {
        var statement: OpaquePointer?
        guard sqlite3_prepare_v2(db, "SELECT user, bindings FROM registrations", -1, &statement, nil) == SQLITE_OK else { return [:] }
        defer { sqlite3_finalize(statement) }
        var out: [String: [Binding]] = [:]
        while sqlite3_step(statement) == SQLITE_ROW {
            guard let user = sqlite3_column_text(statement, 0).map({ String(cString: $0) }),
                  let text = sqlite3_column_text(statement, 1).map({ String(cString: $0) }) else { continue }
            out[user] = Registrar.decoded(Array(text.utf8))
        }
        return out
    }

    /// The registrar's bindings of `user` changed (none left: the row goes).
    func registrationChanged(user: String, bindings: [Binding]) {
        pendingRegistrations.withLock { $0[user] = bindings }
    }

    /// Starts the writer thread.
    public func start() throws(StoreError) {
        guard !running.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let box = Unmanaged.passRetained(self)
        var thread = pthread_t()
        let r = pthread_create(&thread, nil, { raw in
            let store = Unmanaged<DialogStore>.fromOpaque(raw!).takeRetainedValue()
            store.writeUntilStopped()
            return nil
        }, box.toOpaque())
        if r != 0 {
            box.release()
            running.store(false, ordering: .releasing)
            throw StoreError(description: "cannot start the database thread: \(String(cString: strerror(r)))")
        }
        pthread_detach(thread)
    }

    /// Writes what is pending, stops the writer and waits for it (a clean shutdown loses nothing).
    /// The database is another process's to open afterwards.
    public func stop() {
        defer { releaseLock() }
        guard running.exchange(false, ordering: .acquiringAndReleasing) else { return }
        while !finished.load(ordering: .acquiring) { usleep(1_000) }
    }

    /// A restart cannot resume a call set-up: early dialogs are not kept.
    public var wantsEarlyDialogs: Bool { false }

    /// Confirmed dialogs are kept; an early one is not, and an ended one that was answered is deleted.
    public func dialogChanged(_ record: DialogRecord) {
        switch record.state {
        case .early: return
        case .confirmed: pending.withLock { $0[record.key] = .some(record) }
        case .ended: if record.answeredAt > 0 { pending.withLock { $0[record.key] = .some(nil) } }
        }
    }

    private func writeUntilStopped() {
        while running.load(ordering: .acquiring) {
            writeBatch()
            // In slices of at most 100 ms, so that `stop` does not wait out a long interval.
            var left = idleMicroseconds
            while left > 0 && running.load(ordering: .acquiring) {
                let slice = min(left, 100_000)
                usleep(slice)
                left -= slice
            }
        }
        _ = writeBatch()
        finished.store(true, ordering: .releasing)
    }

    /// Writes everything pending in one transaction; false if there was nothing.
    @discardableResult
    func writeBatch() -> Bool {
        let batch = pending.withLock { p -> [String: DialogRecord?] in
            defer { p.removeAll(keepingCapacity: true) }
            return p
        }
        let registrations = pendingRegistrations.withLock { p -> [String: [Binding]] in
            defer { p.removeAll(keepingCapacity: true) }
            return p
        }
        if !registrations.isEmpty { writeRegistrations(registrations) }
        guard !batch.isEmpty else { return !registrations.isEmpty }
        // Only what changes the file: a dialog that ended before its first write needs nothing.
        var work: [(String, [UInt8]?)] = []
        for (key, value) in batch {
            if let record = value {
                stored.insert(key)
                work.append((key, record.encoded()))
            } else if stored.remove(key) != nil {
                work.append((key, nil))
            }
        }
        guard !work.isEmpty else { return true }
        write(work, upsert: "INSERT OR REPLACE INTO dialogs (key, record) VALUES (?1, ?2)",
              delete: "DELETE FROM dialogs WHERE key = ?1", asText: false)
        batchesWritten.add(1, ordering: .relaxed)
        return true
    }

    /// The registrations' rows: the bindings as lines of text (readable with the sqlite3 shell).
    private func writeRegistrations(_ batch: [String: [Binding]]) {
        let rows = batch.map { user, bindings -> (String, [UInt8]?) in
            (user, bindings.isEmpty ? nil : Registrar.encoded(bindings))
        }
        write(rows, upsert: "INSERT OR REPLACE INTO registrations (user, bindings) VALUES (?1, ?2)",
              delete: "DELETE FROM registrations WHERE user = ?1", asText: true)
    }

    /// One transaction: each row upserted (a value) or deleted (nil), by its key.
    private func write(_ rows: [(String, [UInt8]?)], upsert upsertSQL: String, delete deleteSQL: String, asText: Bool) {
        guard !rows.isEmpty, let upsert = prepared(upsertSQL), let delete = prepared(deleteSQL),
              let begin = prepared("BEGIN"), let commit = prepared("COMMIT") else { return }
        sqlite3_reset(begin)
        if sqlite3_step(begin) != SQLITE_DONE { log("database \(path): BEGIN: \(String(cString: sqlite3_errmsg(db)))") }
        for (key, value) in rows {
            let statement = value == nil ? delete : upsert
            sqlite3_reset(statement)
            _ = sipedge_sqlite_bind_text(statement, 1, key, Int32(key.utf8.count))
            if let bytes = value {
                _ = bytes.withUnsafeBytes { raw in
                    asText ? sipedge_sqlite_bind_text(statement, 2, raw.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(raw.count))
                           : sipedge_sqlite_bind_blob(statement, 2, raw.baseAddress, Int32(raw.count))
                }
            }
            if sqlite3_step(statement) != SQLITE_DONE {
                log("database \(path): \(String(cString: sqlite3_errmsg(db)))")
            }
        }
        sqlite3_reset(commit)
        if sqlite3_step(commit) != SQLITE_DONE {
            log("database \(path): COMMIT: \(String(cString: sqlite3_errmsg(db))); the batch is rolled back")
            _ = Self.exec(db, "ROLLBACK")   // so that the next batch can begin
            return
        }
        rowsWritten.add(rows.count, ordering: .relaxed)
    }

    /// The statement for `sql`, prepared on first use and kept.
    private func prepared(_ sql: String) -> OpaquePointer? {
        if let statement = statements[sql] { return statement }
        var statement: OpaquePointer?
        guard sqlite3_prepare_v2(db, sql, -1, &statement, nil) == SQLITE_OK, let statement else {
            log("database \(path): \(sql): \(String(cString: sqlite3_errmsg(db)))")
            return nil
        }
        statements[sql] = statement
        return statement
    }

    private static func exec(_ db: OpaquePointer, _ sql: String) -> String? {
        var message: UnsafeMutablePointer<CChar>?
        guard sqlite3_exec(db, sql, nil, nil, &message) != SQLITE_OK else { return nil }
        defer { sqlite3_free(message) }
        return message.map { String(cString: $0) } ?? "error"
    }
}
