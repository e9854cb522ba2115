import Dialog
import Logging
import SIPParser
import Transport

/// The running edge: one loop per worker, every configured listener opened on them (UDP and TCP/TLS
/// once per worker with SO_REUSEPORT, SCTP on the first worker), what arrives parsed and checked
/// (an invalid message is logged with its reason), and a B2BUA per worker for calls over UDP.
/// Calls over TCP, TLS and SCTP, and the dispatcher with probing, come next (issues 4 and 5).
public final class EdgeServer: Sendable {
    public let config: EdgeConfig
    public let workers: WorkerGroup
    /// What each listener ended up bound to (a configured port 0 becomes a real one).
    public let bound: [ListenerSpec]
    private let inbound: [InboundSIP]
    // The endpoints live as long as the server; each is confined to its loop.
    private let endpoints: [LoopBound<AnyObject>]

    public init(config: EdgeConfig, logger: Logger) throws(ListenerError) {
        self.config = config
        do {
            workers = try WorkerGroup(count: config.workers)
        } catch {
            throw ListenerError(listener: "workers", reason: "cannot start event loops: \(error)", underlying: error)
        }
        let routing = CallRouting(workers: workers)
        var inbound: [InboundSIP] = []
        for loop in workers.loops {
            let log = logger
            loop.log = { line in log.warning("\(line)") }
            inbound.append(InboundSIP(worker: loop.index, limits: config.parserLimits, logger: logger, routing: routing))
        }
        var udpByWorker: [Int: UDPEndpoint] = [:]
        let tlsServer: TLSContext?
        if let files = config.tls, config.listeners.contains(where: { $0.proto == .tls }) {
            do {
                tlsServer = try TLSContext(role: .server, certificateFile: files.certificate, privateKeyFile: files.privateKey,
                                           caFile: files.ca, verifyPeer: files.verifyClients)
            } catch {
                throw ListenerError(listener: "tls", reason: "\(error)", underlying: nil)
            }
        } else {
            tlsServer = nil
        }
        var endpoints: [LoopBound<AnyObject>] = []
        var bound: [ListenerSpec] = []
        for spec in config.listeners {
            var address = spec.address
            let name = spec.description
            for loop in workers.loops where spec.proto != .sctp || loop.index == 0 {
                let receiver = inbound[loop.index]
                do {
                    switch spec.proto {
                    case .udp:
                        let e = try UDPEndpoint(loop: loop, bindTo: address, reusePort: true, receiver: receiver)
                        address = e.localAddress
                        endpoints.append(LoopBound(e, on: loop))
                        if udpByWorker[loop.index] == nil { udpByWorker[loop.index] = e }
                    case .tcp, .tls:
                        let table = TCPConnectionTable(loop: loop, framer: SIPStreamFraming(limits: config.parserLimits),
                                                       limits: config.streamLimits, tls: spec.proto == .tls ? tlsServer : nil,
                                                       receiver: receiver)
                        let listener = try TCPListener(table: table, bindTo: address, reusePort: true)
                        address = listener.localAddress
                        endpoints.append(LoopBound(table, on: loop))
                        endpoints.append(LoopBound(listener, on: loop))
                    case .sctp:
                        let e = try SCTPEndpoint(loop: loop, bindTo: address, name: name, receiver: receiver)
                        address = e.localAddress
                        endpoints.append(LoopBound(e, on: loop))
                    }
                } catch let error as ListenerError {
                    throw error
                } catch {
                    throw ListenerError(listener: name, reason: "\(error)", underlying: error as? SystemError)
                }
            }
            bound.append(ListenerSpec(proto: spec.proto, address: address, advertisedHost: spec.advertisedHost,
                                      advertisedPort: spec.advertisedPort, tag: spec.tag))
        }
        // One B2BUA per worker, speaking through that worker's first UDP socket.
        if let udp = bound.first(where: { $0.proto == .udp }) {
            let (host, port) = udp.advertised
            for loop in workers.loops {
                guard let socket = udpByWorker[loop.index] else { continue }
                let sender = UDPSender(socket)
                let b2bua = B2BUA(loop: loop, config: B2BUAConfig(host: host, port: port, backends: config.destinations,
                                                                  maxCallSeconds: UInt64(config.maxCallSeconds)), sender: sender)
                routing.b2buas.append(LoopBound(b2bua, on: loop))
                endpoints.append(LoopBound(sender, on: loop))
            }
        }
        self.routing = routing
        self.inbound = inbound
        self.endpoints = endpoints
        self.bound = bound
    }

    private let routing: CallRouting

    /// Calls started and active over all workers (asked on each worker's loop).
    public func callCounts() -> (started: Int, active: Int) {
        routing.b2buas.reduce((0, 0)) { sum, b in
            let c = (try? b.loop.submitAndWait { (b.value.callsStarted, b.value.activeCalls) }) ?? (0, 0)
            return (sum.0 + c.0, sum.1 + c.1)
        }
    }

    public func start() throws(SystemError) { try workers.start() }

    public func stop() { workers.stop() }

    /// Messages received and refused so far, over all workers.
    public var counts: (received: Int, invalid: Int) {
        inbound.reduce((0, 0)) { ($0.0 + $1.received.load(ordering: .relaxed), $0.1 + $1.invalid.load(ordering: .relaxed)) }
    }
}

/// Sends a B2BUA's messages through a worker's UDP socket.
final class UDPSender: MessageSender {
    let endpoint: UDPEndpoint
    init(_ endpoint: UDPEndpoint) { self.endpoint = endpoint }
    func send(_ bytes: [UInt8], to destination: SocketAddress) { endpoint.send(bytes, to: destination) }
}
