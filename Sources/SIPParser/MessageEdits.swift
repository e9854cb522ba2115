/// Changes to a received message (insert, remove, replace byte ranges; SIP-level helpers on top),
/// applied in one pass into an output buffer with Content-Length kept right. The received bytes are
/// never written to. An empty edit list reproduces the message byte for byte.
public struct MessageEdits: Sendable {
    /// One change: replace `start..<end` of the message with `arena[from..<to]` (empty: remove;
    /// empty range: insert). `order` keeps inserts at one offset in the order they were made.
    package struct Operation: Sendable {
        var start: Int, end: Int, from: Int, to: Int, order: Int
    }

    public let message: SIPMessage
    package var operations: [Operation] = []
    package var arena: [UInt8] = []
    private var newBody: (from: Int, to: Int)?

    public init(_ message: SIPMessage) {
        self.message = message
    }

    public var isEmpty: Bool { operations.isEmpty && newBody == nil }

    // MARK: - Byte-range edits

    /// Replaces `range` of the message with `bytes`.
    public mutating func replace(_ range: Range<Int>, with bytes: some Collection<UInt8>) {
        precondition(range.lowerBound >= 0 && range.upperBound <= message.bodyStart, "edits apply to the start line and headers; use setBody")
        let from = arena.count
        arena.append(contentsOf: bytes)
        operations.append(Operation(start: range.lowerBound, end: range.upperBound, from: from, to: arena.count, order: operations.count))
    }

    public mutating func insert(_ bytes: some Collection<UInt8>, at offset: Int) { replace(offset..<offset, with: bytes) }

    public mutating func remove(_ range: Range<Int>) { replace(range, with: EmptyCollection()) }

    // MARK: - SIP-level edits

    /// Removes header line `i` (CRLF and folds included).
    public mutating func removeHeader(at i: Int) {
        let e = message.entry(i)
        remove(Int(e.lineStart)..<Int(e.lineEnd))
    }

    /// Removes every header line of `kind`.
    public mutating func removeHeaders(_ kind: HeaderKind) {
        guard let first = message.firstPosition(of: kind) else { return }
        for i in first..<message.headerCount where message.entry(i).kind == kind { removeHeader(at: i) }
    }

    /// Replaces the value of header line `i`, keeping its name as written.
    public mutating func replaceHeaderValue(at i: Int, with value: some Collection<UInt8>) {
        let e = message.entry(i)
        replace(Int(e.valueStart)..<Int(e.valueEnd), with: value)
    }

    /// Adds a header line `Name: value` at the top of the headers (right after the start line).
    public mutating func addHeaderAtTop(_ name: String, _ value: some Collection<UInt8>) {
        insertLine(name, value, at: message.startLineEnd + 2)
    }

    /// Adds a header line `Name: value` after the last header.
    public mutating func addHeaderAtEnd(_ name: String, _ value: some Collection<UInt8>) {
        insertLine(name, value, at: message.headersEnd)
    }

    /// Adds a new top Via (before the first Via line, or at the top if there is none).
    public mutating func addTopVia(_ value: some Collection<UInt8>) {
        let at = message.firstPosition(of: .via).map { Int(message.entry($0).lineStart) } ?? message.startLineEnd + 2
        insertLine("Via", value, at: at)
    }

    /// Removes the top Via value: the whole line if it holds one value, else just that value.
    public mutating func removeTopVia() {
        guard let p = message.firstPosition(of: .via) else { return }
        var it = message.values(.via)
        guard it.next() != nil else { return }
        let e = message.entry(p)
        let second = it.next()
        if let second, second.start < Int(e.valueEnd) {
            remove(Int(e.valueStart)..<second.start)
        } else {
            removeHeader(at: p)
        }
    }

    /// Replaces the Request-URI.
    public mutating func setRequestURI(_ uri: some Collection<UInt8>) {
        precondition(message.isRequest, "responses have no Request-URI")
        replace(message.uriStart..<message.uriEnd, with: uri)
    }

    /// Replaces the body; Content-Length is rewritten to match when serialized.
    public mutating func setBody(_ body: some Collection<UInt8>) {
        let from = arena.count
        arena.append(contentsOf: body)
        newBody = (from, arena.count)
    }

    private mutating func insertLine(_ name: String, _ value: some Collection<UInt8>, at offset: Int) {
        let from = arena.count
        arena.append(contentsOf: name.utf8)
        arena.append(contentsOf: ": ".utf8)
        arena.append(contentsOf: value)
        arena.append(0x0D)
        arena.append(0x0A)
        operations.append(Operation(start: offset, end: offset, from: from, to: arena.count, order: operations.count))
    }

    // MARK: - Serializing

    /// Appends the edited message to `out`. With `ensureContentLength` (stream transports), a
    /// message that had no Content-Length gets one. Throws if two edits overlap.
    public func serialize(into out: inout [UInt8], ensureContentLength: Bool = false) throws(SIPParseError) {
        var ops = operations
        var bodyLength = message.endOffset - message.bodyStart
        if let newBody { bodyLength = newBody.to - newBody.from }
        var scratch = arena
        // Content-Length follows the body: rewrite every Content-Length value, or add the header.
        if newBody != nil || (ensureContentLength && message.declaredContentLength < 0) {
            let digitsFrom = scratch.count
            appendDecimal(bodyLength, to: &scratch)
            let digitsTo = scratch.count
            if let first = message.firstPosition(of: .contentLength) {
                for i in first..<message.headerCount where message.entry(i).kind == .contentLength {
                    let e = message.entry(i)
                    if ops.contains(where: { $0.start == Int(e.lineStart) && $0.end == Int(e.lineEnd) && $0.from == $0.to }) { continue }
                    ops.append(Operation(start: Int(e.valueStart), end: Int(e.valueEnd), from: digitsFrom, to: digitsTo, order: ops.count))
                }
            } else {
                let from = scratch.count
                scratch.append(contentsOf: "Content-Length: ".utf8)
                scratch.append(contentsOf: scratch[digitsFrom..<digitsTo])
                scratch.append(0x0D); scratch.append(0x0A)
                ops.append(Operation(start: message.headersEnd, end: message.headersEnd, from: from, to: scratch.count, order: ops.count))
            }
        }
        ops.sort { $0.start != $1.start ? $0.start < $1.start : ($0.end != $1.end ? $0.end < $1.end : $0.order < $1.order) }
        var cursor = 0
        let bodyStart = message.bodyStart
        out.reserveCapacity(out.count + message.endOffset + scratch.count)
        let ok: Bool = message.bytes.withUnsafeBufferPointer { src in
            scratch.withUnsafeBufferPointer { add in
                for op in ops {
                    guard op.start >= cursor else { return false }
                    out.append(contentsOf: src[cursor..<op.start])
                    out.append(contentsOf: add[op.from..<op.to])
                    cursor = op.end
                }
                out.append(contentsOf: src[cursor..<bodyStart])
                if let newBody {
                    out.append(contentsOf: add[newBody.from..<newBody.to])
                } else {
                    out.append(contentsOf: src[bodyStart..<message.endOffset])
                }
                return true
            }
        }
        guard ok else { throw SIPParseError(.badParameter, at: cursor, status: nil) }
    }

    /// The edited message as new bytes.
    public func serialized(ensureContentLength: Bool = false) throws(SIPParseError) -> [UInt8] {
        var out: [UInt8] = []
        try serialize(into: &out, ensureContentLength: ensureContentLength)
        return out
    }
}

@inline(__always)
package func appendDecimal(_ value: Int, to out: inout [UInt8]) {
    if value >= 10 { appendDecimal(value / 10, to: &out) }
    out.append(UInt8(truncatingIfNeeded: 0x30 + value % 10))
}
