import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { Code } from '../../src/errors/domain-error.js';
import { csiError, NodeEnv, mountCap, MiB } from '../helpers/node-env.js';
import { objectContaining, stringContaining } from '../helpers/matchers.js';

let env: NodeEnv;
// A fresh node world per test, cleaned up (unmounted, detached) however the test ends.
beforeEach(async () => {
  env = await NodeEnv.create();
  return () => env.cleanup();
});
const loopsOf = (file: string) => env.loopsOf(file);
const recordFile = (vol: string) => join(env.stateDir, 'volumes', `${vol}.json`);
async function record(vol: string): Promise<Record<string, unknown>> {
  return JSON.parse(await readFile(recordFile(vol), 'utf8')) as Record<string, unknown>;
}
async function patchRecord(vol: string, patch: Record<string, unknown>) {
  await writeFile(recordFile(vol), JSON.stringify({ ...(await record(vol)), ...patch }));
}

describe('restart and crash recovery (safety rule 3)', () => {
  it('a restarted plugin carries on with volumes staged before the restart', async () => {
    const file = await env.image('r.img', 128 * MiB);
    const stage = env.stageReq('file-restart', file, mountCap('ext4'));
    await env.h.NodeStageVolume(stage);
    env.restart();
    await env.svc.start();
    expect(await env.svc.orphans()).toEqual([]);
    const target = env.target('file-restart');
    await env.h.NodePublishVolume({ volume_id: 'file-restart', staging_target_path: stage.staging_target_path, target_path: target, volume_capability: mountCap('ext4') });
    env.restart();
    await env.h.NodeUnpublishVolume({ volume_id: 'file-restart', target_path: target });
    await env.h.NodeUnstageVolume({ volume_id: 'file-restart', staging_target_path: stage.staging_target_path });
    expect(await env.mountsUnder()).toEqual([]);
    expect(await loopsOf(file)).toEqual([]);
  });

  it('a read-only publish cut short between its bind and its read-only remount is finished by the retry, read-only', async () => {
    const file = await env.image('ro.img', 128 * MiB);
    const stage = env.stageReq('file-ro-crash', file, mountCap('ext4'));
    await env.h.NodeStageVolume(stage);
    const target = env.target('file-ro-crash');
    const pub = { volume_id: 'file-ro-crash', staging_target_path: stage.staging_target_path, target_path: target, volume_capability: mountCap('ext4'), readonly: true };
    await env.h.NodePublishVolume(pub);
    // What a SIGKILL between `mount --bind` and `mount -o remount,bind,ro` leaves: the record says read-only, the bind is read-write.
    await env.sh('mount', ['-o', 'remount,bind,rw', target]);
    expect((await env.mountsUnder()).find((m) => m.mountPoint === target)?.options).not.toContain('ro');
    env.restart();
    await env.h.NodePublishVolume(pub);
    const mounts = (await env.mountsUnder()).filter((m) => m.mountPoint === target);
    expect(mounts).toHaveLength(1);
    expect(mounts[0].options).toContain('ro');
    // A read-write publish over it is still refused: only the unfinished read-only one is redone.
    const err = await csiError(env.h.NodePublishVolume({ ...pub, readonly: false }));
    expect(err.code).toBe(Code.ALREADY_EXISTS);
    await env.h.NodeUnpublishVolume({ volume_id: 'file-ro-crash', target_path: target });
    await env.h.NodeUnstageVolume({ volume_id: 'file-ro-crash', staging_target_path: stage.staging_target_path });
    expect(await env.mountsUnder()).toEqual([]);
  });

  it('a stage retried after a crash reuses the loop device attached before the crash', async () => {
    const file = await env.image('a.img', 128 * MiB);
    const dev = (await env.sh('losetup', ['--find', '--show', file])).trim();
    await env.h.NodeStageVolume(env.stageReq('file-reuse', file, mountCap('ext4')));
    expect(await loopsOf(file)).toEqual([dev]);
    expect((await record('file-reuse')).device).toBe(dev);
  });

  it('a stage retried after a crash between mount and record finishes without a second mount', async () => {
    const file = await env.image('m.img', 128 * MiB);
    const stage = env.stageReq('file-midstage', file, mountCap('ext4'));
    await env.h.NodeStageVolume(stage);
    await patchRecord('file-midstage', { phase: 'staging' });
    env.restart();
    expect(await env.svc.orphans()).toEqual([objectContaining({ kind: 'unfinished', volumeId: 'file-midstage' })]);
    // Not fully staged: publish waits for the stage to be finished.
    const err = await csiError(
      env.h.NodePublishVolume({ volume_id: 'file-midstage', staging_target_path: stage.staging_target_path, target_path: env.target('file-midstage'), volume_capability: mountCap('ext4') }),
    );
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    await env.h.NodeStageVolume(stage);
    expect((await env.mountsUnder()).filter((m) => m.mountPoint === stage.staging_target_path)).toHaveLength(1);
    expect((await record('file-midstage')).phase).toBe('staged');
  });

  it('an unstage retried after a crash between unmount and detach finishes the job', async () => {
    const file = await env.image('u.img', 128 * MiB);
    const stage = env.stageReq('file-midunstage', file, mountCap('ext4'));
    await env.h.NodeStageVolume(stage);
    await env.sh('umount', [stage.staging_target_path]);
    await patchRecord('file-midunstage', { phase: 'unstaging' });
    env.restart();
    await env.h.NodeUnstageVolume({ volume_id: 'file-midunstage', staging_target_path: stage.staging_target_path });
    expect(await loopsOf(file)).toEqual([]);
    expect(existsSync(recordFile('file-midunstage'))).toBe(false);
  });

  it('a failed stage leaves a visible error record that unstage clears', async () => {
    const file = await env.image('f.img', 64 * MiB);
    await env.exec.run('sfdisk', ['-q', file], { input: 'label: dos\n,16M\n' });
    const stage = env.stageReq('file-failed', file, mountCap('ext4'));
    await csiError(env.h.NodeStageVolume(stage));
    const rec = await record('file-failed');
    expect(rec.phase).toBe('error');
    expect(String(rec.lastError)).toContain('partition table');
    const orphans = await env.svc.orphans();
    expect(orphans).toEqual([objectContaining({ kind: 'unfinished', volumeId: 'file-failed', detail: stringContaining('partition table') })]);
    await env.h.NodeUnstageVolume({ volume_id: 'file-failed', staging_target_path: stage.staging_target_path });
    expect(existsSync(recordFile('file-failed'))).toBe(false);
    expect(await loopsOf(file)).toEqual([]);
  });

  it('start() drops temp files of interrupted writes, detaches unused devices no record explains, reports the rest and unmounts nothing', async () => {
    const file = await env.image('o.img', 128 * MiB);
    const stage = env.stageReq('file-orphan', file, mountCap('ext4'));
    await env.h.NodeStageVolume(stage);
    await env.sh('umount', [stage.staging_target_path]);
    const stray = await env.image('stray.img', 16 * MiB);
    await env.sh('losetup', ['--find', '--show', stray]);
    // A device from our roots that no record explains but someone mounted: left alone, reported.
    const mounted = await env.image('mounted.img', 16 * MiB);
    const mountedDev = (await env.sh('losetup', ['--find', '--show', mounted])).trim();
    await env.sh('mkfs.ext4', ['-q', mountedDev]);
    const byHand = join(env.kubelet, 'by-hand');
    await env.sh('mkdir', ['-p', byHand]);
    await env.sh('mount', [mountedDev, byHand]);
    await writeFile(join(env.stateDir, 'volumes', '.file-orphan.json.abcd.tmp'), '{"half":');
    await writeFile(join(env.stateDir, 'volumes', 'file-broken.json'), 'not json');

    env.restart();
    const before = (await env.svc.orphans()).map((o) => `${o.kind}:${o.remedy}`);
    expect(before.sort()).toEqual(
      ['stray-temp:restart', 'staging-mount-missing:retry', 'untracked-device:restart', 'untracked-device:operator', 'untracked-mount:operator', 'unreadable-record:operator'].sort(),
    );
    await env.svc.start();
    expect(await readdir(join(env.stateDir, 'volumes'))).not.toContain('.file-orphan.json.abcd.tmp');
    const kinds = (await env.svc.orphans()).map((o) =>
      'volumeId' in o ? `${o.kind}:${o.volumeId}` : o.kind === 'untracked-device' ? `${o.kind}:${o.device}` : o.kind === 'untracked-mount' ? `${o.kind}:${o.mountPoint}` : o.kind,
    );
    expect(kinds.sort()).toEqual(['staging-mount-missing:file-orphan', `untracked-device:${mountedDev}`, `untracked-mount:${byHand}`, 'unreadable-record'].sort());
    // The unused stray device is gone; the mounted one and its mount stay.
    expect(await loopsOf(stray)).toEqual([]);
    expect(await loopsOf(mounted)).toEqual([mountedDev]);
    expect((await env.mountsUnder()).map((m) => m.mountPoint)).toEqual([byHand]);
    await env.sh('umount', [byHand]);
    // And kubelet's retried stage repairs the missing mount.
    await env.h.NodeStageVolume(stage);
    expect((await env.mountsUnder()).map((m) => m.mountPoint)).toEqual([stage.staging_target_path]);
  });

  it('after a reboot re-used the recorded loop device for another file, unstage leaves that device alone', async () => {
    const file = await env.image('before.img', 64 * MiB);
    const stage = env.stageReq('file-reboot', file, mountCap('ext4'));
    await env.h.NodeStageVolume(stage);
    // "Reboot": mounts and loop devices are gone; another file now sits on a loop device the record names.
    await env.sh('umount', [stage.staging_target_path]);
    await env.sh('losetup', ['-d', (await loopsOf(file))[0]]);
    const other = await env.image('someone-else.img', 64 * MiB);
    const otherDev = (await env.sh('losetup', ['--find', '--show', other])).trim();
    await env.sh('mkfs.ext4', ['-q', otherDev]);
    const otherMount = join(env.kubelet, 'someone-else');
    await env.sh('mkdir', ['-p', otherMount]);
    await env.sh('mount', [otherDev, otherMount]);
    await patchRecord('file-reboot', { device: otherDev });
    env.restart();

    await env.h.NodeUnstageVolume({ volume_id: 'file-reboot', staging_target_path: stage.staging_target_path });
    expect(await loopsOf(other)).toEqual([otherDev]);
    expect((await env.mountsUnder()).map((m) => m.mountPoint)).toEqual([otherMount]);
    expect(existsSync(recordFile('file-reboot'))).toBe(false);
  });

  it('unstage and unpublish of things that are already gone succeed', async () => {
    await env.h.NodeUnstageVolume({ volume_id: 'file-never', staging_target_path: join(env.kubelet, 'staging', 'file-never') });
    await env.h.NodeUnpublishVolume({ volume_id: 'file-never', target_path: env.target('file-never') });
  });
});
