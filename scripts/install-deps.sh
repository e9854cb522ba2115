#!/usr/bin/env bash
# Installs the Debian packages SIPEdge needs, only those missing.
# Usage: scripts/install-deps.sh [build|test|bench]   (default: test)
#   build: what compiling needs (C libraries SIPEdge links)
#   test:  build + the real peers the tests drive
#   bench: test + the reference implementations and tools the benchmarks measure against
set -euo pipefail

packages=(libssl-dev libsctp-dev libsqlite3-dev libtcmalloc-minimal4)
case "${1:-test}" in
    build) ;;
    test) packages+=(sip-tester openssl baresip-core iproute2 spin gcc rtpengine-daemon) ;;
    bench) packages+=(sip-tester openssl baresip-core rtpengine-daemon libosip2-dev valgrind kamailio) ;;
    *) echo "usage: $0 [build|test|bench]" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
