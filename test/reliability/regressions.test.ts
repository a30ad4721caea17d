import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Code, type DomainError } from '../../src/errors/domain-error.js';
import { ExecError, type Executor } from '../../src/exec/run.js';
import { mkfs } from '../../src/node/format.js';
import { blockCap, csiError, MiB, mountCap, NodeEnv } from '../helpers/node-env.js';

/** Deterministic replays of what the randomized reliability tests found, so each stays fixed whatever the seed. */

let env: NodeEnv;
beforeEach(async () => {
  env = await NodeEnv.create();
});
afterEach(async () => {
  await env.cleanup();
});

describe('regressions found by the reliability tests', () => {
  it('NodeGetVolumeStats of a block volume at a path that is a filesystem mount of its device is NOT_FOUND, not INTERNAL (fuzzing)', async () => {
    // Two volumes on one image (a CO handing one volume another's publish_context): A mounted, B staged for block.
    const file = await env.image('shared.img', 32 * MiB);
    const a = env.stageReq('vol-a', file, mountCap('ext4'));
    await env.h.NodeStageVolume(a);
    await env.h.NodeStageVolume(env.stageReq('vol-b', file, blockCap()));
    const err = await csiError(env.h.NodeGetVolumeStats({ volume_id: 'vol-b', volume_path: a.staging_target_path }));
    expect(err.code).toBe(Code.NOT_FOUND);
    expect(err.message).toContain('not a block device');
  });
});

describe('regressions found by the reliability tests (stage)', () => {
  it('NodeStageVolume of a staged volume with a publish_context naming another image is ALREADY_EXISTS and leaves the stage intact (fuzzing)', async () => {
    const a = await env.image('a.img', 32 * MiB);
    const b = await env.image('b.img', 32 * MiB);
    const stage = env.stageReq('vol-x', a, mountCap('ext4'));
    await env.h.NodeStageVolume(stage);
    const target = env.target('vol-x');
    await env.h.NodePublishVolume({ volume_id: 'vol-x', staging_target_path: stage.staging_target_path, target_path: target, volume_capability: mountCap('ext4') });
    const before = await env.svc.orphans();
    const err = await csiError(env.h.NodeStageVolume({ ...stage, publish_context: { transport: 'local', path: b } }));
    expect(err.code).toBe(Code.ALREADY_EXISTS);
    // Nothing changed: still staged from a.img, the publish works, b.img was never attached, nothing is unexplained.
    expect(await env.svc.orphans()).toEqual(before);
    expect(before).toEqual([]);
    expect((await env.loopsUnder()).map((l) => l.back)).toEqual([a]);
    await env.h.NodeUnpublishVolume({ volume_id: 'vol-x', target_path: target });
    await env.h.NodeUnstageVolume({ volume_id: 'vol-x', staging_target_path: stage.staging_target_path });
    expect(await env.mountsUnder()).toEqual([]);
  });
});

describe('regressions found by the reliability tests (one device, two volumes)', () => {
  it('two NodeStageVolume calls at once whose publish_contexts lead to one blank image both succeed, and it is formatted once (fuzzing)', async () => {
    // Before: both probed the device blank; one mkfs then met the other's ("is mounted" or "in use") → INTERNAL,
    // or, retrying after the busy one, formatted a device that by then held a filesystem.
    for (let round = 0; round < 3; round++) {
      const file = await env.image(`shared-${round}.img`, 32 * MiB);
      const a = env.stageReq(`vol-a${round}`, file, mountCap('ext4'));
      const b = env.stageReq(`vol-b${round}`, file, mountCap('ext4'));
      const res = await Promise.allSettled([env.h.NodeStageVolume(a), env.h.NodeStageVolume(b)]);
      expect(res.map((r) => (r.status === 'fulfilled' ? 'OK' : `${(r.reason as DomainError).code}: ${(r.reason as Error).message}`))).toEqual(['OK', 'OK']);
      // One filesystem, mounted at both staging paths.
      const mounts = (await env.mountsUnder()).filter((m) => m.mountPoint === a.staging_target_path || m.mountPoint === b.staging_target_path);
      expect(mounts.length).toBe(2);
      expect(new Set(mounts.map((m) => m.majMin)).size).toBe(1);
      expect((await env.loopsUnder()).filter((l) => l.back === file).length).toBe(1);
      // (Neither unstages while the other mounts the device; env.cleanup() takes them down.)
    }
  });

  it('mkfs that found the device busy probes it again before retrying, and leaves a filesystem written meanwhile alone (safety rule 1)', async () => {
    const calls: string[] = [];
    const exec: Executor = {
      async run(cmd, args) {
        calls.push(cmd);
        if (cmd === 'mkfs.ext4') throw new ExecError(`mkfs.ext4 ${args.join(' ')}`, 1, '/dev/loop9 is apparently in use by the system; will not make a filesystem here!', false);
        if (cmd === 'blkid') return { stdout: 'DEVNAME=/dev/loop9\nTYPE=ext4\n', stderr: '', exitCode: 0 };
        throw new Error(`unexpected ${cmd}`);
      },
    };
    await mkfs(exec, '/dev/loop9', 'ext4', []);
    expect(calls).toEqual(['mkfs.ext4', 'blkid']);
    // And a filesystem of another type written meanwhile is refused, not formatted over.
    calls.length = 0;
    const other: Executor = { run: async (cmd, args) => (cmd === 'blkid' ? { stdout: 'TYPE=xfs\n', stderr: '', exitCode: 0 } : exec.run(cmd, args)) };
    const err = await csiError(mkfs(other, '/dev/loop9', 'ext4', []));
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
  });
});
