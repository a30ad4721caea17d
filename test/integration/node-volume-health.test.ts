import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NodeEnv, mountCap, MiB } from '../helpers/node-env.js';
import type { VolumeCapability } from '../../src/csi/messages.js';
import { stringMatching } from '../helpers/matchers.js';

type Stats = { usage: { unit: string; total: number }[]; volume_condition: { abnormal: boolean; message: string } };

let env: NodeEnv;
beforeEach(async () => {
  env = await NodeEnv.create();
});
afterEach(async () => {
  await env.cleanup();
});

async function stageAndPublish(vol: string, file: string, cap: VolumeCapability, readonly = false) {
  const stage = env.stageReq(vol, file, cap);
  await env.h.NodeStageVolume(stage);
  const target = env.target(vol);
  await env.h.NodePublishVolume({ volume_id: vol, staging_target_path: stage.staging_target_path, target_path: target, volume_capability: cap, readonly });
  return { staging: stage.staging_target_path, target };
}

const stats = async (vol: string, path: string) => (await env.h.NodeGetVolumeStats({ volume_id: vol, volume_path: path })) as Stats;

/** The loop device the node attached for an image (the local connector's device). */
async function loopOf(file: string): Promise<string> {
  const [dev] = await env.loopsOf(file);
  if (!dev) throw new Error(`no loop device for ${file}`);
  return dev;
}

/** Writes and fsyncs `bytes` at path; the error a pod would see, or undefined. */
function podWrite(path: string, bytes: Buffer): NodeJS.ErrnoException | undefined {
  try {
    const fd = openSync(path, 'w');
    try {
      writeSync(fd, bytes);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    return undefined;
  } catch (e) {
    return e as NodeJS.ErrnoException;
  }
}

/**
 * NodeGetVolumeStats' volume_condition for what goes wrong under a staged
 * filesystem, each provoked for real on loop devices: the message is what
 * `kubectl describe pod` shows (kubelet turns an abnormal condition into an
 * event), so each must say what happened and what to do.
 */
describe('NodeGetVolumeStats volume_condition: real failures under a staged ext4 (loop devices, mounts)', () => {
  it('a real I/O error (the backing store runs out of space) makes ext4 abort its journal and go read-only: abnormal, naming the read-only filesystem, the recorded error and fsck', async () => {
    // The image lives on a 24 MiB tmpfs but is 128 MiB: once the tmpfs is
    // full, the loop device fails writes with EIO (what a thin pool that ran
    // dry does). The journal is left unwritten at mkfs so its blocks need
    // space too: the first commit after the store is full fails.
    const store = join(env.images, 'thin');
    await mkdir(store);
    await env.sh('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'sinter-test-thin', store]);
    const file = join(store, 'io.img');
    await env.sh('truncate', ['-s', String(128 * MiB), file]);
    await env.sh('mkfs.ext4', ['-q', '-E', 'lazy_journal_init=1,lazy_itable_init=0', file]);
    const vol = 'file-ioerror';
    const { target } = await stageAndPublish(vol, file, mountCap('ext4'));
    expect((await stats(vol, target)).volume_condition).toEqual({ abnormal: false, message: 'volume is attached and mounted' });

    // The pod writes more than the store holds: its fsync fails (ENOSPC from
    // the loop device), and the next journal commit (every 5 s, or a syncfs)
    // cannot be written either, so ext4 aborts the journal.
    expect(podWrite(join(target, 'big.bin'), Buffer.alloc(40 * MiB, 7))?.code).toMatch(/^(ENOSPC|EIO)$/);
    let err: NodeJS.ErrnoException | undefined;
    for (let i = 0; i < 40 && err?.code !== 'EROFS'; i++) {
      err = podWrite(join(target, `small-${i}`), Buffer.from('x'));
      await env.exec.run('sync', ['-f', target]).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(err?.code).toBe('EROFS');

    const s = await stats(vol, target);
    expect(s.volume_condition.abnormal).toBe(true);
    expect(s.volume_condition.message).toMatch(/^the ext4 filesystem on \/dev\/loop\d+ turned read-only after an I\/O or filesystem error; the filesystem recorded \d+ errors?/);
    expect(s.volume_condition.message).toContain('writes fail with "Read-only file system"');
    expect(s.volume_condition.message).toContain('run fsck.ext4 on it');
    // Usage is still reported: the filesystem is read-only, not gone.
    expect(s.usage.find((u) => u.unit === 'BYTES')?.total).toBeGreaterThan(100 * MiB);
  });

  it('an ext4 error that leaves the filesystem writable (errors=continue, the mkfs default) is flagged from ext4\'s own error count', async () => {
    const file = await env.image('errors.img', 64 * MiB);
    const vol = 'file-fserror';
    const { target } = await stageAndPublish(vol, file, mountCap('ext4'));
    expect((await stats(vol, target)).volume_condition.abnormal).toBe(false);
    // ext4's error path, entered through its own sysfs knob: the same
    // ext4_error() a corrupt directory block or a failed checksum takes.
    const dev = basename(await loopOf(file));
    await writeFile(`/sys/fs/ext4/${dev}/trigger_fs_error`, '1');
    expect(podWrite(join(target, 'still-writable'), Buffer.from('ok'))).toBeUndefined();
    const s = await stats(vol, target);
    expect(s.volume_condition).toEqual({
      abnormal: true,
      message: stringMatching(/^the ext4 filesystem on \/dev\/loop\d+ is writable but recorded 1 error since it was last checked \(the last in trigger_test_error\): data may be damaged\. Stop the pods using the volume and run fsck\.ext4 on it$/),
    });
  });

  it('the staging mount unmounted behind sinter\'s back: abnormal, naming the staging path; the pod\'s own mount still works', async () => {
    const file = await env.image('staging.img', 64 * MiB);
    const vol = 'file-staging-gone';
    const { staging, target } = await stageAndPublish(vol, file, mountCap('ext4'));
    await env.sh('umount', [staging]);
    expect(podWrite(join(target, 'through-bind'), Buffer.from('ok'))).toBeUndefined();
    const s = await stats(vol, target);
    expect(s.volume_condition.abnormal).toBe(true);
    expect(s.volume_condition.message).toBe(
      `the volume's staging mount at ${staging} is gone (nothing is mounted there; unmounted outside sinter): the pod still reaches the volume through its own mount, but no other pod on this node can mount it. Delete the pods using it on this node so kubelet unstages the volume and stages it again`,
    );
    // Unstage still cleans up what is left.
    await env.h.NodeUnpublishVolume({ volume_id: vol, target_path: target });
    await env.h.NodeUnstageVolume({ volume_id: vol, staging_target_path: staging });
    expect(await env.loopsOf(file)).toEqual([]);
  });

  it('a read-only publish (the pod cannot write, by design) is not flagged', async () => {
    const file = await env.image('ro.img', 64 * MiB);
    const vol = 'file-ro-publish';
    const { target } = await stageAndPublish(vol, file, mountCap('ext4'), true);
    expect(podWrite(join(target, 'x'), Buffer.from('x'))?.code).toBe('EROFS');
    expect((await stats(vol, target)).volume_condition).toEqual({ abnormal: false, message: 'volume is attached and mounted' });
  });
});
