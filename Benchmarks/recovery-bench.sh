#!/usr/bin/env bash
# make bench-recovery: builds SIPEdge in release mode and runs recovery/recovery-bench.py (see there).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test
swift build -c release --product sipedge
python3 Benchmarks/recovery/recovery-bench.py
