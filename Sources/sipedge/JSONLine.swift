/// Builds one JSON object on one line, keys in insertion order (for `sipedge parse --json`).
struct JSONLine {
    private var text = "{"

    mutating func add(_ key: String, _ value: String?) {
        field(key, value.map(Self.quote) ?? "null")
    }

    mutating func add(_ key: String, _ value: Int?) {
        field(key, value.map(String.init) ?? "null")
    }

    mutating func add(_ key: String, _ value: Bool) {
        field(key, value ? "true" : "false")
    }

    private mutating func field(_ key: String, _ raw: String) {
        if text.count > 1 { text += ", " }
        text += Self.quote(key) + ": " + raw
    }

    var line: String { text + "}" }

    /// A JSON string literal: quotes, backslashes and control characters escaped.
    static func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}
