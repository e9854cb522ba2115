#!/usr/bin/env bash
# Model-checks Models/sharing-tags.pml with spin (Debian's spin): every property, every
# interleaving. Fails unless each run reports "errors: 0" and a complete search.
set -euo pipefail
cd "$(dirname "$0")"
command -v spin >/dev/null || { echo "spin is not installed (make test installs it)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp sharing-tags.pml "$work/"
cd "$work"
spin -a sharing-tags.pml >/dev/null
report() {   # name, output
    if grep -q "errors: 0" <<<"$2" && ! grep -q "search not completed\|max search depth too small\|out of memory" <<<"$2"; then
        echo "model: $1 holds ($(grep -o "[0-9.e+]* states, stored" <<<"$2" | head -1))"
    else
        echo "model: $1 FAILED" >&2
        echo "$2" | tail -30 >&2
        status=1
    fi
}
status=0
# Safety: the assertions, over every reachable state.
gcc -O2 -DSAFETY -DNOCLAIM -DCOLLAPSE -DMEMLIM=4096 -o pan-safety pan.c 2>/dev/null
report "one actor per tag" "$(./pan-safety -m2000000 2>&1 || true)"
# Liveness: agreement after the partition heals, under weak fairness.
gcc -O2 -DCOLLAPSE -DMEMLIM=4096 -DNFAIR=10 -o pan-live pan.c 2>/dev/null
report "agreement once healed" "$(./pan-live -a -f -m200000 -N healed_agreement 2>&1 || true)"
exit $status
