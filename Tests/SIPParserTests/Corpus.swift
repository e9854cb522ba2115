import Foundation
import SIPParser

/// Where `../shared/corpus` lives, found from this file's path (the package root's sibling).
enum Corpus {
    static let root: URL = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.deletingLastPathComponent().appendingPathComponent("shared/corpus")
    }()

    static func bytes(_ relative: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: root.appendingPathComponent(relative)))
    }

    static func files(_ folder: String, suffix: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent(folder).path)
            .filter { $0.hasSuffix(suffix) }.sorted()
    }

    /// Parse + receive-time validation, as `sipedge parse` does.
    static func check(_ bytes: [UInt8]) -> Result<SIPMessage, SIPParseError> {
        do {
            let m = try SIPMessage(parsing: bytes)
            try m.validate()
            return .success(m)
        } catch {
            return .failure(error)
        }
    }
}

extension Result {
    var value: Success? { if case .success(let v) = self { return v }; return nil }
    var error: Failure? { if case .failure(let e) = self { return e }; return nil }
}
