import { readFileSync } from 'node:fs';
import { statfs, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Code } from '../../src/errors/domain-error.js';
import { csiError, NodeEnv, blockCap, mountCap, MiB } from '../helpers/node-env.js';
import type { VolumeCapability } from '../../src/csi/messages.js';
import { objectContaining } from '../helpers/matchers.js';
import { any } from '../helpers/matchers.js';

// Bit 24 of the effective capability set; some sandboxes drop it even for root.
const HAS_CAP_SYS_RESOURCE = ((BigInt('0x' + (/CapEff:\s*([0-9a-f]+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '0')) >> 24n) & 1n) === 1n;

let env: NodeEnv;
beforeEach(async () => {
  env = await NodeEnv.create();
});
afterEach(async () => {
  await env.cleanup();
});

async function stageAndPublish(vol: string, file: string, cap: VolumeCapability, block = false) {
  const stage = env.stageReq(vol, file, cap);
  await env.h.NodeStageVolume(stage);
  const target = block ? join(env.kubelet, 'plugins', 'volumeDevices', 'publish', vol, 'pod1') : env.target(vol);
  await env.h.NodePublishVolume({ volume_id: vol, staging_target_path: stage.staging_target_path, target_path: target, volume_capability: cap });
  return { stage, target };
}

async function fsBytes(path: string): Promise<number> {
  const s = await statfs(path);
  return s.blocks * s.bsize;
}

describe.each(['ext4', 'xfs', 'btrfs'])('NodeExpandVolume on %s', (fs) => {
  it('grows the mounted filesystem after the image file was enlarged, and repeating it is harmless', async () => {
    const file = await env.image(`${fs}.img`, 512 * MiB);
    const vol = `file-grow-${fs}`;
    const { target } = await stageAndPublish(vol, file, mountCap(fs));
    const before = await fsBytes(target);
    await env.exec.run('truncate', ['-s', `${1024 * MiB}`, file]);
    const req = { volume_id: vol, volume_path: target, capacity_range: { required_bytes: 1024 * MiB }, volume_capability: mountCap(fs) };
    if (fs === 'ext4' && !HAS_CAP_SYS_RESOURCE) {
      // ext4 grows online only with CAP_SYS_RESOURCE; without it the caller gets told so.
      const err = await csiError(env.h.NodeExpandVolume(req));
      expect(err.code).toBe(Code.FAILED_PRECONDITION);
      expect(err.message).toContain('CAP_SYS_RESOURCE');
      return;
    }
    const res = (await env.h.NodeExpandVolume(req)) as { capacity_bytes: number };
    expect(res.capacity_bytes).toBe(1024 * MiB);
    const after = await fsBytes(target);
    expect(after - before).toBeGreaterThan(400 * MiB);
    await env.h.NodeExpandVolume(req);
    expect(await fsBytes(target)).toBe(after);
  });
});

describe('NodeExpandVolume', () => {
  it('refreshes a block volume and reports the new size', async () => {
    const file = await env.image('blk.img', 32 * MiB);
    const { target } = await stageAndPublish('file-grow-blk', file, blockCap(), true);
    await env.exec.run('truncate', ['-s', `${96 * MiB}`, file]);
    const res = (await env.h.NodeExpandVolume({ volume_id: 'file-grow-blk', volume_path: target, capacity_range: { required_bytes: 96 * MiB } })) as {
      capacity_bytes: number;
    };
    expect(res.capacity_bytes).toBe(96 * MiB);
    expect(await env.sh('blockdev', ['--getsize64', target])).toBe(`${96 * MiB}\n`);
  });

  it('a read-only block publish sees the new size too', async () => {
    const file = await env.image('roblk.img', 32 * MiB);
    const vol = 'file-grow-roblk';
    const stage = env.stageReq(vol, file, blockCap());
    await env.h.NodeStageVolume(stage);
    const target = join(env.kubelet, 'plugins', 'volumeDevices', 'publish', vol, 'pod1');
    await env.h.NodePublishVolume({ volume_id: vol, staging_target_path: stage.staging_target_path, target_path: target, volume_capability: blockCap(), readonly: true });
    await env.exec.run('truncate', ['-s', `${64 * MiB}`, file]);
    await env.h.NodeExpandVolume({ volume_id: vol, volume_path: target, capacity_range: { required_bytes: 64 * MiB } });
    expect(await env.sh('blockdev', ['--getsize64', target])).toBe(`${64 * MiB}\n`);
  });

  it('says what to do when the storage has not grown yet', async () => {
    const file = await env.image('small.img', 128 * MiB);
    const { target } = await stageAndPublish('file-grow-early', file, mountCap('ext4'));
    const err = await csiError(env.h.NodeExpandVolume({ volume_id: 'file-grow-early', volume_path: target, capacity_range: { required_bytes: 256 * MiB } }));
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    expect(err.message).toContain('ControllerExpandVolume');
  });

  it('NOT_FOUND for a volume or path this node does not have', async () => {
    expect((await csiError(env.h.NodeExpandVolume({ volume_id: 'file-nope', volume_path: 'some/path' }))).code).toBe(Code.NOT_FOUND);
    expect((await csiError(env.h.NodeExpandVolume({ volume_id: 'file-nope', volume_path: join(env.kubelet, 'none') }))).code).toBe(Code.NOT_FOUND);
    expect((await csiError(env.h.NodeExpandVolume({ volume_id: 'file-nope', volume_path: env.kubelet + '/' }))).code).toBe(Code.NOT_FOUND);
    await writeFile(join(env.kubelet, 'exists'), '');
    expect((await csiError(env.h.NodeExpandVolume({ volume_id: 'file-nope', volume_path: join(env.kubelet, 'exists') }))).code).toBe(Code.NOT_FOUND);
  });
});

describe('NodeGetVolumeStats', () => {
  it('reports bytes and inodes of a mounted volume, and they follow what the pod writes', async () => {
    const file = await env.image('s.img', 256 * MiB);
    const { target } = await stageAndPublish('file-stats', file, mountCap('ext4'));
    type U = { unit: string; total: number; used: number; available: number };
    const get = async () => (await env.h.NodeGetVolumeStats({ volume_id: 'file-stats', volume_path: target })) as { usage: U[]; volume_condition: { abnormal: boolean; message: string } };
    const a = await get();
    const bytes = a.usage.find((u) => u.unit === 'BYTES')!;
    const inodes = a.usage.find((u) => u.unit === 'INODES')!;
    expect(bytes.total).toBeGreaterThan(200 * MiB);
    expect(bytes.total).toBeLessThanOrEqual(256 * MiB);
    expect(bytes.available).toBeLessThanOrEqual(bytes.total - bytes.used);
    expect(inodes.total).toBeGreaterThan(1000);
    expect(a.volume_condition).toEqual({ abnormal: false, message: any(String) });

    await writeFile(join(target, 'big'), Buffer.alloc(20 * MiB, 1));
    await env.sh('sync', []);
    const b = await get();
    const bytes2 = b.usage.find((u) => u.unit === 'BYTES')!;
    expect(bytes2.used - bytes.used).toBeGreaterThanOrEqual(19 * MiB);
    expect(b.usage.find((u) => u.unit === 'INODES')!.used).toBe(inodes.used + 1);
  });

  it('reports the size of a block volume', async () => {
    const file = await env.image('sb.img', 48 * MiB);
    const { target } = await stageAndPublish('file-stats-blk', file, blockCap(), true);
    const res = (await env.h.NodeGetVolumeStats({ volume_id: 'file-stats-blk', volume_path: target })) as { usage: { unit: string; total: number }[] };
    expect(res.usage).toEqual([objectContaining({ unit: 'BYTES', total: 48 * MiB })]);
  });

  it('flags the volume abnormal when its mount disappears or its image is deleted', async () => {
    const file = await env.image('gone.img', 128 * MiB);
    const { target } = await stageAndPublish('file-gone', file, mountCap('ext4'));
    await unlink(file);
    const res = (await env.h.NodeGetVolumeStats({ volume_id: 'file-gone', volume_path: target })) as { volume_condition: { abnormal: boolean; message: string } };
    expect(res.volume_condition.abnormal).toBe(true);
    expect(res.volume_condition.message).toContain('deleted');

    await env.sh('umount', [target]);
    const res2 = (await env.h.NodeGetVolumeStats({ volume_id: 'file-gone', volume_path: target })) as { usage: unknown[]; volume_condition: { abnormal: boolean; message: string } };
    expect(res2.volume_condition.abnormal).toBe(true);
    expect(res2.volume_condition.message).toContain('nothing is mounted');

    // Cleaning up a volume whose image is gone still works.
    await env.h.NodeUnpublishVolume({ volume_id: 'file-gone', target_path: target });
    await env.h.NodeUnstageVolume({ volume_id: 'file-gone', staging_target_path: join(env.kubelet, 'staging', 'file-gone') });
    expect(await env.mountsUnder()).toEqual([]);
    expect(await env.loopsUnder()).toEqual([]);
  });

  it('NOT_FOUND for a path that does not exist or a volume that is not staged', async () => {
    expect((await csiError(env.h.NodeGetVolumeStats({ volume_id: 'file-x', volume_path: 'some/path' }))).code).toBe(Code.NOT_FOUND);
    expect((await csiError(env.h.NodeGetVolumeStats({ volume_id: 'file-x', volume_path: join(env.kubelet, 'nothing') }))).code).toBe(Code.NOT_FOUND);
    expect((await csiError(env.h.NodeGetVolumeStats({ volume_id: 'file-x', volume_path: env.kubelet + '/pods' }))).code).toBe(Code.NOT_FOUND);
    expect((await csiError(env.h.NodeGetVolumeStats({ volume_id: 'file-x', volume_path: '' }))).code).toBe(Code.INVALID_ARGUMENT);
    expect((await csiError(env.h.NodeGetVolumeStats({ volume_path: env.kubelet }))).code).toBe(Code.INVALID_ARGUMENT);
  });
});
