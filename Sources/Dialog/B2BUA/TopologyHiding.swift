import SIPParser
import Transport

// Topology hiding: every message on a leg is rebuilt from that leg's own record — our Via, our
// Contact for the leg's listener tag, the leg's Call-ID and tags — and only a whitelist of headers
// that describe the session (MessageBuilder.endToEnd, Refer-To, Referred-By) crosses from the
// other leg. Identifiers of one leg that a message names (a Replaces) are translated to the other's.
extension B2BUA {
    /// Our address on a leg: this worker's own UDP port when the leg uses it, else the listener
    /// with the leg's tag (any node's listener of that tag can speak for the leg).
    func localAddress(_ leg: LegRecord) -> LocalAddress { localAddress(leg.hop, tag: leg.listenerTag) }

    func localAddress(_ hop: Hop, tag: String? = nil) -> LocalAddress {
        if hop.transport == .udp, hop.worker == clock.index, let ownUDP { return ownUDP }
        return addresses.address(for: hop.transport, tag: tag)
    }

    /// The hop toward a dispatcher destination (or probe): by this worker's own UDP port when it
    /// has one, so the answers come straight back to it.
    func byOwnPort(_ hop: Hop) -> Hop {
        guard hop.transport == .udp, ownUDP != nil else { return hop }
        return Hop(.udp, hop.address, worker: clock.index)
    }

    /// Our Via on a leg's request, with a new branch that names the slot its client transaction
    /// will take (the request is handed to `transactions.startClient` right after it is built).
    func via(_ leg: LegRecord, into b: inout MessageBuilder) { via(leg.hop, tag: leg.listenerTag, into: &b) }

    func via(_ hop: Hop, tag: String? = nil, into b: inout MessageBuilder) {
        let local = localAddress(hop, tag: tag)
        b.via(hop.transport, host: local.host, port: local.port, ids: &ids, slot: transactions.nextClientSlot)
    }

    /// Our Contact on a leg: the user part, and the address of the leg's listener.
    func contact(_ leg: LegRecord) -> MessageBuilder.OurContact {
        let local = localAddress(leg)
        return MessageBuilder.OurContact(user: leg.contactUser, host: local.host, port: local.port, transport: leg.hop.transport)
    }

    func contact(_ leg: LegRecord, into b: inout MessageBuilder) { b.contact(contact(leg)) }

    /// Whether `request`'s top Via is one we wrote: a branch of our form (`z9hG4bKs<worker>x...`)
    /// and a sent-by that is one of our addresses. No one else puts our address in their Via.
    func isOurOwn(_ request: SIPMessage) -> Bool {
        guard let via = try? request.topVia(), let branch = via.branch, branch.count > 7,
              branch.withUnsafeBytes({ ShardedIdentifiers.worker(of: $0.dropFirst(7), workers: 1_000) }) != nil else { return false }
        var host = via.host.string
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return config.isOurs(host: host, port: via.port ?? 5060)
    }

    /// "name-addr" or "addr-spec" of a From/To value without its header parameters (the tag).
    static func addressPart(_ address: NameAddress) -> [UInt8] {
        var end = address.paramsStart
        let base = address.base
        while end > 0, isLWSByte(base[end - 1]) { end -= 1 }
        let start = address.displayStart >= 0 ? address.displayStart : (address.hasAngleBrackets ? address.uri.start - 1 : address.uri.start)
        return Array(base[start..<end])
    }

    static let sdpType = ByteView(text: "application/sdp")

    /// The URI of a message's first Contact (nil for none or `*`). The message was validated, so
    /// a scan finds it without parsing the whole list: inside `<>` when there are brackets before
    /// the first `,` or `;` (outside a quoted display name), else up to the first `;`, `,` or space.
    static func contactURI(of message: SIPMessage) -> [UInt8]? {
        guard let value = message.firstValue(.contact) else { return nil }
        return value.withUnsafeBytes { raw -> [UInt8]? in
            let n = raw.count
            func isSpace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0D || b == 0x0A }
            var i = 0
            while i < n, isSpace(raw[i]) { i += 1 }
            guard i < n, raw[i] != UInt8(ascii: "*") else { return nil }
            var j = i, quoted = false
            scan: while j < n {
                switch raw[j] {
                case UInt8(ascii: "\\") where quoted: j += 1
                case UInt8(ascii: "\""): quoted.toggle()
                case UInt8(ascii: "<") where !quoted:
                    var end = j + 1
                    while end < n, raw[end] != UInt8(ascii: ">") { end += 1 }
                    return Array(raw[(j + 1)..<end])
                case UInt8(ascii: ","), UInt8(ascii: ";"): if !quoted { break scan }
                default: break
                }
                j += 1
            }
            var end = i
            while end < n, !isSpace(raw[end]), raw[end] != UInt8(ascii: ";"), raw[end] != UInt8(ascii: ",") { end += 1 }
            return end > i ? Array(raw[i..<end]) : nil
        }
    }

    static func supports(_ message: SIPMessage, _ tag: String) -> Bool {
        ((try? message.optionTags(.supported)) ?? []).contains { $0.equalsIgnoringCase(tag) }
            || ((try? message.optionTags(.require)) ?? []).contains { $0.equalsIgnoringCase(tag) }
    }

    static func allows(_ message: SIPMessage, _ method: String) -> Bool {
        message.values(.allow).contains { $0.equalsIgnoringCase(method) }
    }

    /// The session headers that cross legs (MessageBuilder.endToEnd) except the session timer's,
    /// which each leg has its own of: Session-Expires and Min-SE stay behind, "timer" leaves
    /// Supported and Require (and is added back to Supported when this leg asks for a timer).
    static func copySessionHeaders(from source: SIPMessage, into b: inout MessageBuilder, addTimer: Bool) {
        var supportedWritten = false
        for i in 0..<source.headerCount {
            let h = source.header(at: i)
            guard MessageBuilder.endToEnd.contains(h.kind), h.kind != .sessionExpires, h.kind != .minSE else { continue }
            if h.kind == .supported || h.kind == .require,
               addTimer && h.kind == .supported && !supportedWritten || Self.mentionsTimer(h.value) {
                let tags = h.value.string.split(separator: ",").map { String($0.trimmingSpaces) }
                    .filter { !$0.isEmpty && $0.lowercased() != "timer" }
                var kept = tags
                if h.kind == .supported && addTimer && !supportedWritten { kept.append("timer"); supportedWritten = true }
                if !kept.isEmpty { b.header(h.name.string, kept.joined(separator: ", ")) }
            } else {
                b.header(copying: h.name, h.value)
            }
        }
        if addTimer && !supportedWritten { b.header("Supported", "timer") }
    }

    /// Whether an option-tag list holds "timer" in any case (the rest pass as they are, unsplit).
    static func mentionsTimer(_ value: ByteView) -> Bool {
        value.withUnsafeBytes { raw in
            guard raw.count >= 5 else { return false }
            for i in 0...(raw.count - 5) where raw[i] | 0x20 == UInt8(ascii: "t") {
                if raw[i + 1] | 0x20 == UInt8(ascii: "i"), raw[i + 2] | 0x20 == UInt8(ascii: "m"), raw[i + 3] | 0x20 == UInt8(ascii: "e"),
                   raw[i + 4] | 0x20 == UInt8(ascii: "r") { return true }
            }
            return false
        }
    }

    // MARK: - Replaces (RFC 3891) across the legs

    /// A Replaces value (`call-id;to-tag=x;from-tag=y[;early-only]`) that names a leg of a call on
    /// this worker, rewritten to name that call's other leg as its peer sees it: the B2BUA is the
    /// far end of each leg, so our tag on one leg becomes the peer's tag on the other and the
    /// other way round. Nil when it names no dialog here (it is then passed as it is).
    func translatedReplaces(_ value: String) -> (value: String, call: Call, side: DialogRecord.Side)? {
        var parts = value.split(separator: ";", omittingEmptySubsequences: false).map { $0.trimmingSpaces }
        guard let callID = parts.first, let call = table[String(callID)], let side = call.side(ofCallID: String(callID)) else { return nil }
        let named = call[side], other = call[side.other]
        func mapped(_ tag: Substring) -> String? {
            if tag == named.localTag { return other.remoteTag }
            if tag == named.remoteTag { return other.localTag }
            return nil
        }
        parts[0] = Substring(other.callID)
        for i in parts.indices.dropFirst() {
            guard let eq = parts[i].firstIndex(of: "=") else { continue }
            let name = parts[i][..<eq].lowercased()
            guard name == "to-tag" || name == "from-tag" else { continue }
            guard let tag = mapped(parts[i][parts[i].index(after: eq)...]) else { return nil }
            parts[i] = Substring("\(name)=\(tag)")
        }
        return (parts.joined(separator: ";"), call, side.other)
    }

    /// A Refer-To value with a Replaces among its URI headers (`<sip:x@y?Replaces=...>`, escaped):
    /// the Replaces translated, and the URI pointed at the peer that holds the dialog it now
    /// names. Anything else comes back as it was.
    func translatedReferTo(_ value: [UInt8]) -> [UInt8] {
        guard let question = value.firstIndex(of: UInt8(ascii: "?")),
              let key = Self.firstIndex(ofCaseless: "replaces=", in: value, from: question) else { return value }
        let start = key + 9
        let end = value[start...].firstIndex { $0 == UInt8(ascii: "&") || $0 == UInt8(ascii: ">") } ?? value.endIndex
        let replaces = String(decoding: ByteView(value, start, end).unescaped, as: UTF8.self)
        guard let translated = translatedReplaces(replaces) else { return value }
        let opened = value[..<question].lastIndex(of: UInt8(ascii: "<")).map { $0 + 1 } ?? 0
        return Array(value[..<opened]) + translated.call[translated.side].remoteTarget + Array(value[question..<start])
            + Array(Self.percentEncoded(translated.value).utf8) + Array(value[end...])
    }

    /// Where `needle` (lowercase ASCII) first occurs in `bytes` from `from`, case folded.
    static func firstIndex(ofCaseless needle: String, in bytes: [UInt8], from: Int) -> Int? {
        let n = Array(needle.utf8)
        guard bytes.count >= n.count else { return nil }
        var i = from
        while i + n.count <= bytes.count {
            if (0..<n.count).allSatisfy({ bytes[i + $0] | 0x20 == n[$0] | 0x20 }) { return i }
            i += 1
        }
        return nil
    }

    private static let hexDigits = Array("0123456789ABCDEF".utf8)

    /// Escapes what may not stand in a URI header value (RFC 3261 §25.1 hvalue): ";", "=", "@", "%"...
    static func percentEncoded(_ text: String) -> String {
        var out = ""
        for b in text.utf8 {
            let c = Character(UnicodeScalar(b))
            if (c.isLetter || c.isNumber) && b < 0x80 || "-_.!~*'()[]/:+$".contains(c) {
                out.append(c)
            } else {
                out += String(decoding: [UInt8(ascii: "%"), hexDigits[Int(b >> 4)], hexDigits[Int(b & 0x0F)]], as: UTF8.self)
            }
        }
        return out
    }
}

extension Substring {
    var trimmingSpaces: Substring {
        var s = self
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return s
    }
}
