import Dialog
import Glibc
import Proxy
import Testing
import Transport

@Suite struct DialogStoreTests {
    static func record(_ n: Int) -> DialogRecord {
        let leg = { (id: String) in
            LegRecord(callID: id, localTag: "s0xt\(n)", localCSeq: 1, localURI: Array("<sip:a@127.0.0.1>".utf8),
                      remoteURI: Array("<sip:b@127.0.0.1>".utf8), remoteTarget: Array("sip:b@127.0.0.1:5080".utf8),
                      hop: Hop(.udp, SocketAddress(ip: "127.0.0.1", port: 5080)!), listenerTag: "public")
        }
        var r = DialogRecord(client: leg("client-\(n)"), backend: leg("s0xbackend\(n)"), startedAt: 1)
        r.state = .confirmed
        r.answeredAt = 2
        return r
    }

    /// The last version of an answered dialog, as the dialog gate emits it when the call ends.
    static func ended(_ record: DialogRecord) -> DialogRecord {
        var r = record
        r.state = .ended
        r.version += 1
        return r
    }

    @Test func dialogs_written_by_the_store_thread_are_there_after_reopening() throws {
        let path = "/tmp/sipedge-store-\(getpid())-\(UInt32.random(in: 0...UInt32.max))/dialogs.db"
        defer {
            for suffix in ["", "-wal", "-shm", ".lock"] { unlink(path + suffix) }
            rmdir(String(path.dropLast("/dialogs.db".count)))
        }
        do {
            let store = try DialogStore(path: path)
            try store.start()
            for n in 0..<1_000 { store.dialogChanged(Self.record(n)) }
            var newer = Self.record(7)
            newer.version = 9
            newer.client.localCSeq = 77
            store.dialogChanged(newer)          // replaces version 1 of the same dialog
            for n in 500..<1_000 { store.dialogChanged(Self.ended(Self.record(n))) }
            store.stop()
            #expect(store.batchesWritten.load(ordering: .relaxed) >= 1)
        }
        let reopened = try DialogStore(path: path)
        let records = reopened.loadAll()
        #expect(records.count == 500)
        #expect(Set(records.map(\.key)) == Set((0..<500).map { "s0xbackend\($0)" }))
        #expect(records.first { $0.key == "s0xbackend7" }?.client.localCSeq == 77)
    }

    @Test func a_dialog_that_ends_within_the_write_interval_is_never_written_and_stop_does_not_wait_the_interval_out() throws {
        let path = "/tmp/sipedge-store-\(getpid())-\(UInt32.random(in: 0...UInt32.max))/dialogs.db"
        defer {
            for suffix in ["", "-wal", "-shm", ".lock"] { unlink(path + suffix) }
            rmdir(String(path.dropLast("/dialogs.db".count)))
        }
        let store = try DialogStore(path: path, idleMilliseconds: 60_000)
        try store.start()
        usleep(50_000)                              // the writer's first (empty) look is over
        store.dialogChanged(Self.record(1))         // a short call: up and gone within the minute
        store.dialogChanged(Self.ended(Self.record(1)))
        store.dialogChanged(Self.record(2))         // a call still up when the node stops
        var started = timespec(), stopped = timespec()
        clock_gettime(CLOCK_MONOTONIC, &started)
        store.stop()
        clock_gettime(CLOCK_MONOTONIC, &stopped)
        #expect(stopped.tv_sec - started.tv_sec < 5, "stop waited for the writer's next slice, not the minute")
        #expect(store.rowsWritten.load(ordering: .relaxed) == 1, "only the call still up was written")
        let records = try DialogStore(path: path).loadAll()
        #expect(records.map(\.key) == ["s0xbackend2"])
    }

    @Test func an_unwritable_path_is_a_clear_error() {
        #expect(throws: StoreError.self) { try DialogStore(path: "/proc/sipedge/dialogs.db") }
    }
}
