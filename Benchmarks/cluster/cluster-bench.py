#!/usr/bin/env python3
"""make bench-cluster: what the cluster costs and how fast it acts, on this machine, in one run.
Prints, last:

  replication: overhead X% CPU per call at 500 cps (3 nodes vs 1), sync of 100000 dialogs in S s, detection D ms
  rehome: N dialogs in T s after failure detection (D ms detection), P% ended cleanly

X: the CPU (user + system, from /proc) of the node SIPp calls through, per call, over a 500 cps run
of RUN_SECONDS (15 by default) with two more nodes replicating its dialogs, against the same node
running alone; three rounds alternating, the median of each. S: a node starting while a peer holds
SYNC_DIALOGS (100000) dialogs (made up by the test-only `cluster_fault synthesize=N`, about 1 KB
each with SDP) pulls them; S is what the new node logs from its request to its last chunk. D: node
1 is killed (SIGKILL) and node 2's `clusterer_list` is asked every 5 ms until it shows node 1 down
(down_after_milliseconds = 500, the default). Rehome: REHOME_DIALOGS (10000) calls held by SIPp
through node 1 (rehome-uac.xml, rehome-uas.xml: both expect the survivor's re-INVITE and check its
Contact); node 1 is killed; D is as above, T runs from then until the node holding node1's tag has
no dialog left to re-home (both legs answered, `rehome_per_second` = 1000 by default), and P is the
share of calls both SIPps count successful: re-INVITEd on both legs, then ended by the caller's
BYE to the survivor's Contact with 200. ONLY=rehome runs that part alone.
Nodes run on 127.0.0.11-13; SIPp on 127.0.0.1.
Every load is bounded: rate * RUN_SECONDS calls, SIPp's -timeout.
"""
import os, re, signal, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchlib import mi as benchlib_mi, sipp_counts  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.path.join(ROOT, ".build/release/sipedge")
RUN_SECONDS = int(os.environ.get("RUN_SECONDS", "15"))
SYNC_DIALOGS = int(os.environ.get("SYNC_DIALOGS", "100000"))
REHOME_DIALOGS = int(os.environ.get("REHOME_DIALOGS", "10000"))
HERE = os.path.dirname(os.path.abspath(__file__))
RATE = 500
SIP, MI, LINK, UAS, UAC = 16060, 16061, 16062, 16070, 16080
TICKS = os.sysconf("SC_CLK_TCK")
work = tempfile.mkdtemp(prefix="sipedge-bench-cluster-")


def ip(n):
    return f"127.0.0.1{n}"


def config(n, clustered):
    text = f"""workers = 2
[log]
level = "notice"
[dispatcher]
destinations = ["127.0.0.1:{UAS}"]
[[listener]]
proto = "udp"
address = "{ip(n)}"
port = {SIP}
tag = "public"
[mi]
address = "{ip(n)}"
port = {MI}
"""
    if clustered:
        members = ", ".join(f'"{m}@{ip(m)}:{LINK}"' for m in (1, 2, 3))
        text += f"""[cluster]
node_id = {n}
address = "{ip(n)}:{LINK}"
nodes = [{members}]
sharing_tag = "node{n}"
"""
    return text


def start(n, clustered=True):
    path = os.path.join(work, f"node{n}.toml")
    with open(path, "w") as f:
        f.write(config(n, clustered))
    log = open(os.path.join(work, f"node{n}.log"), "w")
    env = dict(os.environ, SIPEDGE_TEST_FAULTS="1")
    p = subprocess.Popen([BINARY, "run", "--config", path], stdout=log, stderr=subprocess.STDOUT, env=env)
    for _ in range(200):
        if mi(n, "version") is not None:
            return p
        time.sleep(0.05)
    sys.exit(f"node {n} did not start: see {log.name}")


def mi(n, method, **params):
    return benchlib_mi(ip(n), MI, method, **params)


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def load(node, seconds):
    """RATE calls per second for `seconds` through `node`; the CPU seconds it used per 1000 calls."""
    uas = subprocess.Popen(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(UAS), "-nostdin", "-bg"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    calls = RATE * seconds
    before = cpu(node.pid)
    uac = subprocess.run(["sipp", "-sn", "uac", f"{ip(1)}:{SIP}", "-i", "127.0.0.1", "-p", str(UAC), "-m", str(calls),
                          "-r", str(RATE), "-d", "1000", "-timeout", f"{seconds + 30}s", "-nostdin"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    used = cpu(node.pid) - before
    subprocess.run(["pkill", "-KILL", "-f", f"sipp -sn uas -i 127.0.0.1 -p {UAS}"])
    uas.wait()
    if uac.returncode != 0:
        print(f"  (SIPp exit status {uac.returncode}: some calls failed)")
    return used / calls * 1000


def down_seen(killed, node=2):
    """ms from `killed` until `node` lists node 1 down (polled every 5 ms), or None in 5 s."""
    while time.monotonic() - killed < 5:
        nodes = (mi(node, "clusterer_list") or {}).get("nodes", [])
        if any(p["node_id"] == 1 and p["state"] == "down" for p in nodes):
            return (time.monotonic() - killed) * 1000
        time.sleep(0.005)
    return None


def rehome():
    """REHOME_DIALOGS calls up through node 1, node 1 killed: how long the survivor takes to
    re-home them all, and how many then end cleanly."""
    procs = [start(n) for n in (1, 2, 3)]
    time.sleep(1.5)
    n = REHOME_DIALOGS
    rate = 1000
    uas = subprocess.Popen(["sipp", "-sf", os.path.join(HERE, "rehome-uas.xml"), "-i", "127.0.0.1", "-p", str(UAS), "-m", str(n),
                            "-nostdin", "-trace_stat", "-stf", os.path.join(work, "uas.csv"), "-fd", "1"],
                           cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    uac = subprocess.Popen(["sipp", "-sf", os.path.join(HERE, "rehome-uac.xml"), f"{ip(1)}:{SIP}", "-i", "127.0.0.1", "-p", str(UAC),
                            "-m", str(n), "-r", str(rate), "-l", str(n), "-timeout", "180s", "-nostdin",
                            "-trace_stat", "-stf", os.path.join(work, "uac.csv"), "-fd", "1"],
                           cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # All up and replicated: node 2 lists them all.
    deadline = time.monotonic() + n / rate + 30
    while time.monotonic() < deadline and ((mi(2, "dlg_list", limit="1") or {}).get("total", 0) < n):
        time.sleep(0.2)
    listed = (mi(2, "dlg_list", limit="1") or {}).get("total", 0)
    procs[0].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    detection = down_seen(killed)
    detected = time.monotonic()
    holder, took = None, None
    while time.monotonic() - killed < 120:
        tags = {t["tag"]: t for t in (mi(2, "clusterer_list_shtags") or {}).get("tags", [])}
        holder = tags.get("node1", {}).get("holder")
        if holder in (2, 3):
            stats = mi(holder, "get_statistics", statistics="cluster:") or {}
            if stats.get("cluster:taken_over_dialogs", 0) >= listed and stats.get("cluster:rehome_pending", 1) == 0:
                took = time.monotonic() - detected
                break
        time.sleep(0.05)
    stats = mi(holder, "get_statistics", statistics="cluster:") or {} if holder else {}
    for p in (uac, uas):
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
    stop(procs[1:])
    ok_uac, failed_uac = sipp_counts(os.path.join(work, "uac.csv"))
    ok_uas, failed_uas = sipp_counts(os.path.join(work, "uas.csv"))
    clean = min(ok_uac, ok_uas) / n * 100
    print(f"  ({listed} dialogs listed on node 2 at the kill; holder node {holder}: {stats.get('cluster:rehomed_dialogs')} re-homed, "
          f"{stats.get('cluster:rehome_failures')} failed, {stats.get('cluster:rehome_interrupted')} hung up meanwhile; "
          f"SIPp UAC {ok_uac} ok / {failed_uac} failed, UAS {ok_uas} ok / {failed_uas} failed)")
    if took is None or detection is None:
        return f"rehome: not finished within 120 s ({stats}); see {work}"
    return f"rehome: {n} dialogs in {took:.1f} s after failure detection ({detection:.0f} ms detection), {clean:.0f}% ended cleanly"


def main():
    if not os.path.exists(BINARY):
        sys.exit("build first: swift build -c release --product sipedge")
    if os.environ.get("ONLY") == "rehome":
        print(rehome())
        return
    alone, clustered = [], []
    for round_ in range(3):
        p = start(1, clustered=False)
        alone.append(load(p, RUN_SECONDS))
        stop([p])
        procs = [start(n) for n in (1, 2, 3)]
        time.sleep(1.5)
        clustered.append(load(procs[0], RUN_SECONDS))
        stop(procs)
        print(f"round {round_ + 1}: cpu per 1000 calls: alone {alone[-1]:.3f} s, with two replicas {clustered[-1]:.3f} s")
    overhead = (statistics.median(clustered) / statistics.median(alone) - 1) * 100

    # Sync: node 1 holds SYNC_DIALOGS dialogs; node 2 starts and pulls them.
    one = start(1)
    mi(1, "cluster_fault", synthesize=str(SYNC_DIALOGS))
    two = start(2)
    sync = None
    for _ in range(1200):
        with open(os.path.join(work, "node2.log")) as f:
            m = re.search(r"synced from node 1: (\d+) dialogs in (\d+) ms", f.read())
        if m:
            sync = (int(m.group(1)), int(m.group(2)) / 1000)
            break
        time.sleep(0.05)
    three = start(3)
    time.sleep(1.5)

    # Detection: node 1 killed, node 2 asked until it says so.
    one.send_signal(signal.SIGKILL)
    detection = down_seen(time.monotonic())
    stop([one, two, three])
    rehomed = rehome()
    if sync is None or sync[0] < SYNC_DIALOGS:
        sys.exit(f"node 2 did not sync {SYNC_DIALOGS} dialogs: {sync}; see {work}/node2.log")
    print(f"replication: overhead {overhead:.0f}% CPU per call at {RATE} cps (3 nodes vs 1), "
          f"sync of {sync[0]} dialogs in {sync[1]:.1f} s, detection {detection:.0f} ms" if detection else
          f"replication: overhead {overhead:.0f}% CPU per call at {RATE} cps (3 nodes vs 1), sync of {sync[0]} dialogs in {sync[1]:.1f} s, detection: not seen in 5 s")
    print(rehomed)


if __name__ == "__main__":
    main()
