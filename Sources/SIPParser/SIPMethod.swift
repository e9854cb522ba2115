/// A SIP request method: the ones SIPEdge acts on by name, or any other RFC 3261 token.
public enum SIPMethod: Hashable, Sendable, CustomStringConvertible {
    case invite, ack, bye, cancel, options, register, prack, update, info, subscribe, notify
    case refer, message, publish
    /// An extension method, kept with its exact (case-sensitive) spelling.
    case other(String)

    public init?(_ text: String) {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty, bytes.allSatisfy({ ByteClass.token.contains($0) }) else { return nil }
        self = bytes.withUnsafeBytes { raw in SIPMethod.known(raw.baseAddress!, 0, raw.count) } ?? .other(text)
    }

    public var description: String {
        switch self {
        case .invite: return "INVITE"
        case .ack: return "ACK"
        case .bye: return "BYE"
        case .cancel: return "CANCEL"
        case .options: return "OPTIONS"
        case .register: return "REGISTER"
        case .prack: return "PRACK"
        case .update: return "UPDATE"
        case .info: return "INFO"
        case .subscribe: return "SUBSCRIBE"
        case .notify: return "NOTIFY"
        case .refer: return "REFER"
        case .message: return "MESSAGE"
        case .publish: return "PUBLISH"
        case .other(let name): return name
        }
    }

    /// Known methods by their exact bytes (methods are case-sensitive, RFC 3261 §7.1). No allocation.
    @inline(__always)
    package static func known(_ base: UnsafeRawPointer, _ start: Int, _ end: Int) -> SIPMethod? {
        @inline(__always) func eq(_ name: StaticString) -> Bool {
            guard name.utf8CodeUnitCount == end &- start else { return false }
            let p = name.utf8Start
            var i = 0
            while i < end &- start {
                if base.load(fromByteOffset: start &+ i, as: UInt8.self) != p[i] { return false }
                i &+= 1
            }
            return true
        }
        switch base.load(fromByteOffset: start, as: UInt8.self) {
        case UInt8(ascii: "I"):
            if eq("INVITE") { return .invite }
            if eq("INFO") { return .info }
        case UInt8(ascii: "A"): if eq("ACK") { return .ack }
        case UInt8(ascii: "B"): if eq("BYE") { return .bye }
        case UInt8(ascii: "C"): if eq("CANCEL") { return .cancel }
        case UInt8(ascii: "O"): if eq("OPTIONS") { return .options }
        case UInt8(ascii: "R"):
            if eq("REGISTER") { return .register }
            if eq("REFER") { return .refer }
        case UInt8(ascii: "P"):
            if eq("PRACK") { return .prack }
            if eq("PUBLISH") { return .publish }
        case UInt8(ascii: "U"): if eq("UPDATE") { return .update }
        case UInt8(ascii: "S"): if eq("SUBSCRIBE") { return .subscribe }
        case UInt8(ascii: "N"): if eq("NOTIFY") { return .notify }
        case UInt8(ascii: "M"): if eq("MESSAGE") { return .message }
        default: break
        }
        return nil
    }

    /// A compact code for the known methods (0 for extensions), stored in message indexes.
    package var code: UInt8 {
        switch self {
        case .invite: return 1
        case .ack: return 2
        case .bye: return 3
        case .cancel: return 4
        case .options: return 5
        case .register: return 6
        case .prack: return 7
        case .update: return 8
        case .info: return 9
        case .subscribe: return 10
        case .notify: return 11
        case .refer: return 12
        case .message: return 13
        case .publish: return 14
        case .other: return 0
        }
    }

    package static func fromCode(_ code: UInt8) -> SIPMethod? {
        switch code {
        case 1: return .invite
        case 2: return .ack
        case 3: return .bye
        case 4: return .cancel
        case 5: return .options
        case 6: return .register
        case 7: return .prack
        case 8: return .update
        case 9: return .info
        case 10: return .subscribe
        case 11: return .notify
        case 12: return .refer
        case 13: return .message
        case 14: return .publish
        default: return nil
        }
    }
}
