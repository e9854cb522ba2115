import ArgumentParser

/// The `sipedge` command line: run the edge, check a config, parse captured messages.
@main
struct SIPEdgeCommand: ParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "sipedge",
        abstract: "SIPEdge: a clustered SIP edge proxy (B2BUA) for Asterisk farms.",
        version: version,
        subcommands: [RunCommand.self, ParseCommand.self, CheckConfigCommand.self, MICommand.self]
    )
}
