import ArgumentParser
import Foundation
import Logging
import Proxy
import SIPParser
import Transport

/// Reads and checks a config file, or exits with the error on stderr.
func loadConfig(_ path: String) throws -> EdgeConfig {
    guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
        FileHandle.standardError.write(Data("\(path): cannot read file\n".utf8))
        throw ExitCode(2)
    }
    do {
        return try EdgeConfig.parse(text, checkingHost: true)
    } catch {
        FileHandle.standardError.write(Data("\(path): \(error)\n".utf8))
        throw ExitCode(2)
    }
}

/// `sipedge check-config FILE`: reports the first error with its line and key.
struct CheckConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check-config", abstract: "Check a configuration file.")

    @Argument(help: "The TOML configuration file.")
    var file: String

    func run() throws {
        let config = try loadConfig(file)
        if let tls = config.tls, config.listeners.contains(where: { $0.proto == .tls }) {
            do {
                _ = try TLSContext(role: .server, certificateFile: tls.certificate, privateKeyFile: tls.privateKey,
                                   caFile: tls.ca, verifyPeer: tls.verifyClients)
            } catch {
                FileHandle.standardError.write(Data("\(file): [tls]: \(error)\n".utf8))
                throw ExitCode(2)
            }
        }
        print("\(file): OK (\(config.listeners.count) listeners, \(config.workers) workers)")
    }
}

/// `sipedge run`: starts SIPEdge on a configuration and serves until SIGINT or SIGTERM.
struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Start SIPEdge.")

    @Option(name: .shortAndLong, help: "The TOML configuration file.")
    var config = "conf/sipedge.toml"

    func run() throws {
        let cfg = try loadConfig(config)
        let level = Logger.Level(rawValue: cfg.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardOutput(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "sipedge")
        // Worker threads inherit this mask, so SIGINT/SIGTERM reach only the sigwait below.
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGINT)
        sigaddset(&signals, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        let server: EdgeServer
        do {
            server = try EdgeServer(config: cfg, configPath: config, logger: logger)
            try server.start()
        } catch {
            FileHandle.standardError.write(Data("sipedge: \(error)\n".utf8))
            throw ExitCode(2)
        }
        logger.info("sipedge \(SIPEdgeCommand.version) started on \(config): \(cfg.workers) workers")
        for spec in server.bound {
            let advertised = spec.advertised
            logger.info("listening \(spec.proto.rawValue) \(spec.address) tag=\(spec.tag) advertised as \(advertised.host):\(advertised.port)")
        }
        if let mi = server.mi {
            logger.info("mi listening udp \(mi.endpoint.localAddress) (JSON-RPC 2.0; sipedge mi which)")
        }
        var received: Int32 = 0
        sigwait(&signals, &received)
        logger.info("signal \(received): stopping")
        let calls = server.callCounts()
        server.stop()
        let counts = server.counts
        logger.info("stopped: \(counts.received) messages received, \(counts.invalid) invalid, \(server.handedOver) handed over between workers, \(calls.started) calls started, \(calls.active) still up")
    }
}
