import Cluster
import Dialog
import Foundation
import Logging
import SIPParser
import Synchronization
import Transport

/// The management interface: JSON-RPC 2.0 over UDP, one request per datagram, with the command
/// names OpenSIPS uses where it has one (`ds_list`, `dlg_list`, `get_statistics`...). It runs on
/// its own loop thread and asks the workers for what they hold, so a slow command never stalls
/// calls. A request from outside loopback must carry the configured secret (`"secret"` in params).
public final class MIServer: DatagramReceiver, @unchecked Sendable {
    public let loop: EventLoop
    public private(set) var endpoint: UDPEndpoint!
    private let secret: String
    private let logger: Logger
    private unowned let edge: EdgeServer
    /// The last `dlg_list` listing, which later pages (offset > 0) are read from.
    private var dialogListing: (taken: Double, records: [DialogRecord])?
    /// For calls per second: calls started at the previous `get_statistics`, and when.
    private var lastSample: (time: Double, started: Int)

    public static let commands = ["ds_list", "ds_set_state", "ds_reload", "address_reload", "ul_dump", "dlg_list", "dlg_end_dlg",
                                  "get_statistics", "reset_statistics", "which", "version",
                                  "clusterer_list", "clusterer_list_shtags", "clusterer_shtag_set_active", "dlg_rehome",
                                  "dlg_send_sequential", "dlg_recover"]

    /// The cluster's fault switch (`cluster_fault block=2,3`) is a command only when the process
    /// was started with SIPEDGE_TEST_FAULTS=1: tests cut the link with it, operators never can.
    static let faultSwitch = getenv("SIPEDGE_TEST_FAULTS").map { String(cString: $0) == "1" } ?? false

    init(settings: EdgeConfig.MISettings, edge: EdgeServer, logger: Logger, loopIndex: Int) throws(ListenerError) {
        do {
            loop = try EventLoop(index: loopIndex)
        } catch {
            throw ListenerError(listener: "mi", reason: "cannot start its loop: \(error)", underlying: error)
        }
        secret = settings.secret
        self.logger = logger
        self.edge = edge
        lastSample = (Self.now(), 0)
        do {
            endpoint = try UDPEndpoint(loop: loop, bindTo: settings.address, reusePort: false, receiver: self)
        } catch {
            throw ListenerError(listener: "mi udp:\(settings.address)", reason: "\(error)", underlying: error)
        }
    }

    func start() throws(SystemError) { try loop.start() }
    func stop() { loop.stop() }

    static func now() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    public func received(_ datagram: [UInt8], from peer: SocketAddress, on endpoint: UDPEndpoint) {
        let reply: Any
        switch try? JSONSerialization.jsonObject(with: Data(datagram), options: [.fragmentsAllowed]) {
        case nil:
            // Foundation's own text names its internals (NSCocoaErrorDomain...): say it plainly.
            reply = Self.error(-32700, "parse error: the request is not valid JSON", id: NSNull())
        case let batch as [Any]:
            // JSON-RPC 2.0 §6: each element answered in one array; notifications are not; an empty
            // batch is itself invalid; a batch of notifications gets nothing at all.
            guard !batch.isEmpty else {
                reply = Self.error(-32600, "invalid request: an empty batch", id: NSNull())
                break
            }
            guard batch.count <= Self.maxBatch else {
                reply = Self.error(-32600, "invalid request: a batch of more than \(Self.maxBatch) requests", id: NSNull())
                break
            }
            let answers = batch.compactMap { answer($0, from: peer) }
            guard !answers.isEmpty else { return }
            reply = answers
        case let single?:
            guard let answer = answer(single, from: peer) else { return }
            reply = answer
        }
        guard var data = try? JSONSerialization.data(withJSONObject: reply, options: [.sortedKeys]) else { return }
        if data.count > Self.maxDatagram {
            // One answer, one datagram: a list that does not fit is asked for in pages.
            let id = (reply as? [String: Any])?["id"] ?? NSNull()
            let error = Self.error(-32000, "the answer (\(data.count) bytes) does not fit in one datagram; ask for less with offset= and limit=", id: id)
            data = (try? JSONSerialization.data(withJSONObject: error, options: [.sortedKeys])) ?? Data()
        }
        endpoint.send(Array(data), to: peer)
    }

    /// The answer to one request object (JSON-RPC 2.0 §4, §5), or nil for a valid notification (a
    /// request without an id), which is carried out and not answered.
    private func answer(_ element: Any, from peer: SocketAddress) -> [String: Any]? {
        guard let request = element as? [String: Any] else {
            return Self.error(-32600, "invalid request: a request is a JSON object", id: NSNull())
        }
        // An id is a string, a number or null; anything else makes the request invalid.
        let rawID = request["id"]
        if let rawID, !(rawID is String || rawID is NSNumber || rawID is NSNull) {
            return Self.error(-32600, "invalid request: \"id\" must be a string, a number or null", id: NSNull())
        }
        let isNotification = rawID == nil
        let id = rawID ?? NSNull()
        guard request["jsonrpc"] as? String == "2.0", let method = request["method"] as? String else {
            return Self.error(-32600, "invalid request: a JSON-RPC 2.0 request has \"jsonrpc\": \"2.0\" and a \"method\" string", id: id)
        }
        var params: [String: Any] = [:]
        switch request["params"] {
        case nil: break
        case let object as [String: Any]: params = object
        case is [Any]:
            return Self.error(-32602, "invalid params: SIPEdge's commands take named params (an object), not a list", id: id)
        default:
            return Self.error(-32600, "invalid request: \"params\" must be an object", id: id)
        }
        let given = params.removeValue(forKey: "secret") as? String
        let shown = Self.shown(method)
        let result: Any
        do {
            if !peer.isLoopback && (secret.isEmpty || given != secret) {
                if edge.summary.admit("mi refused", from: peer) { logger.warning("mi: \(shown) from \(peer) refused: \(secret.isEmpty ? "only loopback may use the MI" : "wrong or missing secret")") }
                throw MIError(code: -32001, message: "forbidden: requests from outside loopback need the configured secret")
            }
            result = try run(method, params)
        } catch let error as MIError {
            return isNotification ? nil : Self.error(error.code, error.message, id: id)
        } catch {
            return isNotification ? nil : Self.error(-32603, "internal error: \(error)", id: id)
        }
        return isNotification ? nil : ["jsonrpc": "2.0", "id": id, "result": result]
    }

    static func error(_ code: Int, _ message: String, id: Any) -> [String: Any] {
        ["jsonrpc": "2.0", "id": id, "error": ["code": code, "message": message]]
    }

    /// A method name as it may appear in an answer or a log line: at most 64 characters (a peer's
    /// 60 KB name is not echoed back whole).
    static func shown(_ method: String) -> String {
        method.count <= 64 ? method : method.prefix(64) + "... (\(method.utf8.count) bytes)"
    }

    /// Most requests in one batch.
    static let maxBatch = 64

    public func unreachable(_ destination: SocketAddress, error: SystemError, on endpoint: UDPEndpoint) {}
    public func truncated(from peer: SocketAddress, on endpoint: UDPEndpoint) {
        logger.notice("mi: a request from \(peer) was larger than a datagram buffer; dropped")
    }

    static let maxDatagram = 65_000

    /// `offset=` and `limit=` of a listing (100 by default), applied to `items`.
    static func page<T>(_ items: [T], _ params: [String: Any]) -> (items: [T], total: Int) {
        let offset = max(0, (params["offset"] as? String).flatMap { Int($0) } ?? 0)
        let limit = max(0, (params["limit"] as? String).flatMap { Int($0) } ?? 100)
        guard offset < items.count else { return ([], items.count) }
        return (Array(items[offset..<min(items.count, offset + limit)]), items.count)
    }

    struct MIError: Error {
        let code: Int
        let message: String
    }

    private func run(_ method: String, _ params: [String: Any]) throws -> Any {
        switch method {
        case "version":
            return ["Server": "SIPEdge \(EdgeServer.version)"]
        case "which":
            return Self.commands
        case "ds_list":
            let sets: [[String: Any]] = edge.router.sets.map { set in
                ["id": set.settings.setID, "algorithm": set.settings.algorithm.rawValue,
                 "destinations": set.snapshot().map {
                     ["uri": $0.uri, "state": $0.state.rawValue, "weight": $0.weight, "priority": $0.priority,
                      "attrs": $0.attrs, "active_calls": $0.activeCalls] as [String: Any]
                 }] as [String: Any]
            }
            return ["sets": sets]
        case "ds_set_state":
            guard let uri = params["uri"] as? String ?? params["address"] as? String else {
                throw MIError(code: -32602, message: "ds_set_state needs uri=sip:HOST:PORT and state=active|inactive|probing|draining")
            }
            guard let text = params["state"] as? String, let state = Self.state(text) else {
                throw MIError(code: -32602, message: "state must be active, inactive, probing or draining (or a, i, p, d)")
            }
            // In every set that has it, or only in set=N.
            let wanted = (params["set"] as? String).flatMap { Int($0) }
            let changed = edge.router.sets.filter { wanted == nil || $0.settings.setID == wanted }.map { $0.setState(uri: uri, to: state) }
            guard changed.contains(true) else { throw MIError(code: -32602, message: "no destination \(uri)") }
            return "OK"
        case "ds_reload":
            let config = try reloadedConfig()
            let ids = Set(config.sets.map(\.setID))
            guard ids == Set(edge.router.sets.map(\.settings.setID)) else {
                throw MIError(code: -32000, message: "the sets' ids changed (adding or removing a set needs a restart); nothing changed")
            }
            for settings in config.sets { edge.router.set(id: settings.setID)?.reload(settings) }
            logger.notice("mi: dispatcher reloaded from \(edge.configPath): \(config.sets.reduce(0) { $0 + $1.destinations.count }) destinations")
            return "OK"
        case "address_reload":
            // OpenSIPS's permissions module name: the ACL (trusted networks) and the limits again.
            let config = try reloadedConfig()
            edge.reloadSecurity(config.security)
            logger.notice("mi: [security] reloaded from \(edge.configPath)")
            return "OK"
        case "ul_dump":
            guard let registrar = edge.registrar else { return ["AORs": [], "total": 0] }
            let now = Registrar.now()
            var all = registrar.dump().sorted { $0.key < $1.key }
            if let aor = params["aor"] as? String { all = all.filter { $0.key == aor } }
            let (page, total) = Self.page(all, params)
            let aors: [[String: Any]] = page.map { user, bindings in
                ["AOR": user, "Contacts": bindings.map {
                    ["Contact": $0.contact, "Expires": Int($0.expiresAt > now ? $0.expiresAt - now : 0),
                     "Received": $0.source.description, "NAT": $0.natted, "Call-ID": $0.callID, "CSeq": Int($0.cseq),
                     "User-Agent": $0.userAgent] as [String: Any]
                }]
            }
            return ["AORs": aors, "total": total]
        case "dlg_list":
            // A listing is taken at offset 0 (or when the last is over 10 s old) and later pages come
            // from it: pages of one listing agree with each other, and each costs no new sort.
            let offset = (params["offset"] as? String).flatMap { Int($0) } ?? 0
            if offset == 0 || dialogListing == nil || Self.now() - dialogListing!.taken > 10 {
                dialogListing = (Self.now(), edge.dialogRecords().sorted { ($0.startedAt, $0.key) < ($1.startedAt, $1.key) })
            }
            let (page, total) = Self.page(dialogListing!.records, params)
            return ["Dialogs": page.map(Self.describe), "total": total]
        case "dlg_end_dlg":
            guard let key = params["dialog_id"] as? String ?? params["callid"] as? String else {
                throw MIError(code: -32602, message: "dlg_end_dlg needs dialog_id=KEY (as dlg_list shows it) or callid=CALL-ID")
            }
            guard edge.endDialog(key: key) else { throw MIError(code: -32602, message: "no confirmed dialog \(key)") }
            return "OK"
        case "dlg_recover":
            // Planned maintenance of a backend: calls move to another destination of their set.
            if let key = params["callid"] as? String ?? params["dialog_id"] as? String, !key.isEmpty {
                let moving = edge.recover(key: key, uri: nil)
                guard moving > 0 else { throw MIError(code: -32602, message: "no confirmed dialog \(Self.shown(key)) (or it is already moving)") }
                return ["recovering": moving]
            }
            guard let uri = params["destination"] as? String, !uri.isEmpty else {
                throw MIError(code: -32602, message: "dlg_recover needs callid=CALL-ID (or a dialog_id as dlg_list shows it) or destination=sip:HOST:PORT")
            }
            guard !edge.router.indices(ofURI: uri).isEmpty else { throw MIError(code: -32602, message: "no destination \(Self.shown(uri))") }
            return ["recovering": edge.recover(key: nil, uri: uri)]
        case "dlg_send_sequential":
            return try sendSequential(params)
        case "get_statistics":
            return statistics(params)
        case "clusterer_list", "clusterer_list_shtags", "clusterer_shtag_set_active", "dlg_rehome", "cluster_fault":
            guard let cluster = edge.cluster else { throw MIError(code: -32000, message: "this node has no [cluster] section") }
            return try clusterCommand(method, params, cluster)
        case "reset_statistics":
            edge.resetStatistics()
            lastSample = (Self.now(), edge.callCounts().started)
            return "OK"
        default:
            throw MIError(code: -32601, message: "unknown command \(Self.shown(method)); `which` lists them")
        }
    }

    /// `dlg_send_sequential callid=X [method=INVITE] [mode=caller|callee] [body=none|outbound|inbound|
    /// custom:TYPE:BODY] [headers=...]` (OpenSIPS's parameters; its challenge modes are not offered):
    /// answered with the final status and reason once the leg has answered.
    private func sendSequential(_ params: [String: Any]) throws -> Any {
        guard let callID = params["callid"] as? String, !callID.isEmpty else {
            throw MIError(code: -32602, message: "dlg_send_sequential needs callid=CALL-ID (or a dialog_id as dlg_list shows it)")
        }
        let method = (params["method"] as? String ?? "INVITE").uppercased()
        guard SIPMethod(method) != nil, !["ACK", "CANCEL", "BYE"].contains(method) else {
            throw MIError(code: -32602, message: "method \(Self.shown(method)) cannot be sent this way (dlg_end_dlg ends a call)")
        }
        let side: DialogRecord.Side
        switch params["mode"] as? String ?? "caller" {
        case "caller": side = .client
        case "callee": side = .backend
        case let mode: throw MIError(code: -32602, message: "mode \(Self.shown(mode)): caller or callee (the challenge modes are not offered)")
        }
        let body: B2BUA.SequentialBody
        switch params["body"] as? String ?? "none" {
        case "none": body = .none
        case "outbound": body = .outbound
        case "inbound": body = .inbound
        case let text where text.hasPrefix("custom:"):
            let rest = text.dropFirst("custom:".count)
            guard let colon = rest.firstIndex(of: ":"), !rest[..<colon].isEmpty,
                  rest[..<colon].allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "/+-.".contains($0)) }) else {
                throw MIError(code: -32602, message: "body=custom:TYPE:BODY, TYPE a media type such as application/sdp")
            }
            body = .custom(contentType: String(rest[..<colon]), body: Array(rest[rest.index(after: colon)...].utf8))
        case let other: throw MIError(code: -32602, message: "body \(Self.shown(other)): none, outbound, inbound or custom:TYPE:BODY")
        }
        var headers: [(String, String)] = []
        if let text = params["headers"] as? String {
            guard text.utf8.count <= 2_048 else { throw MIError(code: -32602, message: "headers: at most 2,048 bytes") }
            // (The dialog's own headers are the edge's to write.)
            let owned: Set<String> = ["via", "v", "from", "f", "to", "t", "call-id", "i", "cseq", "contact", "m", "route", "max-forwards",
                                      "content-length", "l", "content-type", "c"]
            for line in text.split(whereSeparator: \.isNewline) where !line.isEmpty {
                let name = line.firstIndex(of: ":").map { String(line[..<$0]).trimmingCharacters(in: .whitespaces) } ?? ""
                // (A header name is a token, as a method name is.)
                guard let colon = line.firstIndex(of: ":"), SIPMethod(name) != nil, !owned.contains(name.lowercased()) else {
                    throw MIError(code: -32602, message: "headers: \(Self.shown(String(line))) is not Name: value, or names a header the edge writes")
                }
                headers.append((name, String(line[line.index(after: colon)...]).trimmingCharacters(in: .whitespaces)))
            }
        }
        guard let answer = edge.sendSequential(callID: callID, to: side, method: method, body: body, headers: headers) else {
            throw MIError(code: -32602, message: "no confirmed dialog \(Self.shown(callID)) carried by this node, or a re-INVITE is under way in it")
        }
        guard let status = answer.status else { return ["status": 408, "reason": "no answer (Timer B)"] as [String: Any] }
        return ["status": status, "reason": answer.reason ?? ""] as [String: Any]
    }

    /// The cluster's commands, answered on the cluster's loop.
    private func clusterCommand(_ method: String, _ params: [String: Any], _ cluster: ClusterNode) throws -> Any {
        switch method {
        case "clusterer_list":
            let (peers, now, synced) = try cluster.loop.submitAndWait { (cluster.peers(), cluster.loop.now, cluster.synced) }
            var nodes: [[String: Any]] = []
            for p in peers {
                let lastSeen = p.lastHeard.map { Int(now &- $0) } ?? -1
                nodes.append(["node_id": p.member.id, "address": p.member.address.description, "state": p.up ? "up" : "down",
                              "last_seen_ms": lastSeen, "wire_version": Int(p.wireVersion), "synced": p.synced])
            }
            return ["nodes": nodes, "node_id": cluster.settings.nodeID, "synced": synced] as [String: Any]
        case "clusterer_list_shtags":
            let states = try cluster.loop.submitAndWait { cluster.tagStates().map { TagState(claim: $0.claim, active: $0.active) } }
            var tags: [[String: Any]] = []
            for t in states {
                tags.append(["tag": t.claim.tag, "state": t.active ? "active" : "backup", "holder": t.claim.holder, "epoch": Int(t.claim.epoch)])
            }
            return ["tags": tags] as [String: Any]
        case "clusterer_shtag_set_active":
            guard let tag = params["tag"] as? String, !tag.isEmpty else { throw MIError(code: -32602, message: "clusterer_shtag_set_active needs tag=NAME") }
            let result = try cluster.loop.submitAndWait { () -> Result<TagClaim, ClusterNode.CommandError> in
                do throws(ClusterNode.CommandError) { return .success(try cluster.setActive(tag: tag)) } catch { return .failure(error) }
            }
            switch result {
            case .success(let claim): return ["tag": claim.tag, "holder": claim.holder, "epoch": Int(claim.epoch)]
            case .failure(let error): throw MIError(code: -32000, message: "\(error)")
            }
        case "dlg_rehome":
            let tag = params["tag"] as? String, callID = params["callid"] as? String
            let count = (params["count"] as? String).flatMap { Int($0) } ?? (params["count"] as? Int) ?? (callID == nil ? 0 : 1)
            guard callID != nil || (tag != nil && count > 0) else {
                throw MIError(code: -32602, message: "dlg_rehome needs tag=NAME count=N, or callid=CALL-ID")
            }
            let result = try cluster.loop.submitAndWait { () -> Result<Int, ClusterNode.CommandError> in
                do throws(ClusterNode.CommandError) { return .success(try cluster.rehome(tag: tag, count: count, callID: callID)) } catch { return .failure(error) }
            }
            switch result {
            case .success(let n): return ["queued": n]
            case .failure(let error): throw MIError(code: -32000, message: "\(error)")
            }
        default:
            guard Self.faultSwitch else { throw MIError(code: -32601, message: "unknown command \(Self.shown(method)); `which` lists them") }
            if let percent = (params["drop_percent"] as? String).flatMap({ Int($0) }) {
                try cluster.loop.submitAndWait { cluster.drop(percent: percent) }
                return "OK"
            }
            if let count = (params["synthesize"] as? String).flatMap({ Int($0) }) {
                try cluster.loop.submitAndWait { cluster.synthesize(min(count, 1_000_000)) }
                return "OK"
            }
            let peers = Set(((params["block"] as? String) ?? "").split(separator: ",").compactMap { Int($0) })
            try cluster.loop.submitAndWait { cluster.block(peers) }
            return "OK"
        }
    }

    /// The config file read again; an error leaves everything as it was.
    private func reloadedConfig() throws -> EdgeConfig {
        do {
            return try EdgeConfig.parse(try String(contentsOfFile: edge.configPath, encoding: .utf8))
        } catch {
            throw MIError(code: -32000, message: "\(edge.configPath): \(error); nothing changed")
        }
    }

    static func state(_ text: String) -> Dispatcher.State? {
        switch text.lowercased() {
        case "a", "active", "1": return .active
        case "i", "inactive", "0": return .inactive
        case "p", "probing": return .probing
        case "d", "draining": return .draining
        default: return nil
        }
    }

    static func describe(_ r: DialogRecord) -> [String: Any] {
        func leg(_ l: LegRecord) -> [String: Any] {
            ["call_id": l.callID, "local_tag": l.localTag, "remote_tag": l.remoteTag, "local_cseq": Int(l.localCSeq),
             "remote_cseq": Int(l.remoteCSeq), "remote_target": String(decoding: l.remoteTarget, as: UTF8.self),
             "hop": l.hop.description, "listener_tag": l.listenerTag, "session_expires": Int(l.sessionInterval),
             "refresher": ["none", "edge", "peer"][Int(l.refresher.rawValue)]]
        }
        return ["dialog_id": r.key, "state": r.state == .confirmed ? "confirmed" : r.state == .early ? "early" : "ended",
                "version": Int(r.version), "sharing_tag": r.sharingTag, "started": Int(r.startedAt), "answered": Int(r.answeredAt),
                "ends": Int(r.endsAt), "client": leg(r.client), "backend": leg(r.backend),
                "destination": r.backend.hop.sipURI, "recoveries": Int(r.recoveries),
                "variables": Dictionary(r.variables.map { ($0.name, $0.value) }, uniquingKeysWith: { $1 })]
    }

    private func statistics(_ params: [String: Any]) -> [String: Any] {
        let totals = edge.statistics()
        let now = Self.now()
        let rate = now > lastSample.time ? Double(totals.callsStarted - lastSample.started) / (now - lastSample.time) : 0
        lastSample = (now, totals.callsStarted)
        var out: [String: Any] = [
            "core:rcv_requests": totals.requests.values.reduce(0, +),
            "core:rcv_replies": totals.replies.values.reduce(0, +),
            "core:drop_invalid": totals.invalid,
            "core:drop_flood": totals.blocked,
            "dialog:refused_per_source_limit": totals.refusedCalls,
            "core:received_messages": totals.received,
            "core:handed_over": totals.handedOver,
            "dialog:active_dialogs": totals.activeCalls,
            "dialog:processed_dialogs": totals.callsStarted,
            "dialog:ended_dialogs": totals.callsEnded,
            "dialog:calls_per_second": (rate * 100).rounded() / 100,
            "tm:server_transactions": totals.serverTransactions,
            "tm:client_transactions": totals.clientTransactions,
        ]
        out["dialog:pings_sent"] = totals.pingsSent
        out["recovery:recovered_calls"] = totals.recoveriesDone
        out["recovery:failed_calls"] = totals.recoveriesFailed
        out["recovery:pending_calls"] = totals.recoveriesPending
        out["dialog:session_refreshes_sent"] = totals.sessionRefreshesSent
        out["dialog:timed_out_dialogs"] = totals.callsTimedOut
        if let cluster = edge.cluster, let c = try? cluster.loop.submitAndWait({ cluster.statistics }) {
            out["cluster:taken_over_dialogs"] = c.takenOverDialogs
            out["cluster:rehomed_dialogs"] = c.rehomedDialogs
            out["cluster:rehome_failures"] = c.rehomeFailures
            out["cluster:rehome_interrupted"] = c.rehomeInterrupted
            out["cluster:early_dialogs_ended"] = c.earlyDialogsEnded
            out["cluster:rehome_pending"] = c.rehomePending
            out["cluster:replication_sent"] = c.replicationSent
            out["cluster:replication_received"] = c.replicationReceived
            out["cluster:sync_dialogs_received"] = c.syncDialogsReceived
            out["cluster:heartbeats_sent"] = c.heartbeatsSent
            out["cluster:resend_requests"] = c.resendRequests
            out["cluster:resent_datagrams"] = c.resentDatagrams
            out["cluster:snapshots_served"] = c.snapshotsServed
            out["cluster:dropped_datagrams"] = c.droppedDatagrams
            out["cluster:unauthenticated_datagrams"] = c.unauthenticated
            out["cluster:unknown_wire_version"] = c.unknownWireVersion
        }
        for (method, n) in totals.requests { out["core:rcv_requests_\(method.lowercased())"] = n }
        for (cls, n) in totals.replies { out["core:rcv_replies_\(cls)"] = n }
        let snapshot = edge.router.sets.flatMap { $0.snapshot() }
        for state in Dispatcher.State.allCases {
            out["dispatcher:\(state.rawValue)_destinations"] = snapshot.filter { $0.state == state }.count
        }
        // `get_statistics statistics=dialog:` (a group, as OpenSIPS takes it) narrows the answer.
        if let wanted = params["statistics"] as? String, !wanted.isEmpty, wanted != "all" {
            out = out.filter { $0.key.hasPrefix(wanted) }
        }
        return out
    }
}

/// A sharing tag as `clusterer_list_shtags` shows it.
private struct TagState: Sendable {
    let claim: TagClaim
    let active: Bool
}
