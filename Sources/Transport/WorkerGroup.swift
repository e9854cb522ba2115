import CTransportShim
import Glibc

/// A node's worker loops, one per core, each owning its shard of transactions, dialogs and
/// connections. The layer above says which worker owns a message; `handOver` delivers it there.
public final class WorkerGroup: Sendable {
    public let loops: [EventLoop]

    public init(count: Int) throws(SystemError) {
        precondition(count >= 1, "at least one worker")
        var loops: [EventLoop] = []
        for i in 0..<count { loops.append(try EventLoop(index: i)) }
        self.loops = loops
    }

    public var count: Int { loops.count }

    public func start() throws(SystemError) {
        for loop in loops { try loop.start() }
    }

    public func stop() {
        for loop in loops { loop.stop() }
    }

    /// Runs `work` on worker `worker` (what it captures, received bytes included, moves with it:
    /// no copy). Run at once when already on that worker.
    public func handOver(to worker: Int, _ work: @escaping @Sendable () -> Void) {
        let loop = loops[worker]
        if loop.inLoop { work() } else { loop.execute(work) }
    }
}
