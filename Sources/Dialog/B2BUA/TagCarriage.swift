// Sharing tags on a worker (DESIGN.md, Cluster): the cluster says which tags this node acts for;
// a call whose tag it may not act for is passive here (listed, found, but no timer runs and
// nothing is sent for it), and a dialog another node carried can be taken over from its record.
extension B2BUA {
    /// This node must not act for `tag`: its calls with that tag go passive.
    public func stopActing(for tag: String) {
        clock.assertInLoop()
        for call in table.byNumber.values where call.active && !call.isEnded && call.record.sharingTag == tag {
            abandonRehoming(call, .notCarried)
            handOverRecovery(call)
            table.deactivate(call)
            stopCarrying(call)
        }
    }

    /// This node acts for `tag` again: its passive calls with that tag are carried (timers armed
    /// from their wall-clock deadlines).
    public func startActing(for tag: String) {
        clock.assertInLoop()
        for call in table.byNumber.values where !call.active && call.isConfirmed && call.record.sharingTag == tag {
            activate(call)
        }
    }

    /// Another node carries the dialog with `key` now: it leaves this worker, with nothing sent.
    public func release(key: String) {
        clock.assertInLoop()
        guard let call = table[key], !call.isEnded else { return }
        abandonRehoming(call, .notCarried)
        handOverRecovery(call)
        table.deactivate(call)
        stopCarrying(call)
        table.forget(call)
        if let d = call.destination { picker.release(d) }
        call.destination = nil
        if let source = call.admitted { config.admission?.release(source) }
        call.admitted = nil
    }
}
