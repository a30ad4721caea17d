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
