#!/usr/bin/env bash
# Installs the Debian packages SIPEdge's tests and benchmarks need, only those missing.
# Usage: scripts/install-deps.sh [test|bench]   (default: test)
set -euo pipefail

packages=(libssl-dev libsctp-dev libsqlite3-dev sip-tester)
if [ "${1:-test}" = bench ]; then
    packages+=(libosip2-dev valgrind)
fi

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
