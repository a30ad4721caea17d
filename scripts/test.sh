#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds, runs the static checks
# (typecheck + ESLint, scripts/static-checks.sh), runs every test, and ends with
# one plain summary line ("tests: N passed, N failed, N skipped"), followed by a
# "static checks: FAILED ..." line when the typecheck or lint found anything.
#
# Two lanes, side by side from the start:
# - the host run (vitest project `host`), after the static checks; its files run
#   one at a time and leave about one of the two cores idle on average
#   (measured 2026-12-07: 44% of the machine over the run);
# - the guest lane: the `guest-driven` project (test/**/*.guest.test.ts, host
#   tests that boot a guest of their own and drive it; the first one builds
#   the guest when its recipe changed), then the VM stage: every
#   test/**/*.vm.test.ts (and the conformance suite once more) in qemu guests
#   with a real kernel, two side by side, each with half the files
#   (test/vm/README.md). The VM stage runs at nice 5, so the host run's
#   timing-bound tests keep the CPU they want and the guests take what is left.
#   A VM stage that cannot build or boot the guest leaves no report, which the
#   summary counts as a failure.
# The guest lane's output is printed when both lanes have ended. On a 2-core
# machine the whole run took 33.6 min with the VM stage after the host run,
# 25.6 min with the two lanes side by side (fresh clone, cold guest build).
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
reports=()
lane_pid=
if [ "$run_guest" = 1 ] || [ "$run_vm" = 1 ]; then
  [ "$run_guest" = 1 ] && reports+=(.tmp/vitest-guest.json)
  [ "$run_vm" = 1 ] && reports+=(.tmp/vitest-vm.json)
  rm -f .tmp/guest-driven.log .tmp/vm-stage.log .tmp/guest-lane.status
  echo "guest lane started beside the host run: the guest-driven files, then the VM stage; its output follows the host run's"
  (
    lane=0
    if [ "$run_guest" = 1 ]; then
      npx vitest run --project guest-driven --reporter=default --reporter=json --outputFile.json=.tmp/vitest-guest.json "${guest_args[@]}" >.tmp/guest-driven.log 2>&1 || lane=$?
    fi
    if [ "$run_vm" = 1 ]; then
      nice -n 5 node test/vm/run.mjs --vitest --no-build --timeout 2400 --report .tmp/vitest-vm.json "${vm_args[@]}" >.tmp/vm-stage.log 2>&1 || lane=$?
    fi
    echo "$lane" >.tmp/guest-lane.status
  ) &
  lane_pid=$!
fi
./scripts/static-checks.sh || static=1
if [ "$run_host" = 1 ]; then
  reports+=(.tmp/vitest.json)
  npx vitest run --project host --reporter=default --reporter=json --outputFile.json=.tmp/vitest.json "${host_args[@]}" || status=$?
fi
if [ -n "$lane_pid" ]; then
  wait "$lane_pid" || true
  lane_status=$(cat .tmp/guest-lane.status 2>/dev/null || echo 1)
  if [ "$run_guest" = 1 ]; then
    echo "guest-driven run:"
    cat .tmp/guest-driven.log
  fi
  if [ "$run_vm" = 1 ]; then
    echo "VM stage: the tests that need a real kernel, in qemu guests side by side"
    cat .tmp/vm-stage.log
  fi
  [ "$lane_status" = 0 ] || status=$lane_status
fi
node scripts/summary.mjs "${reports[@]}" || status=1
if [ "$static" -ne 0 ]; then
  echo "static checks: FAILED (typecheck or lint; see the file:line findings before the tests)"
  status=1
fi
exit "$status"
