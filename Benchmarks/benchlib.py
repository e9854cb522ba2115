"""What the benchmarks share: SIPEdge started on a small config in front of one backend, every
process they started stopped again (calls/, dialogs/), the MI and SIPp's counts (cluster/, recovery/)."""
import contextlib, json, os, shutil, signal, socket, subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_sipedge(work, edge_port, backend_port, extra="", top="", listener="", name="sipedge", binary=None):
    """The release build on 127.0.0.1:edge_port (UDP), 2 workers, dialogs in work/<name>.db,
    new calls to 127.0.0.1:backend_port; `top` adds top-level keys, `extra` TOML sections,
    `listener` keys of the listener. Its log goes to work/<name>.log. `binary`: another build
    (the baseline), else this checkout's release build."""
    config = os.path.join(work, f"{name}.toml")
    with open(config, "w") as f:
        f.write(f"""workers = 2
{top}
[log]
level = "warning"
[dispatcher]
destinations = ["127.0.0.1:{backend_port}"]
[database]
path = "{work}/{name}.db"
{extra}
[[listener]]
proto = "udp"
address = "127.0.0.1"
port = {edge_port}
tag = "public"
{listener}
""")
    return subprocess.Popen([binary or os.path.join(ROOT, ".build/release/sipedge"), "run", "--config", config],
                            stdout=open(os.path.join(work, f"{name}.log"), "w"), stderr=subprocess.STDOUT)


def stop_all(procs):
    """Newest first: SIPp with SIGKILL (it ignores SIGTERM while it waits), the rest with SIGTERM."""
    for p in reversed(procs):
        if p.poll() is None:
            sipp = os.path.basename(str(p.args[0])) == "sipp"
            p.send_signal(signal.SIGKILL if sipp else signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def mi(host, port, method, **params):
    """A JSON-RPC request to SIPEdge's MI at host:port: its result, or None if nothing answered."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.sendto(json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 1}).encode(), (host, port))
        return json.loads(s.recv(65536)).get("result")
    except OSError:
        return None
    finally:
        s.close()


def sipp_counts(path):
    """(successful, failed) calls from the last line of a SIPp -trace_stat file."""
    try:
        with open(path) as f:
            rows = [line.rstrip("\n").split(";") for line in f if line.strip()]
        header, last = rows[0], rows[-1]
        return int(last[header.index("SuccessfulCall(C)")]), int(last[header.index("FailedCall(C)")])
    except (OSError, ValueError, IndexError):
        return 0, 0


@contextlib.contextmanager
def run(work):
    """The list a benchmark adds the processes it starts to: all stopped when it ends. A finished
    run's scratch directory goes too (configs, logs, SIPp statistics) unless KEEP_BENCH_FILES is
    set; a run that failed keeps it for reading."""
    procs = []
    try:
        yield procs
    except BaseException:
        stop_all(procs)
        raise
    stop_all(procs)
    if not os.environ.get("KEEP_BENCH_FILES"):
        shutil.rmtree(work, ignore_errors=True)
