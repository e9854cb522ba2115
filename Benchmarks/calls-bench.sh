#!/usr/bin/env bash
# make bench-calls: installs SIPp and Kamailio 5.6 if missing, builds SIPEdge in release mode, then
# runs calls/calls-bench.py (see there for what is measured and how). RUN_SECONDS=N shortens runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh bench
swift build -c release --product sipedge
exec python3 Benchmarks/calls/calls-bench.py
