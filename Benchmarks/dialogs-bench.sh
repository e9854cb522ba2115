#!/usr/bin/env bash
# make bench-dialogs: builds SIPEdge in release mode and runs dialogs/dialogs-bench.py (resident
# memory per established dialog; DIALOGS=N and RATE=cps change the load).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh bench
swift build -c release --product sipedge
exec python3 Benchmarks/dialogs/dialogs-bench.py
