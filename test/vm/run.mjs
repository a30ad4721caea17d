#!/usr/bin/env node
// Command line for the VM harness.
//
//   node test/vm/run.mjs [options] -- COMMAND ...   run a shell command in the guest
//   node test/vm/run.mjs --vitest [options] [FILES] run the `vm` vitest project in the guest
//   node test/vm/run.mjs --build-only               build (or find) the cached guest
//
// Options: --timeout SECONDS (default 900 with --vitest, 600 otherwise),
// --disks N (sparse 2 GiB scratch disks, /dev/vdb …; default 4 with --vitest),
// --report FILE (with --vitest: where vitest's JSON report goes; default
// .tmp/vitest-vm.json), --no-build (with --vitest: skip `npm run build`).
// Exits with the command's status; 1 when the guest could not build or boot.
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { CHECKOUT, ensureGuest, GuestError, runInGuest } from './harness.mjs';

const argv = process.argv.slice(2);
let timeoutSec;
let disks;
let report = join(CHECKOUT, '.tmp', 'vitest-vm.json');
let vitest = false;
let buildOnly = false;
let build = true;
const rest = [];
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--') {
    rest.push(...argv.slice(i + 1));
    break;
  } else if (a === '--timeout') timeoutSec = Number(argv[++i]);
  else if (a === '--disks') disks = Number(argv[++i]);
  else if (a === '--report') report = resolve(argv[++i]);
  else if (a === '--vitest') vitest = true;
  else if (a === '--build-only') buildOnly = true;
  else if (a === '--no-build') build = false;
  else rest.push(a);
}
const log = (m) => console.error(`vm: ${m}`);

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

try {
  const t0 = Date.now();
  const guest = ensureGuest({ log });
  if (buildOnly) {
    log(`guest ${guest.dir} (kernel ${guest.kernelVersion})${guest.built ? `, built in ${(guest.buildMs / 1000).toFixed(0)} s` : ', cached'}`);
    process.exit(0);
  }
  let command;
  if (vitest) {
    if (build) {
      const b = spawnSync('npm', ['run', '--silent', 'build'], { cwd: CHECKOUT, stdio: 'inherit' });
      if (b.status !== 0) throw new Error('npm run build failed');
    }
    const files = rest.map((f) => `'${f.replace(/'/g, `'\\''`)}'`).join(' ');
    command = `exec node node_modules/vitest/vitest.mjs run --project vm --reporter=verbose --reporter=json --outputFile.json="$SINTER_VM_OUT/vitest.json" ${files}`;
  } else {
    if (rest.length === 0) throw new Error('nothing to run: give a command after --, or --vitest');
    command = rest.join(' ');
  }
  const r = await runInGuest({
    command,
    timeoutMs: (timeoutSec ?? (vitest ? 900 : 600)) * 1000,
    scratchDisks: Array.from({ length: disks ?? (vitest ? 4 : 0) }, () => 2048),
    // The guest's output port is a tty: colours only when ours is one too.
    env: process.stdout.isTTY ? {} : { NO_COLOR: '1' },
    onOutput: (s) => process.stdout.write(s),
    log,
  });
  const timings = {
    guestBuildMs: guest.buildMs,
    guestCached: !guest.built,
    bootMs: r.bootMs,
    runMs: r.durationMs,
    totalMs: Date.now() - t0,
    kernel: r.kernelVersion,
  };
  if (vitest) {
    mkdirSync(dirname(report), { recursive: true });
    if (r.files['vitest.json']) {
      writeFileSync(report, r.files['vitest.json']);
      const rep = JSON.parse(r.files['vitest.json'].toString('utf8'));
      timings.files = Object.fromEntries(
        (rep.testResults ?? []).map((t) => [t.name.replace(CHECKOUT + '/', ''), (t.endTime ?? 0) - (t.startTime ?? 0)]),
      );
    } else {
      log('the guest wrote no vitest report');
    }
    writeFileSync(join(dirname(report), 'vm-timings.json'), JSON.stringify(timings, null, 2) + '\n');
  }
  log(`guest ${timings.guestCached ? 'cached' : `built in ${(timings.guestBuildMs / 1000).toFixed(0)} s`}, booted in ${(r.bootMs / 1000).toFixed(1)} s, ran ${(r.durationMs / 1000).toFixed(1)} s in all, exit ${r.exitCode}`);
  if (timings.files) for (const [f, ms] of Object.entries(timings.files)) log(`  ${f}: ${(ms / 1000).toFixed(1)} s`);
  process.exit(r.exitCode);
} catch (e) {
  log(e instanceof GuestError ? e.message : `failed: ${e.message}`);
  process.exit(1);
}
