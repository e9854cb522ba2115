#!/usr/bin/env python3
"""make bench-calls: complete calls (INVITE, 100, 180, 200, ACK, BYE, 200) driven by SIPp through
SIPEdge (B2BUA: topology hiding, dialogs) and through Kamailio 5.6 (tm, rr, dialog, topoh), in the
same run, against the same SIPp backend. Kamailio runs as its operators run it under load: 1 GB of
shared memory, the TLSF allocator, a 4 MB socket receive buffer (-m 1024 -x tlsf -b 4194304).
Prints, last:

  calls: sipedge N cps, kamailio M cps, ratio R, success S%
  cpu per 1000 calls at 500 cps (median of 3): sipedge X s, baseline B s, kamailio Y s, ratio X/Y

N and M: the highest rate each sustains with at least 99.9 % of calls completed over a run of
RUN_SECONDS (20 by default), found by doubling then halving the interval. X, B and Y: CPU seconds
(user + system, from /proc, every process and thread of the proxy) per 1000 calls over a fixed
500 cps run, taken first, on the freshly started proxies, three rounds alternating between them,
the median of each. B is the build at BASELINE_BINARY (calls-bench.sh builds the commit BASELINE,
HEAD~1 by default, in a temporary worktree); without it, no baseline. Every load is bounded: a run
sends rate * RUN_SECONDS calls and SIPp's -timeout ends it. With VARIANTS=1, the same CPU figure
for two more SIPEdges: one with `worker_ports`, one with `coalesce_microseconds = 0`.
"""
import os, re, resource, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import benchlib  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_SECONDS = int(os.environ.get("RUN_SECONDS", "20"))
MAX_RATE = int(os.environ.get("MAX_RATE", "16000"))
TICKS = os.sysconf("SC_CLK_TCK")
UAS_PORT, UAC_PORT, EDGE_PORT, KAM_PORT = 15080, 15070, 15060, 15090
# The second SIPEdge: the same, with each worker's own port toward the backend; the third without
# wake-up coalescing.
TUNED_PORT, TUNED_WORKER_PORTS, IMMEDIATE_PORT = 15062, 15100, 15064
BASELINE_PORT = 15066
BASELINE_BINARY = os.environ.get("BASELINE_BINARY", "")
VARIANTS = os.environ.get("VARIANTS") == "1"
work = tempfile.mkdtemp(prefix="sipedge-bench-calls-")


def cpu_seconds(pid):
    """User + system CPU of pid and every descendant process (threads are counted in their process)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append((int(entry), int(fields[11]) + int(fields[12])))
            except (OSError, IndexError):
                pass
    total, todo = 0, [pid]
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    while todo:
        for child, ticks in children.get(todo.pop(), []):
            total += ticks
            todo.append(child)
    return total / TICKS


def sipp(args, **kw):
    return subprocess.Popen(["sipp"] + args, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def run_load(port, rate, seconds):
    """One bounded SIPp run: rate * seconds calls; SIPp is stopped RUN_SECONDS * 1.1 + 40 s after
    its start whatever it is doing (a call still unfinished then counts as failed). Returns
    (successful, failed, seconds SIPp took to create every call, SIPp's CPU seconds), from the
    statistics file SIPp writes every second."""
    calls = rate * seconds
    stats = os.path.join(work, f"stats-{port}-{rate}.csv")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    p = sipp(["-sf", os.path.join(HERE, "uac.xml"), f"127.0.0.1:{port}", "-i", "127.0.0.1", "-p", str(UAC_PORT),
              "-cp", str(UAC_PORT + 2), "-m", str(calls), "-r", str(rate), "-rp", "1000", "-l", str(max(rate * 10, 1000)),
              "-nostdin", "-max_socket", "65000", "-trace_stat", "-stf", stats, "-fd", "1",
              # A 180 overtaken by its 200 (two proxy processes or threads can reorder them) is not a
              # failed call: SIPp is told not to abort calls on unexpected messages.
              "-default_behaviors", "all,-abortunexp"])
    try:
        p.communicate(timeout=seconds * 1.1 + 40)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
    elapsed = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    ok, created_in = 0, float("inf")
    try:
        with open(stats) as f:
            rows = [line.split(";") for line in f.read().strip().splitlines()]
        header = rows[0]
        col = {name: header.index(name) for name in ("ElapsedTime(C)", "TotalCallCreated", "SuccessfulCall(C)")}
        ok = int(rows[-1][col["SuccessfulCall(C)"]])
        for row in rows[1:]:
            if int(row[col["TotalCallCreated"]]) >= calls:
                h, m, sec = row[col["ElapsedTime(C)"]].split(":")
                created_in = int(h) * 3600 + int(m) * 60 + float(sec)
                break
    except (OSError, ValueError, IndexError):
        pass
    return ok, calls - ok, created_in, used, elapsed


def sustains(port, rate, name):
    ok, bad, created_in, gen_cpu, elapsed = run_load(port, rate, RUN_SECONDS)
    success = 100.0 * ok / (rate * RUN_SECONDS)
    # Every call created at the rate asked (SIPp falls behind when it or the machine cannot keep up).
    in_time = created_in <= RUN_SECONDS * 1.1 + 1
    good = success >= 99.9 and in_time
    limited = gen_cpu / elapsed >= 0.9
    print(f"  {name} at {rate} cps: {ok} ok, {bad} failed ({success:.2f} %), created in {created_in:.0f} s, "
          f"SIPp UAC at {100 * gen_cpu / elapsed:.0f} % of a core{' (the load generator is the limit)' if limited else ''}"
          f" -> {'sustained' if good else 'not sustained'}", flush=True)
    return good, success, limited


def highest_rate(port, name):
    good_rate, bad_rate, success_at_good, limited_any = 0, None, 0.0, False
    rate = 500
    while rate <= MAX_RATE:
        good, success, limited = sustains(port, rate, name)
        limited_any |= limited
        if not good:
            bad_rate = rate
            break
        good_rate, success_at_good = rate, success
        rate *= 2
    if bad_rate is not None and good_rate > 0:
        for _ in range(3):
            if bad_rate - good_rate <= max(100, good_rate // 10):
                break
            mid = (good_rate + bad_rate) // 2
            good, success, limited = sustains(port, mid, name)
            limited_any |= limited
            if good:
                good_rate, success_at_good = mid, success
            else:
                bad_rate = mid
    return good_rate, success_at_good, limited_any


def cpu_per_thousand(pid, port, name):
    time.sleep(1)
    before = cpu_seconds(pid)
    ok, bad, _, _, _ = run_load(port, 500, RUN_SECONDS)
    time.sleep(1)
    used = cpu_seconds(pid) - before
    print(f"  {name} at 500 cps: {ok} ok, {bad} failed, {used:.2f} CPU-s", flush=True)
    return used / (ok / 1000.0) if ok else float("inf")


def port_free(port):
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def main():
    busy = [p for p in (UAS_PORT, UAC_PORT, EDGE_PORT, KAM_PORT, TUNED_PORT, TUNED_WORKER_PORTS, TUNED_WORKER_PORTS + 1,
                        IMMEDIATE_PORT, BASELINE_PORT)
            if not port_free(p)]
    if busy:
        sys.exit(f"UDP ports {busy} are in use (a SIPp or proxy left from an earlier run?)")
    with benchlib.run(work) as procs:
        uas = sipp(["-sf", os.path.join(HERE, "uas.xml"), "-i", "127.0.0.1", "-p", str(UAS_PORT), "-cp", str(UAS_PORT + 1),
                    "-nostdin", "-max_socket", "65000"])
        procs.append(uas)
        edge = benchlib.start_sipedge(work, EDGE_PORT, UAS_PORT)
        procs.append(edge)
        started = [(edge, "sipedge")]
        baseline = None
        if BASELINE_BINARY:
            baseline = benchlib.start_sipedge(work, BASELINE_PORT, UAS_PORT, name="sipedge-baseline", binary=BASELINE_BINARY)
            procs.append(baseline)
            started.append((baseline, "sipedge (baseline)"))
        if VARIANTS:
            tuned = benchlib.start_sipedge(work, TUNED_PORT, UAS_PORT, listener=f"worker_ports = {TUNED_WORKER_PORTS}",
                                           name="sipedge-worker-ports")
            immediate = benchlib.start_sipedge(work, IMMEDIATE_PORT, UAS_PORT, top="coalesce_microseconds = 0",
                                               name="sipedge-immediate")
            procs += [tuned, immediate]
            started += [(tuned, "sipedge (worker_ports)"), (immediate, "sipedge (no coalescing)")]
        with open(os.path.join(HERE, "kamailio.cfg.in")) as f:
            cfg = f.read().replace("@PORT@", str(KAM_PORT)).replace("@BACKEND@", f"127.0.0.1:{UAS_PORT}").replace("@CHILDREN@", "2")
        kcfg = os.path.join(work, "kamailio.cfg")
        with open(kcfg, "w") as f:
            f.write(cfg)
        # As operators run it under load: TLSF (with its default allocator, qm, qm_malloc took
        # 80 % of its CPU here), 1 GB of shared memory, a 4 MB socket receive buffer.
        kam = subprocess.Popen(["kamailio", "-f", kcfg, "-DD", "-E", "-x", "tlsf", "-m", "1024", "-M", "32", "-b", "4194304"],
                               stdout=open(os.path.join(work, "kamailio.log"), "w"), stderr=subprocess.STDOUT)
        procs.append(kam)
        started.append((kam, "kamailio"))
        time.sleep(2)
        for p, name in started:
            if p.poll() is not None:
                sys.exit(f"{name} did not start; see {work}")

        # The CPU runs come first, while every proxy is in the same state (started, idle): after
        # the rate search a proxy would carry what the overload runs left (calls SIPp gave up on,
        # tables grown for thousands of calls per second), and the one searched last would have
        # had the least time to shed it. Three rounds, alternating, so that a slow spell of the
        # machine does not fall on one proxy only; the median of each.
        ports = {edge.pid: EDGE_PORT, kam.pid: KAM_PORT}
        if baseline:
            ports[baseline.pid] = BASELINE_PORT
        if VARIANTS:
            ports[tuned.pid], ports[immediate.pid] = TUNED_PORT, IMMEDIATE_PORT
        print("cpu per 1000 calls at 500 cps, three rounds")
        figures = {name: [] for _, name in started}
        for round_ in range(3):
            for p, name in (started if round_ % 2 == 0 else list(reversed(started))):
                figures[name].append(cpu_per_thousand(p.pid, ports[p.pid], f"round {round_ + 1}: {name}"))
        median = {name: sorted(v)[1] for name, v in figures.items()}
        x, y = median["sipedge"], median["kamailio"]
        print(f"calls per second, {RUN_SECONDS} s per run (both proxies: 2 workers; SIPp UAC and UAS on the same 2 cores)")
        sipedge_cps, sipedge_success, sipedge_limited = highest_rate(EDGE_PORT, "sipedge")
        kam_cps, kam_success, kam_limited = highest_rate(KAM_PORT, "kamailio")
        if sipedge_limited or kam_limited:
            print("note: SIPp's UAC used 90 % or more of a core in some runs: there the load generator, not the proxy, "
                  "set the ceiling (the cpu line below does not depend on it)")
        ratio = sipedge_cps / kam_cps if kam_cps else float("inf")
        for name, values in figures.items():
            print(f"cpu per 1000 calls at 500 cps, {name}: {', '.join(f'{v:.3f}' for v in values)} s; median {median[name]:.3f} s, "
                  f"{median[name] / y:.2f} x kamailio")
        print(f"calls: sipedge {sipedge_cps} cps, kamailio {kam_cps} cps, ratio {ratio:.2f}, success {sipedge_success:.2f}%")
        base = f", baseline {median['sipedge (baseline)']:.3f} s" if baseline else ""
        print(f"cpu per 1000 calls at 500 cps (median of 3): sipedge {x:.3f} s{base}, kamailio {y:.3f} s, ratio {x / y:.2f}")


if __name__ == "__main__":
    main()
