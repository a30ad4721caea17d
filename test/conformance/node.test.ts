import { existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, expect } from 'vitest';
import { blockCap, codeOf, MiB, mountCap, type SinterProcess } from '../helpers/sinter-process.js';
import { conformance, volumeBytes } from '../helpers/conformance.js';
import { stringMatching } from '../helpers/matchers.js';

// perBackend: also run for each LVM backend x target helper (test/vm/lvm-conformance.vm.test.ts).
const { describe, it, kernelSessionsTo, startSinter } = conformance();

/** Loop devices whose backing file lies under dir. */
async function loopsUnder(dir: string): Promise<string[]> {
  const { stdout } = await execa('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE']);
  return stdout.split('\n').filter((l) => l.includes(`${dir}/`)).map((l) => l.trim().split(/\s+/)[0]);
}

const mountsUnder = (dir: string) =>
  readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(`${dir}/`));

describe.perBackend('Node service end to end (sinter all: controller + node on one socket)', () => {
  let s: SinterProcess;
  let nodeId: string;
  const ctl = () => s.client.controller;
  const node = () => s.client.node;
  const paths = (id: string) => {
    const staging = join(s.kubeletRoot, 'plugins/sinter/staging', id);
    const target = join(s.kubeletRoot, 'pods/p1/volumes', id);
    mkdirSync(staging, { recursive: true });
    mkdirSync(join(target, '..'), { recursive: true });
    return { staging, target };
  };
  const provision = async (name: string, cap: object, mib = 64) => {
    const v = (await ctl().CreateVolume({ name, capacity_range: { required_bytes: mib * MiB }, volume_capabilities: [cap] })).volume;
    const ctx = (await ctl().ControllerPublishVolume({ volume_id: v!.volume_id, node_id: nodeId, volume_capability: cap })).publish_context;
    return { id: v!.volume_id as string, ctx, vctx: v!.volume_context };
  };
  beforeAll(async () => {
    s = await startSinter();
    nodeId = (await node().NodeGetInfo({})).node_id!;
  });
  afterAll(async () => s?.cleanup());

  it('NodeGetInfo reports a parseable node id with the node topology', async () => {
    const info = await node().NodeGetInfo({});
    expect(info.node_id).toMatch(/^test-node;/);
    expect(info.accessible_topology!.segments).toEqual({ 'topology.sinter.csi.io/node': 'test-node' });
  });

  it.perBackend('walks a mount volume through stage, publish, write, unpublish, unstage; the bytes land in the image (or LV)', async () => {
    const { id, ctx, vctx } = await provision('n-mount', mountCap());
    const { staging, target } = paths(id);
    const stage = { volume_id: id, staging_target_path: staging, volume_capability: mountCap(), publish_context: ctx, volume_context: vctx };
    await node().NodeStageVolume(stage);
    await node().NodeStageVolume(stage); // idempotent
    const pub = { volume_id: id, staging_target_path: staging, target_path: target, volume_capability: mountCap(), publish_context: ctx };
    await node().NodePublishVolume(pub);
    await node().NodePublishVolume(pub);
    writeFileSync(join(target, 'proof.txt'), 'sinter-conformance-marker');
    const stats = await node().NodeGetVolumeStats({ volume_id: id, volume_path: target });
    expect(stats.usage.find((u) => u.unit === 'BYTES')!.total).toBeGreaterThan(40 * MiB);
    await node().NodeUnpublishVolume({ volume_id: id, target_path: target });
    await node().NodeUnpublishVolume({ volume_id: id, target_path: target });
    expect(existsSync(target)).toBe(false);
    await node().NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
    await node().NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
    expect(mountsUnder(s.base)).toEqual([]);
    expect(await loopsUnder(s.base)).toEqual([]);
    expect(await kernelSessionsTo()).toEqual([]);
    const img = volumeBytes(s, id);
    expect(img.includes(Buffer.from('sinter-conformance-marker'))).toBe(true);
    await ctl().ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    await ctl().DeleteVolume({ volume_id: id });
  });

  it.perBackend('publishes a block volume as a device file and reports its size', async () => {
    const { id, ctx } = await provision('n-block', blockCap(), 16);
    const { staging, target } = paths(id);
    await node().NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: blockCap(), publish_context: ctx });
    await node().NodePublishVolume({ volume_id: id, staging_target_path: staging, target_path: target, volume_capability: blockCap(), publish_context: ctx });
    const { stdout } = await execa('blockdev', ['--getsize64', target]);
    expect(Number(stdout)).toBe(16 * MiB);
    const stats = await node().NodeGetVolumeStats({ volume_id: id, volume_path: target });
    expect(stats.usage[0]).toMatchObject({ unit: 'BYTES', total: 16 * MiB });
    await node().NodeUnpublishVolume({ volume_id: id, target_path: target });
    await node().NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
    expect(await loopsUnder(s.base)).toEqual([]);
    expect(await kernelSessionsTo()).toEqual([]);
  });

  it('answers bad requests with the spec codes, naming the field', async () => {
    const { id, ctx } = await provision('n-bad', mountCap());
    const { staging, target } = paths(id);
    expect(await codeOf(node().NodeStageVolume({ staging_target_path: staging, volume_capability: mountCap(), publish_context: ctx }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(node().NodeStageVolume({ volume_id: id, volume_capability: mountCap(), publish_context: ctx }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(node().NodeStageVolume({ volume_id: id, staging_target_path: staging, publish_context: ctx }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(node().NodePublishVolume({ volume_id: id, staging_target_path: staging, volume_capability: mountCap() }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(node().NodePublishVolume({ volume_id: id, staging_target_path: staging, target_path: target, volume_capability: mountCap(), publish_context: ctx }))).toBe('FAILED_PRECONDITION');
    expect(await codeOf(node().NodeUnpublishVolume({ volume_id: id }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(node().NodeUnstageVolume({ volume_id: id }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(node().NodeGetVolumeStats({ volume_id: id, volume_path: join(s.kubeletRoot, 'nope') }))).toBe('NOT_FOUND');
    expect(await codeOf(node().NodeExpandVolume({ volume_id: id }))).toBe('INVALID_ARGUMENT');
    const bad = node().NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: mountCap(), publish_context: { transport: 'carrier-pigeon' } });
    await expect(bad).rejects.toMatchObject({ code: 3, details: stringMatching(/publish_context.transport/) });
  });

  it('never creates, mounts or removes anything outside the kubelet root', async () => {
    const { id, ctx } = await provision('n-escape', mountCap());
    const outside = join(s.base, 'outside');
    mkdirSync(outside);
    symlinkSync(outside, join(s.kubeletRoot, 'sneaky'));
    for (const staging of [outside, join(s.kubeletRoot, '..', 'outside'), join(s.kubeletRoot, 'sneaky', 'x'), 'relative/path']) {
      const r = node().NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: mountCap(), publish_context: ctx });
      expect(await codeOf(r)).toBe('INVALID_ARGUMENT');
    }
    expect(existsSync(join(outside, 'x'))).toBe(false);
    expect(mountsUnder(s.base)).toEqual([]);
    expect(await loopsUnder(s.base)).toEqual([]);
    expect(await kernelSessionsTo()).toEqual([]);
  });

  it('refuses to attach a file the controller did not hand out', async () => {
    const { id } = await provision('n-foreign', mountCap());
    const { staging } = paths(id);
    const foreign = join(s.base, 'foreign.img');
    writeFileSync(foreign, Buffer.alloc(MiB));
    const r = node().NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: mountCap(), publish_context: { transport: 'local', path: foreign } });
    expect(['INVALID_ARGUMENT', 'FAILED_PRECONDITION']).toContain(await codeOf(r));
    expect(await loopsUnder(s.base)).toEqual([]);
    expect(await kernelSessionsTo()).toEqual([]);
  });
});
