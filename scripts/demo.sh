#!/usr/bin/env bash
# The single-machine demo: sinter all on a temporary data dir, one volume walked
# through its whole life over the CSI socket. Run as root (loop devices, mount).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec node scripts/demo.mjs "$@"
