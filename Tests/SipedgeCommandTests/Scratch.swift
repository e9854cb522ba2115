import Foundation
import Glibc
import Synchronization

/// Ports and directories for tests that start real processes. Suites run side by side in one test
/// process: each test is given its own block of ports and its own directory, never another's
/// (random choices collided now and then, and SO_REUSEPORT let two edges share a port silently).
enum Scratch {
    /// Ports per block: a test uses `base`, `base + 1`... up to `base + 199` (baresip's RTP).
    static let blockSize = 200
    /// Blocks between 11,000 and 32,000: below Linux's ephemeral range (32,768 up), so no outgoing
    /// connection holds them.
    private static let blocks = (32_000 - 11_000) / blockSize
    /// Where this process starts handing out blocks (another test process on the machine starts elsewhere).
    private static let firstBlock = Int(getpid()) % blocks
    private static let blocksTaken = Atomic<Int>(0)
    private static let directoriesMade = Atomic<Int>(0)

    /// The first of `blockSize` consecutive ports that no other test of this process was given
    /// (until every block has been handed out once, which a test run does not reach).
    static func ports() -> Int {
        let n = blocksTaken.wrappingAdd(1, ordering: .relaxed).oldValue
        return 11_000 + ((firstBlock + n) % blocks) * blockSize
    }

    /// A new, empty directory of this process's own: `<tmp>/sipedge-<name>-<pid>-<n>`.
    static func directory(_ name: String) throws -> URL {
        let n = directoriesMade.wrappingAdd(1, ordering: .relaxed).oldValue
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sipedge-\(name)-\(getpid())-\(n)")
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    /// A file path of this process's own in the temporary directory (nothing is created).
    static func file(_ name: String, _ suffix: String) -> URL {
        let n = directoriesMade.wrappingAdd(1, ordering: .relaxed).oldValue
        return FileManager.default.temporaryDirectory.appendingPathComponent("sipedge-\(name)-\(getpid())-\(n).\(suffix)")
    }

    /// Removes what a test left in the temporary directory, unless KEEP_TEST_FILES is set (to
    /// read SIPp's traces after a failure).
    static func remove(_ url: URL) {
        guard ProcessInfo.processInfo.environment["KEEP_TEST_FILES"] == nil else { return }
        try? FileManager.default.removeItem(at: url)
    }
}
