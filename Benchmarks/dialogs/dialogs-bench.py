#!/usr/bin/env python3
"""make bench-dialogs: SIPp sets up DIALOGS calls (100,000 by default) through SIPEdge and holds
them; once every call is established and the transactions that set them up have ended (RFC 6026
Timer L/M, 32 s), SIPEdge's resident memory growth over its idle size is divided by the number of
dialogs it reports up. Prints, last:

  dialogs: N bytes per dialog

SIPEdge runs its shipped defaults for calls (2 workers, dialogs kept in SQLite), pings and
session timers off (SIPp could not answer 200,000 pings a minute and keep up)."""
import os, re, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import benchlib  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DIALOGS = int(os.environ.get("DIALOGS", "100000"))
RATE = int(os.environ.get("RATE", "2500"))
UAS_PORT, UAC_PORT, EDGE_PORT = 16080, 16070, 16060
work = tempfile.mkdtemp(prefix="sipedge-bench-dialogs-")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def main():
    with benchlib.run(work) as procs:
        edge = benchlib.start_sipedge(work, EDGE_PORT, UAS_PORT, extra="[calls]\nping_interval_seconds = 0\nsession_expires = 0")
        procs.append(edge)
        uas = subprocess.Popen(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(UAS_PORT), "-cp", str(UAS_PORT + 1),
                                "-nostdin", "-max_socket", "65000"], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(uas)
        time.sleep(2)
        if edge.poll() is not None:
            sys.exit(f"sipedge did not start; see {work}/sipedge.log")
        idle = rss_kib(edge.pid)
        uac = subprocess.Popen(["sipp", "-sf", os.path.join(HERE, "held-caller.xml"), f"127.0.0.1:{EDGE_PORT}", "-i", "127.0.0.1",
                                "-p", str(UAC_PORT), "-cp", str(UAC_PORT + 2), "-m", str(DIALOGS), "-r", str(RATE),
                                "-l", str(DIALOGS + 1000), "-nostdin", "-max_socket", "65000", "-timeout", "900s",
                                "-trace_stat", "-stf", "stats.csv", "-fd", "1"],
                               cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(uac)
        setup = DIALOGS / RATE
        print(f"setting up {DIALOGS} calls at {RATE} cps (about {setup:.0f} s), idle RSS {idle} KiB", flush=True)
        deadline = time.time() + setup * 3 + 60
        # Established = SIPp's UAC has ACKed them: its statistics count calls in their pause.
        established = 0
        while time.time() < deadline:
            time.sleep(2)
            try:
                with open(os.path.join(work, "stats.csv")) as f:
                    lines = f.read().strip().splitlines()
                header, last = lines[0].split(";"), lines[-1].split(";")
                current = int(last[header.index("CurrentCall")])
                total = int(last[header.index("TotalCallCreated")])
                failed = int(last[header.index("FailedCall(C)")])
            except (OSError, ValueError, IndexError):
                continue
            print(f"  {total} calls created, {current} up, {failed} failed; sipedge RSS {rss_kib(edge.pid)} KiB", flush=True)
            if total >= DIALOGS and current >= DIALOGS - failed:
                established = current
                break
        if not established:
            sys.exit("the calls were not all set up in time")
        # The INVITE transactions stay 32 s after their 2xx (RFC 6026): wait them out.
        print("waiting 40 s for the set-up transactions to end", flush=True)
        time.sleep(40)
        held = rss_kib(edge.pid)
        per = (held - idle) * 1024 / established
        print(f"sipedge RSS: idle {idle} KiB, holding {established} dialogs {held} KiB")
        print(f"dialogs: {per:.0f} bytes per dialog")


if __name__ == "__main__":
    main()
