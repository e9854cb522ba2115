// Typed header values: name-addr / addr-spec, Via, CSeq, option tags, session timers, and the
// comma-splitting of list headers. Each value is parsed from the message bytes on access.

// MARK: - Comma-separated values

/// The values of every header line of one kind, split at top-level commas (not inside quotes or
/// angle brackets), trimmed. No allocation: it walks the message's index.
public struct HeaderValues: Sequence, IteratorProtocol, Sendable {
    private let message: SIPMessage
    private let kind: HeaderKind
    private var line: Int
    private var pos = -1
    private var lineEnd = 0

    init(_ message: SIPMessage, _ kind: HeaderKind) {
        self.message = message
        self.kind = kind
        self.line = message.firstPosition(of: kind) ?? message.headerCount
    }

    public mutating func next() -> ByteView? {
        while line < message.headerCount {
            let e = message.entry(line)
            guard e.kind == kind else { line += 1; continue }
            if pos < 0 { pos = Int(e.valueStart); lineEnd = Int(e.valueEnd) }
            if pos > lineEnd { pos = -1; line += 1; continue }
            let (s, t) = message.bytes.withUnsafeBytes { raw in splitListValue(raw.baseAddress!, pos, lineEnd) }
            pos = t + 1
            return ByteView(message.bytes, s.0, s.1)
        }
        return nil
    }
}

extension SIPMessage {
    /// All values of `kind`, across its lines, split at commas.
    public func values(_ kind: HeaderKind) -> HeaderValues { HeaderValues(self, kind) }

    /// Number of values of `kind` (e.g. Via values across every Via line).
    public func valueCount(_ kind: HeaderKind) -> Int {
        guard let first = firstPosition(of: kind) else { return 0 }
        return bytes.withUnsafeBytes { raw in
            var n = 0
            for i in first..<headerCount where entry(i).kind == kind {
                var pos = Int(entry(i).valueStart)
                let end = Int(entry(i).valueEnd)
                repeat {
                    pos = splitListValue(raw.baseAddress!, pos, end).1 + 1
                    n += 1
                } while pos <= end
            }
            return n
        }
    }

    /// The first value of list header `kind` (the top Via, the first Route...), without copying the index.
    public func topValue(_ kind: HeaderKind) -> ByteView? {
        guard let p = firstPosition(of: kind) else { return nil }
        let e = entry(p)
        let r = bytes.withUnsafeBytes { raw in splitListValue(raw.baseAddress!, Int(e.valueStart), Int(e.valueEnd)).0 }
        return ByteView(bytes, r.0, r.1)
    }
}

/// One value of a list header from `from`: returns its trimmed range and the offset of the comma (or end).
package func splitListValue(_ base: UnsafeRawPointer, _ from: Int, _ end: Int) -> ((Int, Int), Int) {
    var i = from
    var quoted = false, angle = false
    while i < end {
        let b = base.load(fromByteOffset: i, as: UInt8.self)
        if quoted {
            if b == UInt8(ascii: "\\") { i += 2; continue }
            if b == UInt8(ascii: "\"") { quoted = false }
        } else if b == UInt8(ascii: "\"") { quoted = true }
        else if b == UInt8(ascii: "<") { angle = true }
        else if b == UInt8(ascii: ">") { angle = false }
        else if b == UInt8(ascii: ","), !angle { break }
        i += 1
    }
    let stop = Swift.min(i, end)
    var s = from, e = stop
    while s < e, isLWSByte(base.load(fromByteOffset: s, as: UInt8.self)) { s += 1 }
    while e > s, isLWSByte(base.load(fromByteOffset: e - 1, as: UInt8.self)) { e -= 1 }
    return ((s, e), stop)
}


// MARK: - name-addr / addr-spec

/// A `[display-name] <URI> *(;param)` or `URI *(;param)` value: From, To, Contact, Route...
public struct NameAddress: Sendable {
    package let base: [UInt8]
    package var displayStart = -1, displayEnd = -1
    public let uri: SIPURI
    package var paramsStart = 0, paramsEnd = 0
    /// Whether the URI was in angle brackets (its `;params` then belong to the URI, RFC 3261 §20).
    public let hasAngleBrackets: Bool

    /// Parses one value (already split from its list).
    package init(_ base: [UInt8], _ start: Int, _ end: Int, header: HeaderKind) throws(SIPParseError) {
        self.base = base
        var r = (ds: -1, de: -1, us: 0, ue: 0, ps: 0, pe: 0, angle: false)
        let error: SIPParseError? = base.withUnsafeBytes { raw in
            let p = raw.baseAddress!
            var c = Cursor(p, start, end)
            let bad = { (at: Int) in SIPParseError(.badNameAddress, at: at, header: header) }
            c.skipLWS()
            if c.peek() == UInt8(ascii: "\"") {
                let ds = c.pos
                guard c.quotedString() else { return bad(ds) }
                r.ds = ds; r.de = c.pos
                c.skipLWS()
                guard c.peek() == UInt8(ascii: "<") else { return bad(c.pos) }
            } else if c.peek() != UInt8(ascii: "<") {
                // Either a token display name (`*(token LWS)`) before '<', or an addr-spec.
                let ds = c.pos
                var probe = c
                var lastTokenEnd = -1
                while true {
                    guard probe.token() != nil else { break }
                    lastTokenEnd = probe.pos
                    probe.skipLWS()
                }
                if lastTokenEnd > 0, probe.peek() == UInt8(ascii: "<") {
                    r.ds = ds; r.de = lastTokenEnd
                    c = probe
                }
            }
            if c.eat(UInt8(ascii: "<")) {
                let us = c.pos
                let close = firstIndex(of: UInt8(ascii: ">"), p, from: us, end: end)
                guard close < end else { return bad(us) }
                r.us = us; r.ue = close
                r.angle = true
                c.pos = close + 1
            } else {
                // addr-spec: the URI cannot hold ';', ',', '?' or blanks (RFC 3261 §20: those need <>).
                let us = c.pos
                while let b = c.peek(), b != UInt8(ascii: ";"), !isLWSByte(b) {
                    if b == UInt8(ascii: "?") || b == UInt8(ascii: ",") { return bad(c.pos) }
                    c.pos += 1
                }
                r.us = us; r.ue = c.pos
            }
            r.ps = c.pos
            guard c.headerParameters({ _ in }) else { return bad(c.pos) }
            r.pe = c.pos
            c.skipLWS()
            guard c.atEnd else { return bad(c.pos) }
            return nil
        }
        if let error { throw error }
        displayStart = r.ds; displayEnd = r.de
        do {
            uri = try SIPURI(base, r.us, r.ue)
        } catch {
            throw SIPParseError(.badNameAddress, at: error.offset, header: header)
        }
        paramsStart = r.ps; paramsEnd = r.pe
        hasAngleBrackets = r.angle
    }

    /// The display name as written (quoted strings keep their quotes), if any.
    public var displayName: ByteView? { displayStart < 0 ? nil : ByteView(base, displayStart, displayEnd) }

    /// Header parameters (after the URI, or after `>`).
    public var parameters: [(name: ByteView, value: ByteView?)] {
        headerParameters(base, paramsStart, paramsEnd)
    }

    /// The value of header parameter `name`: nil if absent, `.some(nil)` if valueless.
    public func parameter(_ name: String) -> ByteView?? {
        headerParameter(base, paramsStart, paramsEnd, name)
    }

    /// The `tag` parameter (From/To).
    public var tag: ByteView? { headerParameter(base, paramsStart, paramsEnd, "tag" as StaticString) ?? nil }
}

package func headerParameters(_ base: [UInt8], _ start: Int, _ end: Int) -> [(name: ByteView, value: ByteView?)] {
    var ranges: [ParameterRange] = []
    base.withUnsafeBytes { raw in
        var c = Cursor(raw.baseAddress!, start, end)
        _ = c.headerParameters { ranges.append($0) }
    }
    return ranges.map { (ByteView(base, $0.nameStart, $0.nameEnd), $0.valueStart < 0 ? nil : ByteView(base, $0.valueStart, $0.valueEnd)) }
}

/// Finds one header parameter by a lowercase constant name, without allocating (the hot path:
/// From/To tags, Via branch). Jumps from ';' to ';' and falls back to the full parameter scanner
/// only where a quoted string could hide a ';'. The syntax of the whole list is `validate()`'s
/// business; on valid input both ways give the same answer.
package func headerParameter(_ base: [UInt8], _ start: Int, _ end: Int, _ name: StaticString) -> ByteView?? {
    // (-2, _) : not found; (-1, _): present without a value; otherwise the value's range.
    let found: (Int, Int) = base.withUnsafeBytes { raw in
        let p = raw.baseAddress!
        let n = raw.count
        let nameLength = name.utf8CodeUnitCount
        @inline(__always) func byte(_ i: Int) -> UInt8 { p.load(fromByteOffset: i, as: UInt8.self) }
        var i = start
        while true {
            let j = firstIndex(of: UInt8(ascii: ";"), or: UInt8(ascii: "\""), p, from: i, end: end, readable: n)
            guard j < end else { return (-2, 0) }
            guard byte(j) == UInt8(ascii: ";") else { break }
            i = j &+ 1
            while i < end, isLWSByte(byte(i)) { i &+= 1 }
            let ne = i &+ nameLength
            guard ne <= end, bytesEqualLowercase(p, i, ne, name), ne == end || !ByteClass.token.contains(byte(ne)) else { continue }
            i = ne
            while i < end, isLWSByte(byte(i)) { i &+= 1 }
            guard i < end, byte(i) == UInt8(ascii: "=") else { return (-1, 0) }
            i &+= 1
            while i < end, isLWSByte(byte(i)) { i &+= 1 }
            let vs = i
            while i < end, ByteClass.paramValue.contains(byte(i)) { i &+= 1 }
            return (vs, i)
        }
        var c = Cursor(p, start, end)
        var hit: ParameterRange?
        _ = c.headerParameters { r in
            if hit == nil && bytesEqualLowercase(p, r.nameStart, r.nameEnd, name) { hit = r }
        }
        guard let hit else { return (-2, 0) }
        return (hit.valueStart < 0 ? -1 : hit.valueStart, hit.valueEnd)
    }
    switch found.0 {
    case -2: return nil
    case -1: return .some(nil)
    default: return .some(ByteView(base, found.0, found.1))
    }
}

/// Finds one header parameter by name without allocating.
package func headerParameter(_ base: [UInt8], _ start: Int, _ end: Int, _ name: String) -> ByteView?? {
    var found: ParameterRange?
    base.withUnsafeBytes { raw in
        var c = Cursor(raw.baseAddress!, start, end)
        _ = c.headerParameters { p in
            guard found == nil else { return }
            if ByteView.rangeEqualsIgnoringCase(raw, p.nameStart, p.nameEnd, name) { found = p }
        }
    }
    guard let p = found else { return nil }
    return .some(p.valueStart < 0 ? nil : ByteView(base, p.valueStart, p.valueEnd))
}

extension ByteView {
    package static func rangeEqualsIgnoringCase(_ raw: UnsafeRawBufferPointer, _ s: Int, _ e: Int, _ name: String) -> Bool {
        var it = name.utf8.makeIterator()
        for i in s..<e {
            guard let c = it.next(), asciiLower(c) == asciiLower(raw[i]) else { return false }
        }
        return it.next() == nil
    }
}

// MARK: - Via

/// One Via value: `SIP/2.0/UDP host:port;branch=...;received=...;rport`.
public struct ViaValue: Sendable {
    package let base: [UInt8]
    package var protocolStart = 0, protocolEnd = 0, versionStart = 0, versionEnd = 0
    package var transportStart = 0, transportEnd = 0, hostStart = 0, hostEnd = 0
    package var portValue = -1
    package var paramsStart = 0, paramsEnd = 0

    package init(_ base: [UInt8], _ start: Int, _ end: Int) throws(SIPParseError) {
        self.base = base
        var v = (0, 0, 0, 0, 0, 0, 0, 0, -1, 0, 0)
        let error: SIPParseError? = base.withUnsafeBytes { raw in
            var c = Cursor(raw.baseAddress!, start, end)
            let bad = { (at: Int) in SIPParseError(.badVia, at: at, header: .via) }
            c.skipLWS()
            guard let ps = c.token() else { return bad(c.pos) }
            v.0 = ps; v.1 = c.pos
            guard c.eatSeparator(UInt8(ascii: "/")), let vs = c.token() else { return bad(c.pos) }
            v.2 = vs; v.3 = c.pos
            guard c.eatSeparator(UInt8(ascii: "/")), let ts = c.token() else { return bad(c.pos) }
            v.4 = ts; v.5 = c.pos
            // sent-by = host [ COLON port ]: LWS is required before it, allowed around the colon.
            let beforeHost = c.pos
            c.skipLWS()
            guard c.pos > beforeHost else { return bad(c.pos) }
            let hs = c.pos
            guard c.host() else { return bad(c.pos) }
            v.6 = hs; v.7 = c.pos
            if c.eatSeparator(UInt8(ascii: ":")) {
                guard let port = c.decimal(max: 65_535) else { return bad(c.pos) }
                v.8 = port
            }
            v.9 = c.pos
            guard c.headerParameters({ _ in }) else { return bad(c.pos) }
            v.10 = c.pos
            c.skipLWS()
            guard c.atEnd else { return bad(c.pos) }
            return nil
        }
        if let error { throw error }
        (protocolStart, protocolEnd, versionStart, versionEnd, transportStart, transportEnd,
         hostStart, hostEnd, portValue, paramsStart, paramsEnd) = v
    }

    /// `SIP`.
    public var protocolName: ByteView { ByteView(base, protocolStart, protocolEnd) }
    /// `2.0`.
    public var protocolVersion: ByteView { ByteView(base, versionStart, versionEnd) }
    /// `UDP`, `TCP`, `TLS`, `SCTP`, `WS`... any token.
    public var transport: ByteView { ByteView(base, transportStart, transportEnd) }
    /// sent-by host (IPv6 references with brackets).
    public var host: ByteView { ByteView(base, hostStart, hostEnd) }
    /// sent-by port, if given.
    public var port: Int? { portValue < 0 ? nil : portValue }

    public var parameters: [(name: ByteView, value: ByteView?)] { headerParameters(base, paramsStart, paramsEnd) }
    /// The value of parameter `name`: nil if absent, `.some(nil)` if valueless.
    public func parameter(_ name: String) -> ByteView?? { headerParameter(base, paramsStart, paramsEnd, name) }

    public var branch: ByteView? { headerParameter(base, paramsStart, paramsEnd, "branch" as StaticString) ?? nil }
    public var received: ByteView? { parameter("received") ?? nil }
    public var maddr: ByteView? { parameter("maddr") ?? nil }
    /// `rport` is present (with or without a value).
    public var hasRport: Bool { parameter("rport") != nil }
    /// The `rport` value filled in by a server, if any.
    public var rport: Int? { (parameter("rport") ?? nil).flatMap { Int($0.string) } }
    public var ttl: Int? { (parameter("ttl") ?? nil).flatMap { Int($0.string) }.flatMap { $0 <= 255 ? $0 : nil } }
}

// MARK: - Scalars

/// The CSeq header: sequence number (up to 2^32-1) and method.
public struct CSeqValue: Sendable, Equatable {
    public let number: UInt32
    public let method: SIPMethod

    public init(number: UInt32, method: SIPMethod) {
        self.number = number
        self.method = method
    }
}

/// Session-Expires (RFC 4028): the interval and who refreshes.
public struct SessionExpiresValue: Sendable, Equatable {
    public enum Refresher: Sendable, Equatable { case uac, uas }
    public let seconds: UInt32
    public let refresher: Refresher?

    public init(seconds: UInt32, refresher: Refresher?) {
        self.seconds = seconds
        self.refresher = refresher
    }
}

/// The Contact header of a message: `*` (REGISTER removal) or a list of addresses.
public enum ContactValue: Sendable {
    case star
    case addresses([NameAddress])
}
