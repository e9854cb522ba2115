#!/usr/bin/env bash
# Builds the libFuzzer target (parser sources + Fuzz/SIPParserFuzz.swift in one module, with
# AddressSanitizer) and runs it for SECONDS, seeded from ../shared/corpus. Crashes land in
# Fuzz/artifacts/; turn each one into a test in Tests/SIPParserTests before fixing it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
out=.build-fuzz
mkdir -p "$out" Fuzz/artifacts Fuzz/corpus-work
swiftc -O -sanitize=fuzzer,address -parse-as-library -package-name sipedge -module-name SIPParserFuzz \
    Sources/SIPParser/*.swift Fuzz/SIPParserFuzz.swift -o "$out/sipparser-fuzz" 2> >(grep -v "Cannot export local symbol" >&2)
seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
cp ../shared/corpus/rfc4475/*.dat ../shared/corpus/rfc4475/archive-extras/*.dat ../shared/corpus/realistic/*.sip "$seeds"/
set +e   # the fuzzer's own status says whether it found something; read it, then go on
"$out/sipparser-fuzz" -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix=Fuzz/artifacts/ -print_final_stats=1 Fuzz/corpus-work "$seeds" 2>&1 | tee "$out/last-run.log" | grep -E "^#[0-9]+.*(DONE|pulse)|Done|ERROR|SUMMARY|stat::number_of_executed_units|crash-"
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ] || ls Fuzz/artifacts/crash-* Fuzz/artifacts/leak-* Fuzz/artifacts/timeout-* >/dev/null 2>&1; then
    echo "fuzz: findings in Fuzz/artifacts/ (fuzzer exit status $status)"; exit 1
fi
echo "fuzz: no crash in ${seconds}s"
