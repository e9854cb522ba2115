import ArgumentParser
import Foundation
import SIPParser

/// `sipedge parse`: checks SIP messages in files, as a receiving proxy would.
struct ParseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "parse",
        abstract: "Parse and check SIP messages, one per file; exit status 0 iff every file is valid."
    )

    @Flag(help: "Print one JSON object per file and line.")
    var json = false

    @Flag(help: "Read each file as a TCP/TLS stream (Content-Length required) instead of a datagram.")
    var stream = false

    @Argument(help: "Files, each holding one SIP message as sent on the wire.")
    var files: [String]

    func run() throws {
        var allValid = true
        for file in files {
            let report = Self.report(file: file, stream: stream)
            allValid = allValid && report.valid
            print(json ? report.json : report.text)
        }
        if !allValid { throw ExitCode(1) }
    }

    struct Report {
        var valid = false
        var json = ""
        var text = ""
    }

    static func report(file: String, stream: Bool) -> Report {
        var out = JSONLine()
        out.add("file", file)
        guard let data = FileManager.default.contents(atPath: file) else {
            out.add("valid", false)
            out.add("error", "cannot read file")
            return Report(valid: false, json: out.line, text: "\(file): cannot read file")
        }
        var bytes = [UInt8](data)
        var message: SIPMessage?
        var failure: SIPParseError?
        do throws(SIPParseError) {
            if stream {
                let framed = bytes.withUnsafeBytes { raw in Result { () throws(SIPParseError) in try frameSIPStream(raw) } }
                let frame = try framed.get()
                guard case .message(let length) = frame else {
                    throw SIPParseError(.truncated, at: bytes.count, status: nil)
                }
                bytes = Array(bytes[0..<length])
            }
            let m = try SIPMessage(parsing: bytes)
            message = m
            try m.validate()
        } catch {
            failure = error
        }
        out.add("valid", failure == nil)
        out.add("error", failure?.description)
        out.add("status_code_to_send", failure?.status)
        if let m = message {
            out.add("kind", m.isRequest ? "request" : "response")
            out.add("method", m.method?.description)
            out.add("status", m.statusCode)
            out.add("request_uri", m.requestURIBytes?.string)
            out.add("call_id", m.callID?.string)
            out.add("cseq", (try? m.cseq()).map { Int($0.number) })
            out.add("cseq_method", m.cseqMethodBytes?.string)
            out.add("from_tag", m.tag(of: .from)?.string)
            out.add("to_tag", m.tag(of: .to)?.string)
            out.add("via_branch", m.topViaBranch?.string)
            out.add("via_count", m.valueCount(.via))
            out.add("record_route_count", m.valueCount(.recordRoute))
            out.add("body_length", m.body.count)
        }
        let summary: String
        if let failure {
            summary = "\(file): invalid: \(failure)" + (failure.status.map { " (answer \($0))" } ?? " (drop)")
        } else if let m = message {
            let what = m.isRequest ? "\(m.method!) \(m.requestURIBytes!)" : "\(m.statusCode!) \(m.reasonPhrase!)"
            summary = "\(file): valid: \(what), \(m.headerCount) headers, body \(m.body.count) bytes"
        } else {
            summary = "\(file): invalid"
        }
        return Report(valid: failure == nil, json: out.line, text: summary)
    }
}
