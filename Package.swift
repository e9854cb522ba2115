// swift-tools-version: 6.1
import PackageDescription

// Release builds let the optimizer see across our modules: the parser, transport and dialog code
// the edge calls per message is specialised and inlined where it is used.
let crossModule: [SwiftSetting] = [.unsafeFlags(["-cross-module-optimization", "-enforce-exclusivity=unchecked"], .when(configuration: .release))]

let package = Package(
    name: "sipedge",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "SIPParser", targets: ["SIPParser"]),
        .library(name: "Transport", targets: ["Transport"]),
        .executable(name: "sipedge", targets: ["sipedge"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // Bytes -> message views, typed header access, edit lists, stream framing. Standard library only.
        .target(name: "SIPParser", swiftSettings: crossModule),
        // Linux interfaces Glibc does not import (epoll, eventfd, recvmmsg/sendmmsg, error queues).
        .target(name: "CTransportShim", linkerSettings: [.linkedLibrary("sctp")]),
        // OpenSSL's headers, and plain functions for its macros.
        .target(name: "CTLSShim", linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]),
        // SQLite's header (libsqlite3-dev), and plain functions for its macros.
        .target(name: "CSQLite", linkerSettings: [.linkedLibrary("sqlite3")]),
        // Event loops, sockets, timers. Knows nothing of SIP.
        .target(name: "Transport", dependencies: ["CTransportShim", "CTLSShim"], swiftSettings: crossModule),
        // The SIP stack above the parser: intake, transactions, dialog records and their gate, the B2BUA.
        .target(name: "Dialog", dependencies: ["SIPParser", "Transport"], swiftSettings: crossModule),
        // Membership, replication, sharing tags, re-homing.
        .target(name: "Cluster", dependencies: ["Dialog", "Transport"]),
        // The edge: config, routing, dispatcher, MI; the composition root.
        .target(name: "Proxy", dependencies: [
            "SIPParser", "Transport", "Dialog", "Cluster", "CSQLite", "TOMLKit",
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: crossModule),
        // Linked with tcmalloc (Debian's libtcmalloc-minimal4, by its file name: no -dev package
        // needed): about 5 % less CPU per call than glibc's malloc (make bench-calls).
        .executableTarget(
            name: "sipedge",
            dependencies: [
                "SIPParser", "Proxy", "Transport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            linkerSettings: [.linkedLibrary(":libtcmalloc_minimal.so.4", .when(platforms: [.linux]))]
        ),
        .testTarget(name: "SIPParserTests", dependencies: ["SIPParser"]),
        .testTarget(name: "ProxyTests", dependencies: ["Proxy", "Dialog", "Transport"]),
        .testTarget(name: "TransportTests", dependencies: ["Transport"]),
        .testTarget(name: "DialogTests", dependencies: ["Dialog", "SIPParser", "Transport"]),
        .testTarget(name: "ClusterTests", dependencies: ["Cluster", "Dialog", "Transport"]),
        .testTarget(name: "SipedgeCommandTests", dependencies: ["sipedge"]),
    ],
    swiftLanguageModes: [.v6]
)
