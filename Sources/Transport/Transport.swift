/// The transport layer's identity, reported by `sipedge --version` and logs.
public enum TransportModule {
    public static let version = "0.1.0"
}
