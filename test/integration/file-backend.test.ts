import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { FileBackend } from '../../src/backends/file/backend.js';
import { newSnapshotId, newVolumeId } from '../../src/backends/ids.js';
import type { FileBackendConfig } from '../../src/config/types.js';
import { HostExecutor } from '../../src/exec/run.js';
import { scratchFs, tempDir, type ScratchFs } from '../helpers/scratch-fs.js';
import { fileBackendConfig } from '../helpers/backend-config.js';
import { stringMatching } from '../helpers/matchers.js';

const MiB = 1024 * 1024;
const log = pino({ level: 'silent' });
const exec = new HostExecutor({ mode: 'direct', hostRoot: '/', defaultTimeoutMs: 60_000 });

const cfg = (dataDir: string, extra: Partial<FileBackendConfig> = {}): FileBackendConfig => fileBackendConfig('b1', dataDir, extra);

const mount = { accessType: 'mount' as const, accessMode: 'SINGLE_NODE_WRITER', fsType: 'ext4' };

/** Blocks actually allocated on disk: a sparse image allocates only what was written. */
const allocated = async (p: string) => (await fs.stat(p)).blocks * 512;

async function writeAt(path: string, offset: number, data: Buffer) {
  const fh = await fs.open(path, 'r+');
  await fh.write(data, 0, data.length, offset);
  await fh.close();
}

for (const kind of ['xfs', 'ext4'] as const) {
  describe(`file backend on a real ${kind} loop filesystem`, () => {
    let sfs: ScratchFs;
    let b: FileBackend;
    beforeAll(async () => {
      sfs = await scratchFs(kind, 400);
      b = new FileBackend(cfg(join(sfs.dir, 'data')), exec, log);
      await b.start();
    });
    afterAll(async () => sfs?.cleanup());

    it('creates sparse images of the requested size', async () => {
      const v = await b.createVolume({ id: newVolumeId('b1'), name: 'v1', sizeBytes: 64 * MiB, parameters: {}, capabilities: [mount] });
      expect(v.state).toBe('available');
      const img = b.imagePath(v.id);
      expect((await fs.stat(img)).size).toBe(64 * MiB);
      expect(await allocated(img)).toBeLessThan(MiB);
    });

    it(`snapshots and clones by ${kind === 'xfs' ? 'reflink' : 'sparse copy'}, keeping the data and the holes`, async () => {
      const v = await b.createVolume({ id: newVolumeId('b1'), name: 'src', sizeBytes: 64 * MiB, parameters: {}, capabilities: [mount] });
      const data = Buffer.alloc(4 * MiB, 0xab);
      await writeAt(b.imagePath(v.id), 8 * MiB, data);
      const s = await b.createSnapshot({ id: newSnapshotId('b1'), name: 's1', sourceVolumeId: v.id });
      expect(s.copyMethod).toBe(kind === 'xfs' ? 'reflink' : 'sparse-copy');
      expect(s.sizeBytes).toBe(64 * MiB);
      // Later writes to the source must not show in the snapshot (copy-on-write).
      await writeAt(b.imagePath(v.id), 8 * MiB, Buffer.alloc(MiB, 0xcd));
      const snapData = await fs.readFile(b.snapshotPath(s.id));
      expect(snapData.subarray(8 * MiB, 12 * MiB).equals(data)).toBe(true);
      if (kind === 'ext4') expect(await allocated(b.snapshotPath(s.id))).toBeLessThan(6 * MiB);

      const c = await b.createVolume({ id: newVolumeId('b1'), name: 'clone', sizeBytes: 96 * MiB, parameters: {}, capabilities: [mount], source: { type: 'snapshot', id: s.id } });
      const cloneData = await fs.readFile(b.imagePath(c.id));
      expect(cloneData.length).toBe(96 * MiB);
      expect(cloneData.subarray(8 * MiB, 12 * MiB).equals(data)).toBe(true);
    });

    it('grows an image on expand and reports capacity with what is promised', async () => {
      const before = await b.capacity();
      const v = await b.createVolume({ id: newVolumeId('b1'), name: 'grow', sizeBytes: 16 * MiB, parameters: {}, capabilities: [mount] });
      await b.expandVolume(v.id, 32 * MiB);
      expect((await fs.stat(b.imagePath(v.id))).size).toBe(32 * MiB);
      const after = await b.capacity();
      expect(after.provisionedBytes - before.provisionedBytes).toBe(32 * MiB);
      expect(after.availableBytes).toBeLessThanOrEqual(before.availableBytes - 32 * MiB);
    });
  });
}

describe('file backend crash recovery (records on disk are the truth)', () => {
  it('rolls back a create and finishes a delete that a crash interrupted, and lists orphan images', async () => {
    const t = tempDir();
    try {
      const dataDir = join(t.dir, 'data');
      const b1 = new FileBackend(cfg(dataDir), exec, log);
      await b1.start();
      const kept = await b1.createVolume({ id: newVolumeId('b1'), name: 'kept', sizeBytes: MiB, parameters: {}, capabilities: [mount] });
      const gone = await b1.createVolume({ id: newVolumeId('b1'), name: 'gone', sizeBytes: MiB, parameters: {}, capabilities: [mount] });

      // What a SIGKILL leaves: a create whose record says creating, a delete whose record says deleting,
      // a half-written record temp file, and an image nobody recorded.
      const half = newVolumeId('b1');
      await fs.writeFile(join(dataDir, 'volumes', `${half}.json`), JSON.stringify({ ...kept, id: half, name: 'half', state: 'creating' }));
      await fs.writeFile(join(dataDir, 'volumes', `${half}.img`), '');
      await fs.writeFile(join(dataDir, 'volumes', `${gone.id}.json`), JSON.stringify({ ...gone, state: 'deleting' }));
      await fs.writeFile(join(dataDir, 'volumes', `.${kept.id}.json.1234.tmp`), '{"trunc');
      const stray = newVolumeId('b1');
      await fs.writeFile(join(dataDir, 'volumes', `${stray}.img`), '');

      const b2 = new FileBackend(cfg(dataDir), exec, log);
      const report = await b2.start();
      expect([...b2.volumes()].map((v) => v.name)).toEqual(['kept']);
      expect(report.recovered.join('\n')).toMatch(/half.*rolled back/);
      expect(report.recovered.join('\n')).toMatch(/gone.*finished an interrupted delete/);
      expect(report.orphans).toEqual([join(dataDir, 'volumes', `${stray}.img`)]);
      await expect(fs.stat(join(dataDir, 'volumes', `${half}.img`))).rejects.toThrow();
      await expect(fs.stat(join(dataDir, 'volumes', `${gone.id}.img`))).rejects.toThrow();
      expect((await fs.readdir(join(dataDir, 'volumes'))).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    } finally {
      t.cleanup();
    }
  });

  it('adopts the image size after an expand interrupted before its record was written', async () => {
    const t = tempDir();
    try {
      const dataDir = join(t.dir, 'data');
      const b1 = new FileBackend(cfg(dataDir), exec, log);
      await b1.start();
      const v = await b1.createVolume({ id: newVolumeId('b1'), name: 'v', sizeBytes: MiB, parameters: {}, capabilities: [mount] });
      await fs.truncate(b1.imagePath(v.id), 4 * MiB);
      const b2 = new FileBackend(cfg(dataDir), exec, log);
      await b2.start();
      expect(b2.volume(v.id)?.sizeBytes).toBe(4 * MiB);
    } finally {
      t.cleanup();
    }
  });

  it('marks the volume unhealthy when its image disappears', async () => {
    const t = tempDir();
    try {
      const b = new FileBackend(cfg(join(t.dir, 'data')), exec, log);
      await b.start();
      const v = await b.createVolume({ id: newVolumeId('b1'), name: 'v', sizeBytes: MiB, parameters: {}, capabilities: [mount] });
      expect((await b.volumeHealth(v.id)).abnormal).toBe(false);
      await fs.rm(b.imagePath(v.id));
      expect(await b.volumeHealth(v.id)).toMatchObject({ abnormal: true, message: stringMatching(/missing/) });
    } finally {
      t.cleanup();
    }
  });
});

describe('file backend readiness (Probe)', () => {
  it('is ready while both record directories are readable and writable, and names the backend and directory when one is gone', async () => {
    const t = tempDir();
    try {
      const b = new FileBackend(cfg(join(t.dir, 'data')), exec, log);
      await b.start();
      await expect(b.probe()).resolves.toBeUndefined();
      await fs.rm(join(t.dir, 'data', 'snapshots'), { recursive: true });
      await expect(b.probe()).rejects.toThrow(/backend "b1": .*snapshots is not readable and writable \(ENOENT\)/);
      await fs.mkdir(join(t.dir, 'data', 'snapshots'));
      await expect(b.probe()).resolves.toBeUndefined();
      await fs.rm(join(t.dir, 'data', 'volumes'), { recursive: true });
      await expect(b.probe()).rejects.toThrow(/volumes is not readable and writable/);
    } finally {
      t.cleanup();
    }
  });
});
