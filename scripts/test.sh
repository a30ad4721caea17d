#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds, runs the static checks
# (typecheck + ESLint, scripts/static-checks.sh), runs every test, and ends with
# one plain summary line ("tests: N passed, N failed, N skipped"), followed by a
# "static checks: FAILED ..." line when the typecheck or lint found anything.
#
# Two stages: the host run (vitest project `host`), then the VM stage: every
# test/**/*.vm.test.ts (and the conformance suite once more) in qemu guests with a
# real kernel, two side by side, each with half the files (test/vm/README.md),
# the guest built first if its recipe changed. A VM stage that cannot build or
# boot the guest leaves no report, which the summary counts as a failure.
#
# Arguments are vitest filters/files: *.vm.test.ts files go to the VM stage,
# the rest to the host run; with files of one kind only, the other stage is not run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
mkdir -p .tmp
rm -f .tmp/vitest.json .tmp/vitest-vm.json
host_args=()
vm_args=()
for a in "$@"; do
  case "$a" in
    *.vm.test.ts | test/vm | test/vm/) vm_args+=("$a") ;;
    *) host_args+=("$a") ;;
  esac
done
run_host=1
run_vm=1
if [ $# -gt 0 ]; then
  [ ${#host_args[@]} -gt 0 ] || run_host=0
  [ ${#vm_args[@]} -gt 0 ] || run_vm=0
fi
status=0
static=0
./scripts/static-checks.sh || static=1
reports=()
if [ "$run_host" = 1 ]; then
  reports+=(.tmp/vitest.json)
  npx vitest run --project host --reporter=default --reporter=json --outputFile.json=.tmp/vitest.json "${host_args[@]}" || status=$?
fi
if [ "$run_vm" = 1 ]; then
  reports+=(.tmp/vitest-vm.json)
  echo "VM stage: the tests that need a real kernel, in qemu guests side by side"
  node test/vm/run.mjs --vitest --no-build --timeout 2400 --report .tmp/vitest-vm.json "${vm_args[@]}" || status=$?
fi
node scripts/summary.mjs "${reports[@]}" || status=1
if [ "$static" -ne 0 ]; then
  echo "static checks: FAILED (typecheck or lint; see the file:line findings before the tests)"
  status=1
fi
exit "$status"
