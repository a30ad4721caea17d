#!/usr/bin/env node
// Command line for the VM harness.
//
//   node test/vm/run.mjs [options] -- COMMAND ...   run a shell command in the guest
//   node test/vm/run.mjs --vitest [options] [FILES] run the `vm` vitest project in the guest(s)
//   node test/vm/run.mjs --build-only               build (or find) the cached guest
//
// Options: --timeout SECONDS (default 900 with --vitest, 600 otherwise),
// --disks N (sparse scratch disks, /dev/vdb …; default 4 with --vitest), --disk-mb MB
// (each scratch disk's size; default 2048),
// --report FILE (with --vitest: where vitest's JSON report goes; default
// .tmp/vitest-vm.json), --no-build (with --vitest: skip `npm run build`),
// --guests N (with --vitest: split the files over N guests booted side by side,
// test/vm/shards.mjs; default SINTER_VM_GUESTS or 2), --cpus N (virtual CPUs
// per guest; default SINTER_VM_CPUS, else 1 with --vitest and 2 otherwise).
// Exits with the command's status; 1 when the guest could not build or boot.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { CHECKOUT, VM_DIR, ensureGuest, GuestError, runInGuest } from './harness.mjs';
import { mergeReports, readTimings, splitFiles } from './shards.mjs';

const argv = process.argv.slice(2);
let timeoutSec;
let disks;
let diskMb = 2048;
let report = join(CHECKOUT, '.tmp', 'vitest-vm.json');
let vitest = false;
let buildOnly = false;
let build = true;
let guests = Number(process.env.SINTER_VM_GUESTS ?? 2);
let cpus = process.env.SINTER_VM_CPUS ? Number(process.env.SINTER_VM_CPUS) : undefined;
const rest = [];
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--') {
    rest.push(...argv.slice(i + 1));
    break;
  } else if (a === '--timeout') timeoutSec = Number(argv[++i]);
  else if (a === '--disks') disks = Number(argv[++i]);
  else if (a === '--disk-mb') diskMb = Number(argv[++i]);
  else if (a === '--report') report = resolve(argv[++i]);
  else if (a === '--vitest') vitest = true;
  else if (a === '--build-only') buildOnly = true;
  else if (a === '--no-build') build = false;
  else if (a === '--guests') guests = Number(argv[++i]);
  else if (a === '--cpus') cpus = Number(argv[++i]);
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
  if (!vitest) {
    if (rest.length === 0) throw new Error('nothing to run: give a command after --, or --vitest');
    const r = await runInGuest({
      command: rest.join(' '),
      timeoutMs: (timeoutSec ?? 600) * 1000,
      scratchDisks: Array.from({ length: disks ?? 0 }, () => diskMb),
      cpus: cpus ?? 2,
      env: process.stdout.isTTY ? {} : { NO_COLOR: '1' },
      onOutput: (s) => process.stdout.write(s),
      log,
    });
    log(`guest ${guest.built ? `built in ${(guest.buildMs / 1000).toFixed(0)} s` : 'cached'}, booted in ${(r.bootMs / 1000).toFixed(1)} s, ran ${(r.durationMs / 1000).toFixed(1)} s in all, exit ${r.exitCode}`);
    process.exit(r.exitCode);
  }

  if (build) {
    const b = spawnSync('npm', ['run', '--silent', 'build'], { cwd: CHECKOUT, stdio: 'inherit' });
    if (b.status !== 0) throw new Error('npm run build failed');
  }
  // The guests start sinter from the build's bundle (dist/bundle, scripts/bundle.mjs: 2x faster starts under TCG).
  if (!existsSync(join(CHECKOUT, 'dist', 'bundle', 'main.mjs'))) throw new Error('no dist/bundle/main.mjs: run npm run build (or drop --no-build)');
  const files = listVmFiles(rest);
  if (files.length === 0) throw new Error(`no VM test file matches ${rest.length ? rest.join(' ') : 'the vm project'}`);
  const shards = splitFiles(files, Math.min(guests, files.length), readTimings(join(VM_DIR, 'timings.json')));
  if (shards.length > 1) {
    shards.forEach((s, i) => log(`guest ${i + 1} of ${shards.length}: ${s.files.length} files, ~${Math.round(s.estimateMs / 1000)} s by test/vm/timings.json`));
  }
  const results = await Promise.all(
    shards.map(async (shard, i) => {
      const name = shards.length > 1 ? `vm${i + 1}` : 'vm';
      const prefix = shards.length > 1 ? `[${name}] ` : '';
      const quoted = shard.files.map((f) => `'${f.replace(/'/g, `'\\''`)}'`).join(' ');
      let pending = '';
      const write = (s) => {
        if (!prefix) return void process.stdout.write(s);
        const lines = (pending + s).split('\n');
        pending = lines.pop() ?? '';
        for (const l of lines) process.stdout.write(prefix + l + '\n');
      };
      try {
        const r = await runInGuest({
          command: `exec node node_modules/vitest/vitest.mjs run --project vm --reporter=verbose --reporter=json --outputFile.json="$SINTER_VM_OUT/vitest.json" ${quoted}`,
          timeoutMs: (timeoutSec ?? 900) * 1000,
          scratchDisks: Array.from({ length: disks ?? 4 }, () => diskMb),
          // One vCPU each: two guests of two vCPUs put four TCG threads on a 2-core host, and a guest kernel
          // spinning on a lock whose holder's vCPU the host has descheduled burns what the other guest needs.
          // The whole stage: 941 s with two vCPUs each, 715 s with one (same machine, 2026-12-07, quiet).
          cpus: cpus ?? 1,
          // The guest's output port is a tty: colours only when ours is one too.
          env: { ...(process.stdout.isTTY ? {} : { NO_COLOR: '1' }), ...passedEnv() },
          onOutput: write,
          log: (m) => log(prefix + m),
        });
        if (pending) write('\n');
        let report;
        if (r.files['vitest.json']) report = JSON.parse(r.files['vitest.json'].toString('utf8'));
        else log(`${prefix}the guest wrote no vitest report`);
        log(`${prefix}booted in ${(r.bootMs / 1000).toFixed(1)} s, ran ${(r.durationMs / 1000).toFixed(1)} s in all, exit ${r.exitCode}`);
        return { name, report, exitCode: r.exitCode, bootMs: r.bootMs, runMs: r.durationMs, kernel: r.kernelVersion };
      } catch (e) {
        if (pending) write('\n');
        log(`${prefix}${e instanceof GuestError ? e.message : `failed: ${e.message}`}`);
        return { name, report: undefined, exitCode: 1, bootMs: 0, runMs: 0, kernel: guest.kernelVersion };
      }
    }),
  );
  const merged = mergeReports(results);
  mkdirSync(dirname(report), { recursive: true });
  writeFileSync(report, JSON.stringify(merged));
  const timings = {
    guestBuildMs: guest.buildMs,
    guestCached: !guest.built,
    guests: results.length,
    cpusPerGuest: cpus ?? 1,
    bootMs: Math.max(...results.map((r) => r.bootMs)),
    runMs: Math.max(...results.map((r) => r.runMs)),
    totalMs: Date.now() - t0,
    kernel: guest.kernelVersion,
    shards: results.map((r, i) => ({ name: r.name, files: shards[i].files, bootMs: r.bootMs, runMs: r.runMs, exitCode: r.exitCode })),
    files: Object.fromEntries(
      merged.testResults.map((t) => [String(t.name).replace(CHECKOUT + '/', ''), (t.endTime ?? 0) - (t.startTime ?? 0)]),
    ),
  };
  writeFileSync(join(dirname(report), 'vm-timings.json'), JSON.stringify(timings, null, 2) + '\n');
  log(
    `guest ${timings.guestCached ? 'cached' : `built in ${(timings.guestBuildMs / 1000).toFixed(0)} s`}, ${results.length} guest(s) side by side, ` +
      `slowest booted in ${(timings.bootMs / 1000).toFixed(1)} s and ran ${(timings.runMs / 1000).toFixed(1)} s in all; stage ${(timings.totalMs / 1000).toFixed(1)} s`,
  );
  for (const [f, ms] of Object.entries(timings.files)) log(`  ${f}: ${(ms / 1000).toFixed(1)} s`);
  process.exit(results.some((r) => r.exitCode !== 0) || !merged.success ? 1 : 0);
} catch (e) {
  log(e instanceof GuestError ? e.message : `failed: ${e.message}`);
  process.exit(1);
}

/**
 * The vm project's files (vitest's own include/exclude, as the guest will see them), narrowed by
 * the command line's filters. Listed on the host with SINTER_IN_VM=1: only globbing, nothing imported.
 * @param {string[]} filters
 * @returns {string[]}
 */
function listVmFiles(filters) {
  // The filters before the options: `--json` takes an optional file name and would swallow the first one.
  const r = spawnSync(process.execPath, [join(CHECKOUT, 'node_modules/vitest/vitest.mjs'), 'list', ...filters, '--project', 'vm', '--filesOnly', '--json'], {
    cwd: CHECKOUT,
    env: { ...process.env, SINTER_IN_VM: '1' },
    encoding: 'utf8',
    maxBuffer: 16 * 1024 * 1024,
  });
  // vitest list exits non-zero when nothing matches; an empty list is reported by the caller.
  const out = (r.stdout ?? '').trim();
  if (!out.startsWith('[')) {
    if (r.status !== 0 && !/No test files found/i.test(`${r.stdout}${r.stderr}`)) throw new Error(`vitest list failed: ${(r.stderr || r.stdout || '').trim().split('\n').slice(-5).join(' ')}`);
    return [];
  }
  return [...new Set(JSON.parse(out).map((t) => String(t.file).replace(CHECKOUT + '/', '')))].sort();
}

/** Settings of the host's environment that decide what the vm project runs; the guest starts from none. */
function passedEnv() {
  const keys = ['SINTER_CONFORMANCE_TRANSPORT'];
  return Object.fromEntries(keys.filter((k) => process.env[k] !== undefined).map((k) => [k, String(process.env[k])]));
}
