import { Code } from '../../src/errors/domain-error.js';
import { asSidecar } from '../helpers/sinter-process.js';
import { existsSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { NodeEnv, blockCap, csiError, mountCap, MiB } from '../helpers/node-env.js';

let env: NodeEnv;
// A fresh node world per test, cleaned up (unmounted, detached) however the test ends.
beforeEach(async () => {
  env = await NodeEnv.create();
  return () => env.cleanup();
});
const loopsOf = (file: string) => env.loopsOf(file);

describe.each(['ext4', 'xfs', 'btrfs'])('%s volume: stage, publish, unpublish, unstage', (fs) => {
  it('formats a blank volume, shares its files between staging and target, and leaves nothing behind', async () => {
    const file = await env.image(`${fs}.img`, 512 * MiB);
    const vol = `file-${fs}-0001`;
    const stage = env.stageReq(vol, file, mountCap(fs));
    const target = env.target(vol);
    const pub = { volume_id: vol, staging_target_path: stage.staging_target_path, target_path: target, volume_capability: mountCap(fs), readonly: false };

    await env.h.NodeStageVolume(stage);
    const loops = await loopsOf(file);
    expect(loops).toHaveLength(1);
    expect(await env.sh('blkid', ['-p', '-o', 'value', '-s', 'TYPE', loops[0]])).toBe(`${fs}\n`);
    let mounts = await env.mountsUnder();
    expect(mounts.filter((m) => m.mountPoint === stage.staging_target_path).map((m) => m.fsType)).toEqual([fs]);
    // xfs clones share a UUID; sinter mounts xfs with nouuid so a clone can sit next to its source.
    if (fs === 'xfs') expect(mounts.find((m) => m.mountPoint === stage.staging_target_path)?.superOptions).toContain('nouuid');

    // Idempotent: same request again changes nothing.
    await env.h.NodeStageVolume(stage);
    expect(await loopsOf(file)).toEqual(loops);
    expect((await env.mountsUnder()).filter((m) => m.mountPoint === stage.staging_target_path)).toHaveLength(1);

    await env.h.NodePublishVolume(pub);
    await env.h.NodePublishVolume(pub);
    mounts = await env.mountsUnder();
    expect(mounts.filter((m) => m.mountPoint === target)).toHaveLength(1);
    await writeFile(join(target, 'hello.txt'), 'from the pod');
    expect(await readFile(join(stage.staging_target_path, 'hello.txt'), 'utf8')).toBe('from the pod');

    await env.h.NodeUnpublishVolume({ volume_id: vol, target_path: target });
    expect(existsSync(target)).toBe(false);
    await env.h.NodeUnpublishVolume({ volume_id: vol, target_path: target });

    await env.h.NodeUnstageVolume({ volume_id: vol, staging_target_path: stage.staging_target_path });
    expect(await env.mountsUnder()).toEqual([]);
    expect(await loopsOf(file)).toEqual([]);
    await env.h.NodeUnstageVolume({ volume_id: vol, staging_target_path: stage.staging_target_path });

    // Staging again finds the filesystem (no reformat): the file is still there.
    await env.h.NodeStageVolume(stage);
    expect(await readFile(join(stage.staging_target_path, 'hello.txt'), 'utf8')).toBe('from the pod');
    await env.h.NodeUnstageVolume({ volume_id: vol, staging_target_path: stage.staging_target_path });
    expect(await loopsOf(file)).toEqual([]);
  });
});

describe('block volume', () => {
  it('exposes the raw device at the target; writes reach the image; unpublish and unstage remove it all', async () => {
    const file = await env.image('blk.img', 64 * MiB);
    const vol = 'file-blk-0001';
    const stage = env.stageReq(vol, file, blockCap());
    const target = join(env.kubelet, 'plugins', 'volumeDevices', 'publish', vol, 'pod1');
    const pub = { volume_id: vol, staging_target_path: stage.staging_target_path, target_path: target, volume_capability: blockCap(), readonly: false };

    await env.h.NodeStageVolume(stage);
    await env.h.NodeStageVolume(stage);
    await env.h.NodePublishVolume(pub);
    await env.h.NodePublishVolume(pub);
    expect((await stat(target)).isBlockDevice()).toBe(true);
    expect(await env.sh('blockdev', ['--getsize64', target])).toBe(`${64 * MiB}\n`);
    // No filesystem was made on a block volume.
    await expect(env.exec.run('blkid', ['-p', file], { okExitCodes: [] })).rejects.toThrow();

    await env.write(join(env.dir, 'payload'), 'raw bytes from the pod');
    await env.sh('dd', [`if=${join(env.dir, 'payload')}`, `of=${target}`, 'conv=notrunc,fsync', 'status=none']);
    const head = (await readFile(file)).subarray(0, 22).toString();
    expect(head).toBe('raw bytes from the pod');

    await env.h.NodeUnpublishVolume({ volume_id: vol, target_path: target });
    expect(existsSync(target)).toBe(false);
    await env.h.NodeUnstageVolume({ volume_id: vol, staging_target_path: stage.staging_target_path });
    expect(await env.mountsUnder()).toEqual([]);
    expect(await loopsOf(file)).toEqual([]);
    expect(existsSync(join(stage.staging_target_path, vol))).toBe(false);
  });
});

describe('one volume, two pods', () => {
  it('publishes to two targets and refuses to unstage until both are unpublished', async () => {
    const file = await env.image('shared.img', 128 * MiB);
    const vol = 'file-shared-0001';
    const stage = env.stageReq(vol, file, mountCap('ext4'));
    await env.h.NodeStageVolume(stage);
    const t1 = env.target(vol, 'pod1');
    const t2 = env.target(vol, 'pod2');
    for (const t of [t1, t2])
      await env.h.NodePublishVolume({ volume_id: vol, staging_target_path: stage.staging_target_path, target_path: t, volume_capability: mountCap('ext4') });

    const busy = (await env.h.NodeUnstageVolume({ volume_id: vol, staging_target_path: stage.staging_target_path }).catch((e: unknown) => e)) as { code: number; message: string };
    expect(busy.code).toBe(Code.FAILED_PRECONDITION);
    expect(busy.message).toContain(t1);
    expect(busy.message).toContain('unpublish');
    // The refusal changed nothing: both pods still see the volume.
    expect((await env.mountsUnder()).map((m) => m.mountPoint).sort()).toEqual([stage.staging_target_path, t1, t2].sort());

    await env.h.NodeUnpublishVolume({ volume_id: vol, target_path: t1 });
    await env.h.NodeUnpublishVolume({ volume_id: vol, target_path: t2 });
    await env.h.NodeUnstageVolume({ volume_id: vol, staging_target_path: stage.staging_target_path });
    expect(await env.mountsUnder()).toEqual([]);
  });
});

describe('unstage finds every other mount of the volume without reading the mount table', () => {
  const recordPhase = async (vol: string) => (JSON.parse(await readFile(join(env.stateDir, 'volumes', `${vol}.json`), 'utf8')) as { phase: string }).phase;

  it('a bind of the staging path nobody recorded refuses the unstage, naming it, and the refusal changes nothing', async () => {
    const file = await env.image('byhand.img', 64 * MiB);
    const vol = 'file-byhand-0001';
    const stage = env.stageReq(vol, file, mountCap('ext4'));
    await env.h.NodeStageVolume(stage);
    await writeFile(join(stage.staging_target_path, 'data'), 'kept');
    const byHand = join(env.dir, 'by-hand');
    await mkdir(byHand);
    await env.sh('mount', ['--bind', stage.staging_target_path, byHand]);

    const busy = await csiError(env.h.NodeUnstageVolume({ volume_id: vol, staging_target_path: stage.staging_target_path }));
    expect(busy.code).toBe(Code.FAILED_PRECONDITION);
    expect(busy.message).toContain(byHand);
    expect(busy.message).toContain('unpublish');
    // The stage is as it was: mounted, recorded as staged, publishable.
    expect((await env.mountsUnder()).map((m) => m.mountPoint).sort()).toEqual([byHand, stage.staging_target_path].sort());
    expect(await readFile(join(stage.staging_target_path, 'data'), 'utf8')).toBe('kept');
    expect(await recordPhase(vol)).toBe('staged');
    const target = env.target(vol);
    await env.h.NodePublishVolume({ volume_id: vol, staging_target_path: stage.staging_target_path, target_path: target, volume_capability: mountCap('ext4') });
    expect(await readFile(join(target, 'data'), 'utf8')).toBe('kept');
    await env.h.NodeUnpublishVolume({ volume_id: vol, target_path: target });

    await env.sh('umount', [byHand]);
    await env.h.NodeUnstageVolume({ volume_id: vol, staging_target_path: stage.staging_target_path });
    expect(await env.mountsUnder()).toEqual([]);
    expect(await loopsOf(file)).toEqual([]);
  });

  it('a mount of the volume in another mount namespace (invisible in this one\'s table) refuses the unstage until it is gone', async () => {
    const file = await env.image('otherns.img', 64 * MiB);
    const vol = 'file-otherns-0001';
    const stage = env.stageReq(vol, file, mountCap('ext4'));
    await env.h.NodeStageVolume(stage);
    await writeFile(join(stage.staging_target_path, 'data'), 'kept');
    // A private copy of this namespace's mounts, the staging mount among them, held while the process lives.
    const holder = spawn('unshare', ['--mount', '--propagation', 'private', 'sleep', '300'], { stdio: 'ignore' });
    const gone = new Promise((r) => holder.once('exit', r));
    try {
      await waitFor(async () => (await readFile(`/proc/${holder.pid}/mountinfo`, 'utf8').catch(() => '')).includes(stage.staging_target_path));
      const busy = await csiError(env.h.NodeUnstageVolume({ volume_id: vol, staging_target_path: stage.staging_target_path }));
      expect(busy.code).toBe(Code.FAILED_PRECONDITION);
      expect(busy.message).toContain('another mount namespace');
      // Mounted again and still recorded as staged: nothing was detached under the other namespace's mount.
      expect((await env.mountsUnder()).map((m) => m.mountPoint)).toEqual([stage.staging_target_path]);
      expect(await readFile(join(stage.staging_target_path, 'data'), 'utf8')).toBe('kept');
      expect(await recordPhase(vol)).toBe('staged');
      expect(await loopsOf(file)).toHaveLength(1);
    } finally {
      holder.kill('SIGKILL');
      await gone;
    }
    // The namespace's mounts go shortly after its last process: the retry finishes once they have.
    await waitFor(() =>
      env.h.NodeUnstageVolume({ volume_id: vol, staging_target_path: stage.staging_target_path }).then(
        () => true,
        () => false,
      ),
    );
    expect(await env.mountsUnder()).toEqual([]);
    expect(await loopsOf(file)).toEqual([]);
  });
});

async function waitFor(ok: () => Promise<boolean>, ms = 5000): Promise<void> {
  for (const end = Date.now() + ms; !(await ok()); ) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('concurrency', () => {
  it('volumes staged at the same time each get their own loop device; repeated calls for one volume answer ABORTED while one runs and never stack mounts', async () => {
    const ids = [1, 2, 3, 4].map((i) => `file-par-${i}`);
    const files = await Promise.all(ids.map((id) => env.image(`${id}.img`, 64 * MiB)));
    await Promise.all(ids.map((id, i) => env.h.NodeStageVolume(env.stageReq(id, files[i], mountCap('ext4')))));
    const devs = (await Promise.all(files.map(loopsOf))).map((l) => {
      expect(l).toHaveLength(1);
      return l[0];
    });
    expect(new Set(devs).size).toBe(4);

    const again = env.stageReq(ids[0], files[0], mountCap('ext4'));
    const first: string[] = [];
    await Promise.all([1, 2, 3].map(() => asSidecar(() => env.h.NodeStageVolume(again), first)));
    const t = env.target(ids[0]);
    const pub = { volume_id: ids[0], staging_target_path: again.staging_target_path, target_path: t, volume_capability: mountCap('ext4') };
    await Promise.all([1, 2, 3].map(() => asSidecar(() => env.h.NodePublishVolume(pub), first)));
    expect(first).toContain('ABORTED');
    const mounts = await env.mountsUnder();
    expect(mounts.filter((m) => m.mountPoint === again.staging_target_path)).toHaveLength(1);
    expect(mounts.filter((m) => m.mountPoint === t)).toHaveLength(1);
    await Promise.all([1, 2, 3].map(() => asSidecar(() => env.h.NodeUnpublishVolume({ volume_id: ids[0], target_path: t }))));
    await Promise.all(ids.map((id) => env.h.NodeUnstageVolume({ volume_id: id, staging_target_path: join(env.kubelet, 'staging', id) })));
    expect(await env.mountsUnder()).toEqual([]);
    expect(await env.loopsUnder()).toEqual([]);
  });
});

describe('cloned volumes', () => {
  it('an xfs volume and its byte-for-byte clone (same UUID) can be staged side by side', async () => {
    const src = await env.image('src.img', 320 * MiB);
    const a = env.stageReq('file-src', src, mountCap('xfs'));
    await env.h.NodeStageVolume(a);
    await writeFile(join(a.staging_target_path, 'origin.txt'), 'source');
    await env.h.NodeUnstageVolume({ volume_id: 'file-src', staging_target_path: a.staging_target_path });
    const clone = join(env.images, 'clone.img');
    await env.sh('cp', ['--sparse=always', src, clone]);
    await env.h.NodeStageVolume(a);
    const b = env.stageReq('file-clone', clone, mountCap('xfs'));
    await env.h.NodeStageVolume(b);
    expect(await readFile(join(b.staging_target_path, 'origin.txt'), 'utf8')).toBe('source');
    await writeFile(join(b.staging_target_path, 'origin.txt'), 'changed in the clone');
    expect(await readFile(join(a.staging_target_path, 'origin.txt'), 'utf8')).toBe('source');
  });
});

describe('mounts stacked at a path (unpublish and unstage read the mount table once, then check the path itself)', () => {
  it.each(['ext4', 'btrfs'])('%s: every layer of this volume at the target and at the staging path is unmounted, and the paths removed', async (fs) => {
    const file = await env.image(`stacked-${fs}.img`, 256 * MiB);
    const vol = `file-stacked-${fs}`;
    const stage = env.stageReq(vol, file, mountCap(fs));
    const target = env.target(vol);
    await env.h.NodeStageVolume(stage);
    await env.h.NodePublishVolume({ volume_id: vol, staging_target_path: stage.staging_target_path, target_path: target, volume_capability: mountCap(fs), readonly: false });
    // Two more binds of the same volume over each path (a tool outside sinter, or a retry that raced a crash).
    for (let i = 0; i < 2; i++) {
      await env.sh('mount', ['--bind', stage.staging_target_path, target]);
      await env.sh('mount', ['--bind', stage.staging_target_path, stage.staging_target_path]);
    }
    expect((await env.mountsUnder()).filter((m) => m.mountPoint === target)).toHaveLength(3);
    expect((await env.mountsUnder()).filter((m) => m.mountPoint === stage.staging_target_path)).toHaveLength(3);

    await env.h.NodeUnpublishVolume({ volume_id: vol, target_path: target });
    expect((await env.mountsUnder()).filter((m) => m.mountPoint === target)).toEqual([]);
    expect(existsSync(target)).toBe(false);
    await env.h.NodeUnstageVolume({ volume_id: vol, staging_target_path: stage.staging_target_path });
    expect(await env.mountsUnder()).toEqual([]);
    expect(await loopsOf(file)).toEqual([]);
  });
});
