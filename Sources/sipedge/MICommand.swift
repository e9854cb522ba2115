import ArgumentParser
import Foundation
import Glibc
import Proxy
import Transport

/// `sipedge mi CMD key=value...`: one JSON-RPC request to a running SIPEdge's MI, its `result`
/// printed as JSON (like `opensips-cli -x mi CMD`). Exit status 1 when the MI answers an error,
/// 2 when it does not answer.
struct MICommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mi", abstract: "Send a management command to a running SIPEdge.",
        discussion: "Commands: \(MIServer.commands.joined(separator: ", ")). Example: sipedge mi ds_set_state uri=sip:127.0.0.1:5081 state=draining")

    @Argument(help: "The command, e.g. ds_list, then its parameters as key=value.")
    var words: [String]

    @Option(name: .shortAndLong, help: "The config file whose [mi] section names the address (and secret); by default conf/sipedge.toml when there is one here, else the MI's default address \(EdgeConfig.MISettings.defaultAddress).")
    var config: String?

    static let defaultConfig = "conf/sipedge.toml"

    @Option(help: "The MI address as IP:PORT (instead of the config's).")
    var address: String?

    @Option(help: "The shared secret (instead of the config's).")
    var secret: String?

    @Option(help: "Seconds to wait for the answer.")
    var timeout: Int = 5

    func run() throws {
        guard let command = words.first else { throw ValidationError("a command is needed, e.g. `sipedge mi ds_list`") }
        var params: [String: Any] = [:]
        for word in words.dropFirst() {
            guard let eq = word.firstIndex(of: "=") else { throw ValidationError("parameters are key=value, not \"\(word)\"") }
            params[String(word[..<eq])] = String(word[word.index(after: eq)...])
        }
        var target: SocketAddress?
        var configuredSecret = ""
        if let address {
            guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
                  let a = SocketAddress(ip: String(address[..<colon]), port: port) else {
                throw ValidationError("--address is IP:PORT, not \"\(address)\"")
            }
            target = a
        } else if let path = config ?? (FileManager.default.fileExists(atPath: Self.defaultConfig) ? Self.defaultConfig : nil) {
            let cfg = try loadConfig(path)
            guard let mi = cfg.mi else {
                FileHandle.standardError.write(Data("\(path) has no [mi] section; pass --address\n".utf8))
                throw ExitCode(2)
            }
            target = mi.address
            configuredSecret = mi.secret
        } else {
            // No config at hand (run from elsewhere): the MI's default address, as opensips-cli does.
            target = EdgeConfig.MISettings.defaultAddress
        }
        if let s = secret ?? (configuredSecret.isEmpty ? nil : configuredSecret) { params["secret"] = s }
        let request: [String: Any] = ["jsonrpc": "2.0", "method": command, "params": params, "id": 1]
        let body = try JSONSerialization.data(withJSONObject: request)
        guard let reply = Self.exchange(Array(body), with: target!, timeout: timeout) else {
            FileHandle.standardError.write(Data("sipedge mi: no answer from \(target!) within \(timeout) s\n".utf8))
            throw ExitCode(2)
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(reply)) as? [String: Any] else {
            FileHandle.standardError.write(Data("sipedge mi: the answer is not JSON\n".utf8))
            throw ExitCode(2)
        }
        if let error = object["error"] as? [String: Any] {
            FileHandle.standardError.write(Data("sipedge mi: \(error["message"] ?? "error") (\(error["code"] ?? ""))\n".utf8))
            throw ExitCode(1)
        }
        let result = object["result"] ?? NSNull()
        let data = try JSONSerialization.data(withJSONObject: result, options: [.prettyPrinted, .sortedKeys, .fragmentsAllowed])
        print(String(decoding: data, as: UTF8.self))
    }

    /// One datagram out, one back (or nil after `timeout` seconds).
    static func exchange(_ bytes: [UInt8], with target: SocketAddress, timeout: Int) -> [UInt8]? {
        let family = target.family == .inet ? AF_INET : AF_INET6
        let fd = socket(family, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var tv = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var storage = sockaddr_storage()
        let length = target.write(to: &storage)
        let sent = withUnsafePointer(to: &storage) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, bytes, bytes.count, 0, $0, length) }
        }
        guard sent == bytes.count else { return nil }
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let n = recv(fd, &buffer, buffer.count, 0)
        return n > 0 ? Array(buffer[0..<n]) : nil
    }
}
