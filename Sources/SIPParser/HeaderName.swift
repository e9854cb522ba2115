/// A header field known to SIPEdge by name; anything else is `.other` and passes through untouched.
public enum HeaderKind: UInt8, Sendable, CaseIterable {
    case other = 0
    case via, from, to, callID, cseq, contact, maxForwards, contentLength, contentType
    case route, recordRoute, expires, minExpires, require, proxyRequire, supported, unsupported
    case sessionExpires, minSE, allow, allowEvents, authorization, proxyAuthorization
    case wwwAuthenticate, proxyAuthenticate, event, subject, accept, acceptContact, rejectContact
    case requestDisposition, contentEncoding, contentDisposition, referTo, referredBy, replaces
    case userAgent, server, rseq, rack, path, date, timestamp, reason, retryAfter, warning
    case identity, identityInfo, pAssertedIdentity, pPreferredIdentity, subscriptionState
    case serviceRoute, privacy

    /// Size of tables indexed by kind (at least `allCases.count`).
    package static let tableSize = 64

    /// The canonical spelling, used when SIPEdge writes a header of this kind.
    public var canonicalName: String {
        switch self {
        case .other: return ""
        case .via: return "Via"
        case .from: return "From"
        case .to: return "To"
        case .callID: return "Call-ID"
        case .cseq: return "CSeq"
        case .contact: return "Contact"
        case .maxForwards: return "Max-Forwards"
        case .contentLength: return "Content-Length"
        case .contentType: return "Content-Type"
        case .route: return "Route"
        case .recordRoute: return "Record-Route"
        case .expires: return "Expires"
        case .minExpires: return "Min-Expires"
        case .require: return "Require"
        case .proxyRequire: return "Proxy-Require"
        case .supported: return "Supported"
        case .unsupported: return "Unsupported"
        case .sessionExpires: return "Session-Expires"
        case .minSE: return "Min-SE"
        case .allow: return "Allow"
        case .allowEvents: return "Allow-Events"
        case .authorization: return "Authorization"
        case .proxyAuthorization: return "Proxy-Authorization"
        case .wwwAuthenticate: return "WWW-Authenticate"
        case .proxyAuthenticate: return "Proxy-Authenticate"
        case .event: return "Event"
        case .subject: return "Subject"
        case .accept: return "Accept"
        case .acceptContact: return "Accept-Contact"
        case .rejectContact: return "Reject-Contact"
        case .requestDisposition: return "Request-Disposition"
        case .contentEncoding: return "Content-Encoding"
        case .contentDisposition: return "Content-Disposition"
        case .referTo: return "Refer-To"
        case .referredBy: return "Referred-By"
        case .replaces: return "Replaces"
        case .userAgent: return "User-Agent"
        case .server: return "Server"
        case .rseq: return "RSeq"
        case .rack: return "RAck"
        case .path: return "Path"
        case .date: return "Date"
        case .timestamp: return "Timestamp"
        case .reason: return "Reason"
        case .retryAfter: return "Retry-After"
        case .warning: return "Warning"
        case .identity: return "Identity"
        case .identityInfo: return "Identity-Info"
        case .pAssertedIdentity: return "P-Asserted-Identity"
        case .pPreferredIdentity: return "P-Preferred-Identity"
        case .subscriptionState: return "Subscription-State"
        case .serviceRoute: return "Service-Route"
        case .privacy: return "Privacy"
        }
    }

    /// Headers whose value is a comma-separated list (RFC 3261 §7.3.1): these are split into values.
    public var isList: Bool {
        switch self {
        case .via, .contact, .route, .recordRoute, .require, .proxyRequire, .supported, .unsupported,
             .allow, .allowEvents, .accept, .acceptContact, .rejectContact, .contentEncoding, .path,
             .warning, .pAssertedIdentity, .pPreferredIdentity, .serviceRoute, .privacy,
             .requestDisposition:
            return true
        default:
            return false
        }
    }

    /// Headers a message may carry at most once (RFC 3261 §7.3.1, §8.2, RFC 4475 §3.3.8).
    package var isSingleton: Bool {
        switch self {
        case .from, .to, .callID, .cseq, .maxForwards, .contentType, .expires, .minExpires,
             .sessionExpires, .minSE, .rseq, .rack, .event, .subscriptionState, .referTo, .date:
            return true
        default:
            return false
        }
    }
}

// MARK: - Name lookup

extension HeaderKind {
    /// Looks a header name up, case-insensitively, long and compact forms alike.
    /// Bucketed by length, then by first byte; one full comparison at most. No allocation.
    @inline(__always)
    package static func lookup(_ base: UnsafeRawPointer, _ start: Int, _ end: Int) -> HeaderKind {
        let length = end &- start
        let first = base.load(fromByteOffset: start, as: UInt8.self) | 0x20
        @inline(__always) func matches(_ name: StaticString) -> Bool {
            // `name` is lowercase ASCII; OR-ing 0x20 folds A-Z onto it. The caller has already
            // checked that the name is a token, so no other byte can fold onto a letter or '-'.
            let p = UnsafeRawPointer(name.utf8Start)
            var i = 1
            while i &+ 8 <= length {
                let a = base.loadUnaligned(fromByteOffset: start &+ i, as: UInt64.self) | 0x2020_2020_2020_2020
                if a != p.loadUnaligned(fromByteOffset: i, as: UInt64.self) { return false }
                i &+= 8
            }
            while i < length {
                if base.load(fromByteOffset: start &+ i, as: UInt8.self) | 0x20 != p.load(fromByteOffset: i, as: UInt8.self) { return false }
                i &+= 1
            }
            return true
        }
        switch length {
        case 1:
            switch first {
            case UInt8(ascii: "v"): return .via
            case UInt8(ascii: "f"): return .from
            case UInt8(ascii: "t"): return .to
            case UInt8(ascii: "i"): return .callID
            case UInt8(ascii: "m"): return .contact
            case UInt8(ascii: "l"): return .contentLength
            case UInt8(ascii: "c"): return .contentType
            case UInt8(ascii: "e"): return .contentEncoding
            case UInt8(ascii: "s"): return .subject
            case UInt8(ascii: "k"): return .supported
            case UInt8(ascii: "o"): return .event
            case UInt8(ascii: "u"): return .allowEvents
            case UInt8(ascii: "r"): return .referTo
            case UInt8(ascii: "b"): return .referredBy
            case UInt8(ascii: "x"): return .sessionExpires
            case UInt8(ascii: "y"): return .identity
            case UInt8(ascii: "n"): return .identityInfo
            case UInt8(ascii: "a"): return .acceptContact
            case UInt8(ascii: "j"): return .rejectContact
            case UInt8(ascii: "d"): return .requestDisposition
            default: return .other
            }
        case 2: return first == UInt8(ascii: "t") && matches("to") ? .to : .other
        case 3: return first == UInt8(ascii: "v") && matches("via") ? .via : .other
        case 4:
            switch first {
            case UInt8(ascii: "f"): return matches("from") ? .from : .other
            case UInt8(ascii: "c"): return matches("cseq") ? .cseq : .other
            case UInt8(ascii: "r"):
                if matches("rseq") { return .rseq }
                return matches("rack") ? .rack : .other
            case UInt8(ascii: "p"): return matches("path") ? .path : .other
            case UInt8(ascii: "d"): return matches("date") ? .date : .other
            default: return .other
            }
        case 5:
            switch first {
            case UInt8(ascii: "r"): return matches("route") ? .route : .other
            case UInt8(ascii: "a"): return matches("allow") ? .allow : .other
            case UInt8(ascii: "e"): return matches("event") ? .event : .other
            default: return .other
            }
        case 6:
            switch first {
            case UInt8(ascii: "a"): return matches("accept") ? .accept : .other
            case UInt8(ascii: "s"): return matches("server") ? .server : .other
            case UInt8(ascii: "m"): return matches("min-se") ? .minSE : .other
            case UInt8(ascii: "r"): return matches("reason") ? .reason : .other
            default: return .other
            }
        case 7:
            switch first {
            case UInt8(ascii: "c"):
                if matches("call-id") { return .callID }
                return matches("contact") ? .contact : .other
            case UInt8(ascii: "e"): return matches("expires") ? .expires : .other
            case UInt8(ascii: "r"): return matches("require") ? .require : .other
            case UInt8(ascii: "s"): return matches("subject") ? .subject : .other
            case UInt8(ascii: "w"): return matches("warning") ? .warning : .other
            case UInt8(ascii: "p"): return matches("privacy") ? .privacy : .other
            default: return .other
            }
        case 8:
            switch first {
            case UInt8(ascii: "r"):
                if matches("refer-to") { return .referTo }
                return matches("replaces") ? .replaces : .other
            case UInt8(ascii: "i"): return matches("identity") ? .identity : .other
            default: return .other
            }
        case 9:
            switch first {
            case UInt8(ascii: "s"): return matches("supported") ? .supported : .other
            case UInt8(ascii: "t"): return matches("timestamp") ? .timestamp : .other
            default: return .other
            }
        case 10: return first == UInt8(ascii: "u") && matches("user-agent") ? .userAgent : .other
        case 11:
            switch first {
            case UInt8(ascii: "m"): return matches("min-expires") ? .minExpires : .other
            case UInt8(ascii: "u"): return matches("unsupported") ? .unsupported : .other
            case UInt8(ascii: "r"):
                if matches("retry-after") { return .retryAfter }
                return matches("referred-by") ? .referredBy : .other
            default: return .other
            }
        case 12:
            switch first {
            case UInt8(ascii: "m"): return matches("max-forwards") ? .maxForwards : .other
            case UInt8(ascii: "r"): return matches("record-route") ? .recordRoute : .other
            case UInt8(ascii: "c"): return matches("content-type") ? .contentType : .other
            case UInt8(ascii: "a"): return matches("allow-events") ? .allowEvents : .other
            default: return .other
            }
        case 13:
            switch first {
            case UInt8(ascii: "p"): return matches("proxy-require") ? .proxyRequire : .other
            case UInt8(ascii: "a"): return matches("authorization") ? .authorization : .other
            case UInt8(ascii: "i"): return matches("identity-info") ? .identityInfo : .other
            case UInt8(ascii: "s"): return matches("service-route") ? .serviceRoute : .other
            default: return .other
            }
        case 14:
            switch first {
            case UInt8(ascii: "c"): return matches("content-length") ? .contentLength : .other
            case UInt8(ascii: "r"): return matches("reject-contact") ? .rejectContact : .other
            case UInt8(ascii: "a"): return matches("accept-contact") ? .acceptContact : .other
            default: return .other
            }
        case 15: return first == UInt8(ascii: "s") && matches("session-expires") ? .sessionExpires : .other
        case 16:
            switch first {
            case UInt8(ascii: "c"): return matches("content-encoding") ? .contentEncoding : .other
            case UInt8(ascii: "w"): return matches("www-authenticate") ? .wwwAuthenticate : .other
            default: return .other
            }
        case 18:
            switch first {
            case UInt8(ascii: "p"): return matches("proxy-authenticate") ? .proxyAuthenticate : .other
            case UInt8(ascii: "s"): return matches("subscription-state") ? .subscriptionState : .other
            default: return .other
            }
        case 19:
            switch first {
            case UInt8(ascii: "c"): return matches("content-disposition") ? .contentDisposition : .other
            case UInt8(ascii: "p"):
                if matches("p-asserted-identity") { return .pAssertedIdentity }
                return matches("proxy-authorization") ? .proxyAuthorization : .other
            case UInt8(ascii: "r"): return matches("request-disposition") ? .requestDisposition : .other
            default: return .other
            }
        case 20: return first == UInt8(ascii: "p") && matches("p-preferred-identity") ? .pPreferredIdentity : .other
        default: return .other
        }
    }
}
