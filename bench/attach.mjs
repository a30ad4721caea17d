// 3. Attach: NodeStage (loop attach + ext4 format + mount) + NodePublish
// (bind) + NodeUnpublish + NodeUnstage through the local connector of
// `sinter all`, against the raw losetup / mkfs.ext4 / mount / bind / umount /
// losetup -d sequence started by this process through the same executor
// (the command runner, same options) sinter uses. Each repetition uses a fresh blank 1 GiB
// sparse image on the same filesystem, so both sides format every time.
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import { lstat, realpath } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { freshDir, GiB, hostExec, median, mountCap, openDir, removeFileDurable, runnerCpuMs, sparseImage, startFloorServer, startSinter, threadsCpuMs, writeFileAtomic } from './lib.mjs';

export const RAW = 'losetup --find --show IMG; [blkid -p -o export DEV: timed on its own line, not in the floor]; mkfs.ext4 -q DEV; mount -t ext4 DEV STAGING; mount --bind STAGING TARGET; umount TARGET; umount STAGING; losetup --detach DEV';

const STEPS = ['NodeStageVolume', 'NodePublishVolume', 'NodeUnpublishVolume', 'NodeUnstageVolume'];

async function driverOnce(s, nodeId, i) {
  const cap = mountCap('ext4');
  const { volume } = await s.client.controller.CreateVolume({ name: `attach-${i}`, capacity_range: { required_bytes: GiB }, volume_capabilities: [cap] });
  const id = volume.volume_id;
  const { publish_context: ctx } = await s.client.controller.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: cap });
  const staging = join(s.kubeletRoot, 'plugins/kubernetes.io/csi/sinter.csi.io', id, 'globalmount');
  const target = join(s.kubeletRoot, 'pods', `pod-${i}`, 'volumes/kubernetes.io~csi', id, 'mount');
  mkdirSync(staging, { recursive: true });
  mkdirSync(join(target, '..'), { recursive: true });
  const ms = {};
  const step = async (name, fn) => {
    const t = performance.now();
    await fn();
    ms[name] = performance.now() - t;
  };
  const n = s.client.node;
  const cpu0 = threadsCpuMs(s.pid) + runnerCpuMs(s.pid);
  await step('NodeStageVolume', () => n.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: cap, publish_context: ctx, volume_context: volume.volume_context }));
  await step('NodePublishVolume', () => n.NodePublishVolume({ volume_id: id, staging_target_path: staging, target_path: target, volume_capability: cap, publish_context: ctx }));
  await step('NodeUnpublishVolume', () => n.NodeUnpublishVolume({ volume_id: id, target_path: target }));
  await step('NodeUnstageVolume', () => n.NodeUnstageVolume({ volume_id: id, staging_target_path: staging }));
  ms.cpu = threadsCpuMs(s.pid) + runnerCpuMs(s.pid) - cpu0;
  await s.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
  await s.client.controller.DeleteVolume({ volume_id: id });
  return ms;
}

/**
 * The CSI transport of one attach cycle, done against the floor server: the
 * same four requests (the same fields, paths as long), each sent right after
 * the raw step's host commands, when both processes have sat idle on a
 * command as kubelet and sinter do. A round trip after idle costs this VM's
 * wake-ups (~2 ms here, 0.25 ms back to back): any CSI plugin pays it, so it
 * is reported on its own line, not counted as sinter's.
 */
function transportCalls(floor, i, staging, target) {
  const cap = mountCap('ext4');
  const volume_id = `default-00000000-0000-4000-8000-${String(i).padStart(12, '0')}`;
  const publish_context = { 'sinter.csi.io/transport': 'local', 'sinter.csi.io/path': `${staging}/../data/volumes/${volume_id}.img` };
  const n = floor.client.node;
  return {
    NodeStageVolume: () => n.NodeStageVolume({ volume_id, staging_target_path: staging, volume_capability: cap, publish_context, volume_context: { backend: 'default' } }),
    NodePublishVolume: () => n.NodePublishVolume({ volume_id, staging_target_path: staging, target_path: target, volume_capability: cap, publish_context }),
    NodeUnpublishVolume: () => n.NodeUnpublishVolume({ volume_id, target_path: target }),
    NodeUnstageVolume: () => n.NodeUnstageVolume({ volume_id, staging_target_path: staging }),
  };
}

async function rawOnce(dir, i, floor) {
  const img = join(dir, `raw-${i}.img`);
  const staging = join(dir, `raw-${i}`, 'globalmount');
  const target = join(dir, `raw-${i}`, 'mount');
  mkdirSync(staging, { recursive: true });
  mkdirSync(target, { recursive: true });
  await sparseImage(img, GiB);
  const ms = { transport: 0, transportCpu: 0 };
  const calls = transportCalls(floor, i, staging, target);
  // After each step's commands, outside every timed figure but its own.
  const rpc = async (k) => {
    const c = process.cpuUsage();
    const t = performance.now();
    await calls[k]();
    ms.transport += performance.now() - t;
    const used = process.cpuUsage(c);
    ms.transportCpu += (used.user + used.system) / 1000;
  };
  const cpu0 = process.cpuUsage();
  const runner0 = runnerCpuMs(process.pid);
  let t = performance.now();
  const dev = (await hostExec.run('losetup', ['--find', '--show', img])).stdout.trim();
  const attachMs = performance.now() - t;
  // Not part of the floor: the probe sinter's safety rule 1 adds before mkfs, timed to report on its own line.
  t = performance.now();
  const probeCpu0 = process.cpuUsage();
  const probeRunner0 = runnerCpuMs(process.pid);
  await hostExec.run('blkid', ['-p', '-o', 'export', dev], { okExitCodes: [2] });
  const probeCpu = process.cpuUsage(probeCpu0);
  const probeRunner = runnerCpuMs(process.pid) - probeRunner0;
  ms.probe = performance.now() - t;
  t = performance.now();
  await hostExec.run('mkfs.ext4', ['-q', dev]);
  await hostExec.run('mount', ['-t', 'ext4', dev, staging]);
  ms.NodeStageVolume = attachMs + (performance.now() - t);
  await rpc('NodeStageVolume');
  t = performance.now();
  await hostExec.run('mount', ['--bind', staging, target]);
  ms.NodePublishVolume = performance.now() - t;
  await rpc('NodePublishVolume');
  t = performance.now();
  await hostExec.run('umount', [target]);
  ms.NodeUnpublishVolume = performance.now() - t;
  await rpc('NodeUnpublishVolume');
  t = performance.now();
  await hostExec.run('umount', [staging]);
  await hostExec.run('losetup', ['--detach', dev]);
  ms.NodeUnstageVolume = performance.now() - t;
  await rpc('NodeUnstageVolume');
  // The bench process's and its command runner's CPU for the raw commands (the parent's side of each fork and exec), the probe and the transport left out.
  const used = process.cpuUsage(cpu0);
  ms.cpu = (used.user + used.system - probeCpu.user - probeCpu.system) / 1000 - ms.transportCpu + (runnerCpuMs(process.pid) - runner0 - probeRunner);
  rmSync(join(dir, `raw-${i}`), { recursive: true, force: true });
  rmSync(img, { force: true });
  return ms;
}

const total = (ms) => STEPS.reduce((a, k) => a + ms[k], 0);

/**
 * The node's durable stage records for one attach cycle, written raw: the
 * record is written before each step that changes the host (stage: staging,
 * device, staged; publish: the target; unpublish: the target forgotten) and
 * removed at unstage, each a temp file, fsync, rename and directory fsync
 * (crash rules, safety rule 3). Not part of the floor; on its own line.
 */
export const RECORDS = 5;
async function rawRecords(dh, dir, i) {
  const path = join(dir, `rec-${i}.json`);
  const rec = (phase) => `${JSON.stringify({ version: 1, volumeId: `default-${i}`, stagingPath: dir, createdStagingDir: false, access: 'mount', fsType: 'ext4', mountFlags: [], accessMode: 'SINGLE_NODE_WRITER', publishContext: { transport: 'local', path: `${dir}/x.img` }, device: '/dev/loop0', phase, publishes: [], updatedAt: new Date().toISOString() }, null, 2)}\n`;
  const t = performance.now();
  for (const phase of ['staging', 'device', 'staged', 'published', 'unpublished']) await writeFileAtomic(path, rec(phase), dh);
  await removeFileDurable(path, dh);
  return performance.now() - t;
}

/**
 * The node's path confinement (safety rule 2) for one attach cycle, done raw:
 * each check is a realpath of the kubelet root, an lstat walk up to the
 * longest existing prefix and a realpath of that prefix (src/node/paths.ts),
 * through the thread pool as sinter does. The cycle checks staging twice at
 * stage (before and under the lock), target + staging + staging at publish,
 * target twice at unpublish, staging once at unstage: 8 checks, with the
 * target absent at publish as it is for sinter. Not part of the floor.
 */
export const PATH_CHECKS = 8;
async function rawPathChecks(root, i) {
  const staging = join(root, 'plugins/kubernetes.io/csi/sinter.csi.io', `vol-${i}`, 'globalmount');
  const target = join(root, 'pods', `pod-${i}`, 'volumes/kubernetes.io~csi', `vol-${i}`, 'mount');
  mkdirSync(staging, { recursive: true });
  mkdirSync(dirname(target), { recursive: true });
  const check = async (p) => {
    await realpath(root);
    let cur = p;
    for (;;) {
      try {
        await lstat(cur);
        break;
      } catch {
        cur = dirname(cur);
      }
    }
    await realpath(cur);
  };
  const t = performance.now();
  for (const p of [staging, staging, target, staging, staging]) await check(p);
  mkdirSync(target);
  for (const p of [target, target, staging]) await check(p);
  const ms = performance.now() - t;
  rmSync(join(root, 'plugins'), { recursive: true, force: true });
  rmSync(join(root, 'pods'), { recursive: true, force: true });
  return ms;
}

export async function attachBench({ reps, log }) {
  const s = await startSinter({ role: 'all' });
  const floor = await startFloorServer();
  const rawDir = freshDir('attach-raw');
  const recDir = freshDir('attach-records');
  const pathRoot = freshDir('attach-paths');
  const recDh = await openDir(recDir);
  const got = { sinter: [], raw: [], ratio: [], records: [], paths: [] };
  try {
    const { node_id: nodeId } = await s.client.node.NodeGetInfo({});
    // Warm-up: the page cache for the tools, and JIT on both sides.
    await driverOnce(s, nodeId, 'warm');
    await rawOnce(rawDir, 'warm', floor);
    for (let r = 0; r < reps; r++) {
      const order = r % 2 === 0 ? ['raw', 'sinter'] : ['sinter', 'raw'];
      const one = {};
      for (const who of order) one[who] = who === 'sinter' ? await driverOnce(s, nodeId, r) : await rawOnce(rawDir, r, floor);
      got.sinter.push(one.sinter);
      got.raw.push(one.raw);
      got.ratio.push(total(one.sinter) / total(one.raw));
      got.records.push(await rawRecords(recDh, recDir, r));
      got.paths.push(await rawPathChecks(pathRoot, r));
      const safety = one.raw.probe + got.records.at(-1) + got.paths.at(-1);
      log(`  attach rep ${r + 1}/${reps}: sinter ${total(one.sinter).toFixed(0)} ms, raw ${total(one.raw).toFixed(0)} ms, ${got.ratio.at(-1).toFixed(2)}×; safety steps ${safety.toFixed(0)} ms (probe ${one.raw.probe.toFixed(0)}, records ${got.records.at(-1).toFixed(0)}, paths ${got.paths.at(-1).toFixed(1)}): ${(total(one.sinter) / (total(one.raw) + safety)).toFixed(2)}× of raw + safety; transport ${one.raw.transport.toFixed(1)} ms: ${(total(one.sinter) / (total(one.raw) + safety + one.raw.transport)).toFixed(2)}× of raw + safety + transport`);
    }
  } finally {
    await recDh.close();
    await floor.stop();
    await s.stop();
    // BENCH_LOGS_TO=DIR keeps sinter's log (with BENCH_LOG_LEVEL=debug: every host command and its duration).
    if (process.env.BENCH_LOGS_TO) {
      mkdirSync(process.env.BENCH_LOGS_TO, { recursive: true });
      copyFileSync(s.logFile, join(process.env.BENCH_LOGS_TO, 'attach.log'));
    }
  }
  const section = '3. Attach (local connector, ext4, 1 GiB)';
  const rows = [
    {
      id: 'attach.total',
      section,
      label: 'Stage+Publish+Unpublish+Unstage',
      unit: 'ms',
      value: median(got.sinter.map(total)),
      floor: median(got.raw.map(total)),
      ratio: median(got.ratio),
      ratios: got.ratio,
      target: { ratioMax: 1.1 },
    },
  ];
  // What the safety rules cost, each on its own line, done raw in the same rep: the floor with
  // them added, and sinter against that, so the remainder (what is ours) is visible.
  const probe = got.raw.map((m) => m.probe);
  const safety = got.raw.map((_, i) => probe[i] + got.records[i] + got.paths[i]);
  const rawPlus = got.raw.map((m, i) => total(m) + safety[i]);
  const rawPlusRatios = rawPlus.map((x, i) => x / total(got.raw[i]));
  rows.push({
    id: 'attach.rawPlusSafety',
    section,
    label: 'raw + the safety steps below (what sinter cannot leave out)',
    unit: 'ms',
    value: median(rawPlus),
    floor: median(got.raw.map(total)),
    ratio: median(rawPlusRatios),
    ratios: rawPlusRatios,
  });
  rows.push({
    id: 'attach.probe',
    section,
    label: '  of which: never-reformat probe (blkid -p, safety rule 1; raw, same device state)',
    unit: 'ms',
    value: median(probe),
    floor: undefined,
    ratio: undefined,
  });
  rows.push({
    id: 'attach.records',
    section,
    label: `  of which: durable stage records (${RECORDS} writes + 1 removal, each with its fsyncs; crash rules; raw)`,
    unit: 'ms',
    value: median(got.records),
    floor: undefined,
    ratio: undefined,
  });
  rows.push({
    id: 'attach.paths',
    section,
    label: `  of which: path confinement (${PATH_CHECKS} checks of realpath root, lstat walk, realpath; safety rule 2; raw)`,
    unit: 'ms',
    value: median(got.paths),
    floor: undefined,
    ratio: undefined,
  });
  const ours = got.sinter.map((m, i) => total(m) / rawPlus[i]);
  rows.push({
    id: 'attach.vsRawPlusSafety',
    section,
    label: 'Stage+Publish+Unpublish+Unstage against raw + safety steps (what is left: the CSI transport, locks, parsing, logging)',
    unit: 'ms',
    value: median(got.sinter.map(total)),
    floor: median(rawPlus),
    ratio: median(ours),
    ratios: ours,
  });
  const transport = got.raw.map((m) => m.transport);
  rows.push({
    id: 'attach.transport',
    section,
    label: '  of which: the CSI transport (4 round trips to the bare grpc-js floor server, same requests, each right after the raw step)',
    unit: 'ms',
    value: median(transport),
    floor: undefined,
    ratio: undefined,
  });
  const oursNet = got.sinter.map((m, i) => total(m) / (rawPlus[i] + transport[i]));
  rows.push({
    id: 'attach.vsRawPlusSafetyTransport',
    section,
    label: 'Stage+Publish+Unpublish+Unstage against raw + safety steps + transport (what is ours: locks, checks, parsing, logging)',
    unit: 'ms',
    value: median(got.sinter.map(total)),
    floor: median(rawPlus.map((x, i) => x + transport[i])),
    ratio: median(oursNet),
    ratios: oursNet,
  });
  // CPU moves far less than wall time with other work on the machine: sinter's process (all threads) over the four
  // RPCs against this process's over the raw commands (each forks and execs as many host commands, plus the probe).
  const cpuRatios = got.sinter.map((m, i) => m.cpu / got.raw[i].cpu);
  rows.push({
    id: 'attach.cpu',
    section,
    label: 'CPU per Stage+Publish+Unpublish+Unstage (sinter, all threads + its command runner; floor: the bench process + its runner for the raw commands)',
    unit: 'ms',
    value: median(got.sinter.map((m) => m.cpu)),
    floor: median(got.raw.map((m) => m.cpu)),
    ratio: median(cpuRatios),
    ratios: cpuRatios,
  });
  for (const k of STEPS) {
    const ratios = got.sinter.map((m, i) => m[k] / got.raw[i][k]);
    rows.push({ id: `attach.${k}`, section, label: `  ${k}`, unit: 'ms', value: median(got.sinter.map((m) => m[k])), floor: median(got.raw.map((m) => m[k])), ratio: median(ratios), ratios });
  }
  return rows;
}
