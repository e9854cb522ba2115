import SIPParser
import Transport

/// The SIP stack's intake on one worker: bytes as a transport delivered them become a parsed,
/// checked message, a keep-alive, or an invalid message with the stateless answer SIP calls for;
/// and a message is told which worker owns it. Policy (ACL, flood limits) is the caller's.
public struct MessageIntake: Sendable {
    public let worker: Int
    public let workers: Int
    public let limits: SIPParserLimits

    public init(worker: Int, workers: Int, limits: SIPParserLimits) {
        self.worker = worker
        self.workers = workers
        self.limits = limits
    }

    /// What one delivery turned out to be.
    public enum Outcome {
        /// RFC 3261 §7.5, RFC 5626: CRLFs only, a keep-alive, not a message.
        case keepAlive
        case message(SIPMessage)
        /// Not a valid message: why, the answer to send back if SIP names one and the headers to
        /// build it from are there (`answerable` callers only), and what became of it in words.
        case invalid(SIPParseError, answer: [UInt8]?, outcome: String)
    }

    /// Parses and checks `bytes`. `answerable`: the transport can carry an answer back (not SCTP
    /// here); then an invalid request gets its status statelessly, with the reason in a Warning,
    /// built from the parsed message or, when it did not parse that far, from its lines as written.
    public func take(_ bytes: [UInt8], answerable: Bool) -> Outcome {
        if bytes.allSatisfy({ $0 == 0x0D || $0 == 0x0A }) { return .keepAlive }
        var parsed: SIPMessage?
        do throws(SIPParseError) {
            let message = try SIPMessage(parsing: bytes, limits: limits)
            parsed = message
            try message.validate(limits: limits)
            if message.isRequest { try message.checkRequestURIScheme() }
            return .message(message)
        } catch {
            guard let status = error.status else { return .invalid(error, answer: nil, outcome: "dropped") }
            guard answerable else { return .invalid(error, answer: nil, outcome: "dropped (no way to answer)") }
            if let message = parsed, message.isRequest, message.method != .ack, message.topValue(.via) != nil {
                return .invalid(error, answer: answer(message, status: status, warning: "\(error.code)"), outcome: "answered \(status)")
            }
            var tag = ShardedIdentifiers(worker: worker)
            if let response = MessageBuilder.salvagedResponse(bytes, status: status, toTag: tag.make(), warning: "\(error.code)") {
                return .invalid(error, answer: response, outcome: "answered \(status) from the headers as written")
            }
            return .invalid(error, answer: nil, outcome: "dropped (\(status) would need the headers it lacks)")
        }
    }

    /// A stateless answer to a request (a new To tag, the reason in a Warning, `extra` headers).
    public func answer(_ request: SIPMessage, status: Int, warning: String, extra: [(String, String)] = []) -> [UInt8] {
        var tag = ShardedIdentifiers(worker: worker)
        return MessageBuilder.response(to: request, status: status, toTag: tag.make(),
                                       extraHeaders: extra + [("Warning", "399 sipedge \"\(warning)\"")])
    }

    /// The worker that owns `m`. Responses carry our Via branch, in-dialog requests our tag or
    /// Call-ID: all name their worker. A new request stays with the worker that received it: the
    /// kernel keeps one source on one worker's socket and a connection on one worker, so its
    /// retransmissions and CANCEL arrive there too. With `spreadByCallID` a new request goes to
    /// the worker its Call-ID hashes to instead. The identifiers are read in place: no copy.
    public func owner(of m: SIPMessage, spreadByCallID: Bool = false) -> Int {
        if !m.isRequest, let branch = m.topViaBranch, branch.count > 7,
           let w = branch.withUnsafeBytes({ ShardedIdentifiers.worker(of: $0.dropFirst(7), workers: workers) }) { return w }
        if let w = Self.owner(tag: m.tag(of: .to), callID: m.callID, workers: workers) { return w }
        guard spreadByCallID, let callID = m.callID else { return worker }
        return Int(callID.withUnsafeBytes { Self.fnv1a($0) } % UInt64(workers))
    }

    /// The worker of a dialog named by our tag or, failing that, our Call-ID; nil when neither is ours.
    public static func owner(tag: ByteView?, callID: ByteView?, workers: Int) -> Int? {
        if let tag, let w = tag.withUnsafeBytes({ ShardedIdentifiers.worker(of: $0, workers: workers) }) { return w }
        return callID?.withUnsafeBytes { ShardedIdentifiers.worker(of: $0, workers: workers) }
    }

    /// FNV-1a, 64 bits: a stable spread of Call-IDs (and of the dispatcher's hash keys).
    public static func fnv1a(_ bytes: some Sequence<UInt8>) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes {
            h ^= UInt64(b)
            h &*= 0x0000_0100_0000_01b3
        }
        return h
    }
}
