import CTLSShim
import Glibc

/// Why TLS could not be set up or went wrong, with OpenSSL's own words.
public struct TLSError: Error, Sendable, CustomStringConvertible {
    public let description: String

    static func openSSL(_ what: String) -> TLSError {
        TLSError(description: "\(what): \(lastOpenSSLError() ?? "unknown OpenSSL error")")
    }
}

/// The latest queued OpenSSL error as text (and the queue cleared), nil if there is none.
func lastOpenSSLError() -> String? {
    var buffer = [CChar](repeating: 0, count: 256)
    tshim_tls_last_error(&buffer, buffer.count)
    let text = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return text.isEmpty ? nil : text
}

/// Certificates and policy for one side of TLS (an SSL_CTX): a server's certificate and key, the CA
/// file used to check the peer, whether to check it, and whether a server asks clients for
/// certificates (mutual TLS). TLS 1.2 at least.
///
/// `@unchecked Sendable`: the SSL_CTX is configured once in `init` and only read afterwards
/// (creating sessions from it is thread-safe in OpenSSL 3).
public final class TLSContext: @unchecked Sendable {
    /// Which side of the handshake.
    public enum Role: Sendable { case server, client }

    public let role: Role
    let context: OpaquePointer

    /// - Parameters:
    ///   - certificateFile/privateKeyFile: PEM; required for a server, optional for a client (mutual TLS).
    ///   - caFile: PEM bundle of CAs trusted for the peer's certificate.
    ///   - verifyPeer: a client checks the server's certificate (and name, see `TLSSession`);
    ///     a server with `verifyPeer` requires and checks a client certificate.
    public init(role: Role, certificateFile: String? = nil, privateKeyFile: String? = nil, caFile: String? = nil,
                verifyPeer: Bool = true) throws(TLSError) {
        self.role = role
        guard let method = role == .server ? TLS_server_method() : TLS_client_method(),
              let ctx = SSL_CTX_new(method) else { throw TLSError.openSSL("SSL_CTX_new") }
        context = ctx
        guard tshim_tls_set_min_version_tls12(ctx) == 1 else { throw TLSError.openSSL("minimum TLS version") }
        if let certificateFile {
            guard SSL_CTX_use_certificate_chain_file(ctx, certificateFile) == 1 else {
                throw TLSError.openSSL("certificate \(certificateFile)")
            }
            guard SSL_CTX_use_PrivateKey_file(ctx, privateKeyFile ?? certificateFile, SSL_FILETYPE_PEM) == 1 else {
                throw TLSError.openSSL("private key \(privateKeyFile ?? certificateFile)")
            }
            guard SSL_CTX_check_private_key(ctx) == 1 else { throw TLSError.openSSL("key does not match certificate") }
        } else if role == .server {
            throw TLSError(description: "a TLS server needs a certificate and a private key")
        }
        if let caFile {
            guard SSL_CTX_load_verify_locations(ctx, caFile, nil) == 1 else { throw TLSError.openSSL("CA file \(caFile)") }
        }
        if verifyPeer {
            let mode = role == .server ? (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT) : SSL_VERIFY_PEER
            SSL_CTX_set_verify(ctx, mode, nil)
        } else {
            SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nil)
        }
    }

    deinit { SSL_CTX_free(context) }
}

/// One TLS session over a connection, driven through memory BIOs so the loop keeps doing the
/// socket I/O: ciphertext from the socket goes in with `feed`, plaintext comes out of `read`,
/// plaintext goes in with `write`, and ciphertext for the socket comes out of `takeOutput`.
final class TLSSession {
    private let ssl: OpaquePointer
    private let networkIn: OpaquePointer   // we write received ciphertext here
    private let networkOut: OpaquePointer  // OpenSSL writes ciphertext to send here
    private(set) var handshakeDone = false
    private let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 16_384, alignment: 16)

    /// `serverName` (client side): sent as SNI and checked against the certificate when verifying.
    init(context: TLSContext, serverName: String?) throws(TLSError) {
        guard let ssl = SSL_new(context.context) else { throw TLSError.openSSL("SSL_new") }
        guard let rbio = BIO_new(BIO_s_mem()), let wbio = BIO_new(BIO_s_mem()) else {
            SSL_free(ssl)
            throw TLSError.openSSL("BIO_new")
        }
        self.ssl = ssl
        networkIn = rbio
        networkOut = wbio
        SSL_set_bio(ssl, rbio, wbio)   // the SSL owns both BIOs from here
        if context.role == .server {
            SSL_set_accept_state(ssl)
        } else {
            SSL_set_connect_state(ssl)
            if let serverName {
                _ = tshim_tls_set_server_name(ssl, serverName)
                // Check the certificate names this host (or IP address).
                if SocketAddress(ip: serverName, port: 0) != nil {
                    let param = SSL_get0_param(ssl)
                    _ = X509_VERIFY_PARAM_set1_ip_asc(param, serverName)
                } else {
                    _ = SSL_set1_host(ssl, serverName)
                }
            }
        }
    }

    deinit {
        SSL_free(ssl)
        scratch.deallocate()
    }

    /// The SNI name a server session was asked for.
    var requestedServerName: String? {
        guard let name = tshim_tls_server_name(ssl) else { return nil }
        return String(cString: name)
    }

    /// Hands received ciphertext to OpenSSL.
    func feed(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        _ = BIO_write(networkIn, base, Int32(bytes.count))
    }

    /// Moves the handshake on; nil while all is well, the reason when it failed.
    func advanceHandshake() -> String? {
        guard !handshakeDone else { return nil }
        ERR_clear_error()
        let r = SSL_do_handshake(ssl)
        if r == 1 {
            handshakeDone = true
            return nil
        }
        return failure(r, "handshake")
    }

    /// Decrypts what is available into `plaintext`; nil, or the reason the session failed.
    func read(into plaintext: inout [UInt8]) -> String? {
        while true {
            ERR_clear_error()
            let r = SSL_read(ssl, scratch.baseAddress, Int32(scratch.count))
            if r > 0 {
                plaintext.append(contentsOf: UnsafeRawBufferPointer(rebasing: scratch[0..<Int(r)]))
                continue
            }
            return failure(r, "read")
        }
    }

    /// Encrypts `plaintext` into the output BIO; nil, or the reason it failed.
    func write(_ plaintext: [UInt8]) -> String? {
        guard !plaintext.isEmpty else { return nil }
        ERR_clear_error()
        let r = plaintext.withUnsafeBytes { SSL_write(ssl, $0.baseAddress, Int32($0.count)) }
        return r > 0 ? nil : failure(r, "write")
    }

    /// Ciphertext OpenSSL wants sent, if any.
    func takeOutput() -> [UInt8]? {
        let pending = Int(tshim_tls_bio_pending(networkOut))
        guard pending > 0 else { return nil }
        var out = [UInt8](repeating: 0, count: pending)
        let n = out.withUnsafeMutableBytes { BIO_read(networkOut, $0.baseAddress, Int32(pending)) }
        return n > 0 ? Array(out[0..<Int(n)]) : nil
    }

    /// nil for "wants more data"; the reason for a real failure (or a close from the peer).
    private func failure(_ r: Int32, _ what: String) -> String? {
        let code = SSL_get_error(ssl, r)
        switch code {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return nil
        case SSL_ERROR_ZERO_RETURN:
            return "TLS closed by peer"
        default:
            let verify = SSL_get_verify_result(ssl)
            if verify != X509_V_OK, let text = X509_verify_cert_error_string(verify) {
                return "TLS \(what) failed: certificate verify failed: \(String(cString: text))"
            }
            return "TLS \(what) failed: \(lastOpenSSLError() ?? "error \(code)")"
        }
    }
}
