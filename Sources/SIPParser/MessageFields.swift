// The typed fields a proxy reads, parsed from the bytes on each access (a pure function of the
// bytes, so the answer, value or error, is the same every time).

extension SIPMessage {
    @inline(__always)
    private func firstEntry(_ kind: HeaderKind) -> HeaderEntry? {
        guard let p = firstPosition(of: kind) else { return nil }
        return entry(p)
    }

    /// The Request-URI, parsed.
    public func requestURI() throws(SIPParseError) -> SIPURI {
        guard isRequestFlag else { throw SIPParseError(.badRequestURI, at: 0) }
        do { return try SIPURI(bytes, uriStart, uriEnd) } catch {
            throw SIPParseError(.badRequestURI, at: error.offset)
        }
    }

    /// Call-ID as written (`word ["@" word]`); nil if absent.
    public var callID: ByteView? {
        guard let e = firstEntry(.callID) else { return nil }
        return ByteView(bytes, Int(e.valueStart), Int(e.valueEnd))
    }

    /// CSeq: number and method.
    public func cseq() throws(SIPParseError) -> CSeqValue {
        guard let e = firstEntry(.cseq) else { throw SIPParseError(.missingHeader, at: headersEnd, header: .cseq) }
        let r: (Int, Int, Int)? = bytes.withUnsafeBytes { raw in
            var c = Cursor(raw.baseAddress!, Int(e.valueStart), Int(e.valueEnd))
            guard let n = c.decimal(max: Int(UInt32.max)) else { return nil }
            let afterNumber = c.pos
            c.skipLWS()
            guard c.pos > afterNumber, let ms = c.token() else { return nil }
            guard c.atEnd else { return nil }
            return (n, ms, c.pos)
        }
        guard let (n, ms, me) = r else { throw SIPParseError(.badCSeq, at: Int(e.valueStart), header: .cseq) }
        let method = bytes.withUnsafeBytes { raw in SIPMethod.known(raw.baseAddress!, ms, me) }
            ?? .other(ByteView(bytes, ms, me).string)
        return CSeqValue(number: UInt32(n), method: method)
    }

    /// The CSeq method's bytes, without building a `SIPMethod` (cheap, for matching).
    public var cseqMethodBytes: ByteView? {
        guard let e = firstEntry(.cseq) else { return nil }
        let r: (Int, Int)? = bytes.withUnsafeBytes { raw in
            var c = Cursor(raw.baseAddress!, Int(e.valueStart), Int(e.valueEnd))
            while let b = c.peek(), isDigit(b) { c.pos += 1 }
            c.skipLWS()
            guard let s = c.token() else { return nil }
            return (s, c.pos)
        }
        return r.map { ByteView(bytes, $0.0, $0.1) }
    }

    /// From, parsed.
    public func from() throws(SIPParseError) -> NameAddress { try singleAddress(.from) }
    /// To, parsed.
    public func to() throws(SIPParseError) -> NameAddress { try singleAddress(.to) }

    private func singleAddress(_ kind: HeaderKind) throws(SIPParseError) -> NameAddress {
        guard let e = firstEntry(kind) else { throw SIPParseError(.missingHeader, at: headersEnd, header: kind) }
        return try NameAddress(bytes, Int(e.valueStart), Int(e.valueEnd), header: kind)
    }

    /// The `tag` of From or To, found without parsing the whole address (the hot path).
    public func tag(of kind: HeaderKind) -> ByteView? {
        guard let e = firstEntry(kind) else { return nil }
        // The header parameters begin after '>' in name-addr form, or at the first ';' otherwise.
        let range: (Int, Int) = bytes.withUnsafeBytes { raw in
            let p = raw.baseAddress!
            let vs = Int(e.valueStart), ve = Int(e.valueEnd)
            let close = firstIndex(of: UInt8(ascii: ">"), p, from: vs, end: ve, readable: raw.count)
            let from = close < ve ? close + 1 : firstIndex(of: UInt8(ascii: ";"), p, from: vs, end: ve, readable: raw.count)
            return (from, ve)
        }
        return headerParameter(bytes, range.0, range.1, "tag" as StaticString) ?? nil
    }

    /// The top Via value.
    public func topVia() throws(SIPParseError) -> ViaValue {
        guard let v = topValue(.via) else { throw SIPParseError(.missingHeader, at: headersEnd, header: .via) }
        return try ViaValue(bytes, v.start, v.end)
    }

    /// Every Via value, top first.
    public func vias() throws(SIPParseError) -> [ViaValue] {
        var out: [ViaValue] = []
        for v in values(.via) { out.append(try ViaValue(bytes, v.start, v.end)) }
        return out
    }

    /// The top Via's branch, found without building the whole Via (the hot path).
    public var topViaBranch: ByteView? {
        guard let e = firstEntry(.via) else { return nil }
        let r: (Int, Int) = bytes.withUnsafeBytes { raw in
            let p = raw.baseAddress!
            let vs = Int(e.valueStart), ve = Int(e.valueEnd)
            // Parameters start at the first ';'; the top value ends at the first ',' after it.
            let semi = firstIndex(of: UInt8(ascii: ";"), p, from: vs, end: ve, readable: raw.count)
            let comma = firstIndex(of: UInt8(ascii: ","), p, from: vs, end: ve, readable: raw.count)
            return semi < comma ? (semi, comma) : (comma, comma)
        }
        return headerParameter(bytes, r.0, r.1, "branch" as StaticString) ?? nil
    }

    /// Max-Forwards (0-255); nil if absent.
    public func maxForwards() throws(SIPParseError) -> Int? {
        try smallNumber(.maxForwards, max: 255, code: .badMaxForwards)
    }

    /// Expires (delta-seconds, up to 2^32-1); nil if absent.
    public func expires() throws(SIPParseError) -> UInt32? {
        try smallNumber(.expires, max: Int(UInt32.max), code: .badExpires).map { UInt32($0) }
    }

    /// Min-SE (RFC 4028) in seconds; nil if absent.
    public func minSE() throws(SIPParseError) -> UInt32? {
        guard let e = firstEntry(.minSE) else { return nil }
        let n: Int? = bytes.withUnsafeBytes { raw in
            var c = Cursor(raw.baseAddress!, Int(e.valueStart), Int(e.valueEnd))
            guard let n = c.decimal(max: Int(UInt32.max)), c.headerParameters({ _ in }) else { return nil }
            c.skipLWS()
            return c.atEnd ? n : nil
        }
        guard let n else { throw SIPParseError(.badNumber, at: Int(e.valueStart), header: .minSE) }
        return UInt32(n)
    }

    /// Session-Expires (RFC 4028): seconds and refresher; nil if absent.
    public func sessionExpires() throws(SIPParseError) -> SessionExpiresValue? {
        guard let e = firstEntry(.sessionExpires) else { return nil }
        let r: (Int, Int, Int)? = bytes.withUnsafeBytes { raw in
            var c = Cursor(raw.baseAddress!, Int(e.valueStart), Int(e.valueEnd))
            guard let n = c.decimal(max: Int(UInt32.max)) else { return nil }
            let ps = c.pos
            guard c.headerParameters({ _ in }) else { return nil }
            let pe = c.pos
            c.skipLWS()
            return c.atEnd ? (n, ps, pe) : nil
        }
        guard let (n, ps, pe) = r else { throw SIPParseError(.badNumber, at: Int(e.valueStart), header: .sessionExpires) }
        var refresher: SessionExpiresValue.Refresher?
        if let value = headerParameter(bytes, ps, pe, "refresher") ?? nil {
            if value.equalsIgnoringCase("uac") { refresher = .uac }
            else if value.equalsIgnoringCase("uas") { refresher = .uas }
            else { throw SIPParseError(.badParameter, at: value.start, header: .sessionExpires) }
        }
        return SessionExpiresValue(seconds: UInt32(n), refresher: refresher)
    }

    private func smallNumber(_ kind: HeaderKind, max: Int, code: SIPParseError.Code) throws(SIPParseError) -> Int? {
        guard let e = firstEntry(kind) else { return nil }
        let n = bytes.withUnsafeBytes { raw in
            SIPMessage.parseDecimal(raw.baseAddress!, Int(e.valueStart), Int(e.valueEnd), max: max)
        }
        guard let n else { throw SIPParseError(code, at: Int(e.valueStart), header: kind) }
        return n
    }

    /// Content-Type's media type (`type/subtype`, parameters excluded); nil if absent.
    public var contentType: ByteView? {
        guard let e = firstEntry(.contentType) else { return nil }
        let end = bytes.withUnsafeBytes { raw in
            var i = Int(e.valueStart)
            while i < Int(e.valueEnd), raw[i] != UInt8(ascii: ";"), !isLWSByte(raw[i]) { i += 1 }
            return i
        }
        return ByteView(bytes, Int(e.valueStart), end)
    }

    /// Route or Record-Route (or Path...) values, parsed, in order.
    public func addresses(_ kind: HeaderKind) throws(SIPParseError) -> [NameAddress] {
        var out: [NameAddress] = []
        for v in values(kind) { out.append(try NameAddress(bytes, v.start, v.end, header: kind)) }
        return out
    }

    /// The Contact header: `*`, or the list of addresses; nil if absent.
    public func contact() throws(SIPParseError) -> ContactValue? {
        guard firstPosition(of: .contact) != nil else { return nil }
        var it = values(.contact)
        if let first = it.next(), first.equals("*") {
            guard it.next() == nil else { throw SIPParseError(.badNameAddress, at: first.start, header: .contact) }
            return .star
        }
        return .addresses(try addresses(.contact))
    }

    /// Option tags of Require, Proxy-Require, Supported or Unsupported.
    public func optionTags(_ kind: HeaderKind) throws(SIPParseError) -> [ByteView] {
        var out: [ByteView] = []
        for v in values(kind) {
            let ok = bytes.withUnsafeBytes { raw in
                var c = Cursor(raw.baseAddress!, v.start, v.end)
                return c.token() != nil && c.atEnd
            }
            // An empty Supported header is legal (no tags); an empty value inside a list is not.
            if v.isEmpty && kind == .supported && lineCount(.supported) == 1 && out.isEmpty { continue }
            guard ok else { throw SIPParseError(.badOptionTag, at: v.start, header: kind) }
            out.append(v)
        }
        return out
    }
}
