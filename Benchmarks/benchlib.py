"""What the call benchmarks (calls/, dialogs/) share: SIPEdge started on a small config in front of
one backend, and every process they started stopped again."""
import os, signal, subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_sipedge(work, edge_port, backend_port, extra=""):
    """The release build on 127.0.0.1:edge_port (UDP), 2 workers, dialogs in work/dialogs.db,
    new calls to 127.0.0.1:backend_port; `extra` adds TOML sections. Its log goes to work/sipedge.log."""
    config = os.path.join(work, "sipedge.toml")
    with open(config, "w") as f:
        f.write(f"""workers = 2
[log]
level = "warning"
[dispatcher]
destinations = ["127.0.0.1:{backend_port}"]
[database]
path = "{work}/dialogs.db"
{extra}
[[listener]]
proto = "udp"
address = "127.0.0.1"
port = {edge_port}
tag = "public"
""")
    return subprocess.Popen([os.path.join(ROOT, ".build/release/sipedge"), "run", "--config", config],
                            stdout=open(os.path.join(work, "sipedge.log"), "w"), stderr=subprocess.STDOUT)


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
