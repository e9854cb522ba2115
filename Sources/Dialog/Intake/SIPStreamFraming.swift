import SIPParser
import Transport

/// SIP's stream-framing rule (SIPParser's `frameSIPStream`) adapted to Transport's framer: whole
/// messages go up, a CRLFCRLF keep-alive ping is answered with a CRLF pong (RFC 5626 §4.4.1), and a
/// stream that cannot be framed closes the connection with the parser's reason, after the status
/// SIP names for the fault where the headers can be read (400, or 413 for a body over the limit).
public struct SIPStreamFraming: StreamFramer {
    public let limits: SIPParserLimits

    public init(limits: SIPParserLimits = .default) {
        self.limits = limits
    }

    private static let pong: [UInt8] = [0x0D, 0x0A]

    public func decide(_ buffered: UnsafeRawBufferPointer) -> FrameDecision {
        do {
            switch try frameSIPStream(buffered, limits: limits) {
            case .message(let length): return .frame(length)
            case .keepAlivePing(let length): return .reply(consume: length, with: Self.pong)
            case .keepAlivePong(let length): return .skip(length)
            case .needMoreData: return .needMore
            }
        } catch {
            // The same fault in a datagram gets its status: over a stream too, before the close.
            var tag = ShardedIdentifiers(worker: 0)
            if let status = error.status,
               let reply = MessageBuilder.salvagedResponse(buffered, status: status, toTag: tag.make(),
                                                           warning: "\(error.code)") {
                return .refuse(reply: reply, reason: "SIP framing: \(error); answered \(status)")
            }
            return .invalid("SIP framing: \(error)")
        }
    }
}
