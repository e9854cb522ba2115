import Glibc

/// An IPv4 or IPv6 address and port: compact, hashable (the key of connection tables), and
/// convertible to and from the kernel's `sockaddr`.
public struct SocketAddress: Hashable, Sendable, CustomStringConvertible {
    /// IP version.
    public enum Family: Sendable, Hashable { case inet, inet6 }

    public let family: Family
    /// Network byte order; IPv4 uses the first 4 bytes.
    private let high: UInt64
    private let low: UInt64
    public let port: UInt16
    private let scopeID: UInt32

    /// The address in network byte order: 4 bytes (IPv4) or 16 (IPv6).
    public var addressBytes: [UInt8] {
        var h = high, l = low
        let all = withUnsafeBytes(of: &h) { Array($0) } + withUnsafeBytes(of: &l) { Array($0) }
        return family == .inet ? Array(all[4..<8]) : all
    }

    /// Calls `body` with the address bytes in network byte order (4 or 16), without allocating.
    public func withAddressBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        var both = (high, low)
        return withUnsafeBytes(of: &both) { raw in
            family == .inet ? body(UnsafeRawBufferPointer(rebasing: raw[4..<8])) : body(raw)
        }
    }

    /// Whether it is a loopback address: 127.0.0.0/8, ::1, or 127.0.0.0/8 mapped into IPv6.
    public var isLoopback: Bool {
        let ip = ipString
        return ip.hasPrefix("127.") || ip == "::1" || ip.hasPrefix("::ffff:127.")
    }

    /// Parses a numeric IPv4 or IPv6 address (`"127.0.0.1"`, `"::1"`, `"[::1]"`).
    public init?(ip: String, port: Int) {
        guard (0...65_535).contains(port) else { return nil }
        var text = ip
        if text.hasPrefix("["), text.hasSuffix("]") { text = String(text.dropFirst().dropLast()) }
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            self.family = .inet
            self.high = UInt64(v4.s_addr) << 32  // raw network-order bytes, kept as they are
            self.low = 0
        } else if inet_pton(AF_INET6, text, &v6) == 1 {
            self.family = .inet6
            let (h, l) = withUnsafeBytes(of: &v6) { raw in
                (raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self), raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
            }
            self.high = h
            self.low = l
        } else {
            return nil
        }
        self.port = UInt16(port)
        self.scopeID = 0
    }

    /// Reads a kernel address (AF_INET or AF_INET6); nil for any other family.
    public init?(_ storage: UnsafeRawPointer, length: Int) {
        let family = storage.load(as: sa_family_t.self)
        if family == sa_family_t(AF_INET), length >= MemoryLayout<sockaddr_in>.size {
            let sin = storage.loadUnaligned(as: sockaddr_in.self)
            self.family = .inet
            self.high = UInt64(sin.sin_addr.s_addr) << 32
            self.low = 0
            self.port = UInt16(bigEndian: sin.sin_port)
            self.scopeID = 0
        } else if family == sa_family_t(AF_INET6), length >= MemoryLayout<sockaddr_in6>.size {
            var sin6 = storage.loadUnaligned(as: sockaddr_in6.self)
            self.family = .inet6
            let (h, l) = withUnsafeBytes(of: &sin6.sin6_addr) { raw in
                (raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self), raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
            }
            self.high = h
            self.low = l
            self.port = UInt16(bigEndian: sin6.sin6_port)
            self.scopeID = sin6.sin6_scope_id
        } else {
            return nil
        }
    }

    /// The same address with another port.
    public func with(port: UInt16) -> SocketAddress {
        SocketAddress(family: family, high: high, low: low, port: port, scopeID: scopeID)
    }

    private init(family: Family, high: UInt64, low: UInt64, port: UInt16, scopeID: UInt32) {
        self.family = family
        self.high = high
        self.low = low
        self.port = port
        self.scopeID = scopeID
    }

    /// `AF_INET` or `AF_INET6`.
    public var kernelFamily: Int32 { family == .inet ? AF_INET : AF_INET6 }

    /// Calls `body` with this address as a kernel `sockaddr` and its length.
    public func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) rethrows -> R {
        var storage = sockaddr_storage()
        let length = write(to: &storage)
        return try withUnsafePointer(to: &storage) { p in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, length) }
        }
    }

    /// Writes the kernel form into `storage`; returns its length.
    @discardableResult
    public func write(to storage: inout sockaddr_storage) -> socklen_t {
        withUnsafeMutableBytes(of: &storage) { raw in
            switch family {
            case .inet:
                var sin = sockaddr_in()
                sin.sin_family = sa_family_t(AF_INET)
                sin.sin_port = port.bigEndian
                sin.sin_addr.s_addr = UInt32(truncatingIfNeeded: high >> 32)
                raw.storeBytes(of: sin, as: sockaddr_in.self)
                return socklen_t(MemoryLayout<sockaddr_in>.size)
            case .inet6:
                var sin6 = sockaddr_in6()
                sin6.sin6_family = sa_family_t(AF_INET6)
                sin6.sin6_port = port.bigEndian
                sin6.sin6_scope_id = scopeID
                withUnsafeMutableBytes(of: &sin6.sin6_addr) { a in
                    a.storeBytes(of: high, toByteOffset: 0, as: UInt64.self)
                    a.storeBytes(of: low, toByteOffset: 8, as: UInt64.self)
                }
                raw.storeBytes(of: sin6, as: sockaddr_in6.self)
                return socklen_t(MemoryLayout<sockaddr_in6>.size)
            }
        }
    }

    /// The address without the port (`127.0.0.1`, `::1`).
    public var ipString: String {
        var storage = sockaddr_storage()
        write(to: &storage)
        // Text on the stack; an address of up to 15 characters (any IPv4) becomes a small String
        // without a heap allocation.
        return withUnsafeTemporaryAllocation(of: CChar.self, capacity: Int(INET6_ADDRSTRLEN) + 1) { text in
            text[0] = 0
            withUnsafePointer(to: &storage) { p in
                p.withMemoryRebound(to: UInt8.self, capacity: MemoryLayout<sockaddr_storage>.size) { bytes in
                    let offset = family == .inet ? MemoryLayout<sockaddr_in>.offset(of: \sockaddr_in.sin_addr)!
                                                 : MemoryLayout<sockaddr_in6>.offset(of: \sockaddr_in6.sin6_addr)!
                    _ = inet_ntop(kernelFamily, bytes + offset, text.baseAddress, socklen_t(text.count))
                }
            }
            return String(cString: text.baseAddress!)
        }
    }

    /// The address as a SIP URI or Via writes its host: `127.0.0.1` or `[::1]`.
    public var uriHost: String {
        family == .inet6 ? "[\(ipString)]" : ipString
    }

    /// `127.0.0.1:5060` or `[::1]:5060`.
    public var description: String {
        family == .inet ? "\(ipString):\(port)" : "[\(ipString)]:\(port)"
    }
}
