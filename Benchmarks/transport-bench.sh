#!/usr/bin/env bash
# Transport benchmark: 500-byte datagrams forwarded through one worker over loopback (receive,
# hand to a no-op layer above, send on), SIPEdge's EventLoop + UDPEndpoint beside a plain C
# epoll + recvmmsg/sendmmsg loop, in the same run. The forwarder runs on core 0, the load (C,
# sendmmsg) and the sink on core 1. Figures are datagrams forwarded per CPU-second of the
# forwarder (from /proc), so they hold even when the load generator is the limit.
# Ends with: `transport: N datagrams/s per core, C loop M datagrams/s, ratio R`.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${BENCH_SECONDS:-5}"
batch="${BENCH_BATCH:-32}"
rounds="${BENCH_ROUNDS:-3}"
limit=50000000
listen=47060
sink=47070

swift build -c release --product TransportForwarder >/dev/null
gcc -O2 -o transport/udp-blast transport/udp-blast.c
gcc -O2 -o transport/c-forwarder transport/c-forwarder.c
ticks=$(getconf CLK_TCK)

# run NAME COMMAND...: prints "forwarded cpu_seconds" for one timed run.
run() {
    "$@" &
    local pid=$!
    sleep 0.5
    local result
    result=$(taskset -c 1 transport/udp-blast "$listen" "$sink" "$seconds" "$limit")
    local cpu
    cpu=$(awk -v t="$ticks" '{ print ($14 + $15) / t }' "/proc/$pid/stat")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    local received=${result##* }
    echo "$received $cpu"
}

best_ours=0 best_c=0
for _ in $(seq "$rounds"); do
    read -r fo co < <(run taskset -c 0 .build/release/TransportForwarder "$listen" "$sink" "$batch")
    read -r fc cc < <(run taskset -c 0 transport/c-forwarder "$listen" "$sink" "$batch")
    ours=$(awk -v f="$fo" -v c="$co" 'BEGIN { printf "%d", (c > 0 ? f / c : 0) }')
    theirs=$(awk -v f="$fc" -v c="$cc" 'BEGIN { printf "%d", (c > 0 ? f / c : 0) }')
    echo "round: sipedge forwarded $fo in $co CPU-s ($ours/s); C loop forwarded $fc in $cc CPU-s ($theirs/s)"
    [ "$ours" -gt "$best_ours" ] && best_ours=$ours
    [ "$theirs" -gt "$best_c" ] && best_c=$theirs
done
echo "(500-byte datagrams over loopback, batches of $batch per recvmmsg/sendmmsg, best of $rounds rounds of ${seconds}s)"
awk -v a="$best_ours" -v b="$best_c" 'BEGIN { printf "transport: %d datagrams/s per core, C loop %d datagrams/s, ratio %.2f\n", a, b, a / b }'
