import SIPParser
import Transport

extension TransportProtocol {
    /// The transport a request toward `uri` uses, as RFC 3263 §4.1 decides it without DNS: a
    /// `transport` parameter wins; `sips:` means TLS (`transport=tcp` on a SIPS URI is TLS too);
    /// otherwise UDP. Nil for what SIPEdge cannot send on (a `sips:` URI asking for UDP, `tls-sctp`,
    /// an unknown transport, a scheme other than sip/sips).
    public init?(toward uri: SIPURI) {
        guard uri.scheme == .sip || uri.scheme == .sips else { return nil }
        let secure = uri.scheme == .sips
        guard let requested = uri.parameter("transport") else {
            self = secure ? .tls : .udp
            return
        }
        guard let name = requested else { return nil }
        switch name.string.lowercased() {
        case "udp" where !secure: self = .udp
        case "tcp": self = secure ? .tls : .tcp
        case "tls": self = .tls
        case "sctp" where !secure: self = .sctp
        default: return nil
        }
    }
}
