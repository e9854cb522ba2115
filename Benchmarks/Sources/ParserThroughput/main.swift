// Parse + field-access throughput on one core, for the summary lines of parser-bench.sh.
// Usage: ParserThroughput SECONDS   Prints `mix N` and `invite N` (messages per second).
import Foundation
import ParserWorkload

func rate(_ messages: [[UInt8]], seconds: Double) -> Double {
    var checksum = 0
    var done = 0
    let clock = ContinuousClock()
    let start = clock.now
    let deadline = start + .milliseconds(Int(seconds * 1000))
    while clock.now < deadline {
        for _ in 0..<1000 {
            for m in messages { checksum &+= ParserWorkload.parseAndRead(m) }
        }
        done += 1000 * messages.count
    }
    let elapsed = clock.now - start
    let secs = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    if checksum == 42 { print("") } // keeps the work observable
    return Double(done) / secs
}

let seconds = Double(CommandLine.arguments.dropFirst().first ?? "3") ?? 3
let corpus = ParserWorkload.realisticMessages()
// `ParserThroughput count N`: exactly N rounds of the mix, for instruction counts under callgrind.
if CommandLine.arguments.count > 2, CommandLine.arguments[1] == "count", let rounds = Int(CommandLine.arguments[2]) {
    var checksum = 0
    let only = CommandLine.arguments.count > 3 ? Int(CommandLine.arguments[3]) : nil
    for _ in 0..<rounds { for m in corpus { checksum &+= only.map { ParserWorkload.parseAndRead(m.bytes, only: $0) } ?? ParserWorkload.parseAndRead(m.bytes) } }
    print("rounds \(rounds) checksum \(checksum)")
    exit(0)
}
precondition(corpus.count == 10 && corpus.allSatisfy { ParserWorkload.parseAndRead($0.bytes) > 0 }, "benchmark corpus")
print("mix \(Int(rate(corpus.map(\.bytes), seconds: seconds)))")
print("invite \(Int(rate([corpus.first { $0.name == "invite_sdp.sip" }!.bytes], seconds: seconds)))")
