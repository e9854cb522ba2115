import Dialog
import Glibc
import Synchronization
import Transport

/// The rtpengine instances of `[media]`, shared by the workers: which to give a new session (by
/// weight, over a hash of its Call-ID) and which are out of use for now.
public final class RTPEngines: Sendable {
    public let instances: [(address: SocketAddress, weight: Int)]
    /// Per instance, the monotonic millisecond until which it is skipped (0: in use).
    private let downUntil: Mutex<[UInt64]>
    private let log: @Sendable (String) -> Void
    /// How long an instance that did not answer is skipped.
    static let downMilliseconds: UInt64 = 10_000

    public init(_ settings: EdgeConfig.MediaSettings, log: @escaping @Sendable (String) -> Void) {
        instances = settings.rtpengines
        downUntil = Mutex(Array(repeating: 0, count: settings.rtpengines.count))
        self.log = log
    }

    /// The instance for a new session with this Call-ID hash, none of `tried`: among those in use,
    /// in proportion to their weights; if none is, any not tried (better a try than no media).
    func choose(hash: UInt64, excluding tried: [Int], now: UInt64) -> Int? {
        let usable = downUntil.withLock { down in instances.indices.filter { !tried.contains($0) && down[$0] <= now } }
        let candidates = usable.isEmpty ? instances.indices.filter { !tried.contains($0) } : usable
        let total = candidates.reduce(0) { $0 + instances[$1].weight }
        guard total > 0 else { return nil }
        var point = Int(hash % UInt64(total))
        for i in candidates {
            if point < instances[i].weight { return i }
            point -= instances[i].weight
        }
        return candidates.last
    }

    /// A line for the log (refusals: the operator's to see).
    func report(_ line: String) { log(line) }

    /// An instance answered (true) or gave no answer to a request sent twice (false).
    func heard(_ index: Int, alive: Bool, now: UInt64) {
        let changed: Bool = downUntil.withLock { down in
            let wasDown = down[index] > now
            down[index] = alive ? 0 : now + Self.downMilliseconds
            return wasDown == alive
        }
        if changed { log("media: rtpengine \(instances[index].address) \(alive ? "answers again" : "does not answer: skipped for 10 s")") }
    }
}

/// One worker's client of rtpengine's ng control protocol (a cookie, a space and a bencoded
/// dictionary, over UDP): its own socket on the worker's loop, each request matched to its answer
/// by cookie, sent again after 500 ms, given up after 1.5 s. A session stays on the instance that
/// took its offer; an offer that gets no answer goes to the next instance.
public final class RTPEngineClient: MediaRelay, DatagramReceiver {
    private let loop: EventLoop
    private let engines: RTPEngines
    private var endpoint: UDPEndpoint?
    private var pending: [String: Pending] = [:]
    /// Which instance holds each call's session (by the caller's Call-ID).
    private var sessions: [String: Int] = [:]
    private var counter: UInt64 = 0
    /// The start of this client's cookies: its worker and a random number (a reply is taken only
    /// from the instance asked, with a cookie no one off the path can guess).
    private let cookiePrefix: String
    static let resendMilliseconds: UInt64 = 500
    static let sends = 3

    private struct Pending {
        let instance: Int
        let bytes: [UInt8]
        var sent: Int
        let done: (Bencode?) -> Void
    }

    public init(loop: EventLoop, engines: RTPEngines) throws(SystemError) {
        self.loop = loop
        self.engines = engines
        cookiePrefix = "\(loop.index)\(String(UInt64.random(in: 0...UInt64.max), radix: 36))_"
        let any = SocketAddress(ip: engines.instances.first?.address.family == .inet6 ? "::1" : "127.0.0.1", port: 0)!
        endpoint = try UDPEndpoint(loop: loop, bindTo: Self.localAddress(toward: engines.instances.first?.address) ?? any,
                                   reusePort: false, batchSize: 4, receiveBufferBytes: 1 << 20, receiver: self)
    }

    /// The wildcard address of the instances' family: the kernel picks the source per instance.
    private static func localAddress(toward peer: SocketAddress?) -> SocketAddress? {
        SocketAddress(ip: peer?.family == .inet6 ? "::" : "0.0.0.0", port: 0)
    }

    // MARK: - MediaRelay (loop thread)

    public func offer(_ session: MediaSession, sdp: [UInt8], done: @escaping ([UInt8]?) -> Void) {
        let request = Self.command("offer", session, sdp: sdp, toTag: false)
        holder(of: session) { [weak self] instance in
            self?.send(request, callID: session.callID, to: instance, tried: []) { reply in done(Self.sdp(of: reply)) }
        }
    }

    public func answer(_ session: MediaSession, sdp: [UInt8], done: @escaping ([UInt8]?) -> Void) {
        let request = Self.command("answer", session, sdp: sdp, toTag: true)
        holder(of: session) { [weak self] instance in
            self?.send(request, callID: session.callID, to: instance, tried: []) { reply in done(Self.sdp(of: reply)) }
        }
    }

    public func delete(_ session: MediaSession) {
        // (No delete-delay: the call is over on both legs once the edge says so.)
        let request = Bencode.dict([("command", .string("delete")), ("call-id", .string(session.callID)), ("from-tag", .string(session.fromTag)),
                                    ("delete-delay", .int(0))])
        holder(of: session) { [weak self] instance in
            guard let self, let instance else { return }
            self.sessions[session.callID] = nil
            self.send(request, callID: nil, to: instance, tried: []) { _ in }
        }
    }

    /// The instance holding `session` (nil: none yet, a new session's offer chooses one). One this
    /// worker has not talked to about it (the call was taken over from another node, or restored
    /// after a restart) is found by asking the instances with `query`, the one its Call-ID would
    /// be given first.
    private func holder(of session: MediaSession, found: @escaping (Int?) -> Void) {
        if let known = sessions[session.callID] { return found(known) }
        guard session.established else { return found(nil) }
        let first = engines.choose(hash: Dispatcher.hash(session.callID.utf8), excluding: [], now: loop.now)
        let order = (first.map { [$0] } ?? []) + engines.instances.indices.filter { $0 != first }
        locate(session.callID, in: order[...], found: found)
    }

    private func locate(_ callID: String, in order: ArraySlice<Int>, found: @escaping (Int?) -> Void) {
        guard let instance = order.first else { return found(nil) }
        let query = Bencode.dict([("command", .string("query")), ("call-id", .string(callID))])
        send(query, callID: nil, to: instance, tried: [instance]) { [weak self] reply in
            guard let self else { return }
            if reply?["result"]?.text == "ok" {
                self.sessions[callID] = instance
                return found(instance)
            }
            self.locate(callID, in: order.dropFirst(), found: found)
        }
    }

    /// `ping` to every instance (marks each in use or not), every `seconds`; from one worker.
    public func ping(every seconds: UInt64) {
        for i in engines.instances.indices {
            send(.dict([("command", .string("ping"))]), callID: nil, to: i, tried: [i]) { _ in }
        }
        loop.schedule(afterMilliseconds: seconds * 1_000) { [weak self] in self?.ping(every: seconds) }
    }

    /// The ng dictionary of an offer or answer: the session's names, the description, and
    /// flags that keep rtpengine's ports across a new backend's answer (port latching) and hide
    /// the endpoints' addresses in the o= and c= lines.
    static func command(_ name: String, _ session: MediaSession, sdp: [UInt8], toTag: Bool) -> Bencode {
        var entries: [(key: String, value: Bencode)] = [
            ("command", .string(name)), ("call-id", .string(session.callID)), ("from-tag", .string(session.fromTag)),
            ("sdp", .bytes(sdp)), ("flags", .list([.string("port-latching")])),
            ("replace", .list([.string("origin"), .string("session-connection")])),
        ]
        if toTag { entries.append(("to-tag", .string(session.toTag))) }
        return .dict(entries)
    }

    /// The description in an "ok" reply.
    private static func sdp(of reply: Bencode?) -> [UInt8]? {
        guard let reply, reply["result"]?.text == "ok", case .bytes(let b)? = reply["sdp"], !b.isEmpty else { return nil }
        return b
    }

    // MARK: - Requests

    /// Sends `request` to `instance` (nil: a new session's: chosen by weight); `done` gets the
    /// reply (nil: none came). A new session's request that gets no answer goes to the next
    /// instance; `callID` then names the session it made.
    private func send(_ request: Bencode, callID: String?, to instance: Int?, tried: [Int], done: @escaping (Bencode?) -> Void) {
        let newSession = instance == nil
        guard let target = instance ?? engines.choose(hash: Dispatcher.hash((callID ?? "").utf8), excluding: tried, now: loop.now) else {
            return done(nil)
        }
        counter &+= 1
        let cookie = cookiePrefix + String(counter, radix: 36)
        let bytes = Array("\(cookie) ".utf8) + request.encoded()
        pending[cookie] = Pending(instance: target, bytes: bytes, sent: 1, done: { [weak self] reply in
            guard let self else { return }
            if reply == nil, newSession, callID != nil {
                // No answer: the next instance, if there is one not tried.
                return self.send(request, callID: callID, to: nil, tried: tried + [target], done: done)
            }
            if let reply, reply["result"]?.text != "ok", reply["result"]?.text != "pong", request["command"]?.text != "query" {
                self.engines.report("media: rtpengine \(self.engines.instances[target].address) refused \(request["command"]?.text ?? "?"): "
                                    + (reply["error-reason"]?.text ?? "no reason given"))
            } else if reply != nil, let callID, self.sessions[callID] == nil {
                self.sessions[callID] = target
            }
            done(reply)
        })
        endpoint?.send(bytes, to: engines.instances[target].address)
        loop.schedule(afterMilliseconds: Self.resendMilliseconds) { [weak self] in self?.resend(cookie) }
    }

    private func resend(_ cookie: String) {
        guard var p = pending[cookie] else { return }
        if p.sent >= Self.sends {
            pending[cookie] = nil
            engines.heard(p.instance, alive: false, now: loop.now)
            return p.done(nil)
        }
        p.sent += 1
        pending[cookie] = p
        endpoint?.send(p.bytes, to: engines.instances[p.instance].address)
        loop.schedule(afterMilliseconds: Self.resendMilliseconds) { [weak self] in self?.resend(cookie) }
    }

    public func received(_ datagram: [UInt8], from peer: SocketAddress, on endpoint: UDPEndpoint) {
        guard let space = datagram.firstIndex(of: UInt8(ascii: " ")) else { return }
        let cookie = String(decoding: datagram[..<space], as: UTF8.self)
        guard let p = pending[cookie], engines.instances[p.instance].address == peer else { return }
        pending[cookie] = nil
        engines.heard(p.instance, alive: true, now: loop.now)
        let reply = (try? Bencode(decoding: datagram[(space + 1)...])) ?? .dict([("result", .string("error")),
                                                                                  ("error-reason", .string("an answer that is not bencode"))])
        p.done(reply)
    }

    public func unreachable(_ destination: SocketAddress, error: SystemError, on endpoint: UDPEndpoint) {
        // ICMP: the instance is not there; its requests fail now rather than after 1.5 s.
        for (cookie, p) in pending where engines.instances[p.instance].address == destination {
            pending[cookie] = nil
            engines.heard(p.instance, alive: false, now: loop.now)
            p.done(nil)
        }
    }
}
