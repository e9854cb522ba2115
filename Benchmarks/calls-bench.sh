#!/usr/bin/env bash
# make bench-calls: installs SIPp and Kamailio 5.6 if missing, builds SIPEdge in release mode and
# the commit BASELINE (HEAD~1 by default; BASELINE=none for none) in a temporary worktree, then
# runs calls/calls-bench.py (see there for what is measured and how). RUN_SECONDS=N shortens runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh bench
swift build -c release --product sipedge
baseline="${BASELINE:-HEAD~1}"
if [ "$baseline" != "none" ]; then
    tree="$(mktemp -d /tmp/sipedge-baseline-XXXXXX)"
    trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || true; rm -rf "$tree"' EXIT
    git worktree add --detach "$tree" "$baseline" >/dev/null
    # The package's checkouts are reused, so the baseline builds without the network.
    mkdir -p "$tree/.build" && cp -a .build/checkouts .build/repositories "$tree/.build/" 2>/dev/null || true
    echo "baseline: $(git log -1 --format='%h %s' "$baseline")"
    (cd "$tree" && swift build -c release --product sipedge >/dev/null)
    export BASELINE_BINARY="$tree/.build/release/sipedge"
fi
python3 Benchmarks/calls/calls-bench.py
