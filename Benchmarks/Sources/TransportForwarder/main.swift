// SIPEdge's side of the transport benchmark: one worker loop with a UDPEndpoint on
// 127.0.0.1:LISTEN; the layer above does nothing but send each datagram on to 127.0.0.1:SINK.
// Usage: TransportForwarder LISTEN SINK BATCH   (runs until killed)
import Glibc
import Transport

/// The no-op layer above: forwards what arrives.
final class Forward: DatagramReceiver {
    let sink: SocketAddress
    init(sink: SocketAddress) { self.sink = sink }
    func received(_ datagram: [UInt8], from peer: SocketAddress, on endpoint: UDPEndpoint) {
        endpoint.send(datagram, to: sink)
    }
}

let args = CommandLine.arguments
guard args.count == 4, let listen = Int(args[1]), let sinkPort = Int(args[2]), let batch = Int(args[3]) else {
    print("usage: TransportForwarder LISTEN SINK BATCH")
    exit(2)
}
let loop = try EventLoop(index: 0)
let forward = Forward(sink: SocketAddress(ip: "127.0.0.1", port: sinkPort)!)
let endpoint = try UDPEndpoint(loop: loop, bindTo: SocketAddress(ip: "127.0.0.1", port: listen)!, reusePort: false,
                               batchSize: batch, receiveBufferBytes: 8 << 20, receiver: forward)
try loop.start()
while true { sleep(60) }
