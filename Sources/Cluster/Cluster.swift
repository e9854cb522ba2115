import Dialog

/// The cluster layer's identity; membership, replication and re-homing come after issue 5.
public enum ClusterModule {
    public static let version = "0.1.0"
}
