import SIPParser
import Transport

// Requests outside any call: REGISTER (answered by the registrar, or sent on upstream as the edge's
// own) and the dispatcher's OPTIONS probes.
extension B2BUA {
    func register(_ request: SIPMessage, _ tx: ServerTxRecord) {
        guard let registrar = config.registrar else {
            respond(tx, status: 501)
            return
        }
        switch registrar.register(request, from: tx.peer) {
        case .answer(let status, let headers):
            respond(tx, status: status, extra: headers)
            registeredOverConnection(request, tx, status: status)
        case .forward(let upstream):
            forwardRegistration(request, tx, upstream, registrar: registrar)
        }
    }

    /// Sends a phone's REGISTER on to the upstream registrar (the Asterisk) as the edge's own: our
    /// Via, Call-ID and CSeq, the edge as Contact, the phone's identity and credentials. The
    /// answer goes back to the phone: a challenge as it came, a 2xx as the phone's own bindings.
    private func forwardRegistration(_ request: SIPMessage, _ tx: ServerTxRecord, _ up: UpstreamRegistration,
                                     registrar: any RegistrationHandler) {
        let local = addresses.address(for: up.hop.transport)
        var b = MessageBuilder(requestLine: "REGISTER", uri: up.requestURI)
        via(up.hop, into: &b)
        b.header("Max-Forwards", "70")
        if let from = request.firstValue(.from) { b.header("From", from.bytes) }
        if let to = request.firstValue(.to) { b.header("To", to.bytes) }
        b.header("Call-ID", up.callID)
        b.header("CSeq", "\(up.cseq) REGISTER")
        b.header("Contact", "<sip:\(up.user)@\(local.host):\(local.port)\(up.hop.transport == .udp ? "" : ";transport=\(up.hop.transport.rawValue)")>")
        b.header("Expires", "\(up.expires)")
        for kind: HeaderKind in [.authorization, .proxyAuthorization, .userAgent] {
            for i in 0..<request.headerCount where request.header(at: i).kind == kind {
                let h = request.header(at: i)
                b.header(copying: h.name, h.value)
            }
        }
        transactions.startClient(b.finishRequest(), to: up.hop, call: nil, purpose: .ownRequest, onFinal: { [weak self] response in
            guard let self, self.transactions.server[tx.key] === tx else { return }
            let (status, headers) = registrar.upstreamAnswered(request, from: tx.peer, upstream: up, response: response)
            self.respond(tx, status: status, extra: headers)
            self.registeredOverConnection(request, tx, status: status)
        })
    }

    /// A phone registered over its own connection: calls waiting for it to reconnect (after a
    /// take-over) can reach it now.
    private func registeredOverConnection(_ request: SIPMessage, _ tx: ServerTxRecord, status: Int) {
        guard status >= 200, status < 300, tx.peer.transport != .udp, let to = request.firstValue(.to),
              let aor = Self.addressOfRecord(to.bytes) else { return }
        if let userRegistered { userRegistered(aor, tx.peer) } else { registered(addressOfRecord: aor, over: tx.peer) }
    }

    /// Sends an OPTIONS outside any dialog to `hop` (the dispatcher's probe); `done` gets the final
    /// status, or nil when none came (Timer F, an ICMP refusal, a refused connection).
    public func probe(_ destination: Hop, _ done: @escaping (Int?) -> Void) {
        clock.assertInLoop()
        let hop = byOwnPort(destination)
        let local = localAddress(hop)
        let host = hop.address.uriHost
        let transport = hop.transport == .udp ? "" : ";transport=\(hop.transport.rawValue)"
        var b = MessageBuilder(requestLine: "OPTIONS", uri: Array("sip:\(host):\(hop.address.port)\(transport)".utf8))
        via(hop, into: &b)
        b.header("Max-Forwards", "70")
        b.header("From", "<sip:edge@\(local.host):\(local.port)>;tag=\(ids.make())")
        b.header("To", "<sip:\(host):\(hop.address.port)>")
        b.header("Call-ID", ids.make())
        b.header("CSeq", "1 OPTIONS")
        b.header("Accept", "application/sdp")
        transactions.startClient(b.finishRequest(), to: hop, call: nil, purpose: .ownRequest, onFinal: { done($0?.statusCode) })
    }
}
