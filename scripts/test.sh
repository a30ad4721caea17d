#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds, runs every test, and
# ends with one plain summary line ("tests: N passed, N failed, N skipped").
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
mkdir -p .tmp
status=0
npx vitest run --reporter=default --reporter=json --outputFile.json=.tmp/vitest.json "$@" || status=$?
node scripts/summary.mjs .tmp/vitest.json || status=1
exit "$status"
