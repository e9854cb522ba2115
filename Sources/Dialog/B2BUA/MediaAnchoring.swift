import SIPParser
import Transport

/// Where calls' media is anchored (rtpengine): each session description crossing the edge is
/// handed to it, and the one it gives back goes on in its place. Answers come later, on the loop
/// that asked.
public protocol MediaRelay: AnyObject {
    /// An offer from the party `session.fromTag` names; `done(nil)`: no relay took it.
    func offer(_ session: MediaSession, sdp: [UInt8], done: @escaping ([UInt8]?) -> Void)
    /// The answer of the party `session.toTag` names to the last offer.
    func answer(_ session: MediaSession, sdp: [UInt8], done: @escaping ([UInt8]?) -> Void)
    /// The call ended: its media session goes.
    func delete(_ session: MediaSession)
}

/// A call's media session as a relay knows it: the caller's Call-ID and a tag for each side.
public struct MediaSession: Equatable, Sendable {
    public var callID: String
    /// The party whose offer this is (or whose offer is being answered), and the other.
    public var fromTag: String
    public var toTag: String
    /// The relay took an offer for it before (maybe from another node or worker, before a
    /// take-over or a restart): it holds the session already.
    public var established: Bool

    public init(callID: String, fromTag: String, toTag: String, established: Bool = false) {
        self.callID = callID
        self.fromTag = fromTag
        self.toTag = toTag
        self.established = established
    }
}

// Media anchoring (issue 16): the caller's leg never moves, so the session is named by what it
// keeps for the call's whole life: the caller's Call-ID and tag, and the edge's tag toward it
// for everything behind the edge (whichever backend that is: a recovery changes only the backend
// side, with the same tags, and the caller's side keeps its ports). While the relay works on one
// description, the call's next messages that may carry one wait their turn.
extension B2BUA {
    /// The session for a description from `side` (an offer, or an answer to `side.other`'s offer).
    func mediaSession(_ call: Call, offerFrom side: DialogRecord.Side) -> MediaSession {
        let caller = call.record.client.remoteTag, edge = call.record.client.localTag
        return MediaSession(callID: call.record.client.callID, fromTag: side == .client ? caller : edge, toTag: side == .client ? edge : caller,
                            established: call.record.mediaAnchored)
    }

    /// Whether a body is a session description the relay should see.
    static func isSDP(_ message: SIPMessage) -> Bool {
        !message.body.isEmpty && (message.contentType?.string.lowercased().hasPrefix("application/sdp") ?? false)
    }

    /// `work` now, or once the relay has answered for this call (in order).
    func afterMedia(_ call: Call, _ work: @escaping () -> Void) {
        if call.mediaWaiting != nil { call.mediaWaiting!.append(work) } else { work() }
    }

    /// Hands `sdp` (from `side`) to the relay as an offer or an answer; `then` gets what goes on
    /// in its place (the description as it was if no relay answered: the call goes on unanchored
    /// rather than fails). What comes for the call meanwhile waits.
    func throughMedia(_ call: Call, _ sdp: [UInt8], offer: Bool, from side: DialogRecord.Side, then: @escaping ([UInt8]) -> Void) {
        guard let media else { return then(sdp) }
        call.mediaWaiting = []
        let session = mediaSession(call, offerFrom: offer ? side : side.other)
        let done: ([UInt8]?) -> Void = { [weak self, weak call] result in
            guard let self, let call else { return }
            var queued = call.mediaWaiting ?? []
            call.mediaWaiting = nil
            if call.isEnded {
                // (Ended meanwhile: a session the relay just made goes at once.)
                if result != nil { self.media?.delete(session) }
                return
            }
            if result != nil, !call.record.mediaAnchored { self.table.update(call) { $0.mediaAnchored = true } }
            then(result ?? sdp)
            // What waited runs now, unless it (or `then`) gave the relay another description.
            while !queued.isEmpty {
                let next = queued.removeFirst()
                if call.mediaWaiting != nil { call.mediaWaiting! += [next] + queued; return }
                next()
            }
        }
        if offer { media.offer(session, sdp: sdp, done: done) } else { media.answer(session, sdp: sdp, done: done) }
    }

    /// The call ended here: the relay forgets its media (a passive copy's end is not this node's
    /// to tell).
    func releaseMedia(_ call: Call) {
        guard call.record.mediaAnchored, call.active, let media else { return }
        media.delete(mediaSession(call, offerFrom: .client))
    }
}
