/// What a framer found at the front of a connection's buffered bytes.
public enum FrameDecision: Sendable, Equatable {
    /// A whole frame of this many bytes: hand it up.
    case frame(Int)
    /// Bytes to drop, answering with `reply` (a keep-alive ping answered with a pong).
    case reply(consume: Int, with: [UInt8])
    /// Bytes to drop silently (a keep-alive pong).
    case skip(Int)
    /// Not enough bytes yet.
    case needMore
    /// The stream cannot be framed: the connection is closed, with this reason logged.
    case invalid(String)
    /// The stream cannot be framed, but the peer can be told why: `reply` is sent, then the
    /// connection is closed once it is written, with `reason` logged.
    case refuse(reply: [UInt8], reason: String)
}

/// Splits a byte stream into frames. Transport knows no protocol: the layer above hands one in
/// (SIP's framing rule, adapted; tests use simpler ones). Must not look past the buffer.
public protocol StreamFramer: Sendable {
    func decide(_ buffered: UnsafeRawBufferPointer) -> FrameDecision
}
