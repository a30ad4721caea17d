#!/usr/bin/env bash
# The static checks CI runs before the tests: the typecheck of source and tests
# (npm run typecheck) and ESLint with typescript-eslint's type-checked rules
# (npm run lint). Prints one line per failing check and exits non-zero on any finding.
set -uo pipefail
cd "$(dirname "$0")/.."
failed=()
npm run --silent typecheck || failed+=(typecheck)
npm run --silent lint || failed+=(lint)
if [ "${#failed[@]}" -gt 0 ]; then
  echo "static checks: FAILED (${failed[*]}); the findings above name file:line" >&2
  exit 1
fi
echo "static checks: typecheck and lint clean"
