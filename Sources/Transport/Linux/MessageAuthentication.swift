import CTLSShim

/// HMAC-SHA256 (OpenSSL) over datagrams: a sender appends the tag, a receiver checks it in constant
/// time. Knows nothing of what the datagrams carry.
public struct MessageAuthentication: Sendable {
    public static let tagBytes = 32
    private let key: [UInt8]

    public init(key: String) { self.key = Array(key.utf8) }

    /// `message` with its tag appended.
    public func sealed(_ message: [UInt8]) -> [UInt8] {
        var out = message
        out.append(contentsOf: tag(message[...]))
        return out
    }

    /// The message without its tag, or nil when the tag does not match (or is missing).
    public func opened(_ datagram: [UInt8]) -> ArraySlice<UInt8>? {
        guard datagram.count >= Self.tagBytes else { return nil }
        let body = datagram[..<(datagram.count - Self.tagBytes)]
        let expected = tag(body)
        let equal = datagram.withUnsafeBufferPointer { d in
            expected.withUnsafeBufferPointer { e in
                tshim_equal_in_constant_time(d.baseAddress! + body.count, e.baseAddress!, Self.tagBytes) == 0
            }
        }
        return equal ? body : nil
    }

    private func tag(_ message: ArraySlice<UInt8>) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.tagBytes)
        key.withUnsafeBufferPointer { k in
            message.withUnsafeBufferPointer { m in
                out.withUnsafeMutableBufferPointer { o in
                    _ = tshim_hmac_sha256(k.baseAddress, k.count, m.baseAddress, m.count, o.baseAddress)
                }
            }
        }
        return out
    }
}
