#!/usr/bin/env bash
# Parser benchmarks. First the ordo-one/benchmark table (time and allocations per message for
# parse, parse + field access, validate and serialize), then SIPEdge against libosip2 in the
# same run: instructions per message under callgrind (deterministic), and messages per second on
# one core (best of alternating rounds: this machine is shared and wall-clock moves 10-30 %).
# Ends with two lines: `parser mix: ...` and `parser invite: ...`.
set -euo pipefail
cd "$(dirname "$0")"
corpus=../../shared/corpus/realistic
files=("$corpus"/*.sip)
seconds="${BENCH_SECONDS:-2}"
rounds="${BENCH_ROUNDS:-3}"

swift package --disable-sandbox benchmark --target ParserBenchmarks --no-progress
swift build -c release --product ParserThroughput >/dev/null
gcc -O2 -o osip/osip-bench osip/osip-bench.c -losipparser2 -losip2

# Instructions per message: the difference between two run lengths cancels start-up costs.
collected() { valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 | awk '/Collected/ { print $4 }'; }
per_message() { echo $(( ($2 - $1) / (400 * ${#files[@]}) )); }
ours_i=$(per_message "$(collected .build/release/ParserThroughput count 200)" "$(collected .build/release/ParserThroughput count 600)")
osip_i=$(per_message "$(collected osip/osip-bench count 200 "${files[@]}")" "$(collected osip/osip-bench count 600 "${files[@]}")")
awk -v a="$ours_i" -v b="$osip_i" 'BEGIN { printf "instructions per message (mix, callgrind): sipedge %d, libosip2 %d, ratio %.1f\n", a, b, b / a }'

# Messages per second, one core (taskset keeps both on core 0), alternating rounds, best kept.
best() { awk -v k="$1" '$1 == k && $2 > m { m = $2 } END { print m }'; }
ours="" osip=""
for _ in $(seq "$rounds"); do
    ours+=$(taskset -c 0 .build/release/ParserThroughput "$seconds")$'\n'
    osip+=$(taskset -c 0 osip/osip-bench "$seconds" "${files[@]}")$'\n'
done
echo "(one core; best of $rounds rounds of ${seconds}s each; mix = one of each of the ${#files[@]} realistic messages;"
echo " per message: parse + top Via branch, Call-ID, CSeq, From/To tags, Request-URI parsed, first Route)"
for name in mix invite; do
    a=$(best "$name" <<<"$ours")
    b=$(best "$name" <<<"$osip")
    awk -v n="$name" -v a="$a" -v b="$b" 'BEGIN { printf "parser %s: %d msg/s, libosip2: %d msg/s, ratio %.1f\n", n, a, b, a / b }'
done
