/// The SIP stack's identity (intake, transactions, dialogs, the B2BUA), reported with the version.
public enum DialogModule {
    public static let version = "0.1.0"
}
