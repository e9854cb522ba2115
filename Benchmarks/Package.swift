// swift-tools-version: 6.1
// Benchmarks live in their own package so that building SIPEdge never builds the harness.
import PackageDescription

let package = Package(
    name: "sipedge-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "sipedge", path: "../"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        // Time and allocations per message (ordo-one/benchmark): `swift package benchmark`.
        .executableTarget(
            name: "ParserBenchmarks",
            dependencies: [
                "ParserWorkload",
                .product(name: "SIPParser", package: "sipedge"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/ParserBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .target(name: "ParserWorkload", dependencies: [.product(name: "SIPParser", package: "sipedge")], path: "Sources/ParserWorkload"),
        // Messages per second on one core, printed beside libosip2's by parser-bench.sh.
        .executableTarget(
            name: "ParserThroughput",
            dependencies: ["ParserWorkload"],
            path: "Sources/ParserThroughput"
        ),
        // One worker forwarding UDP datagrams, for transport-bench.sh.
        .executableTarget(
            name: "TransportForwarder",
            dependencies: [.product(name: "Transport", package: "sipedge")],
            path: "Sources/TransportForwarder"
        ),
    ],
    swiftLanguageModes: [.v6]
)
