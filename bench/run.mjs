#!/usr/bin/env node
// `npm run bench`: sinter's numbers, each against the raw operation measured
// in the same run (the floor), so a noisy machine moves both sides together.
// Prints a table and writes bench/results.json.
//
//   node bench/run.mjs [--only rpc,provision,attach,snapshot,scale,iscsi,attachScale,rbd] [--quick] [--volumes N (0: skip the 10,000-volume part)]
//                      [--attach-volumes N (volumes staged at once by attachScale; default 256)] [--iscsi-volumes N (iscsiScale; default 32)]
//   node bench/run.mjs iscsi attach      (bare section names: the same as --only iscsi,attach)
//
// Needs root (loop devices, mkfs, mount) and a built dist/ (npm run bench builds).
import { cpus, loadavg } from 'node:os';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';
import { base, cleanupAll, cpuPressure, spread } from './lib.mjs';
import { rpcBench } from './rpc.mjs';
import { FLOOR as PROVISION_FLOOR, provisionBench } from './provision.mjs';
import { attachBench, RAW as ATTACH_RAW } from './attach.mjs';
import { snapshotBench } from './snapshot.mjs';
import { scaleBench } from './scale.mjs';
import { attachScaleBench, RAW_AT_N } from './attach-scale.mjs';
import { rbdBench, RAW as RBD_RAW } from './rbd.mjs';
import { iscsiBench, iscsiScaleBench, RAW_PUBLISH as ISCSI_RAW_PUBLISH, RAW_STAGE as ISCSI_RAW_STAGE } from './iscsi.mjs';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const onlyArg = args.find((a) => a.startsWith('--only'));
const volArg = args.find((a) => a.startsWith('--volumes'));
const volumes = volArg ? Number(volArg.includes('=') ? volArg.split('=')[1] : args[args.indexOf(volArg) + 1]) : 10_000;
const attachVolArg = args.find((a) => a.startsWith('--attach-volumes'));
const iscsiVolArg = args.find((a) => a.startsWith('--iscsi-volumes'));
const iscsiVolumes = iscsiVolArg ? Number(iscsiVolArg.includes('=') ? iscsiVolArg.split('=')[1] : args[args.indexOf(iscsiVolArg) + 1]) : undefined;
const attachVolumes = attachVolArg ? Number(attachVolArg.includes('=') ? attachVolArg.split('=')[1] : args[args.indexOf(attachVolArg) + 1]) : undefined;

const plan = {
  rpc: { fn: rpcBench, opts: quick ? { rounds: 3, calls: 500 } : { rounds: 7, calls: 2000 } },
  provision: {
    fn: provisionBench,
    opts: quick
      ? { rounds: 1, pairsAt: [[1, 30], [16, 160], [64, 320]], bulkCount: 1000 }
      : { rounds: 3, pairsAt: [[1, 60], [16, 320], [64, 640]], bulkCount: 1000 },
  },
  attach: { fn: attachBench, opts: quick ? { reps: 5 } : { reps: 20 } },
  snapshot: { fn: snapshotBench, opts: quick ? { reps: 2 } : { reps: 5 } },
  scale: { fn: scaleBench, opts: quick ? { reps: 3, volumes } : { reps: 5, volumes } },
  iscsi: { fn: iscsiBench, opts: quick ? { publishReps: 10, stageReps: 8 } : { publishReps: 30, stageReps: 30 } },
  attachScale: { fn: attachScaleBench, opts: { volumes: attachVolumes ?? (quick ? 64 : 256) } },
  iscsiScale: { fn: iscsiScaleBench, opts: { volumes: iscsiVolumes ?? (quick ? 16 : 32) } },
  rbd: { fn: rbdBench, opts: quick ? { reps: 10 } : { reps: 30 } },
};

// Sections: --only a,b, or bare section names (`npm run bench -- iscsi`).
const valueArgs = new Set([onlyArg, volArg, attachVolArg, iscsiVolArg].map((a) => (a && !a.includes('=') ? args.indexOf(a) + 1 : -1)));
const bare = args.filter((a, i) => !a.startsWith('-') && !valueArgs.has(i));
for (const b of bare) if (!(b in plan)) throw new Error(`unknown section "${b}"; sections: ${Object.keys(plan).join(', ')}`);
const only = onlyArg ? [...(onlyArg.includes('=') ? onlyArg.split('=')[1] : args[args.indexOf(onlyArg) + 1]).split(','), ...bare] : bare.length ? bare : undefined;
for (const o of only ?? []) if (!(o in plan)) throw new Error(`unknown section "${o}"; sections: ${Object.keys(plan).join(', ')}`);

const started = performance.now();
const log = (s) => process.stderr.write(`${s}\n`);
const fmt = (v) => (v === undefined || Number.isNaN(v) ? '—' : Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2));

function verdict(row) {
  const t = row.target;
  if (!t) return { text: '', met: null };
  if (t.ratioMax !== undefined) return { text: `ratio ≤ ${t.ratioMax}×`, met: row.ratio <= t.ratioMax };
  if (t.valueMin !== undefined) return { text: `≥ ${t.valueMin} ${row.unit}`, met: row.value >= t.valueMin };
  if (t.valueMax !== undefined) return { text: `≤ ${t.valueMax} ${row.unit}`, met: row.value <= t.valueMax };
  return { text: '', met: null };
}

const rows = [];
const sectionsRun = [];
const errors = [];
const loadBefore = loadavg();
const pressureBefore = cpuPressure();
log(`sinter bench: ${cpus().length} CPUs, load ${loadBefore.map((l) => l.toFixed(2)).join(' ')}, CPU pressure ${pressureBefore ?? '?'}%, scratch ${base}${quick ? ' (quick)' : ''}`);
try {
  for (const [name, { fn, opts }] of Object.entries(plan)) {
    if (only && !only.includes(name)) continue;
    const t = performance.now();
    log(`\n== ${name}`);
    try {
      rows.push(...(await fn({ ...opts, log })));
    } catch (e) {
      errors.push({ section: name, error: e?.stack ?? String(e) });
      log(`  ${name} FAILED: ${e?.stack ?? e}`);
    }
    sectionsRun.push({ name, seconds: (performance.now() - t) / 1000 });
    log(`  (${((performance.now() - t) / 1000).toFixed(1)} s)`);
  }
} finally {
  await cleanupAll();
}

const elapsed = (performance.now() - started) / 1000;
const loadAfter = loadavg();
const pressureAfter = cpuPressure();

// ---------------------------------------------------------------- table
const head = ['figure', 'sinter', 'floor', 'ratio', 'ratio range', 'target', 'met'];
const table = [];
let lastSection;
for (const r of rows) {
  const v = verdict(r);
  r.met = v.met;
  r.targetText = v.text;
  r.ratioRange = r.ratios?.length ? spread(r.ratios) : undefined;
  if (r.section !== lastSection) {
    table.push([r.section]);
    lastSection = r.section;
  }
  table.push([
    `  ${r.label}`,
    `${fmt(r.value)} ${r.unit}`,
    r.floor === undefined ? '' : `${fmt(r.floor)} ${r.unit}`,
    r.ratio === undefined ? '' : `${fmt(r.ratio)}×`,
    r.ratioRange && r.ratios.length > 1 ? `${fmt(r.ratioRange.min)}–${fmt(r.ratioRange.max)}` : '',
    v.text,
    v.met === null ? '' : v.met ? 'yes' : 'NO',
  ]);
}
const widths = head.map((h, i) => Math.max(h.length, ...table.filter((row) => row.length > 1).map((row) => String(row[i] ?? '').length)));
const line = (cells) => cells.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  ');
const out = [line(head), widths.map((w) => '-'.repeat(w)).join('  ')];
for (const row of table) out.push(row.length === 1 ? row[0] : line(row));
console.log(`\n${out.join('\n')}`);
console.log(`
ratio = sinter ÷ floor (for throughput: floor rate ÷ sinter rate), so 1.00× is the floor and higher is slower;
every figure is the median over the rounds, and so is every ratio (of per-round ratios); "ratio range" is min–max over rounds.
Floors:
  1. bare @grpc/grpc-js server, same csi.proto and loader options, constant replies, unix socket (bench/floor-server.mjs).
  2. ${PROVISION_FLOOR}
  3. ${ATTACH_RAW} — spawned through sinter's own executor (forked by its command runner, src/exec/command_runner.pl).
  4. cp --reflink=always (xfs) / cp --sparse=always --reflink=never (ext4) of the same image, then fsync of the copy.
  5. start-up: node -e "" (spawn to exit); RSS: the idle floor server; ListVolumes: the floor server's canned page of 100.
  6a. ${ISCSI_RAW_PUBLISH} — each tgtadm spawned through sinter's executor; ratio = p50 ÷ p50 (p95 ÷ p95).
  6b. ${ISCSI_RAW_STAGE} — through sinter's executor, pid files polled every 5 ms; ratio = p50 ÷ p50 (p95 ÷ p95).
  8. ${RBD_RAW}; the 50 ms target is the issue's goal for CreateVolume.
  7, 7b. the same RPC of the first volumes (7: median of volumes 1–16; 7b: 1–8) against the median of as many volumes ending at n, all staged at once, torn down last in, first out;
      7 also against the raw commands with the same neighbours (${RAW_AT_N}), so the kernel's and the tools' own growth is the floor's too.
sinter runs as a separate process with its default log level (info: one JSON line per RPC) written to a file.
Load average ${loadBefore[0].toFixed(2)} at start, ${loadAfter[0].toFixed(2)} at end on ${cpus().length} CPUs; CPU pressure (some, avg60) ${pressureBefore ?? '?'}% → ${pressureAfter ?? '?'}%.
Other work on the machine moves single figures between runs; the ratios (both sides measured together) and the CPU-time rows move much less.
bench finished in ${elapsed.toFixed(0)} s (${sectionsRun.map((s) => `${s.name} ${s.seconds.toFixed(0)} s`).join(', ')})${errors.length ? `; ${errors.length} section(s) FAILED: ${errors.map((e) => e.section).join(', ')}` : ''}`);

let commit = '';
try {
  commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: fileURLToPath(new URL('..', import.meta.url)), encoding: 'utf8' }).trim();
} catch {
  /* not a git checkout */
}
writeFileSync(
  fileURLToPath(new URL('./results.json', import.meta.url)),
  `${JSON.stringify(
    {
      date: new Date().toISOString(),
      commit,
      node: process.version,
      cpus: cpus().length,
      quick,
      loadAverage: { start: loadBefore, end: loadAfter },
      cpuPressureAvg60: { start: pressureBefore, end: pressureAfter },
      seconds: elapsed,
      sections: sectionsRun,
      errors,
      figures: rows.map(({ id, section, label, unit, value, floor, ratio, ratios, ratioRange, targetText, met, floorIs, detail }) => ({
        id,
        section,
        label: label.trim(),
        unit,
        value,
        floor,
        ratio,
        ratioRange,
        ratios,
        target: targetText || undefined,
        met,
        floorIs,
        detail,
      })),
    },
    null,
    2,
  )}\n`,
);
if (errors.length) process.exitCode = 1;
