import { readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { codeOf, MAIN, MiB, startSinter, waitFor, type SinterProcess } from '../helpers/sinter-process.js';
import { metricsAddressIn, parseExposition, promtoolCheck, scrape, type Exposition } from '../helpers/metrics.js';
import type { VolumeCapability } from '../../src/csi/messages.js';

// A running sinter scraped over real HTTP after real RPCs, as Prometheus would.

const procs: SinterProcess[] = [];
afterEach(async () => {
  for (const p of procs.splice(0)) await p.cleanup();
});

async function start(role: 'all' | 'controller' | 'node', extra: string[] = [], base?: string): Promise<{ s: SinterProcess; addr: string; get: () => Promise<Exposition> }> {
  const s = await startSinter({ role, base, args: ['--metrics-address', '127.0.0.1:0', ...extra] });
  procs.push(s);
  const addr = await waitFor('the metrics endpoint log line', () => metricsAddressIn(s.logs()));
  return { s, addr, get: async () => parseExposition((await scrape(addr)).text) };
}

const cap: VolumeCapability = { mount: { fs_type: 'ext4', mount_flags: [] }, access_mode: { mode: 'SINGLE_NODE_WRITER' } };

/** TCP ports the process listens on: its socket inodes matched against the kernel's LISTEN table. */
function listeningPorts(pid: number): number[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    const m = /^socket:\[(\d+)\]$/.exec((() => {
      try {
        return readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        return '';
      }
    })());
    if (m) inodes.add(m[1]);
  }
  const ports: number[] = [];
  for (const table of ['tcp', 'tcp6']) {
    for (const line of readFileSync(`/proc/${pid}/net/${table}`, 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[3] === '0A' && inodes.has(f[9])) ports.push(parseInt(f[1].split(':')[1], 16));
    }
  }
  return ports;
}

describe('metrics endpoint (--metrics-address)', () => {
  it('sinter all: a user sees RPCs by method and code, provisioned bytes, volumes by state, staged volumes and attach times move; the text passes promtool and a strict parse', async () => {
    const { s, get, addr } = await start('all');
    const before = await get();
    expect(before.value('sinter_backend_provisioned_bytes', { backend: 'default' })).toBe(0);
    expect(before.value('sinter_volumes', { backend: 'default', state: 'available' })).toBe(0);
    expect(before.value('sinter_node_staged_volumes', { transport: 'local' })).toBe(0);
    expect(before.value('sinter_backend_capacity_bytes', { backend: 'default' })).toBeGreaterThan(0);
    // startSinter's Probe calls were counted.
    expect(before.value('sinter_rpc_requests_total', { method: 'Probe', code: 'OK' })).toBeGreaterThanOrEqual(1);

    const v = (await s.client.controller.CreateVolume({ name: 'm1', capacity_range: { required_bytes: 64 * MiB }, volume_capabilities: [cap] })).volume;
    expect(await codeOf(s.client.controller.CreateVolume({ name: '', volume_capabilities: [cap] }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(s.client.node.NodeGetVolumeStats({ volume_id: v!.volume_id, volume_path: join(s.kubeletRoot, 'nowhere') }))).toBe('NOT_FOUND');

    const afterCreate = await get();
    expect(afterCreate.value('sinter_rpc_requests_total', { method: 'CreateVolume', code: 'OK' })).toBe(1);
    expect(afterCreate.value('sinter_rpc_requests_total', { method: 'CreateVolume', code: 'INVALID_ARGUMENT' })).toBe(1);
    expect(afterCreate.value('sinter_rpc_requests_total', { method: 'NodeGetVolumeStats', code: 'NOT_FOUND' })).toBe(1);
    expect(afterCreate.value('sinter_rpc_duration_seconds_count', { method: 'CreateVolume', code: 'OK' })).toBe(1);
    expect(afterCreate.value('sinter_rpc_duration_seconds_sum', { method: 'CreateVolume', code: 'OK' })).toBeGreaterThan(0);
    expect(afterCreate.value('sinter_backend_provisioned_bytes', { backend: 'default' })).toBe(64 * MiB);
    expect(afterCreate.value('sinter_volumes', { backend: 'default', state: 'available' })).toBe(1);

    const info = await s.client.node.NodeGetInfo({});
    const ctx = (await s.client.controller.ControllerPublishVolume({ volume_id: v!.volume_id, node_id: info.node_id, volume_capability: cap })).publish_context;
    const staging = join(s.kubeletRoot, 'staging');
    const target = join(s.kubeletRoot, 'target');
    await s.client.node.NodeStageVolume({ volume_id: v!.volume_id, staging_target_path: staging, volume_capability: cap, publish_context: ctx });
    await s.client.node.NodePublishVolume({ volume_id: v!.volume_id, staging_target_path: staging, target_path: target, volume_capability: cap });
    const staged = await get();
    expect(staged.value('sinter_volumes', { backend: 'default', state: 'in-use' })).toBe(1);
    expect(staged.value('sinter_volumes', { backend: 'default', state: 'available' })).toBe(0);
    expect(staged.value('sinter_node_staged_volumes', { transport: 'local' })).toBe(1);
    expect(staged.value('sinter_node_attach_duration_seconds_count', { transport: 'local', operation: 'stage' })).toBe(1);
    expect(staged.value('sinter_node_attach_duration_seconds_count', { transport: 'local', operation: 'publish' })).toBe(1);

    // mkfs wrote to the sparse image: the backend's used bytes follow (counted again in the background within seconds).
    await waitFor('used bytes to show the filesystem mkfs wrote', async () => ((await get()).value('sinter_backend_used_bytes', { backend: 'default' }) ?? 0) > 0 || undefined, 10_000, 300);

    await s.client.node.NodeUnpublishVolume({ volume_id: v!.volume_id, target_path: target });
    await s.client.node.NodeUnstageVolume({ volume_id: v!.volume_id, staging_target_path: staging });
    await s.client.controller.ControllerUnpublishVolume({ volume_id: v!.volume_id, node_id: info.node_id });
    await s.client.controller.DeleteVolume({ volume_id: v!.volume_id });
    const after = await get();
    expect(after.value('sinter_node_staged_volumes', { transport: 'local' })).toBe(0);
    expect(after.value('sinter_node_attach_duration_seconds_count', { transport: 'local', operation: 'unstage' })).toBe(1);
    expect(after.value('sinter_node_attach_duration_seconds_count', { transport: 'local', operation: 'unpublish' })).toBe(1);
    expect(after.value('sinter_backend_provisioned_bytes', { backend: 'default' })).toBe(0);
    expect(after.series('sinter_volumes', { backend: 'default' }).every((x) => x.value === 0)).toBe(true);
    expect(after.value('sinter_rpc_requests_total', { method: 'DeleteVolume', code: 'OK' })).toBe(1);
    // No reconciler without Kubernetes, but the export loop's counters are there for every backend.
    expect(after.value('sinter_reconcile_exports_restored_total', { backend: 'default' })).toBe(0);
    expect(after.value('sinter_reconcile_exports_revoked_total', { backend: 'default' })).toBe(0);
    // prom-client's default process metrics come along.
    expect(after.value('process_resident_memory_bytes')).toBeGreaterThan(0);

    const { text, contentType } = await scrape(addr);
    expect(contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    const check = await promtoolCheck(text);
    expect(check.parseError).toBeUndefined();
    expect(check.sinterFindings).toEqual([]);
    const res = await fetch(`http://${addr}/other`);
    expect(res.status).toBe(404);
  });

  it('sinter controller and sinter node each serve their own half', async () => {
    const ctl = await start('controller');
    const node = await start('node', ['--data-dir', ctl.s.dataDir]);
    const v = (await ctl.s.client.controller.CreateVolume({ name: 'split', capacity_range: { required_bytes: 32 * MiB }, volume_capabilities: [cap] })).volume;
    const c = await ctl.get();
    expect(c.value('sinter_rpc_requests_total', { method: 'CreateVolume', code: 'OK' })).toBe(1);
    expect(c.value('sinter_backend_provisioned_bytes', { backend: 'default' })).toBe(32 * MiB);
    expect(c.families.has('sinter_node_staged_volumes')).toBe(false);

    // The local transport: the node loop-attaches the image the controller made.
    const ctx = { transport: 'local', path: join(ctl.s.dataDir, 'volumes', `${v!.volume_id}.img`) };
    const staging = join(node.s.kubeletRoot, 'staging');
    await node.s.client.node.NodeStageVolume({ volume_id: v!.volume_id, staging_target_path: staging, volume_capability: cap, publish_context: ctx });
    const n = await node.get();
    expect(n.value('sinter_node_staged_volumes', { transport: 'local' })).toBe(1);
    expect(n.value('sinter_rpc_requests_total', { method: 'NodeStageVolume', code: 'OK' })).toBe(1);
    expect(n.families.has('sinter_backend_provisioned_bytes')).toBe(false);
    expect(n.value('sinter_node_orphan_sessions', { transport: 'iscsi' })).toBe(0);
    await node.s.client.node.NodeUnstageVolume({ volume_id: v!.volume_id, staging_target_path: staging });
    expect((await node.get()).value('sinter_node_staged_volumes', { transport: 'local' })).toBe(0);
    // The controller never saw the node's RPCs.
    expect((await ctl.get()).series('sinter_rpc_requests_total', { method: 'NodeStageVolume' })).toEqual([]);
    for (const p of [ctl, node]) expect((await promtoolCheck((await scrape(p.addr)).text)).parseError).toBeUndefined();
  });

  it('a node restarted with a volume staged counts it at once', async () => {
    const first = await start('all');
    const v = (await first.s.client.controller.CreateVolume({ name: 'kept', capacity_range: { required_bytes: 32 * MiB }, volume_capabilities: [cap] })).volume;
    const info = await first.s.client.node.NodeGetInfo({});
    const ctx = (await first.s.client.controller.ControllerPublishVolume({ volume_id: v!.volume_id, node_id: info.node_id, volume_capability: cap })).publish_context;
    const staging = join(first.s.kubeletRoot, 'staging');
    await first.s.client.node.NodeStageVolume({ volume_id: v!.volume_id, staging_target_path: staging, volume_capability: cap, publish_context: ctx });
    first.s.client.close();
    await first.s.stop();
    const again = await start('all', [], first.s.base);
    expect((await again.get()).value('sinter_node_staged_volumes', { transport: 'local' })).toBe(1);
    await again.s.client.node.NodeUnstageVolume({ volume_id: v!.volume_id, staging_target_path: staging });
  });

  it('is off by default: no TCP port opened', async () => {
    const s = await startSinter({ role: 'controller' });
    procs.push(s);
    expect(listeningPorts(s.proc.pid!)).toEqual([]);
    expect(s.logs()).not.toContain('metrics endpoint listening');
    // With the flag, the same check finds the port: the check itself sees listening sockets.
    const m = await start('controller');
    expect(listeningPorts(m.s.proc.pid!)).toEqual([Number(m.addr.split(':').at(-1))]);
  });

  it('a config file key turns it on; a port in use stops sinter at start naming the address', async () => {
    const first = await start('controller');
    const cfg = join(first.s.base, 'metrics.yaml');
    writeFileSync(cfg, `metricsAddress: "${first.addr}"\nbackends:\n  - name: default\n    driver: file\n    dataDir: ${join(first.s.base, 'other')}\n`);
    const busy = await execa('node', [MAIN, 'controller', '--endpoint', `unix://${join(first.s.base, 'busy.sock')}`, '--config', cfg], { reject: false, timeout: 20_000 });
    expect(busy.exitCode).toBe(1);
    expect(busy.stderr).toContain(`metrics: cannot listen on ${first.addr}: EADDRINUSE`);
    writeFileSync(cfg, `metricsAddress: "127.0.0.1:0"\nbackends:\n  - name: default\n    driver: file\n    dataDir: ${join(first.s.base, 'other')}\n`);
    const s = await startSinter({ role: 'controller', args: ['--config', cfg] });
    procs.push(s);
    const addr = await waitFor('the metrics endpoint log line', () => metricsAddressIn(s.logs()));
    expect(parseExposition((await scrape(addr)).text).value('sinter_volumes', { backend: 'default', state: 'available' })).toBe(0);
  });
});
