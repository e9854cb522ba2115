import Glibc
import CTransportShim

/// A failed system call: which call, and the errno it left.
public struct SystemError: Error, Sendable, Equatable, CustomStringConvertible {
    public let call: String
    public let errno: Int32

    public init(_ call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    public var description: String { "\(call): \(String(cString: strerror(errno))) (errno \(errno))" }

    /// ENOPROTOOPT / EPROTONOSUPPORT / ESOCKTNOSUPPORT: the kernel lacks the protocol (e.g. SCTP).
    public var isUnsupportedProtocol: Bool { errno == EPROTONOSUPPORT || errno == ESOCKTNOSUPPORT || errno == ENOPROTOOPT }
}

/// What a non-blocking call did: done (with a value), or it would have blocked.
public enum IOResult<T>: Sendable where T: Sendable {
    case processed(T)
    case wouldBlock
}

/// Runs a system call under the one errno policy: EINTR is retried, EAGAIN is `.wouldBlock`
/// (a result, not an error), anything else throws `SystemError`.
@inline(__always)
func nonBlocking<T: FixedWidthInteger & Sendable>(_ name: String, _ call: () -> T) throws(SystemError) -> IOResult<T> {
    while true {
        let r = call()
        if r >= 0 { return .processed(r) }
        let e = Glibc.errno
        if e == EINTR { continue }
        if e == EAGAIN || e == EWOULDBLOCK { return .wouldBlock }
        throw SystemError(name, errno: e)
    }
}

/// Runs a system call that must not block: EINTR is retried, any failure throws.
@inline(__always)
@discardableResult
func blocking<T: FixedWidthInteger>(_ name: String, _ call: () -> T) throws(SystemError) -> T {
    while true {
        let r = call()
        if r >= 0 { return r }
        let e = Glibc.errno
        if e == EINTR { continue }
        throw SystemError(name, errno: e)
    }
}

/// A transport failure: the kernel's, or TLS's.
public enum TransportError: Error, Sendable, CustomStringConvertible {
    case system(SystemError)
    case tls(TLSError)

    public var description: String {
        switch self {
        case .system(let e): return e.description
        case .tls(let e): return e.description
        }
    }
}

/// The process's heap as the kernel sees it.
public enum ProcessMemory {
    /// Hands the free pages of every malloc arena back to the kernel (glibc's `malloc_trim`);
    /// true if any were returned.
    @discardableResult
    public static func returnFreedPages() -> Bool { tshim_malloc_trim() == 1 }

    /// Freed memory up to `bytes` per heap stays with the process until `returnFreedPages`,
    /// instead of going back to the kernel at every free and being asked for again at the next
    /// allocation.
    public static func keepFreedMemory(upTo bytes: Int) { tshim_keep_freed_memory(bytes) }

    /// Grows the calling thread's heap by `bytes` once (address space, not resident memory), so
    /// that it does not grow page by page, a system call each time, while calls pile up.
    public static func reserveHeap(_ bytes: Int) { tshim_reserve_heap(bytes) }
}

/// Random bytes from the kernel (getrandom).
public enum KernelRandom {
    /// Fills `buffer`; false when the kernel gave fewer bytes than asked.
    @discardableResult
    public static func fill(_ buffer: UnsafeMutableRawBufferPointer) -> Bool {
        tshim_random_bytes(buffer.baseAddress, buffer.count) == 0
    }
}
