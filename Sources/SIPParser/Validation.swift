// Receive-time checks of a UAS or proxy (RFC 3261 §8.2, §16.3, RFC 4475) beyond what indexing
// already enforced: mandatory headers, single-valued headers, numbers in range, CSeq agreeing with
// the method, and the syntax of the headers a proxy acts on.

extension SIPMessage {
    /// Checks the message as a receiving proxy must before acting on it. A thrown error carries the
    /// status to answer a request with (responses that fail are dropped: `status` is nil).
    public func validate(limits: SIPParserLimits = .default) throws(SIPParseError) {
        do {
            try validateRequestOrResponse(limits)
        } catch {
            if isRequestFlag { throw error }
            throw SIPParseError(error.code, at: error.offset, status: nil, header: error.header)
        }
    }

    private func validateRequestOrResponse(_ limits: SIPParserLimits) throws(SIPParseError) {
        try require(.via)
        try require(.from)
        try require(.to)
        try require(.callID)
        try require(.cseq)
        // Single-valued headers appear once (RFC 4475 §3.3.8).
        var seen = InlineArray<64, Bool>(repeating: false)
        for i in 0..<headerCount {
            let e = entry(i)
            guard e.kind.isSingleton else { continue }
            let k = Int(e.kind.rawValue)
            if seen[k] { throw SIPParseError(.duplicateHeader, at: Int(e.lineStart), header: e.kind) }
            seen[k] = true
        }

        _ = try cseq()
        if isRequestFlag {
            let methodMatches = bytes.withUnsafeBytes { raw in
                guard let csm = cseqMethodBytes else { return false }
                return methodEnd - startLineStart == csm.count
                    && memoryEqual(raw, startLineStart, csm.start, csm.count)
            }
            if !methodMatches {
                // RFC 4475 §3.1.2.18: for a method we do not implement, 501 is the better answer.
                throw SIPParseError(.cseqMethodMismatch, at: startLineStart, status: methodCode == 0 ? 501 : 400, header: .cseq)
            }
            let uri = try requestURI()
            // RFC 3261 §19.1.1: a Request-URI never carries URI headers (RFC 4475 §3.1.2.11).
            if uri.headersText != nil { throw SIPParseError(.badRequestURI, at: uri.headersStart, header: nil) }
        }

        guard let callID, !callID.isEmpty, isValidCallID(callID) else {
            throw SIPParseError(.badCallID, at: callID?.start ?? headersEnd, header: .callID)
        }
        _ = try from()
        _ = try to()

        var vias = 0
        for v in values(.via) {
            vias += 1
            guard vias <= limits.maxVias else { throw SIPParseError(.tooManyVias, at: v.start, header: .via) }
            _ = try ViaValue(bytes, v.start, v.end)
        }
        _ = try maxForwards()
        _ = try expires()
        if let first = topValue(.contact), first.equals("*") {
            guard valueCount(.contact) == 1 else { throw SIPParseError(.badNameAddress, at: first.start, header: .contact) }
        } else {
            try checkAddresses(.contact)
        }
        try checkOptionTags(.require)
        try checkOptionTags(.proxyRequire)
        _ = try sessionExpires()
        _ = try minSE()
        try checkAddresses(.route)
        try checkAddresses(.recordRoute)
    }

    // Checks without building arrays: validation runs on every message and allocates nothing.

    private func require(_ kind: HeaderKind) throws(SIPParseError) {
        if firstPosition(of: kind) == nil { throw SIPParseError(.missingHeader, at: headersEnd, header: kind) }
    }

    private func checkAddresses(_ kind: HeaderKind) throws(SIPParseError) {
        guard firstPosition(of: kind) != nil else { return }
        for v in values(kind) { _ = try NameAddress(bytes, v.start, v.end, header: kind) }
    }

    private func checkOptionTags(_ kind: HeaderKind) throws(SIPParseError) {
        guard firstPosition(of: kind) != nil else { return }
        for v in values(kind) {
            let ok = bytes.withUnsafeBytes { raw in
                var c = Cursor(raw.baseAddress!, v.start, v.end)
                return c.token() != nil && c.atEnd
            }
            guard ok else { throw SIPParseError(.badOptionTag, at: v.start, header: kind) }
        }
    }

    /// `word [ "@" word ]` (RFC 3261 §25.1).
    private func isValidCallID(_ id: ByteView) -> Bool {
        bytes.withUnsafeBytes { raw in
            var c = Cursor(raw.baseAddress!, id.start, id.end)
            let s = c.pos
            c.skip(.word)
            guard c.pos > s else { return false }
            if c.eat(UInt8(ascii: "@")) {
                let s2 = c.pos
                c.skip(.word)
                guard c.pos > s2 else { return false }
            }
            return c.atEnd
        }
    }
}

extension SIPMessage {
    /// RFC 3261 §16.3 step 2: a proxy refuses a Request-URI scheme it does not understand with 416.
    /// (Not part of `validate()`: a UAS or a registrar may answer such requests differently, and
    /// RFC 4475 §3.3.2 counts them as well-formed.)
    public func checkRequestURIScheme() throws(SIPParseError) {
        guard isRequestFlag else { return }
        if try requestURI().scheme == .other {
            throw SIPParseError(.unsupportedURIScheme, at: uriStart, status: 416)
        }
    }
}

@inline(__always)
package func memoryEqual(_ raw: UnsafeRawBufferPointer, _ a: Int, _ b: Int, _ count: Int) -> Bool {
    var i = 0
    while i < count {
        if raw[a + i] != raw[b + i] { return false }
        i += 1
    }
    return true
}
