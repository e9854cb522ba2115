import TOMLKit

/// Reads typed keys from a TOML table and notices the keys nobody read (typos are errors).
struct TableReader {
    let table: TOMLTable
    let path: String
    let text: String
    private var read: Set<String> = []

    init(_ table: TOMLTable, path: String, text: String) {
        self.table = table
        self.path = path
        self.text = text
    }

    func error(_ key: String, _ message: String) -> ConfigError {
        ConfigError(line: line(of: key), key: path.isEmpty ? key : "\(path).\(key)", message: message)
    }

    /// The line that assigns `key` in this reader's own section (or, failing that, the first line
    /// anywhere that assigns it or opens a table of that name), for error messages.
    func line(of key: String) -> Int? {
        Self.line(of: key, inSection: path, text: text)
    }

    /// The line of `key` in the section `path` ("" for the top, "mi", "listener[2]",
    /// "dispatcher.set[1]"): TOMLKit keeps no positions, so the text is read again, section by
    /// section, and a key that several sections use is found in the right one.
    static func line(of key: String, inSection path: String, text: String) -> Int? {
        var name = path, index = 0
        if path.hasSuffix("]"), let open = path.lastIndex(of: "[") {
            name = String(path[..<open])
            index = Int(path[path.index(after: open)..<path.index(before: path.endIndex)]) ?? 0
        }
        var inSection = path.isEmpty, seen = 0, fallback: Int?
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingPrefix(while: { $0 == " " || $0 == "\t" })
            if line.hasPrefix("[") {
                let isArray = line.hasPrefix("[[")
                let header = line.dropFirst(isArray ? 2 : 1).prefix { $0 != "]" }.trimmingPrefix(while: { $0 == " " })
                let headerName = String(header.reversed().drop { $0 == " " }.reversed())
                let full = path.isEmpty ? key : "\(name).\(key)"
                if headerName == full || headerName == key && path.isEmpty { fallback = fallback ?? i + 1 }
                if isArray && headerName == name && index > 0 {
                    seen += 1
                    inSection = seen == index
                } else {
                    inSection = !isArray && headerName == name && index == 0 && !path.isEmpty
                }
                if inSection && key.isEmpty { return i + 1 }
                continue
            }
            if line.hasPrefix("\(key) ") || line.hasPrefix("\(key)=") {
                if inSection { return i + 1 }
                fallback = fallback ?? i + 1
            }
        }
        return fallback
    }

    mutating func int(_ key: String, default value: Int?, range: ClosedRange<Int>) throws(ConfigError) -> Int {
        read.insert(key)
        guard let v = table[key] else {
            guard let value else { throw error(key, "is required") }
            return value
        }
        guard let n = v.tomlValue.int else { throw error(key, "must be an integer") }
        guard range.contains(n) else { throw error(key, "must be in \(range.lowerBound)...\(range.upperBound), not \(n)") }
        return n
    }

    mutating func stringArray(_ key: String) throws(ConfigError) -> [String] {
        read.insert(key)
        guard let v = table[key] else { return [] }
        guard let array = v.tomlValue.array else { throw error(key, "must be an array of strings") }
        var out: [String] = []
        for element in array {
            guard let s = element.tomlValue.string else { throw error(key, "must be an array of strings") }
            out.append(s)
        }
        return out
    }

    mutating func bool(_ key: String, default value: Bool) throws(ConfigError) -> Bool {
        read.insert(key)
        guard let v = table[key] else { return value }
        guard let b = v.tomlValue.bool else { throw error(key, "must be true or false") }
        return b
    }

    mutating func string(_ key: String, default value: String?) throws(ConfigError) -> String {
        guard let s = try optionalString(key) else {
            guard let value else { throw error(key, "is required") }
            return value
        }
        return s
    }

    mutating func optionalString(_ key: String) throws(ConfigError) -> String? {
        read.insert(key)
        guard let v = table[key] else { return nil }
        guard let s = v.tomlValue.string else { throw error(key, "must be a string") }
        return s
    }

    /// A section whose absence means the defaults: `body` reads it, or an empty table when the file
    /// has none, so each key's default is written once, where the key is read.
    mutating func section<T>(_ key: String, _ body: (inout TableReader) throws(ConfigError) -> T) throws(ConfigError) -> T {
        if let present = try table(key, body) { return present }
        var empty = TableReader(TOMLTable(), path: path.isEmpty ? key : "\(path).\(key)", text: text)
        return try body(&empty)
    }

    /// A section whose absence means "off" (nil).
    mutating func table<T>(_ key: String, _ body: (inout TableReader) throws(ConfigError) -> T) throws(ConfigError) -> T? {
        read.insert(key)
        guard let v = table[key] else { return nil }
        guard let t = v.tomlValue.table else { throw error(key, "must be a table ([\(key)])") }
        var sub = TableReader(t, path: path.isEmpty ? key : "\(path).\(key)", text: text)
        let result = try body(&sub)
        try sub.finish()
        return result
    }

    mutating func tableArray<T>(_ key: String, _ body: (inout TableReader) throws(ConfigError) -> T) throws(ConfigError) -> [T] {
        read.insert(key)
        guard let v = table[key] else { return [] }
        guard let array = v.tomlValue.array else { throw error(key, "must be an array of tables ([[\(key)]])") }
        var out: [T] = []
        for (i, element) in array.enumerated() {
            guard let t = element.tomlValue.table else { throw error(key, "element \(i + 1) must be a table") }
            var sub = TableReader(t, path: "\(path.isEmpty ? key : "\(path).\(key)")[\(i + 1)]", text: text)
            out.append(try body(&sub))
            try sub.finish()
        }
        return out
    }

    /// Fails on the first key that no reader asked for.
    func finish() throws(ConfigError) {
        for key in table.keys.sorted() where !read.contains(key) {
            throw error(key, "unknown key")
        }
    }
}
