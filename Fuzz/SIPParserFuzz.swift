// libFuzzer entry point: parse + typed access + stream framing, compiled into one module with the
// SIPParser sources (see Fuzz/run.sh). A crash or a failed invariant below is a bug.

@_cdecl("LLVMFuzzerTestOneInput")
public func sipParserFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let limits = SIPParserLimits(maxMessageBytes: 65_535, maxHeaders: 64, maxHeaderBytes: 2_048, maxVias: 16)
    if let message = try? SIPMessage(parsing: bytes, limits: limits) {
        exercise(message, limits)
    }
    // The same bytes as a stream: frame until the buffer is used up or an error.
    var offset = 0
    while offset < bytes.count {
        let frame = bytes.withUnsafeBytes { raw in
            try? frameSIPStream(UnsafeRawBufferPointer(rebasing: raw[offset...]), limits: limits)
        }
        guard let frame else { break }
        switch frame {
        case .needMoreData: offset = bytes.count
        case .keepAlivePing(let n), .keepAlivePong(let n): offset += n
        case .message(let n):
            precondition(n > 0 && offset + n <= bytes.count, "framer returned a length past the buffer")
            if let m = try? SIPMessage(parsing: Array(bytes[offset..<offset + n]), limits: limits) {
                precondition(m.contentLength != nil, "a framed message has a Content-Length")
                precondition(m.messageLength == n, "framer and parser disagree on the length")
            }
            offset += n
        }
    }
    return 0
}

func exercise(_ m: SIPMessage, _ limits: SIPParserLimits) {
    _ = try? m.validate(limits: limits)
    _ = m.method; _ = m.statusCode; _ = m.reasonPhrase?.string
    _ = try? m.requestURI().parameters
    _ = m.callID?.string; _ = try? m.cseq(); _ = m.cseqMethodBytes
    _ = try? m.from().parameters; _ = try? m.to().tag; _ = m.tag(of: .from); _ = m.tag(of: .to)
    _ = try? m.vias().map { ($0.branch, $0.rport, $0.ttl, $0.received, $0.parameters.count) }
    _ = m.topViaBranch
    _ = try? m.maxForwards(); _ = try? m.expires(); _ = try? m.sessionExpires(); _ = try? m.minSE()
    _ = try? m.contact(); _ = m.contentType
    for kind in [HeaderKind.route, .recordRoute, .path, .pAssertedIdentity] {
        _ = try? m.addresses(kind).map { ($0.uri.parameters.count, $0.uri.user?.unescaped, $0.displayName) }
    }
    for kind in [HeaderKind.require, .proxyRequire, .supported] { _ = try? m.optionTags(kind) }
    for i in 0..<m.headerCount { _ = m.header(at: i).value.count }
}
