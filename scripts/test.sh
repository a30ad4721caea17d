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
# Beside the host run, and started with it: the `guest-driven` project
# (test/**/*.guest.test.ts), host tests that boot a guest of their own and
# drive it (test/vm/README.md, "Host-driven guests"); its output is printed
# when the host run ends.
#
# Arguments are vitest filters/files: *.vm.test.ts files go to the VM stage,
# *.guest.test.ts files to the guest-driven run, the rest to the host run; with
# files of some kinds only, the other runs are not made.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
mkdir -p .tmp
rm -f .tmp/vitest.json .tmp/vitest-vm.json .tmp/vitest-guest.json
host_args=()
vm_args=()
guest_args=()
for a in "$@"; do
  case "$a" in
    *.vm.test.ts | test/vm | test/vm/) vm_args+=("$a") ;;
    *.guest.test.ts) guest_args+=("$a") ;;
    *) host_args+=("$a") ;;
  esac
done
run_host=1
run_vm=1
run_guest=1
if [ $# -gt 0 ]; then
  [ ${#host_args[@]} -gt 0 ] || run_host=0
  [ ${#vm_args[@]} -gt 0 ] || run_vm=0
  [ ${#guest_args[@]} -gt 0 ] || run_guest=0
fi
status=0
static=0
./scripts/static-checks.sh || static=1
reports=()
guest_pid=
if [ "$run_guest" = 1 ]; then
  reports+=(.tmp/vitest-guest.json)
  echo "guest-driven run (test/**/*.guest.test.ts) started beside the host run; its output follows the host run's"
  npx vitest run --project guest-driven --reporter=default --reporter=json --outputFile.json=.tmp/vitest-guest.json "${guest_args[@]}" >.tmp/guest-driven.log 2>&1 &
  guest_pid=$!
fi
if [ "$run_host" = 1 ]; then
  reports+=(.tmp/vitest.json)
  npx vitest run --project host --reporter=default --reporter=json --outputFile.json=.tmp/vitest.json "${host_args[@]}" || status=$?
fi
if [ -n "$guest_pid" ]; then
  guest_status=0
  wait "$guest_pid" || guest_status=$?
  echo "guest-driven run (exit $guest_status):"
  cat .tmp/guest-driven.log
  [ "$guest_status" = 0 ] || status=$guest_status
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
