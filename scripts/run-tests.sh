#!/usr/bin/env bash
# Runs every test (the build is done by `make test` before) and, when something failed, repeats the
# failures at the end: CI logs are often read from their last lines only.
set -uo pipefail
cd "$(dirname "$0")/.."
log=.build/test-output.log
mkdir -p .build
"${SWIFT:-swift}" test --skip-build "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then
    echo
    echo "=== failures (full output in $log) ==="
    grep -E "✘|error:|Expectation failed|recorded an issue|Fatal error|Crash|signal" "$log" | grep -v "^.*passed after" | tail -60
fi
exit "$status"
