#!/usr/bin/env python3
"""make bench-recovery: how fast the edge moves calls off a dead Asterisk, on this machine. Prints, last:

  recovery: N calls moved in T s after backend death (D ms detection)

RECOVERY_CALLS (1000) calls held by SIPp (recovery-uac.xml) through one SIPEdge (release build, 2
workers) to SIPp UAS A, the preferred destination (priority 0); UAS B (recovery-uas.xml, priority 1)
stands by. UAS A is killed (SIGKILL). D: from the kill until `ds_list` shows A inactive (polled every
5 ms; probes every second, pings of each call every PING_SECONDS, 30 by default: the first that meets
the kernel's ICMP refusal marks it). T: from the kill until `get_statistics recovery:` counts every
call recovered (a new INVITE answered by B, the caller's re-INVITE sent), at `recover_per_second`
RECOVER_PER_SECOND (1000 here, 200 by default; each of the 2 workers paces its own calls at half of
it, and SIPp's calls from one port all land on one worker). Then each caller's BYE must end its call through B:
the line before the last gives the share of calls both SIPps count successful.
Everything on 127.0.0.1; every load bounded (SIPp -m and -timeout, polls with deadlines).
"""
import os, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchlib import ROOT, mi as benchlib_mi, sipp_counts, stop_all  # noqa: E402

CALLS = int(os.environ.get("RECOVERY_CALLS", "1000"))
PER_SECOND = int(os.environ.get("RECOVER_PER_SECOND", "1000"))
PING_SECONDS = int(os.environ.get("PING_SECONDS", "30"))
HERE = os.path.dirname(os.path.abspath(__file__))
SIP, MI, UAS_A, UAS_B, UAC = 17060, 17061, 17070, 17080, 17090
work = tempfile.mkdtemp(prefix="sipedge-bench-recovery-")


def mi(method, **params):
    return benchlib_mi("127.0.0.1", MI, method, **params)


def state_of(port):
    sets = (mi("ds_list") or {}).get("sets", [])
    return next((d["state"] for s in sets for d in s["destinations"] if d["uri"] == f"sip:127.0.0.1:{port}"), None)


def main():
    binary = os.path.join(ROOT, ".build/release/sipedge")
    if not os.path.exists(binary):
        sys.exit("build first: swift build -c release --product sipedge")
    config = os.path.join(work, "edge.toml")
    with open(config, "w") as f:
        f.write(f"""workers = 2
[log]
level = "notice"
[calls]
ping_interval_seconds = {PING_SECONDS}
[dispatcher]
algorithm = "round-robin"
probe_interval_seconds = 1
recover_calls = true
recover_per_second = {PER_SECOND}
[[dispatcher.destination]]
uri = "sip:127.0.0.1:{UAS_A}"
priority = 0
[[dispatcher.destination]]
uri = "sip:127.0.0.1:{UAS_B}"
priority = 1
[[listener]]
proto = "udp"
address = "127.0.0.1"
port = {SIP}
tag = "public"
[mi]
address = "127.0.0.1"
port = {MI}
""")
    procs = []
    try:
        procs.append(subprocess.Popen([binary, "run", "--config", config], stdout=open(os.path.join(work, "edge.log"), "w"),
                                      stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 10
        while mi("version") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        a = subprocess.Popen(["sipp", "-sn", "uas", "-aa", "-i", "127.0.0.1", "-p", str(UAS_A), "-nostdin"], cwd=work,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        b = subprocess.Popen(["sipp", "-sf", os.path.join(HERE, "recovery-uas.xml"), "-aa", "-i", "127.0.0.1", "-p", str(UAS_B),
                              "-nostdin", "-trace_stat", "-stf", os.path.join(work, "uas.csv"), "-fd", "1"],
                             cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # (No -m for B: SIPp counts each probe it answers as a call.)
        procs += [a, b]
        time.sleep(1.5)   # both answer a probe: active
        uac = subprocess.Popen(["sipp", "-sf", os.path.join(HERE, "recovery-uac.xml"), f"127.0.0.1:{SIP}", "-aa", "-i", "127.0.0.1",
                                "-p", str(UAC), "-m", str(CALLS), "-r", "500", "-l", str(CALLS), "-timeout", "180s", "-nostdin",
                                "-trace_stat", "-stf", os.path.join(work, "uac.csv"), "-fd", "1"],
                               cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(uac)
        deadline = time.monotonic() + CALLS / 500 + 30
        while time.monotonic() < deadline and (mi("dlg_list", limit="1") or {}).get("total", 0) < CALLS:
            time.sleep(0.2)
        up = (mi("dlg_list", limit="1") or {}).get("total", 0)
        a.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        detection = moved = None
        stats = {}
        while time.monotonic() - killed < 120 and moved is None:
            if detection is None and state_of(UAS_A) == "inactive":
                detection = (time.monotonic() - killed) * 1000
            stats = mi("get_statistics", statistics="recovery:") or {}
            if stats.get("recovery:recovered_calls", 0) + stats.get("recovery:failed_calls", 0) >= up and stats.get("recovery:pending_calls", 1) == 0:
                moved = time.monotonic() - killed
            time.sleep(0.005)
        try:
            uac.wait(90)
        except subprocess.TimeoutExpired:
            uac.kill()
        time.sleep(2.2)   # B writes its statistics every second (-fd 1): its last calls are in
        ok_uac, failed_uac = sipp_counts(os.path.join(work, "uac.csv"))
        ok_uas, failed_uas = sipp_counts(os.path.join(work, "uas.csv"))
        # (SIPp's statistics file can miss the last call or two; its exit status counts them all:
        # 0 when every call passed.)
        print(f"  ({up} calls up at the kill; {stats.get('recovery:recovered_calls')} recovered, {stats.get('recovery:failed_calls')} failed; "
              f"SIPp UAC exit {uac.returncode}, {ok_uac} ok / {failed_uac} failed, UAS B {ok_uas} ok / {failed_uas} failed: "
              f"{min(ok_uac, ok_uas) / CALLS * 100:.0f}% ended cleanly through B)")
        if moved is None or detection is None:
            print(f"recovery: not finished within 120 s ({stats}); see {work}")
            sys.exit(1)
        print(f"recovery: {up} calls moved in {moved:.1f} s after backend death ({detection:.0f} ms detection)")
    finally:
        stop_all(procs)


if __name__ == "__main__":
    main()
