// 7. Attach at scale: `sinter all` stages and publishes N volumes (default
// 256) on one node over the local transport (loop device, ext4, 64 MiB
// each), keeping them all staged, then unpublishes and unstages them in the
// reverse order. So volume #n's stage and publish run while n-1 others are
// staged and published, and so do its unpublish and unstage (last in, first
// out): every figure of volume #n is taken with the same n-1 neighbours.
//
// The floor of each figure is the same RPC of the first volumes: the section
// asks whether the cost of one attach grows with the number already there
// (issue 16: volume 256 ≤ 1.2× volume 1). Single RPCs are noisy on a shared
// machine, so "volume n" is the median of the window of volumes ending at n
// (16 for section 7, 8 for 7b's 32 volumes; volumes 1–16 for the first): with
// 8, one busy second of a neighbour's work moved a CPU row by 0.3×.
//
// With BENCH_LOG_LEVEL=debug sinter logs every host command; the section
// then counts, per RPC, the commands and their time, and prints them for
// the first and the last windows, so what grows is named.
//
// Everything lives under one directory that is unmounted, detached and
// removed at the end of the section, also when it fails.
import { copyFileSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { base, hostExec, load, median, MiB, mountCap, rssOf, runnerCpuMs, scrub, sparseImage, startSinter, threadsCpuMs } from './lib.mjs';

/** sinter's CPU (ms), all threads and the command runner that forks its host commands. */
const processMs = (pid) => threadsCpuMs(pid) + runnerCpuMs(pid);

export const STEPS = ['NodeStageVolume', 'NodePublishVolume', 'NodeUnpublishVolume', 'NodeUnstageVolume'];
const WINDOW = 8;

/** CPU time (ms) sinter's main thread has run so far (/proc/PID/schedstat, ns): its JS and parsing (host commands fork in the command runner, which the all-threads figure counts); less noisy than wall time on a busy machine. */
const mainThreadMs = (pid) => Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0]) / 1e6;

/** This process's CPU (ms), for the raw commands it spawns: the parent's side of each fork and exec, as sinter's rows count sinter's. */
const selfCpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000 + runnerCpuMs(process.pid);
};

/** The points reported: the first window, the 64th, 128th and the last volume. */
export function points(n, win = WINDOW) {
  return [...new Set([win, 64, 128, n].filter((p) => p >= win && p <= n))];
}

/** Median of the window of `win` values ending at volume n (1-based). */
const windowOf = (win) => (values, n) => median(values.slice(Math.max(0, n - win), n));

/**
 * A logged command line shortened to what tells its kind: the program and its first option (mount -t, umount);
 * for iscsiadm, what it does (--login, --logout, --op new|update|delete, or a show), which differ in what they walk.
 */
function commandKey(line) {
  const [cmd, ...args] = line.split(' ');
  if (cmd === 'iscsiadm') {
    const op = args.indexOf('--op');
    const act = args.find((a) => a === '--login' || a === '--logout' || a === '--rescan');
    return `iscsiadm ${args[1] ?? ''} ${act ?? (op >= 0 ? `--op ${args[op + 1]}` : 'show')}`;
  }
  return cmd + (args[0]?.startsWith('-') ? ` ${args[0]}` : '');
}

/**
 * Host commands per RPC from a debug log: sinter serves one RPC at a time
 * here, so every `exec` line belongs to the next `rpc` line.
 */
export function commandsPerRpc(logText) {
  const out = [];
  let pending = [];
  for (const line of logText.split('\n')) {
    if (!line.startsWith('{')) continue;
    let j;
    try {
      j = JSON.parse(line);
    } catch {
      continue;
    }
    if (j.msg === 'exec') pending.push({ cmd: commandKey(j.cmd), ms: j.ms });
    else if (j.msg === 'rpc') {
      out.push({ rpc: j.rpc?.split('.').pop(), volumeId: j.volume_id, ms: j.ms, cmds: pending });
      pending = [];
    }
  }
  return out;
}

/**
 * The raw floor at n: what the kernel and the tools cost with the same mounts
 * and loop devices present (mount(8) reads the mount table, losetup --find
 * walks the loop devices, and the kernel's own mount and umount grow with the
 * mounts): the sequence of section 3 on a fresh image of the same size, run
 * right before volume n is staged (n-1 neighbours present), through sinter's
 * own executor. The never-reformat probe sinter runs before mkfs (blkid -p,
 * safety rule 1) is timed as its own step, so the remainder above the floor
 * is what is sinter's.
 */
export const RAW_AT_N = 'losetup --find --show IMG; [blkid -p -o export DEV: the probe, its own line]; mkfs.ext4 -q DEV; mount -t ext4 DEV STAGING | mount --bind STAGING TARGET | umount TARGET | umount STAGING; losetup --detach DEV';

async function rawCycle(dir, i, sizeBytes) {
  const img = join(dir, `raw-${i}.img`);
  const staging = join(dir, `raw-${i}`, 'globalmount');
  const target = join(dir, `raw-${i}`, 'mount');
  mkdirSync(staging, { recursive: true });
  mkdirSync(target, { recursive: true });
  await sparseImage(img, sizeBytes);
  const ms = {};
  const cpu = {};
  const run = (cmd, args, opts) => hostExec.run(cmd, args, opts);
  let c = selfCpuMs();
  let t = performance.now();
  const dev = (await run('losetup', ['--find', '--show', img])).stdout.trim();
  let stage = performance.now() - t;
  let stageCpu = selfCpuMs() - c;
  t = performance.now();
  await run('blkid', ['-p', '-o', 'export', dev], { okExitCodes: [2] });
  ms.probe = performance.now() - t;
  const step = async (name, fn) => {
    c = selfCpuMs();
    t = performance.now();
    await fn();
    ms[name] = performance.now() - t;
    cpu[name] = selfCpuMs() - c;
  };
  await step('NodeStageVolume', async () => {
    await run('mkfs.ext4', ['-q', dev]);
    await run('mount', ['-t', 'ext4', dev, staging]);
  });
  ms.NodeStageVolume += stage;
  cpu.NodeStageVolume += stageCpu;
  await step('NodePublishVolume', () => run('mount', ['--bind', staging, target]));
  await step('NodeUnpublishVolume', () => run('umount', [target]));
  await step('NodeUnstageVolume', async () => {
    await run('umount', [staging]);
    await run('losetup', ['--detach', dev]);
  });
  rmSync(img, { force: true });
  rmSync(join(dir, `raw-${i}`), { recursive: true, force: true });
  return { ms, cpu };
}

/**
 * Stages and publishes `volumes` volumes one after another on `node`, created
 * and published to it by `ctl` (the same process for `sinter all`), then
 * unpublishes and unstages them last in, first out, and deletes them. Returns
 * the section's rows; `made` (given) lists what is still staged or published
 * when it throws, for the caller's clean-up.
 */
export async function runScale({ ctl, node, cap, sizeBytes, volumes, pathsFor, section, idBase, tag, made, log, rawDir, parameters, window: WIN = WINDOW }) {
  const windowAt = windowOf(WIN);
  const s = node;
  const ms = Object.fromEntries(STEPS.map((k) => [k, []]));
  const cpu = Object.fromEntries(STEPS.map((k) => [k, []]));
  const cpuAll = Object.fromEntries(STEPS.map((k) => [k, []]));
  const loadAt = [];
  // sinter's resident memory as each volume is staged and torn down: every host command forks the node process,
  // and the fork's page-table copy (main-thread CPU) grows with it, whatever the RPC does.
  const rss = { up: [], down: [] };
  const t0 = performance.now();
  let nodeId;
  const create = async (name) => {
    const { volume } = await ctl.client.controller.CreateVolume({ name, parameters, capacity_range: { required_bytes: sizeBytes }, volume_capabilities: [cap] });
    const id = volume.volume_id;
    const { publish_context: ctx } = await ctl.client.controller.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: cap });
    const v = { id, ctx, volume, ...pathsFor(id, name) };
    mkdirSync(v.staging, { recursive: true });
    mkdirSync(join(v.target, '..'), { recursive: true });
    made.push(v);
    return v;
  };
  /** Wall ms of fn; its main-thread CPU ms goes to cpu[step][index]. */
  const time = async (fn, step, index) => {
    const c = mainThreadMs(s.pid);
    const a = processMs(s.pid);
    const t = performance.now();
    await fn();
    const wall = performance.now() - t;
    cpu[step][index] = mainThreadMs(s.pid) - c;
    cpuAll[step][index] = processMs(s.pid) - a;
    return wall;
  };
  const n = s.client.node;
  const stage = (v) => n.NodeStageVolume({ volume_id: v.id, staging_target_path: v.staging, volume_capability: cap, publish_context: v.ctx, volume_context: v.volume.volume_context });
  const publish = (v) => n.NodePublishVolume({ volume_id: v.id, staging_target_path: v.staging, target_path: v.target, volume_capability: cap, publish_context: v.ctx });
  const unpublish = (v) => n.NodeUnpublishVolume({ volume_id: v.id, target_path: v.target });
  const unstage = (v) => n.NodeUnstageVolume({ volume_id: v.id, staging_target_path: v.staging });
  const release = async (v) => {
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: v.id, node_id: nodeId });
    await ctl.client.controller.DeleteVolume({ volume_id: v.id });
    made.splice(made.indexOf(v), 1);
  };
  ({ node_id: nodeId } = await n.NodeGetInfo({}));
  {
    // Warm-up: one whole round trip, so JIT and the tools' page cache are warm for volume 1.
    const warm = await create(`${tag}-warm`);
    await stage(warm);
    await publish(warm);
    await unpublish(warm);
    await unstage(warm);
    await release(warm);
    const logStart = readFileSync(s.logFile, 'utf8').length;

    const all = [];
    // The raw floor, with the same neighbours: before each volume of every reported window (first, 64th, 128th, last).
    const raw = [];
    const pts = points(volumes, WIN);
    const rawWanted = (i) => rawDir && pts.some((p) => i > p - WIN && i <= p);
    for (let i = 1; i <= volumes; i++) {
      if (rawWanted(i)) raw[i - 1] = await rawCycle(rawDir, i, sizeBytes);
      const v = await create(`${tag}-${i}`);
      all.push(v);
      ms.NodeStageVolume.push(await time(() => stage(v), 'NodeStageVolume', i - 1));
      v.staged = true;
      ms.NodePublishVolume.push(await time(() => publish(v), 'NodePublishVolume', i - 1));
      v.published = true;
      rss.up[i - 1] = rssOf(s.pid);
      loadAt.push(load());
      if (i % 32 === 0 || i === volumes)
        log(`  ${tag}: ${i}/${volumes} staged+published; stage ${ms.NodeStageVolume.at(-1).toFixed(0)} ms, publish ${ms.NodePublishVolume.at(-1).toFixed(0)} ms; load ${load().toFixed(2)}`);
    }
    // Last in, first out: volume #n is torn down with the same n-1 neighbours it was set up with.
    const down = { NodeUnpublishVolume: [], NodeUnstageVolume: [] };
    for (let i = volumes; i >= 1; i--) {
      const v = all[i - 1];
      down.NodeUnpublishVolume[i - 1] = await time(() => unpublish(v), 'NodeUnpublishVolume', i - 1);
      v.published = false;
      down.NodeUnstageVolume[i - 1] = await time(() => unstage(v), 'NodeUnstageVolume', i - 1);
      v.staged = false;
      rss.down[i - 1] = rssOf(s.pid);
      await release(v);
      if (i % 32 === 1 || i === 1) log(`  ${tag}: torn down to ${i - 1}; unpublish ${down.NodeUnpublishVolume[i - 1].toFixed(0)} ms, unstage ${down.NodeUnstageVolume[i - 1].toFixed(0)} ms; load ${load().toFixed(2)}`);
    }
    ms.NodeUnpublishVolume = down.NodeUnpublishVolume;
    ms.NodeUnstageVolume = down.NodeUnstageVolume;
    const rows = [];
    const first = pts[0];
    for (const k of STEPS) {
      const f = windowAt(ms[k], first);
      for (const p of pts.slice(1)) {
        const val = windowAt(ms[k], p);
        rows.push({
          id: `${idBase}.${k}.${p}`,
          section,
          label: `${k}, volume ${p} vs volumes 1–${first}`,
          unit: 'ms',
          value: val,
          floor: f,
          ratio: val / f,
          target: p === volumes ? { ratioMax: 1.2 } : undefined,
          floorIs: `median ${k} of volumes 1–${first}`,
          detail: { window: WIN, perVolumeMs: ms[k].map((x) => Math.round(x * 100) / 100) },
        });
      }
    }
    if (rawDir) {
      const rawAt = (k, n, of = 'ms') => median(raw.slice(Math.max(0, n - WIN), n).filter(Boolean).map((r) => r[of][k]));
      for (const k of STEPS) {
        for (const p of [first, volumes]) {
          const val = windowAt(ms[k], p);
          const f = rawAt(k, p);
          rows.push({
            id: `${idBase}.${k}.vsRaw.${p}`,
            section,
            label: `${k}, volume ${p} vs the raw commands with the same ${p - 1} neighbours`,
            unit: 'ms',
            value: val,
            floor: f,
            ratio: val / f,
            floorIs: `median of the raw sequence (${RAW_AT_N}) run before volumes ${p - WIN + 1}–${p}`,
            detail: { window: WIN, rawMs: raw.slice(Math.max(0, p - WIN), p).filter(Boolean).map((r) => Math.round(r.ms[k] * 100) / 100) },
          });
        }
      }
      // The floor's own growth (the kernel's and the tools': mount(8) reads the mount table, losetup --find walks the
      // loop devices, mount(2) and umount(2) themselves), and sinter's growth divided by it: what is left is sinter's.
      for (const k of STEPS) {
        for (const p of pts.slice(1)) {
          const floorGrowth = rawAt(k, p) / rawAt(k, first);
          const sinterGrowth = windowAt(ms[k], p) / windowAt(ms[k], first);
          rows.push({
            id: `${idBase}.${k}.rawGrowth.${p}`,
            section,
            label: `  raw commands' own ${k} step, volume ${p} vs volumes 1–${first}`,
            unit: 'ms',
            value: rawAt(k, p),
            floor: rawAt(k, first),
            ratio: floorGrowth,
            floorIs: `the raw sequence's median before volumes 1–${first}`,
          });
          rows.push({
            id: `${idBase}.${k}.growthVsRaw.${p}`,
            section,
            label: `  ${k}: sinter's growth to volume ${p} ÷ the raw commands' growth`,
            unit: '×',
            value: sinterGrowth,
            floor: floorGrowth,
            ratio: sinterGrowth / floorGrowth,
            floorIs: `the raw commands' growth from volumes 1–${first} to volume ${p}, same neighbours`,
          });
        }
      }
      for (const p of [first, volumes]) {
        rows.push({
          id: `${idBase}.NodeStageVolume.probe.${p}`,
          section,
          label: `  of which: never-reformat probe (blkid -p), raw, volume ${p}`,
          unit: 'ms',
          value: rawAt('probe', p),
          floor: undefined,
          ratio: undefined,
          floorIs: 'safety rule 1: sinter probes before it formats; the raw stage floor does not include it',
        });
      }
      log(`  raw floor (same neighbours): ${STEPS.map((k) => `${k} #${first} ${rawAt(k, first).toFixed(1)} / #${volumes} ${rawAt(k, volumes).toFixed(1)} ms`).join(', ')}; blkid -p #${first} ${rawAt('probe', first).toFixed(1)} / #${volumes} ${rawAt('probe', volumes).toFixed(1)} ms`);
      log(`  the curve (median of the ${WIN} volumes ending at each; ×: against the first window):`);
      const curve = (values) => pts.map((p) => `${values(p).toFixed(1)}${p === first ? '' : ` (${(values(p) / values(first)).toFixed(2)}×)`}`).join(' | ');
      log(`  ${'step'.padEnd(20)} ${'what'.padEnd(24)} ${pts.map((p) => `#${p}`).join(' | ')}`);
      for (const k of STEPS) {
        log(`  ${k.padEnd(20)} ${'sinter wall ms'.padEnd(24)} ${curve((p) => windowAt(ms[k], p))}`);
        log(`  ${''.padEnd(20)} ${'raw wall ms'.padEnd(24)} ${curve((p) => rawAt(k, p))}`);
        log(`  ${''.padEnd(20)} ${'sinter main-thread CPU'.padEnd(24)} ${curve((p) => windowAt(cpu[k], p))}`);
        log(`  ${''.padEnd(20)} ${'sinter process CPU'.padEnd(24)} ${curve((p) => windowAt(cpuAll[k], p))}`);
        log(`  ${''.padEnd(20)} ${'raw (bench) CPU'.padEnd(24)} ${curve((p) => rawAt(k, p, 'cpu'))}`);
      }
    }
    for (const k of STEPS) {
      const f = windowAt(cpu[k], first);
      for (const p of pts.slice(1)) {
        const val = windowAt(cpu[k], p);
        rows.push({
          id: `${idBase}.${k}.cpu.${p}`,
          section,
          label: `${k}, sinter main-thread CPU, volume ${p} vs volumes 1–${first}`,
          unit: 'ms',
          value: val,
          floor: f,
          ratio: val / f,
          target: p === volumes ? { ratioMax: 1.2 } : undefined,
          floorIs: `median main-thread CPU of ${k} of volumes 1–${first}`,
          detail: { window: WIN, perVolumeMs: cpu[k].map((x) => Math.round(x * 100) / 100) },
        });
      }
    }
    for (const k of STEPS) {
      const f = windowAt(cpuAll[k], first);
      for (const p of pts.slice(1)) {
        const val = windowAt(cpuAll[k], p);
        rows.push({
          id: `${idBase}.${k}.processCpu.${p}`,
          section,
          label: `${k}, sinter process CPU (all threads + command runner), volume ${p} vs volumes 1–${first}`,
          unit: 'ms',
          value: val,
          floor: f,
          ratio: val / f,
          floorIs: `median CPU of all sinter's threads for ${k} of volumes 1–${first}`,
          detail: { window: WIN, perVolumeMs: cpuAll[k].map((x) => Math.round(x * 100) / 100) },
        });
      }
    }
    log(`  ${tag}: ${volumes} volumes in ${((performance.now() - t0) / 1000).toFixed(0)} s; load ${Math.min(...loadAt).toFixed(2)}–${Math.max(...loadAt).toFixed(2)} while staging`);
    log(`  sinter RSS after staging volume ${pts.map((p) => `#${p} ${rss.up[p - 1].toFixed(0)}`).join(', ')} MiB; after tearing it down ${pts.map((p) => `#${p} ${rss.down[p - 1].toFixed(0)}`).join(', ')} MiB`);
    for (const k of STEPS) log(`  ${k.padEnd(20)} ${pts.map((p) => `#${p} ${windowAt(ms[k], p).toFixed(1)} ms (CPU ${windowAt(cpu[k], p).toFixed(1)}, all threads ${windowAt(cpuAll[k], p).toFixed(1)})`).join(', ')}`);

    // Debug logs: commands per RPC, for the first and the last windows.
    const calls = commandsPerRpc(readFileSync(s.logFile, 'utf8').slice(logStart));
    if (calls.some((c) => c.cmds.length)) {
      const byVolume = new Map(all.map((v, i) => [v.id, i + 1]));
      for (const k of STEPS) {
        for (const p of [first, volumes]) {
          const inWindow = calls.filter((c) => c.rpc === k && byVolume.get(c.volumeId) > p - WIN && byVolume.get(c.volumeId) <= p);
          if (!inWindow.length) continue;
          const cmdMs = median(inWindow.map((c) => c.cmds.reduce((a, x) => a + x.ms, 0)));
          const rpcMs = median(inWindow.map((c) => c.ms));
          const names = {};
          for (const c of inWindow) for (const x of c.cmds) (names[x.cmd] ??= []).push(x.ms);
          const list = Object.entries(names)
            .map(([cmd, t]) => `${cmd} ×${(t.length / inWindow.length).toFixed(1)} ${median(t)} ms`)
            .join('; ');
          log(`  ${k} volumes ${p - WIN + 1}–${p}: server ${rpcMs.toFixed(1)} ms, host commands ${cmdMs.toFixed(0)} ms: ${list}`);
        }
      }
    }
    return rows;
  }
}

/** Best effort through sinter (so its records match) before the directory is scrubbed. */
export async function undoScale(node, made) {
  for (const v of [...made].reverse()) {
    if (v.published) await node.client.node.NodeUnpublishVolume({ volume_id: v.id, target_path: v.target }).catch(() => undefined);
    if (v.staged) await node.client.node.NodeUnstageVolume({ volume_id: v.id, staging_target_path: v.staging }).catch(() => undefined);
  }
}

export async function attachScaleBench({ volumes = 256, sizeMiB = 64, window = 16, log }) {
  const dir = join(base, 'attach-scale');
  const s = await startSinter({ role: 'all', dir });
  const cap = mountCap('ext4');
  const made = [];
  let failed = true;
  let rows;
  try {
    rows = await runScale({
      ctl: s,
      node: s,
      cap,
      sizeBytes: sizeMiB * MiB,
      volumes,
      pathsFor: (id, name) => ({
        staging: join(s.kubeletRoot, 'plugins/kubernetes.io/csi/sinter.csi.io', id, 'globalmount'),
        target: join(s.kubeletRoot, 'pods', `pod-${name}`, 'volumes/kubernetes.io~csi', id, 'mount'),
      }),
      section: `7. Attach at scale (local connector, ext4, ${sizeMiB} MiB, ${volumes} volumes on one node)`,
      idBase: 'attachScale',
      tag: 'attach-scale',
      made,
      log,
      rawDir: join(dir, 'raw'),
      window: Math.min(window, Math.max(1, Math.floor(volumes / 4))),
    });
    failed = false;
  } finally {
    if (failed) await undoScale(s, made);
    await s.stop();
    if (process.env.BENCH_LOGS_TO) {
      mkdirSync(process.env.BENCH_LOGS_TO, { recursive: true });
      copyFileSync(s.logFile, join(process.env.BENCH_LOGS_TO, 'attach-scale.log'));
    }
    await scrub(dir);
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}
