/// One header line as offsets into the message: name, value (folds included, outer blanks trimmed)
/// and the whole line with its CRLF, which is what an edit removes.
package struct HeaderEntry: Sendable {
    package var lineStart: UInt16
    package var nameEnd: UInt16
    package var valueStart: UInt16
    package var valueEnd: UInt16
    package var lineEnd: UInt16
    package var kind: HeaderKind

    package init(lineStart: Int, nameEnd: Int, valueStart: Int, valueEnd: Int, lineEnd: Int, kind: HeaderKind) {
        self.lineStart = UInt16(truncatingIfNeeded: lineStart)
        self.nameEnd = UInt16(truncatingIfNeeded: nameEnd)
        self.valueStart = UInt16(truncatingIfNeeded: valueStart)
        self.valueEnd = UInt16(truncatingIfNeeded: valueEnd)
        self.lineEnd = UInt16(truncatingIfNeeded: lineEnd)
        self.kind = kind
    }

    static let empty = HeaderEntry(lineStart: 0, nameEnd: 0, valueStart: 0, valueEnd: 0, lineEnd: 0, kind: .other)
}

/// The flat index of a message's header lines: the first `inlineCapacity` live inside the value
/// (no allocation for ordinary messages), the rest spill into an array bounded by the parser limits.
/// `first[kind]` is the position of the first header of each known kind, plus one (0: absent);
/// 255 means "at 254 or later", found by a scan from there (messages that long are rare).
package struct HeaderIndex: Sendable {
    package static let inlineCapacity = 24
    private var inline = InlineArray<24, HeaderEntry>(repeating: .empty)
    private var overflow: [HeaderEntry] = []
    private var first = InlineArray<64, UInt8>(repeating: 0)
    package private(set) var count = 0

    package init() {}

    @inline(__always)
    package subscript(_ i: Int) -> HeaderEntry {
        i < Self.inlineCapacity ? inline.span[i] : overflow[i &- Self.inlineCapacity]
    }

    @inline(__always)
    package mutating func append(_ entry: HeaderEntry) {
        if count < Self.inlineCapacity {
            inline[count] = entry
        } else {
            // One allocation covers the usual spill; a longer message grows it (bounded by the limits).
            if overflow.isEmpty { overflow.reserveCapacity(40) }
            overflow.append(entry)
        }
        let k = Int(entry.kind.rawValue)
        if k != 0 && first[k] == 0 { first[k] = UInt8(truncatingIfNeeded: Swift.min(count &+ 1, 255)) }
        count &+= 1
    }

    /// Position of the first header of `kind`, if any.
    @inline(__always)
    package func firstPosition(of kind: HeaderKind) -> Int? {
        let p = first.span[Int(kind.rawValue)]
        if p == 0 { return nil }
        if p < 255 { return Int(p) &- 1 }
        var i = 254
        while i < count && self[i].kind != kind { i &+= 1 }
        return i < count ? i : nil
    }
}
