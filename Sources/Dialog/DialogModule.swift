/// The dialog layer's identity; transactions, dialogs and B2BUA legs arrive with issue 4.
public enum DialogModule {
    public static let version = "0.1.0"
}
