import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Code } from '../../src/csi/errors.js';
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
    await env.h.NodeStageVolume!(a);
    await env.h.NodeStageVolume!(env.stageReq('vol-b', file, blockCap()));
    const err = await csiError(env.h.NodeGetVolumeStats!({ volume_id: 'vol-b', volume_path: a.staging_target_path }));
    expect(err.code).toBe(Code.NOT_FOUND);
    expect(err.message).toContain('not a block device');
  });
});

describe('regressions found by the reliability tests (stage)', () => {
  it('NodeStageVolume of a staged volume with a publish_context naming another image is ALREADY_EXISTS and leaves the stage intact (fuzzing)', async () => {
    const a = await env.image('a.img', 32 * MiB);
    const b = await env.image('b.img', 32 * MiB);
    const stage = env.stageReq('vol-x', a, mountCap('ext4'));
    await env.h.NodeStageVolume!(stage);
    const target = env.target('vol-x');
    await env.h.NodePublishVolume!({ volume_id: 'vol-x', staging_target_path: stage.staging_target_path, target_path: target, volume_capability: mountCap('ext4') });
    const before = await env.svc.orphans();
    const err = await csiError(env.h.NodeStageVolume!({ ...stage, publish_context: { transport: 'local', path: b } }));
    expect(err.code).toBe(Code.ALREADY_EXISTS);
    // Nothing changed: still staged from a.img, the publish works, b.img was never attached, nothing is unexplained.
    expect(await env.svc.orphans()).toEqual(before);
    expect(before).toEqual([]);
    expect((await env.loopsUnder()).map((l) => l.back)).toEqual([a]);
    await env.h.NodeUnpublishVolume!({ volume_id: 'vol-x', target_path: target });
    await env.h.NodeUnstageVolume!({ volume_id: 'vol-x', staging_target_path: stage.staging_target_path });
    expect(await env.mountsUnder()).toEqual([]);
  });
});
