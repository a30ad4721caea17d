import { existsSync } from 'node:fs';
import { mkdir, readFile, rmdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { Code } from '../../src/errors/domain-error.js';
import { csiError, NodeEnv, blockCap, mountCap, MiB } from '../helpers/node-env.js';

let env: NodeEnv;
// A fresh node world per test, cleaned up (unmounted, detached) however the test ends.
beforeEach(async () => {
  env = await NodeEnv.create();
  return () => env.cleanup();
});
const loopsOf = (file: string) => env.loopsOf(file);
async function blkidOf(file: string): Promise<string> {
  return (await env.exec.run('blkid', ['-p', '-o', 'export', file], { okExitCodes: [2] })).stdout;
}

describe('never formats a device that holds data (safety rule 1)', () => {
  it('refuses a device holding another filesystem, and leaves it untouched and detached', async () => {
    const file = await env.image('xfs.img', 512 * MiB);
    await env.sh('mkfs.xfs', ['-q', '-L', 'precious', file]);
    const before = await blkidOf(file);
    const req = env.stageReq('file-other-fs', file, mountCap('ext4'));
    const err = await csiError(env.h.NodeStageVolume(req));
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    expect(err.message).toContain('xfs');
    expect(err.message).toContain('ext4');
    expect(await blkidOf(file)).toBe(before);
    expect(await env.mountsUnder()).toEqual([]);
    expect(await loopsOf(file)).toEqual([]);
  });

  it('refuses a device with a partition table even when the requested filesystem is absent', async () => {
    const file = await env.image('parted.img', 64 * MiB);
    await env.exec.run('sfdisk', ['-q', file], { input: 'label: gpt\n,32M\n' });
    const before = await blkidOf(file);
    expect(before).toContain('PTTYPE=gpt');
    const err = await csiError(env.h.NodeStageVolume(env.stageReq('file-parted', file, mountCap('ext4'))));
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    expect(err.message).toContain('partition table');
    expect(await blkidOf(file)).toBe(before);
    expect(await loopsOf(file)).toEqual([]);
  });

  it('uses an existing filesystem of the requested type as it is (no reformat)', async () => {
    const file = await env.image('keep.img', 512 * MiB);
    await env.sh('mkfs.xfs', ['-q', '-L', 'keepme', file]);
    const req = env.stageReq('file-keep', file, mountCap('xfs'));
    await env.h.NodeStageVolume(req);
    expect(await blkidOf((await loopsOf(file))[0])).toContain('LABEL=keepme');
    const m = (await env.mountsUnder()).find((x) => x.mountPoint === req.staging_target_path);
    expect(m?.fsType).toBe('xfs');
    await env.h.NodeUnstageVolume({ volume_id: 'file-keep', staging_target_path: req.staging_target_path });
  });

  it('takes the filesystem from volume_context fsType and applies mkfsOptions', async () => {
    const file = await env.image('ctx.img', 128 * MiB);
    const req = env.stageReq('file-ctx', file, mountCap(), { volume_context: { fsType: 'ext4', mkfsOptions: '-L  fromctx -m 0' } });
    await env.h.NodeStageVolume(req);
    const tags = await blkidOf((await loopsOf(file))[0]);
    expect(tags).toContain('TYPE=ext4');
    expect(tags).toContain('LABEL=fromctx');
  });

  it('rejects mkfsOptions that force mkfs or name host paths, before touching the device', async () => {
    const file = await env.image('bad.img', 128 * MiB);
    for (const opts of ['-F', '-L x -d /etc', '-E root_owner=0:0;rm']) {
      const err = await csiError(env.h.NodeStageVolume(env.stageReq('file-badopts', file, mountCap('ext4'), { volume_context: { mkfsOptions: opts } })));
      expect(err.code).toBe(Code.INVALID_ARGUMENT);
      expect(err.message).toContain('mkfsOptions');
    }
    expect(await blkidOf(file)).toBe('');
    expect(await loopsOf(file)).toEqual([]);
  });
});

describe('read-only publish', () => {
  it('a pod cannot write through a read-only mount publish, while the volume stays writable underneath', async () => {
    const file = await env.image('ro.img', 128 * MiB);
    const vol = 'file-ro-0001';
    const stage = env.stageReq(vol, file, mountCap('ext4'));
    await env.h.NodeStageVolume(stage);
    const target = env.target(vol);
    await env.h.NodePublishVolume({ volume_id: vol, staging_target_path: stage.staging_target_path, target_path: target, volume_capability: mountCap('ext4'), readonly: true });
    await writeFile(join(stage.staging_target_path, 'seen.txt'), 'visible');
    expect(await readFile(join(target, 'seen.txt'), 'utf8')).toBe('visible');
    await expect(writeFile(join(target, 'nope.txt'), 'x')).rejects.toMatchObject({ code: 'EROFS' });
    // Asking for the same target read-write is a conflict, not a silent change.
    const err = await csiError(
      env.h.NodePublishVolume({ volume_id: vol, staging_target_path: stage.staging_target_path, target_path: target, volume_capability: mountCap('ext4'), readonly: false }),
    );
    expect(err.code).toBe(Code.ALREADY_EXISTS);
    await env.h.NodeUnpublishVolume({ volume_id: vol, target_path: target });
    await env.h.NodeUnstageVolume({ volume_id: vol, staging_target_path: stage.staging_target_path });
    expect(await env.mountsUnder()).toEqual([]);
  });

  it('a pod cannot write through a read-only block publish', async () => {
    const file = await env.image('roblk.img', 32 * MiB);
    const vol = 'file-roblk-0001';
    const stage = env.stageReq(vol, file, blockCap());
    await env.h.NodeStageVolume(stage);
    const target = join(env.kubelet, 'plugins', 'volumeDevices', 'publish', vol, 'pod1');
    const pub = { volume_id: vol, staging_target_path: stage.staging_target_path, target_path: target, volume_capability: blockCap(), readonly: true };
    // A read-only view left by a crash before it was recorded is picked up, not duplicated.
    const dev = (await env.sh('losetup', ['--list', '--noheadings', '--output', 'NAME', '--associated', file])).trim();
    const leaked = (await env.sh('losetup', ['--find', '--show', '--read-only', dev])).trim();
    await env.h.NodePublishVolume(pub);
    await env.h.NodePublishVolume(pub);
    const target2 = join(env.kubelet, 'plugins', 'volumeDevices', 'publish', vol, 'pod2');
    await env.h.NodePublishVolume({ ...pub, target_path: target2 });
    expect((await env.loopsUnder()).map((l) => l.name).sort()).toEqual([dev, leaked].sort());
    await writeFile(file, 'original', { flag: 'r+' });
    await expect(env.sh('dd', ['if=/dev/zero', `of=${target}`, 'bs=4096', 'count=1', 'conv=notrunc,fsync', 'status=none'])).rejects.toThrow();
    expect((await readFile(file)).subarray(0, 8).toString()).toBe('original');
    expect(await env.sh('dd', [`if=${target}`, 'bs=8', 'count=1', 'status=none'])).toBe('original');
    await expect(env.sh('dd', ['if=/dev/zero', `of=${target2}`, 'bs=4096', 'count=1', 'conv=notrunc,fsync', 'status=none'])).rejects.toThrow();
    await env.h.NodeUnpublishVolume({ volume_id: vol, target_path: target });
    // The view stays while another pod still uses it.
    expect((await env.loopsUnder()).map((l) => l.name)).toContain(leaked);
    await env.h.NodeUnpublishVolume({ volume_id: vol, target_path: target2 });
    expect((await env.loopsUnder()).map((l) => l.name)).toEqual([dev]);
    await env.h.NodeUnstageVolume({ volume_id: vol, staging_target_path: stage.staging_target_path });
    expect(await env.mountsUnder()).toEqual([]);
    expect(await env.loopsUnder()).toEqual([]);
  });

  it('a reader-only access mode publishes read-only even when readonly is false', async () => {
    const file = await env.image('rox.img', 128 * MiB);
    const vol = 'file-rox-0001';
    const rw = env.stageReq(vol, file, mountCap('ext4'));
    await env.h.NodeStageVolume(rw);
    await writeFile(join(rw.staging_target_path, 'data.txt'), 'shared content');
    await env.h.NodeUnstageVolume({ volume_id: vol, staging_target_path: rw.staging_target_path });

    const ro = env.stageReq(vol, file, mountCap('ext4', 'MULTI_NODE_READER_ONLY'));
    await env.h.NodeStageVolume(ro);
    const target = env.target(vol);
    await env.h.NodePublishVolume({ volume_id: vol, staging_target_path: ro.staging_target_path, target_path: target, volume_capability: mountCap('ext4', 'MULTI_NODE_READER_ONLY'), readonly: false });
    expect(await readFile(join(target, 'data.txt'), 'utf8')).toBe('shared content');
    await expect(writeFile(join(target, 'x'), 'x')).rejects.toMatchObject({ code: 'EROFS' });
    await expect(writeFile(join(ro.staging_target_path, 'x'), 'x')).rejects.toMatchObject({ code: 'EROFS' });
  });
});

describe('conflicts', () => {
  it('staging the same volume with another filesystem or flags is ALREADY_EXISTS; publishing unstaged is FAILED_PRECONDITION', async () => {
    const file = await env.image('c.img', 128 * MiB);
    const vol = 'file-conflict-01';
    const stage = env.stageReq(vol, file, mountCap('ext4'));
    const target = env.target(vol);
    const pubErr = await csiError(
      env.h.NodePublishVolume({ volume_id: vol, staging_target_path: stage.staging_target_path, target_path: target, volume_capability: mountCap('ext4') }),
    );
    expect(pubErr.code).toBe(Code.FAILED_PRECONDITION);
    expect(pubErr.message).toContain('NodeStageVolume');
    expect(existsSync(target)).toBe(false);

    await env.h.NodeStageVolume(stage);
    expect((await csiError(env.h.NodeStageVolume({ ...stage, volume_capability: mountCap('xfs') }))).code).toBe(Code.ALREADY_EXISTS);
    expect((await csiError(env.h.NodeStageVolume({ ...stage, volume_capability: mountCap('ext4', 'SINGLE_NODE_WRITER', ['noatime']) }))).code).toBe(Code.ALREADY_EXISTS);
    expect((await csiError(env.h.NodeStageVolume({ ...stage, volume_capability: blockCap() }))).code).toBe(Code.ALREADY_EXISTS);
    // The same volume at a second staging path, or published from the wrong one.
    const elsewhere = join(env.kubelet, 'staging', 'second-place');
    const moved = await csiError(env.h.NodeStageVolume({ ...stage, staging_target_path: elsewhere }));
    expect(moved.code).toBe(Code.FAILED_PRECONDITION);
    expect(moved.message).toContain(stage.staging_target_path);
    expect(existsSync(elsewhere)).toBe(false);
    const wrongStaging = await csiError(
      env.h.NodePublishVolume({ volume_id: vol, staging_target_path: elsewhere, target_path: target, volume_capability: mountCap('ext4') }),
    );
    expect(wrongStaging.code).toBe(Code.FAILED_PRECONDITION);
    const asBlock = await csiError(env.h.NodePublishVolume({ volume_id: vol, staging_target_path: stage.staging_target_path, target_path: target, volume_capability: blockCap() }));
    expect(asBlock.code).toBe(Code.FAILED_PRECONDITION);
    expect(existsSync(target)).toBe(false);
    // Another volume on the same staging path.
    const other = await env.image('other.img', 128 * MiB);
    const clash = await csiError(env.h.NodeStageVolume({ ...env.stageReq('file-conflict-02', other, mountCap('ext4')), staging_target_path: stage.staging_target_path }));
    expect(clash.code).toBe(Code.ALREADY_EXISTS);
    expect(await loopsOf(other)).toEqual([]);

    // Another volume on a target that already holds this one.
    await env.h.NodePublishVolume({ volume_id: vol, staging_target_path: stage.staging_target_path, target_path: target, volume_capability: mountCap('ext4') });
    const stage2 = env.stageReq('file-conflict-02', other, mountCap('ext4'));
    await env.h.NodeStageVolume(stage2);
    const taken = await csiError(
      env.h.NodePublishVolume({ volume_id: 'file-conflict-02', staging_target_path: stage2.staging_target_path, target_path: target, volume_capability: mountCap('ext4') }),
    );
    expect(taken.code).toBe(Code.ALREADY_EXISTS);
    // Unpublishing the wrong volume from it leaves the mount alone.
    const wrong = await csiError(env.h.NodeUnpublishVolume({ volume_id: 'file-conflict-02', target_path: target }));
    expect(wrong.code).toBe(Code.FAILED_PRECONDITION);
    expect((await env.mountsUnder()).some((m) => m.mountPoint === target)).toBe(true);
  });

  it('never stages over, or unmounts, a mount that is not the volume', async () => {
    const file = await env.image('foreign.img', 64 * MiB);
    const stage = env.stageReq('file-foreign', file, mountCap('ext4'));
    await mkdir(stage.staging_target_path, { recursive: true });
    await env.sh('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', stage.staging_target_path]);
    await writeFile(join(stage.staging_target_path, 'theirs'), 'x');
    const err = await csiError(env.h.NodeStageVolume(stage));
    expect(err.code).toBe(Code.ALREADY_EXISTS);
    expect(err.message).toContain('tmpfs');
    expect(await loopsOf(file)).toEqual([]);
    expect(existsSync(join(env.stateDir, 'volumes', 'file-foreign.json'))).toBe(false);
    const un = await csiError(env.h.NodeUnstageVolume({ volume_id: 'file-foreign', staging_target_path: stage.staging_target_path }));
    expect(un.code).toBe(Code.FAILED_PRECONDITION);
    expect(await readFile(join(stage.staging_target_path, 'theirs'), 'utf8')).toBe('x');
  });

  it('a read-only access mode refuses to format a blank volume', async () => {
    const file = await env.image('blank-ro.img', 128 * MiB);
    const err = await csiError(env.h.NodeStageVolume(env.stageReq('file-blank-ro', file, mountCap('ext4', 'SINGLE_NODE_READER_ONLY'))));
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    expect(await blkidOf(file)).toBe('');
  });
});

describe('paths (safety rule 2)', () => {
  it('rejects staging and target paths outside the kubelet root, with .., or through a symlink, creating nothing', async () => {
    const file = await env.image('p.img', 64 * MiB);
    const outside = join(env.dir, 'outside');
    await mkdir(outside);
    await symlink(outside, join(env.kubelet, 'escape'));
    const bad = [
      join(outside, 'staging'),
      `${env.kubelet}/../outside/staging`,
      join(env.kubelet, 'escape', 'staging'),
      'relative/staging',
      env.kubelet,
    ];
    for (const p of bad) {
      const err = await csiError(env.h.NodeStageVolume({ ...env.stageReq('file-paths', file, mountCap('ext4')), staging_target_path: p }));
      expect(err.code, p).toBe(Code.INVALID_ARGUMENT);
      expect(err.message).toContain('staging_target_path');
    }
    expect(existsSync(join(outside, 'staging'))).toBe(false);
    expect(await loopsOf(file)).toEqual([]);

    const stage = env.stageReq('file-paths', file, mountCap('ext4'));
    await env.h.NodeStageVolume(stage);
    for (const p of bad) {
      const err = await csiError(
        env.h.NodePublishVolume({ volume_id: 'file-paths', staging_target_path: stage.staging_target_path, target_path: p, volume_capability: mountCap('ext4') }),
      );
      expect(err.code, p).toBe(Code.INVALID_ARGUMENT);
      expect(err.message).toContain('target_path');
      const err2 = await csiError(env.h.NodeUnpublishVolume({ volume_id: 'file-paths', target_path: p }));
      expect(err2.code, p).toBe(Code.INVALID_ARGUMENT);
    }
    expect(existsSync(join(outside, 'staging'))).toBe(false);
  });

  it('attaches only image files under the local roots', async () => {
    const elsewhere = join(env.dir, 'elsewhere.img');
    await env.exec.run('truncate', ['-s', `${16 * MiB}`, elsewhere]);
    await symlink(elsewhere, join(env.images, 'sneaky.img'));
    const cases: [string, string][] = [
      [elsewhere, Code.INVALID_ARGUMENT],
      [join(env.images, 'sneaky.img'), Code.INVALID_ARGUMENT],
      [join(env.images, 'missing.img'), Code.NOT_FOUND],
      [env.images, Code.INVALID_ARGUMENT],
    ];
    for (const [p, code] of cases) {
      const err = await csiError(env.h.NodeStageVolume(env.stageReq('file-local', p, mountCap('ext4'))));
      expect(err.code, p).toBe(code);
      expect(err.message).toContain('publish_context.path');
    }
    expect(await loopsOf(elsewhere)).toEqual([]);
    const bad = await csiError(env.h.NodeStageVolume({ ...env.stageReq('file-local', elsewhere, mountCap('ext4')), publish_context: { transport: 'local' } }));
    expect(bad.code).toBe(Code.INVALID_ARGUMENT);
    expect(bad.message).toContain('publish_context.path');
  });

  it('a malformed volume id is NOT_FOUND and never becomes a path', async () => {
    const file = await env.image('id.img', 64 * MiB);
    for (const id of ['../../etc', 'a/b', 'x'.repeat(129), 'nul\0id', '.hidden']) {
      const err = await csiError(env.h.NodeStageVolume(env.stageReq('placeholder', file, blockCap(), { volume_id: id })));
      expect(err.code, id).toBe(Code.NOT_FOUND);
      expect(err.message).toContain('volume_id');
    }
    expect(await loopsOf(file)).toEqual([]);
  });
});


describe('one staging path, one volume', () => {
  it('refuses a second volume at a path another volume half-staged there (nothing mounted), also after a restart, and allows it once that one is unstaged', async () => {
    // Volume A's stage fails before anything is mounted (xfs asked for as ext4): only its record names the path.
    const fileA = await env.image('a.img', 512 * MiB);
    await env.sh('mkfs.xfs', ['-q', fileA]);
    const reqA = env.stageReq('file-half', fileA, mountCap('ext4'));
    expect((await csiError(env.h.NodeStageVolume(reqA))).code).toBe(Code.FAILED_PRECONDITION);
    const fileB = await env.image('b.img', 64 * MiB);
    const reqB = { ...env.stageReq('file-second', fileB, mountCap('ext4')), staging_target_path: reqA.staging_target_path };
    for (const restart of [false, true]) {
      if (restart) {
        env.restart();
        await env.svc.start();
      }
      const err = await csiError(env.h.NodeStageVolume(reqB));
      expect(err.code).toBe(Code.ALREADY_EXISTS);
      expect(err.message).toContain('already used by volume file-half');
      expect(await loopsOf(fileB)).toEqual([]);
    }
    await env.h.NodeUnstageVolume({ volume_id: 'file-half', staging_target_path: reqA.staging_target_path });
    await env.h.NodeStageVolume(reqB);
    expect((await env.mountsUnder()).map((m) => m.mountPoint)).toContain(reqA.staging_target_path);
    await env.h.NodeUnstageVolume({ volume_id: 'file-second', staging_target_path: reqA.staging_target_path });
  });
});

describe('two volume ids on one device (a CO\'s mistake, or a forged publish_context)', () => {
  // Both ids' mounts show the same device, so each looks like the other's to a device-only check.
  async function stageTwice() {
    const file = await env.image('shared.img', 64 * MiB);
    const a = env.stageReq('file-shared-a', file, mountCap('ext4'));
    const b = env.stageReq('file-shared-b', file, mountCap('ext4'));
    await env.h.NodeStageVolume(a);
    await env.h.NodeStageVolume(b);
    const targetA = env.target('file-shared-a');
    await env.h.NodePublishVolume({ volume_id: a.volume_id, staging_target_path: a.staging_target_path, target_path: targetA, volume_capability: mountCap('ext4') });
    await writeFile(join(targetA, 'data'), 'kept');
    return { a, b, targetA };
  }
  const mountedAt = async (p: string) => (await env.mountsUnder()).some((m) => m.mountPoint === p);

  it('one id\'s unpublish or publish never takes the other\'s staging path or publish target', async () => {
    const { a, b, targetA } = await stageTwice();
    // Found by the fuzzer (SINTER_SEED=760311349): this unpublish unmounted A's stage and removed its
    // directory, and A's next publish failed with INTERNAL.
    for (const target of [a.staging_target_path, targetA]) {
      const err = await csiError(env.h.NodeUnpublishVolume({ volume_id: b.volume_id, target_path: target }));
      expect(err.code, target).toBe(Code.FAILED_PRECONDITION);
      expect(err.message).toContain('file-shared-a');
      expect(await mountedAt(target), target).toBe(true);
    }
    const onStaging = await csiError(
      env.h.NodePublishVolume({ volume_id: b.volume_id, staging_target_path: b.staging_target_path, target_path: a.staging_target_path, volume_capability: mountCap('ext4') }),
    );
    expect(onStaging.code).toBe(Code.FAILED_PRECONDITION);
    const onTarget = await csiError(
      env.h.NodePublishVolume({ volume_id: b.volume_id, staging_target_path: b.staging_target_path, target_path: targetA, volume_capability: mountCap('ext4') }),
    );
    expect(onTarget.code).toBe(Code.ALREADY_EXISTS);
    // A stays whole: its publish is still idempotent, its data there, and its own unpublish works.
    await env.h.NodePublishVolume({ volume_id: a.volume_id, staging_target_path: a.staging_target_path, target_path: targetA, volume_capability: mountCap('ext4') });
    expect(await readFile(join(targetA, 'data'), 'utf8')).toBe('kept');
    await env.h.NodeUnpublishVolume({ volume_id: a.volume_id, target_path: targetA });
    expect(await mountedAt(targetA)).toBe(false);
    expect(await mountedAt(a.staging_target_path)).toBe(true);
    // (Neither unstages while the other mounts the device; env.cleanup() takes them down.)
  });

  it('a publish holds its staging path: a call naming it meanwhile is ABORTED, and a stage taken away outside sinter is FAILED_PRECONDITION, never INTERNAL', async () => {
    // Holds each `mount --bind` until released, so the other call lands mid-publish every time.
    let gate: Promise<void> | undefined;
    let entered!: () => void;
    const atBind = () => new Promise<void>((r) => (entered = r));
    env.deps.exec = {
      run: async (cmd, args, opts) => {
        if (cmd === 'mount' && args[0] === '--bind' && gate) {
          entered();
          await gate;
        }
        return env.exec.run(cmd, args, opts);
      },
    };
    env.restart();
    await env.svc.start();
    const { a, b } = await stageTwice();
    const publishA = (target: string) =>
      env.h.NodePublishVolume({ volume_id: a.volume_id, staging_target_path: a.staging_target_path, target_path: target, volume_capability: mountCap('ext4') });

    let release!: () => void;
    gate = new Promise<void>((r) => (release = r));
    let reached = atBind();
    const second = publishA(env.target('file-shared-a', 'pod2'));
    await reached;
    const busy = await csiError(env.h.NodeUnpublishVolume({ volume_id: b.volume_id, target_path: a.staging_target_path }));
    expect(busy.code).toBe(Code.ABORTED);
    release();
    await second;
    expect(await mountedAt(a.staging_target_path)).toBe(true);
    expect(await readFile(join(env.target('file-shared-a', 'pod2'), 'data'), 'utf8')).toBe('kept');

    // Someone unmounts the stage and removes its directory by hand during a publish.
    gate = new Promise<void>((r) => (release = r));
    reached = atBind();
    const third = csiError(publishA(env.target('file-shared-a', 'pod3')));
    await reached;
    await env.sh('umount', ['-l', env.target('file-shared-a', 'pod2')]);
    await env.sh('umount', [a.staging_target_path]);
    await rmdir(a.staging_target_path);
    release();
    gate = undefined;
    const gone = await third;
    expect(gone.code).toBe(Code.FAILED_PRECONDITION);
    expect(gone.message).toContain('NodeStageVolume');
    // Published nowhere, and the unpublish the kubelet then sends cleans up what the publish made.
    expect(await mountedAt(env.target('file-shared-a', 'pod3'))).toBe(false);
    await env.h.NodeUnpublishVolume({ volume_id: a.volume_id, target_path: env.target('file-shared-a', 'pod3') });
    expect(existsSync(env.target('file-shared-a', 'pod3'))).toBe(false);
  });
});
