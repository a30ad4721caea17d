import * as grpc from '@grpc/grpc-js';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadCsi } from '../../src/csi/proto.js';
import { CsiServer } from '../../src/csi/server.js';
import { NodeEnv, MiB } from '../helpers/node-env.js';
import type { VolumeCapability } from '../../src/csi/messages.js';

// The same handlers over the real wire: proves the responses survive proto
// encoding (enum names, int64, oneofs) and errors arrive as gRPC statuses.
let env: NodeEnv;
let server: CsiServer;
let client: grpc.Client & Record<string, (req: unknown, cb: (e: grpc.ServiceError | null, r: unknown) => void) => void>;

const call = <T>(method: string, req: unknown) =>
  new Promise<T>((resolve, reject) => client[method](req, (e, r) => (e ? reject(e) : resolve(r as T))));

beforeAll(async () => {
  env = await NodeEnv.create({ maxVolumesPerNode: 16, topology: { 'topology.sinter.io/node': 'node-a' } });
  server = new CsiServer({ node: env.h }, pino({ level: 'silent' }));
  const addr = await server.listen(`unix://${join(env.dir, 'csi.sock')}`);
  const csi = loadCsi();
  client = new csi.Node(addr, grpc.credentials.createInsecure()) as unknown as typeof client;
});
afterAll(async () => {
  client?.close();
  await server?.shutdown(1000);
  await env?.cleanup();
});

describe('Node service over gRPC', () => {
  it('advertises its capabilities and node info', async () => {
    const caps = await call<{ capabilities: { rpc: { type: string } }[] }>('NodeGetCapabilities', {});
    expect(caps.capabilities.map((c) => c.rpc.type).sort()).toEqual(['EXPAND_VOLUME', 'GET_VOLUME_STATS', 'STAGE_UNSTAGE_VOLUME', 'VOLUME_CONDITION']);
    const info = await call<Record<string, unknown>>('NodeGetInfo', {});
    expect(info).toEqual({ node_id: 'node-a;;', max_volumes_per_node: 16, accessible_topology: { segments: { 'topology.sinter.io/node': 'node-a' } } });
  });

  it('stages, publishes, reports stats and tears down a volume', async () => {
    const file = await env.image('wire.img', 128 * MiB);
    const cap: VolumeCapability = { mount: { fs_type: 'ext4', mount_flags: ['noatime'] }, access_mode: { mode: 'SINGLE_NODE_WRITER' } };
    const stage = { ...env.stageReq('file-wire', file, cap) };
    await call('NodeStageVolume', stage);
    const target = env.target('file-wire');
    await call('NodePublishVolume', { volume_id: 'file-wire', staging_target_path: stage.staging_target_path, target_path: target, volume_capability: cap });
    const stats = await call<{ usage: { unit: string; total: number }[]; volume_condition: { abnormal?: boolean } }>('NodeGetVolumeStats', {
      volume_id: 'file-wire',
      volume_path: target,
    });
    expect(stats.usage.map((u) => u.unit)).toEqual(['BYTES', 'INODES']);
    expect(typeof stats.usage[0].total).toBe('number');
    expect(stats.volume_condition.abnormal ?? false).toBe(false);
    const m = (await env.mountsUnder()).find((x) => x.mountPoint === stage.staging_target_path);
    expect(m?.options).toContain('noatime');
    await call('NodeUnpublishVolume', { volume_id: 'file-wire', target_path: target });
    await call('NodeUnstageVolume', { volume_id: 'file-wire', staging_target_path: stage.staging_target_path });
    expect(await env.mountsUnder()).toEqual([]);
  });

  it('never publishes onto, into or around the staging path, and unpublish of the staging path leaves the stage alone (fuzz seed 760311349)', async () => {
    const file = await env.image('overlap.img', 64 * MiB);
    const cap: VolumeCapability = { mount: { fs_type: 'ext4', mount_flags: [] }, access_mode: { mode: 'SINGLE_NODE_WRITER' } };
    const stage = { ...env.stageReq('file-overlap', file, cap) };
    await call('NodeStageVolume', stage);
    const code = (method: string, req: unknown) => call(method, req).then(() => 'OK', (e: grpc.ServiceError) => grpc.status[e.code]);
    const publish = (target_path: string) => code('NodePublishVolume', { volume_id: 'file-overlap', staging_target_path: stage.staging_target_path, target_path, volume_capability: cap });
    expect(await publish(stage.staging_target_path)).toBe('INVALID_ARGUMENT');
    expect(await publish(join(stage.staging_target_path, 'inside'))).toBe('INVALID_ARGUMENT');
    expect(await publish(join(stage.staging_target_path, '..'))).toBe('INVALID_ARGUMENT');
    expect(await code('NodeUnpublishVolume', { volume_id: 'file-overlap', target_path: stage.staging_target_path })).toBe('FAILED_PRECONDITION');
    // The stage is whole: still mounted, nothing made inside the volume, and a real publish works.
    expect((await env.mountsUnder()).some((x) => x.mountPoint === stage.staging_target_path)).toBe(true);
    const target = env.target('file-overlap');
    expect(await publish(target)).toBe('OK');
    await call('NodeUnpublishVolume', { volume_id: 'file-overlap', target_path: target });
    await call('NodeUnstageVolume', { volume_id: 'file-overlap', staging_target_path: stage.staging_target_path });
    expect(await env.mountsUnder()).toEqual([]);
  });

  it('returns the status codes csi-sanity expects for bad requests', async () => {
    const code = (method: string, req: unknown) => call(method, req).then(() => 'OK', (e: grpc.ServiceError) => grpc.status[e.code]);
    expect(await code('NodeStageVolume', { staging_target_path: join(env.kubelet, 's'), volume_capability: { mount: {}, access_mode: { mode: 'SINGLE_NODE_WRITER' } } })).toBe(
      'INVALID_ARGUMENT',
    );
    expect(await code('NodeStageVolume', { volume_id: 'file-x', staging_target_path: join(env.kubelet, 's'), publish_context: { device: '/dev/mock' } })).toBe('INVALID_ARGUMENT');
    expect(await code('NodePublishVolume', { volume_id: 'file-x', target_path: join(env.kubelet, 't') })).toBe('INVALID_ARGUMENT');
    expect(await code('NodeUnpublishVolume', { volume_id: 'file-x' })).toBe('INVALID_ARGUMENT');
    expect(await code('NodeUnstageVolume', { staging_target_path: join(env.kubelet, 's') })).toBe('INVALID_ARGUMENT');
    expect(await code('NodeGetVolumeStats', { volume_id: 'file-x', volume_path: 'some/path' })).toBe('NOT_FOUND');
    expect(await code('NodeExpandVolume', { volume_id: 'file-x', volume_path: 'some/path' })).toBe('NOT_FOUND');
    expect(await code('NodeExpandVolume', { volume_id: 'file-x' })).toBe('INVALID_ARGUMENT');
  });
});
