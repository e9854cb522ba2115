/// Carries a loop-confined value (an endpoint, a connection) across threads, to be used only on its
/// loop: the way work from other threads reaches objects that live on a loop.
///
/// `@unchecked Sendable`: `value` is only read through `value`, which traps in debug builds when
/// called off the owning loop's thread (before the loop starts, set-up may use it from anywhere).
public struct LoopBound<Value>: @unchecked Sendable {
    private let wrapped: Value
    public let loop: EventLoop

    public init(_ value: Value, on loop: EventLoop) {
        self.wrapped = value
        self.loop = loop
    }

    /// The value; only on `loop`'s thread.
    public var value: Value {
        loop.assertInLoop()
        return wrapped
    }
}
