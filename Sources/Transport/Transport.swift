/// The transport layer's identity; event loops, sockets and timers arrive with issue 3.
public enum TransportModule {
    /// Version of the transport layer's wire behaviour, reported by `sipedge version`.
    public static let version = "0.1.0"
}
