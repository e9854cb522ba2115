import Benchmark
import ParserWorkload
import SIPParser

/// Time and allocations per realistic message (one iteration = one message of the mix, or the
/// INVITE), and how indexing scales with the number of headers.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal, .instructions],
        warmupIterations: 1_000,
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 10_000
    )
    let corpus = ParserWorkload.realisticMessages()
    let mix = corpus.map(\.bytes)
    let invite = corpus.first { $0.name == "invite_sdp.sip" }!.bytes

    Benchmark("parse (mix)") { benchmark in
        for i in benchmark.scaledIterations { blackHole(try? SIPMessage(parsing: mix[i % mix.count])) }
    }
    Benchmark("parse + fields (mix)") { benchmark in
        for i in benchmark.scaledIterations { blackHole(ParserWorkload.parseAndRead(mix[i % mix.count])) }
    }
    Benchmark("parse + fields (INVITE)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(ParserWorkload.parseAndRead(invite)) }
    }
    Benchmark("parse + validate (mix)") { benchmark in
        for i in benchmark.scaledIterations { blackHole(try? SIPMessage(parsing: mix[i % mix.count]).validate()) }
    }
    for headers in [8, 32, 128] {
        let text = "OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n"
            + (0..<(headers - 1)).map { "X-Header-\($0): value number \($0)\r\n" }.joined() + "Content-Length: 0\r\n\r\n"
        let bytes = Array(text.utf8)
        Benchmark("parse \(headers) headers") { benchmark in
            for _ in benchmark.scaledIterations { blackHole(try? SIPMessage(parsing: bytes)) }
        }
    }
}
