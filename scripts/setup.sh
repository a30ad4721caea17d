#!/usr/bin/env bash
# Installs what sinter's demo and tests need on a Debian machine (run as root),
# then installs npm dependencies and builds dist/. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(util-linux mount e2fsprogs xfsprogs btrfs-progs fdisk kmod)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# Loop devices are the local transport; make sure the kernel side is there.
[ -e /dev/loop-control ] || modprobe loop 2>/dev/null || true

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent build
