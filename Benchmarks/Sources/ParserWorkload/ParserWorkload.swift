import Foundation
import SIPParser

/// The messages and the per-message work both parser benchmarks measure.
public enum ParserWorkload {
    /// `../shared/corpus/realistic/*.sip`, found from the current directory or this file's path.
    public static func realisticMessages() -> [(name: String, bytes: [UInt8])] {
        var root = URL(fileURLWithPath: #filePath)
        for _ in 0..<4 { root.deleteLastPathComponent() }
        let dir = root.deletingLastPathComponent().appendingPathComponent("shared/corpus/realistic")
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        return names.filter { $0.hasSuffix(".sip") }.sorted().map {
            ($0, [UInt8](FileManager.default.contents(atPath: dir.appendingPathComponent($0).path)!))
        }
    }

    /// What a proxy reads from every message: top Via branch, Call-ID, CSeq, From/To tags,
    /// Request-URI (parsed) and the first Route. Returns a checksum so nothing is optimized away.
    @inline(never)
    public static func parseAndRead(_ bytes: [UInt8]) -> Int {
        guard let m = try? SIPMessage(parsing: bytes) else { return -1 }
        var sum = m.headerCount
        sum &+= m.topViaBranch?.count ?? 0
        sum &+= m.callID?.count ?? 0
        if let cseq = try? m.cseq() { sum &+= Int(cseq.number) }
        sum &+= m.tag(of: .from)?.count ?? 0
        sum &+= m.tag(of: .to)?.count ?? 0
        if m.isRequest, let uri = try? m.requestURI() { sum &+= uri.host.count }
        sum &+= m.topValue(.route)?.count ?? 0
        return sum
    }

    /// One field at a time (0: parse only, 1: Via branch, 2: Call-ID, 3: CSeq, 4: tags, 5: R-URI,
    /// 6: Route), to see what each costs under callgrind.
    @inline(never)
    public static func parseAndRead(_ bytes: [UInt8], only field: Int) -> Int {
        let m: SIPMessage
        do { m = try SIPMessage(parsing: bytes) } catch { return -1 }
        switch field {
        case 1: return m.topViaBranch?.count ?? 0
        case 2: return m.callID?.count ?? 0
        case 3: return (try? m.cseq()).map { Int($0.number) } ?? 0
        case 4: return (m.tag(of: .from)?.count ?? 0) &+ (m.tag(of: .to)?.count ?? 0)
        case 5: return m.isRequest ? ((try? m.requestURI())?.host.count ?? 0) : 0
        case 6: return m.topValue(.route)?.count ?? 0
        default: return m.headerCount
        }
    }
}
