#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds, runs the static checks
# (typecheck + ESLint, scripts/static-checks.sh), runs every test, and ends with
# one plain summary line ("tests: N passed, N failed, N skipped"), followed by a
# "static checks: FAILED ..." line when the typecheck or lint found anything.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
mkdir -p .tmp
status=0
static=0
./scripts/static-checks.sh || static=1
npx vitest run --reporter=default --reporter=json --outputFile.json=.tmp/vitest.json "$@" || status=$?
node scripts/summary.mjs .tmp/vitest.json || status=1
if [ "$static" -ne 0 ]; then
  echo "static checks: FAILED (typecheck or lint; see the file:line findings before the tests)"
  status=1
fi
exit "$status"
