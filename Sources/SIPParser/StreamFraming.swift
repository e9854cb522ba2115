/// What the front of a SIP byte stream (TCP, TLS) holds.
public enum StreamFrame: Sendable, Equatable {
    /// A whole message of this many bytes (headers and Content-Length body).
    case message(length: Int)
    /// An RFC 5626 keep-alive ping (CRLFCRLF) of this many bytes: answer with a CRLF pong.
    case keepAlivePing(length: Int)
    /// An RFC 5626 pong (a lone CRLF): the peer is alive.
    case keepAlivePong(length: Int)
    /// Not enough bytes yet.
    case needMoreData
}

/// The stream-framing rule (RFC 3261 §18.3, RFC 5626 §4.4.1): a message ends after its headers'
/// empty line plus Content-Length bytes; Content-Length is mandatory on streams. A stream that
/// cannot be framed (garbage, bad or conflicting lengths, headers beyond the size limit) throws:
/// the connection must then be closed, as nothing after the error can be trusted. Where the
/// headers are whole, the error carries the status to answer first (400; 413 for a body over the
/// limit), as a datagram with the same fault would get.
public func frameSIPStream(_ bytes: UnsafeRawBufferPointer, limits: SIPParserLimits = .default) throws(SIPParseError) -> StreamFrame {
    let count = bytes.count
    guard count > 0, let base = bytes.baseAddress else { return .needMoreData }
    @inline(__always) func byte(_ i: Int) -> UInt8 { base.load(fromByteOffset: i, as: UInt8.self) }

    if byte(0) == 0x0D {
        guard count >= 2 else { return .needMoreData }
        guard byte(1) == 0x0A else { throw SIPParseError(.streamGarbage, at: 1, status: nil) }
        if count == 2 { return .keepAlivePong(length: 2) }
        guard byte(2) == 0x0D else { return .keepAlivePong(length: 2) }
        guard count >= 4 else { return .needMoreData }
        guard byte(3) == 0x0A else { throw SIPParseError(.streamGarbage, at: 3, status: nil) }
        return .keepAlivePing(length: 4)
    }
    // A message starts with a method token or "SIP/": anything else is garbage, found at once
    // rather than after buffering up to the size limit.
    guard ByteClass.token.contains(byte(0)) else { throw SIPParseError(.streamGarbage, at: 0, status: nil) }

    // Find the empty line, scanning no further than the size limit allows.
    let window = min(count, limits.maxMessageBytes)
    var headersEnd = -1
    var i = 0
    while true {
        let lf = firstIndex(of: 0x0A, base, from: i, end: window)
        guard lf < window else { break }
        guard lf > 0, byte(lf - 1) == 0x0D else { throw SIPParseError(.controlCharacter, at: lf, status: nil) }
        if lf + 2 < count, byte(lf + 1) == 0x0D, byte(lf + 2) == 0x0A {
            headersEnd = lf + 3
            break
        }
        i = lf + 1
    }
    guard headersEnd >= 0 else {
        if count >= limits.maxMessageBytes { throw SIPParseError(.messageTooLarge, at: limits.maxMessageBytes, status: 513) }
        return .needMoreData
    }

    // Content-Length: look at each header line's name (a line start is after a CRLF not followed by blank).
    var contentLength = -1
    var lineStart = firstIndex(of: 0x0A, base, from: 0, end: headersEnd) + 1
    while lineStart < headersEnd - 2 {
        let lf = firstIndex(of: 0x0A, base, from: lineStart, end: headersEnd)
        var nameEnd = lineStart
        while nameEnd < lf, ByteClass.token.contains(byte(nameEnd)) { nameEnd += 1 }
        let isCL = (nameEnd - lineStart == 1 && byte(lineStart) | 0x20 == UInt8(ascii: "l"))
            || bytesEqualLowercase(base, lineStart, nameEnd, "content-length")
        // Continuation lines of this header end at the next CRLF not followed by a blank.
        var lineEnd = lf
        while lineEnd + 1 < headersEnd, isBlank(byte(lineEnd + 1)) {
            lineEnd = firstIndex(of: 0x0A, base, from: lineEnd + 1, end: headersEnd)
        }
        if isCL {
            var c = Cursor(base, nameEnd, lineEnd - 1)
            c.skipLWS()
            guard c.eat(UInt8(ascii: ":")) else { throw SIPParseError(.badContentLength, at: c.pos, status: 400, header: .contentLength) }
            c.skipLWS()
            let digitsStart = c.pos
            guard let value = c.decimal(max: limits.maxMessageBytes) else {
                // Digits, but more than any message may hold (2^64 included): the body is too large.
                if digitsStart < lineEnd - 1, isDigit(byte(digitsStart)) {
                    var end = digitsStart
                    while end < lineEnd - 1, isDigit(byte(end)) { end += 1 }
                    var tail = Cursor(base, end, lineEnd - 1)
                    tail.skipLWS()
                    if tail.atEnd { throw SIPParseError(.bodyTooLarge, at: digitsStart, status: 413, header: .contentLength) }
                }
                throw SIPParseError(.badContentLength, at: c.pos, status: 400, header: .contentLength)
            }
            c.skipLWS()
            guard c.atEnd else { throw SIPParseError(.badContentLength, at: c.pos, status: 400, header: .contentLength) }
            if contentLength >= 0 && value != contentLength {
                throw SIPParseError(.conflictingContentLength, at: lineStart, status: 400, header: .contentLength)
            }
            contentLength = value
        }
        lineStart = lineEnd + 1
    }
    guard contentLength >= 0 else { throw SIPParseError(.missingContentLength, at: headersEnd, status: 400, header: .contentLength) }
    guard contentLength <= limits.maxBodyBytes else { throw SIPParseError(.bodyTooLarge, at: 0, status: 413, header: .contentLength) }
    let total = headersEnd + contentLength
    guard total <= limits.maxMessageBytes else { throw SIPParseError(.messageTooLarge, at: 0, status: 513) }
    return count >= total ? .message(length: total) : .needMoreData
}
