#!/usr/bin/env bash
# Two SIPEdge builds at the same time, each on its own ports with its own SIPp pair at 500 cps, so
# that whatever else the machine does falls on both alike; prints the CPU ticks (1/100 s, user +
# system from /proc) each spent per round. What the alternating rounds of bench-calls cannot
# resolve on a noisy machine (a few per cent) shows here.
#   Benchmarks/calls/side-by-side.sh OTHER_BINARY [ROUNDS=3] [SECONDS=20]
# compares OTHER_BINARY (e.g. a build of the previous commit) with this checkout's release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
other="$1"; rounds="${2:-3}"; seconds="${3:-20}"
swift build -c release --product sipedge >/dev/null
work="$(mktemp -d /tmp/sipedge-side-by-side-XXXXXX)"
trap 'rm -rf "$work"' EXIT
calls=$((seconds * 500))
config() {   # name edge-port backend-port
    printf 'workers = 2\n[log]\nlevel = "warning"\n[dispatcher]\ndestinations = ["127.0.0.1:%s"]\n[database]\npath = "%s/%s.db"\n[[listener]]\nproto = "udp"\naddress = "127.0.0.1"\nport = %s\ntag = "public"\n' \
        "$3" "$work" "$1" "$2" > "$work/$1.toml"
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
config other 16060 16080
config this 16160 16180
for round in $(seq "$rounds"); do
    rm -f "$work"/*.db*
    sipp -sf Benchmarks/calls/uas.xml -i 127.0.0.1 -p 16080 -cp 16081 -nostdin -max_socket 65000 >/dev/null 2>&1 & u1=$!
    sipp -sf Benchmarks/calls/uas.xml -i 127.0.0.1 -p 16180 -cp 16181 -nostdin -max_socket 65000 >/dev/null 2>&1 & u2=$!
    "$other" run --config "$work/other.toml" > "$work/other.log" 2>&1 & e1=$!
    .build/release/sipedge run --config "$work/this.toml" > "$work/this.log" 2>&1 & e2=$!
    sleep 1.5
    a0=$(ticks $e1); b0=$(ticks $e2)
    uacs=()
    for port in 16060 16160; do
        timeout $((seconds + 30)) sipp -sf Benchmarks/calls/uac.xml 127.0.0.1:$port -i 127.0.0.1 -p $((port + 10)) -cp $((port + 12)) \
            -m $calls -r 500 -rp 1000 -l 5000 -nostdin -max_socket 65000 -default_behaviors all,-abortunexp \
            -timeout $((seconds + 20))s > "$work/uac-$port.log" 2>&1 &
        uacs+=($!)
    done
    wait "${uacs[@]}" || true
    sleep 1
    a1=$(ticks $e1); b1=$(ticks $e2)
    kill $e1 $e2; kill -9 $u1 $u2; wait 2>/dev/null || true
    echo "round $round: other $((a1 - a0)) ticks, this build $((b1 - b0)) ticks for $calls calls each"
done
