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

/// Inline storage of a message's header index: the first 24 lines (the rest spill into an array,
/// bounded by the limits), and per known kind one byte giving the position of its first line plus
/// one (0: absent; 255: "at 254 or later", found by a scan from there).
///
/// Why tuples stored directly in `SIPMessage`, read through `switch`es: reading one element of an
/// `InlineArray`, or of any large struct held inside the message, made the compiler copy the whole
/// of it to the stack first (about 360 bytes per field access, seen in the disassembly). A tuple
/// element that is a direct stored property of the message is loaded on its own.
package typealias InlineHeaderEntries = (HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry, HeaderEntry)
package typealias FirstOfKindTable = (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)

extension SIPMessage {
    package static let inlineHeaderCapacity = 24
    package static let emptyInlineEntries: InlineHeaderEntries = (.empty, .empty, .empty, .empty, .empty, .empty, .empty, .empty, .empty, .empty, .empty, .empty, .empty, .empty, .empty, .empty, .empty, .empty, .empty, .empty, .empty, .empty, .empty, .empty)

    /// Header line `i`'s offsets.
    @inline(__always)
    package func entry(_ i: Int) -> HeaderEntry {
        i < Self.inlineHeaderCapacity ? inlineEntry(i) : spill[i &- Self.inlineHeaderCapacity]
    }

    private func inlineEntry(_ i: Int) -> HeaderEntry {
        switch i {
        case 0: return inlineEntries.0
        case 1: return inlineEntries.1
        case 2: return inlineEntries.2
        case 3: return inlineEntries.3
        case 4: return inlineEntries.4
        case 5: return inlineEntries.5
        case 6: return inlineEntries.6
        case 7: return inlineEntries.7
        case 8: return inlineEntries.8
        case 9: return inlineEntries.9
        case 10: return inlineEntries.10
        case 11: return inlineEntries.11
        case 12: return inlineEntries.12
        case 13: return inlineEntries.13
        case 14: return inlineEntries.14
        case 15: return inlineEntries.15
        case 16: return inlineEntries.16
        case 17: return inlineEntries.17
        case 18: return inlineEntries.18
        case 19: return inlineEntries.19
        case 20: return inlineEntries.20
        case 21: return inlineEntries.21
        case 22: return inlineEntries.22
        case 23: return inlineEntries.23
        default: preconditionFailure("header index out of range")
        }
    }

    @inline(__always)
    private func firstWord(_ w: Int) -> UInt64 {
        switch w {
        case 0: return firstOfKind.0
        case 1: return firstOfKind.1
        case 2: return firstOfKind.2
        case 3: return firstOfKind.3
        case 4: return firstOfKind.4
        case 5: return firstOfKind.5
        case 6: return firstOfKind.6
        case 7: return firstOfKind.7
        default: return 0
        }
    }

    /// Records header line `entry` (the indexer calls this in message order).
    @inline(__always)
    package mutating func appendEntry(_ entry: HeaderEntry) {
        if headerCount < Self.inlineHeaderCapacity {
            let offset = headerCount &* MemoryLayout<HeaderEntry>.stride
            withUnsafeMutableBytes(of: &inlineEntries) { $0.storeBytes(of: entry, toByteOffset: offset, as: HeaderEntry.self) }
        } else {
            // One allocation covers the usual spill; a longer message grows it (bounded by the limits).
            if spill.isEmpty { spill.reserveCapacity(40) }
            spill.append(entry)
        }
        let k = Int(entry.kind.rawValue)
        if k != 0 {
            let position = UInt8(truncatingIfNeeded: Swift.min(headerCount &+ 1, 255))
            withUnsafeMutableBytes(of: &firstOfKind) { table in
                if table[k] == 0 { table[k] = position }
            }
        }
        headerCount &+= 1
    }

    /// Position of the first header line of `kind`, if any.
    @inline(__always)
    package func firstPosition(of kind: HeaderKind) -> Int? {
        let k = Int(kind.rawValue)
        let p = Int(UInt64(littleEndian: firstWord(k >> 3)) >> UInt64((k & 7) << 3) & 0xFF)
        if p == 0 { return nil }
        if p < 255 { return p &- 1 }
        var i = 254
        while i < headerCount && entry(i).kind != kind { i &+= 1 }
        return i < headerCount ? i : nil
    }
}
