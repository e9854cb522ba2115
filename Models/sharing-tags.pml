/*
 * SIPEdge sharing tags: membership, claims with epochs, the majority lease, take-over by the lowest
 * survivor (Sources/Cluster: SharingTags.swift `learn`, `claim`, `decide`; ClusterNode.swift).
 *
 * Three nodes, one tag ("node1"), held by node 1 at the start. A heartbeat from j to i carries j's
 * view: the holder and epoch it knows, and the nodes it sees. Each link is a process that delivers
 * j's current view to i whenever it runs (and the link is up): any heartbeat may be lost (the
 * link does not run before the state changes again), delivered twice (it runs twice), and those
 * of different senders arrive in any order. A heartbeat delayed in the network carries nothing a
 * later one does not: epochs only grow, and a stale confirmation is covered below. A partition
 * cuts node 1 off from the others, and later heals.
 *
 * A holder acts on a lease: a majority (itself counted) confirms its claim, each peer by the last
 * heartbeat it sent, which names the same holder and epoch (confirm[i*N+q]: what q last told i).
 * Time enters in two places, abstracted as the code's timing guarantees them:
 *  - a confirmation lapses (leaseMilliseconds after it was heard) only over a cut link;
 *  - when a node stops confirming holder h (it learned or made a newer claim), h's copy of its
 *    confirmation (and any heartbeat of it still on the way to h) is dropped at once: in the code
 *    a new holder acts only after a whole lease of confirmations, by when every confirmation the
 *    old holder held has lapsed, given that the link's delay is far below a lease (loopback or
 *    a LAN: under a millisecond against 250 ms by default) (SharingTags.decide; ClusterLogicTests
 *    check those boundaries with a clock in hand).
 *
 * Checked (Models/check.sh, run by `make test`):
 *   safety (assertions, wherever `acting` changes): never two nodes acting for the tag at once, so
 *     never two active holders at the same epoch;
 *   healed_agreement (LTL, weak fairness): once healed, every node comes to agree on one holder,
 *     for good.
 */
#define N 3
#define MAJORITY 2

byte holder[N];           /* node i's view of the holder (node ids 1..N) */
byte epoch[N];            /* and its epoch: round * 4 + claimant id (no two claims share one) */
bool seen[9];             /* seen[i*N+j]: node i hears node j (membership: up in i's view) */
byte confirm[9];          /* confirm[i*N+q]: the holder q's last heartbeat to i named (0: none) */
byte confirmEpoch[9];     /* ... and its epoch */
byte peerSees[9];         /* peerSees[i*N+q]: the nodes q's last heartbeat to i said it sees (bits) */
bool acting[N];           /* node i acts for the tag (pings, refreshes, take-overs) */
bool link[9];             /* link[i*N+j]: i's datagrams reach j */
bool healed = false;
/* Scratch for the steps below (each step is atomic); cleared after each, so that it adds no states. */
byte k, bits, count, c, m, down;
bool lowest;

inline scrub() { k = 0; bits = 0; count = 0; c = 0; m = 0; down = 0; lowest = false }

ltl healed_agreement { <> [] (healed && holder[0] == holder[1] && holder[1] == holder[2]) }

/* Whether node k may act: it holds the tag and a majority (itself counted) confirms its claim. */
inline lease(k) {
    c = 1;
    for (m : 0 .. N - 1) {
        if
        :: m != (k) && confirm[(k) * N + m] == (k) + 1 && confirmEpoch[(k) * N + m] == epoch[(k)] -> c++
        :: else -> skip
        fi
    }
    acting[(k)] = (holder[(k)] == (k) + 1 && c >= MAJORITY);
    /* one actor at a time (and so never two at the same epoch) */
    assert(!((acting[0] && acting[1]) || (acting[0] && acting[2]) || (acting[1] && acting[2])))
}

/* Node i stops confirming holder `old` (it learned or made a newer claim): old's copy of i's
   confirmation lapses, and old's lease with it, before anyone relies on i's new confirmation
   (the new holder's wait of a whole lease covers it). */
inline withdraw(i, old) {
    if
    :: old != i + 1 ->
        confirm[(old - 1) * N + i] = 0;
        lease(old - 1)
    :: else -> skip
    fi
}

/* Membership.majoritySeesDown: i and the peers it hears, whose last heartbeat leaves node k out. */
inline downByMajority(i, k) {
    down = 1;
    for (m : 0 .. N - 1) {
        if
        :: m != (i) && seen[(i) * N + m] && (peerSees[(i) * N + m] & (1 << (k))) == 0 -> down++
        :: else -> skip
        fi
    }
}

/* This node's view as a heartbeat carries it: the nodes it sees, itself included. */
inline sees(i) {
    bits = 1 << (i);
    for (m : 0 .. N - 1) {
        if
        :: seen[(i) * N + m] -> bits = bits | (1 << m)
        :: else -> skip
        fi
    }
}

/* SharingTags.decide: claim the tag of a holder a majority sees down when seeing a majority and
   lowest among those seen; act while holding the tag and a majority confirms the claim (the lease). */
inline decide(i) {
    count = 1;
    lowest = true;
    for (k : 0 .. N - 1) {
        if
        :: k != i && seen[i * N + k] ->
            count++;
            if
            :: k < i -> lowest = false
            :: else -> skip
            fi
        :: else -> skip
        fi
    }
    if
    :: count >= MAJORITY && holder[i] != i + 1 && !seen[i * N + holder[i] - 1] && lowest ->
        downByMajority(i, holder[i] - 1)
    :: else -> down = 0
    fi;
    if
    :: down >= MAJORITY ->
        /* claim: an epoch above every one known, with the claimant in its low bits */
        withdraw(i, holder[i]);
        epoch[i] = (epoch[i] / 4 + 1) * 4 + i + 1;
        holder[i] = i + 1
    :: else -> skip
    fi;
    lease(i)
}

/* The link from j to i: each run delivers j's heartbeat (its view as it is now), received and
   handled by i in one step, as one turn of i's loop does (SharingTags.learn, then decide). */
proctype Link(byte j; byte i) {
    do
    :: atomic {
            link[j * N + i];
            sees(j);
            seen[i * N + j] = true;
            peerSees[i * N + j] = bits;
            confirm[i * N + j] = holder[j];
            confirmEpoch[i * N + j] = epoch[j];
            if
            :: epoch[j] > epoch[i] ->
                if
                :: holder[j] != holder[i] -> withdraw(i, holder[i])
                :: else -> skip
                fi;
                epoch[i] = epoch[j];
                holder[i] = holder[j]
            :: else -> skip
            fi;
            decide(i);
            scrub()
        }
    od
}

proctype Silence(byte i) {
    byte j;
    do
    :: /* silence over a cut link: the peer goes down in i's view, its confirmation lapses */
        atomic {
            select (j : 0 .. N - 1);
            if
            :: j != i && !link[j * N + i] && seen[i * N + j] ->
                seen[i * N + j] = false;
                confirm[i * N + j] = 0;
                decide(i)
            :: else -> skip
            fi;
            j = 0;
            scrub()
        }
    od
}

init {
    byte i, j;
    atomic {
        for (i : 0 .. N - 1) {
            holder[i] = 1;
            epoch[i] = 5;    /* node 1 claimed in round 1 */
            for (j : 0 .. N - 1) {
                seen[i * N + j] = (i != j);
                link[i * N + j] = (i != j);
                if
                :: i != j -> confirm[i * N + j] = 1; confirmEpoch[i * N + j] = 5; peerSees[i * N + j] = 7
                :: else -> skip
                fi
            }
        }
        acting[0] = true;
        for (i : 0 .. N - 1) {
            run Silence(i);
            for (j : 0 .. N - 1) {
                if
                :: i != j -> run Link(i, j)
                :: else -> skip
                fi
            }
        }
    }
    /* the partition: node 1 alone on one side */
    atomic { link[0 * N + 1] = false; link[1 * N + 0] = false; link[0 * N + 2] = false; link[2 * N + 0] = false }
    /* ...and, some time later, healed */
    atomic { link[0 * N + 1] = true; link[1 * N + 0] = true; link[0 * N + 2] = true; link[2 * N + 0] = true; healed = true }
}
