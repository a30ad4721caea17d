import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Backend } from '../../src/backends/backend.js';
import { FileBackend } from '../../src/backends/file/backend.js';
import { newVolumeId } from '../../src/backends/ids.js';
import { encodeNodeId } from '../../src/contracts/nodeid.js';
import { StaticNodeRegistry } from '../../src/controller/node-registry.js';
import { VolumeManager } from '../../src/controller/volumes.js';
import { HostExecutor } from '../../src/exec/run.js';
import { fileBackendConfig } from '../helpers/backend-config.js';
import { scratchFs, type ScratchFs } from '../helpers/scratch-fs.js';

const MiB = 1024 * 1024;
const log = pino({ level: 'silent' });
const exec = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 30_000 }, log);
const nodeId = encodeNodeId({ host: 'full-node', iqn: 'iqn.2025-01.io.test:full-node', wwpns: [] });
const cap = { accessType: 'mount' as const, accessMode: 'SINGLE_NODE_WRITER' as const, fsType: 'ext4', mountFlags: [] };

/**
 * A publish's or unpublish's attachment record that cannot be written (the
 * data directory's filesystem is full) must leave the backend's view as the
 * disk has it: the RPC fails, the next one answers from what is recorded, and
 * a retry once there is room records what it says.
 */
describe('file backend: a failed attachment record write leaves memory as the disk has it (real full filesystem)', () => {
  let sfs: ScratchFs;
  let dataDir: string;
  const filler = () => join(sfs.dir, 'filler');

  const fill = async () => {
    const fh = await fs.open(filler(), 'w');
    const chunk = Buffer.alloc(MiB, 1);
    try {
      for (;;) await fh.write(chunk);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
    } finally {
      await fh.close().catch(() => undefined);
    }
    // Whatever room is left is smaller than a block or two: a record (temp file, write, fsync) no longer fits.
    const tail = await fs.open(filler(), 'a');
    try {
      for (;;) await tail.write(Buffer.alloc(512, 1));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
    } finally {
      await tail.close().catch(() => undefined);
    }
  };
  const unfill = () => fs.rm(filler(), { force: true });
  const restarted = async () => {
    const b = new FileBackend(fileBackendConfig('full', dataDir), exec, log);
    await b.start();
    return b;
  };
  const manager = (b: FileBackend) => {
    const m = new VolumeManager(new Map<string, Backend>([['full', b]]), new StaticNodeRegistry(undefined), log);
    m.index();
    return m;
  };

  beforeAll(async () => {
    sfs = await scratchFs('ext4', 32);
    dataDir = join(sfs.dir, 'data');
  });
  afterAll(async () => sfs?.cleanup());

  it('ControllerPublish whose record cannot be written fails and leaves the volume unpublished, in memory as on disk', async () => {
    const b = await restarted();
    const id = newVolumeId('full');
    await b.createVolume({ id, name: id, sizeBytes: 4 * MiB, parameters: {}, capabilities: [cap] });
    const volumes = manager(b);
    await fill();
    try {
      await expect(volumes.publish(id, nodeId, cap, false, {})).rejects.toMatchObject({ code: 'ENOSPC' });
      expect(b.volume(id)).toMatchObject({ state: 'available', attachments: [] });
      // DeleteVolume answers from the same view: nothing is published.
      expect(volumes.get(id)?.attachments).toEqual([]);
    } finally {
      await unfill();
    }
    expect((await restarted()).volume(id)).toMatchObject({ state: 'available', attachments: [] });
    // The CO's retry, with room again, publishes and records.
    await volumes.publish(id, nodeId, cap, false, {});
    expect((await restarted()).volume(id)).toMatchObject({ state: 'in-use', attachments: [{ nodeId }] });
  });

  it('ControllerUnpublish whose record cannot be written fails, keeps the publish recorded, and its retry records the unpublish', async () => {
    const b = await restarted();
    const id = newVolumeId('full');
    await b.createVolume({ id, name: id, sizeBytes: 4 * MiB, parameters: {}, capabilities: [cap] });
    const volumes = manager(b);
    await volumes.publish(id, nodeId, cap, false, {});
    await fill();
    try {
      await expect(volumes.unpublish(id, nodeId)).rejects.toMatchObject({ code: 'ENOSPC' });
      expect(b.volume(id)).toMatchObject({ state: 'in-use', attachments: [{ nodeId }] });
      // DeleteVolume still refuses: the disk says published.
      await expect(volumes.delete(id)).rejects.toMatchObject({ code: 'failed-precondition' });
    } finally {
      await unfill();
    }
    expect((await restarted()).volume(id)).toMatchObject({ state: 'in-use', attachments: [{ nodeId }] });
    // The retry must not find "nothing to do" in memory while the disk still holds the publish.
    await volumes.unpublish(id, nodeId);
    expect((await restarted()).volume(id)).toMatchObject({ state: 'available', attachments: [] });
  });
});
