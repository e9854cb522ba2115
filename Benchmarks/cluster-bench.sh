#!/usr/bin/env bash
# make bench-cluster: builds SIPEdge in release mode and runs cluster/cluster-bench.py (see there).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test
swift build -c release --product sipedge
python3 Benchmarks/cluster/cluster-bench.py
