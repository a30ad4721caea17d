// The single-machine demo: one volume through create → publish → stage (format)
// → publish → write → snapshot → clone → expand → teardown, over the real CSI
// socket of a real `sinter all`, with real loop devices, mkfs and mount.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, fsyncSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { csiClient } from '../dist/csi/client.js';

const MiB = 1024 * 1024;
const main = fileURLToPath(new URL('../dist/bundle/main.mjs', import.meta.url));
const base = mkdtempSync(join(tmpdir(), 'sinter-demo-'));
const socket = join(base, 'csi.sock');
const kubelet = join(base, 'kubelet');
mkdirSync(kubelet, { recursive: true });

const started = Date.now();
let n = 0;
const step = async (title, fn) => {
  const t = Date.now();
  const out = await fn();
  console.log(`${String(++n).padStart(2)}. ${title.padEnd(58)} ${String(Date.now() - t).padStart(5)} ms${out ? `  ${out}` : ''}`);
};

const sinter = spawn('node', [main, 'all', '--endpoint', `unix://${socket}`, '--data-dir', join(base, 'data'), '--kubelet-root', kubelet, '--node-name', 'demo-node', '--log-level', 'warn'], {
  stdio: ['ignore', 'inherit', 'inherit'],
});
const client = csiClient(`unix://${socket}`);
const mountCap = { mount: { fs_type: 'xfs', mount_flags: [] }, access_mode: { mode: 'SINGLE_NODE_WRITER' } };
const staging = (id) => join(kubelet, 'plugins/kubernetes.io/csi/sinter.csi.io', id, 'globalmount');
const target = (pod, id) => join(kubelet, 'pods', pod, 'volumes/kubernetes.io~csi', id, 'mount');
const cleanups = [];

try {
  console.log(`sinter demo in ${base}\n`);
  await step('start `sinter all` and wait for Probe', async () => {
    for (;;) {
      if (sinter.exitCode !== null) throw new Error(`sinter exited with ${sinter.exitCode}`);
      if (existsSync(socket)) {
        const r = await client.identity.Probe({}, { deadlineMs: 1000 }).catch(() => undefined);
        if (r?.ready?.value) break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    const info = await client.identity.GetPluginInfo({});
    return `${info.name} ${info.vendor_version}`;
  });
  const { node_id: nodeId } = await client.node.NodeGetInfo({});

  let vol;
  await step('CreateVolume "demo" (320 MiB, xfs)', async () => {
    vol = (await client.controller.CreateVolume({ name: 'demo', capacity_range: { required_bytes: 320 * MiB }, volume_capabilities: [mountCap] })).volume;
    return vol.volume_id;
  });
  let ctx;
  await step('ControllerPublishVolume to this node', async () => {
    ctx = (await client.controller.ControllerPublishVolume({ volume_id: vol.volume_id, node_id: nodeId, volume_capability: mountCap })).publish_context;
    return `transport=${ctx.transport}`;
  });
  const stg = staging(vol.volume_id);
  mkdirSync(stg, { recursive: true });
  await step('NodeStageVolume: loop device, mkfs.xfs, mount', async () => {
    await client.node.NodeStageVolume({ volume_id: vol.volume_id, staging_target_path: stg, volume_capability: mountCap, publish_context: ctx, volume_context: vol.volume_context });
    cleanups.push(() => client.node.NodeUnstageVolume({ volume_id: vol.volume_id, staging_target_path: stg }));
  });
  const tgt = target('pod-1', vol.volume_id);
  mkdirSync(join(tgt, '..'), { recursive: true });
  await step('NodePublishVolume: bind mount into the pod', async () => {
    await client.node.NodePublishVolume({ volume_id: vol.volume_id, staging_target_path: stg, target_path: tgt, volume_capability: mountCap, publish_context: ctx });
    cleanups.push(() => client.node.NodeUnpublishVolume({ volume_id: vol.volume_id, target_path: tgt }));
  });
  await step('the pod writes hello.txt', async () => {
    writeFileSync(join(tgt, 'hello.txt'), 'written through sinter\n');
    // fsync commits the journal to the loop device, so the snapshot sees it.
    const fd = openSync(join(tgt, 'hello.txt'), 'r');
    fsyncSync(fd);
    closeSync(fd);
    return readFileSync(join(tgt, 'hello.txt'), 'utf8').trim();
  });
  let snap;
  await step('CreateSnapshot "demo-snap"', async () => {
    snap = (await client.controller.CreateSnapshot({ name: 'demo-snap', source_volume_id: vol.volume_id })).snapshot;
    return `${snap.snapshot_id} ready=${snap.ready_to_use}`;
  });
  let clone;
  await step('CreateVolume "demo-clone" from the snapshot', async () => {
    clone = (await client.controller.CreateVolume({ name: 'demo-clone', volume_capabilities: [mountCap], volume_content_source: { snapshot: { snapshot_id: snap.snapshot_id } } })).volume;
    return clone.volume_id;
  });
  await step('stage + publish the clone; hello.txt is there', async () => {
    const c = (await client.controller.ControllerPublishVolume({ volume_id: clone.volume_id, node_id: nodeId, volume_capability: mountCap, readonly: true })).publish_context;
    const s2 = staging(clone.volume_id);
    mkdirSync(s2, { recursive: true });
    await client.node.NodeStageVolume({ volume_id: clone.volume_id, staging_target_path: s2, volume_capability: mountCap, publish_context: c, volume_context: clone.volume_context });
    const t2 = target('pod-2', clone.volume_id);
    mkdirSync(join(t2, '..'), { recursive: true });
    await client.node.NodePublishVolume({ volume_id: clone.volume_id, staging_target_path: s2, target_path: t2, volume_capability: mountCap, readonly: true, publish_context: c });
    const text = readFileSync(join(t2, 'hello.txt'), 'utf8').trim();
    await client.node.NodeUnpublishVolume({ volume_id: clone.volume_id, target_path: t2 });
    await client.node.NodeUnstageVolume({ volume_id: clone.volume_id, staging_target_path: s2 });
    await client.controller.ControllerUnpublishVolume({ volume_id: clone.volume_id, node_id: nodeId });
    return `"${text}"`;
  });
  await step('ControllerExpandVolume + NodeExpandVolume to 640 MiB, online', async () => {
    await client.controller.ControllerExpandVolume({ volume_id: vol.volume_id, capacity_range: { required_bytes: 640 * MiB }, volume_capability: mountCap });
    await client.node.NodeExpandVolume({ volume_id: vol.volume_id, volume_path: tgt, staging_target_path: stg, capacity_range: { required_bytes: 640 * MiB }, volume_capability: mountCap });
    const st = await client.node.NodeGetVolumeStats({ volume_id: vol.volume_id, volume_path: tgt });
    const bytes = st.usage.find((u) => u.unit === 'BYTES');
    return `filesystem now ${Math.round(bytes.total / MiB)} MiB, ${Math.round(bytes.used / MiB)} MiB used`;
  });
  await step('teardown: unpublish, unstage, unpublish, delete all', async () => {
    while (cleanups.length) await cleanups.pop()();
    await client.controller.ControllerUnpublishVolume({ volume_id: vol.volume_id, node_id: nodeId });
    await client.controller.DeleteSnapshot({ snapshot_id: snap.snapshot_id });
    await client.controller.DeleteVolume({ volume_id: clone.volume_id });
    await client.controller.DeleteVolume({ volume_id: vol.volume_id });
    const left = (await client.controller.ListVolumes({})).entries.length;
    return `${left} volumes left`;
  });
  console.log(`\ndemo finished in ${Date.now() - started} ms`);
} catch (e) {
  console.error(`\ndemo failed: ${e.details ?? e.message}`);
  process.exitCode = 1;
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
} finally {
  client.close();
  sinter.kill('SIGTERM');
  await new Promise((r) => sinter.once('exit', r));
  rmSync(base, { recursive: true, force: true });
}
