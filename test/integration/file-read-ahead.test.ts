// Start-up reads the file backend's record directories on a worker thread
// (src/store/dir-snapshot.ts) while the driver's modules load. What it then
// serves, repairs and reports must be exactly what the synchronous scan
// finds: the worker is the built one (dist/), as `sinter controller` runs it.
import { mkdirSync, promises as fs, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import type { SnapshotRecord, VolumeRecord } from '../../src/backends/backend.js';
import { FileBackend } from '../../src/backends/file/backend.js';
import { inspectFileBackend } from '../../src/backends/file/inspect.js';
import { newVolumeId } from '../../src/backends/ids.js';
import { RecordStore } from '../../src/store/record-store.js';
import type { ReadAhead } from '../../src/store/dir-snapshot.js';
import { HostExecutor } from '../../src/exec/run.js';
import { fileBackendConfig } from '../helpers/backend-config.js';
import { messyDataDir } from '../helpers/messy-data-dir.js';
import { tempDir } from '../helpers/scratch-fs.js';

const MiB = 1024 * 1024;
const log = pino({ level: 'silent' });
const exec = new HostExecutor({ mode: 'direct', hostRoot: '/', defaultTimeoutMs: 60_000 });

// The built module: its worker is dist/store/dir-snapshot-worker.js (vitest runs src/ as TypeScript, which a worker cannot load).
type Start = (groups: { dirs: string[]; digest?: string }[], suffix: string, version?: string) => ReadAhead;
let startDirSnapshots: Start;
type ReadAheadAll = (b: unknown[], minDirBytes?: number, version?: string) => ReadAhead | undefined;
let readAheadFileBackends: ReadAheadAll;

beforeAll(async () => {
  // dist/ is built by test/global-setup.ts.
  const root = new URL('../..', import.meta.url).pathname;
  ({ startDirSnapshots } = (await import(join(root, 'dist/store/dir-snapshot.js'))) as { startDirSnapshots: Start });
  ({ readAheadFileBackends } = (await import(join(root, 'dist/backends/file/read-ahead.js'))) as { readAheadFileBackends: ReadAheadAll });
});

const stores = (dataDir: string) => ({
  volumes: new RecordStore<VolumeRecord>(join(dataDir, 'volumes')),
  snapshots: new RecordStore<SnapshotRecord>(join(dataDir, 'snapshots')),
});

describe('start-up read-ahead of the file backend records (worker thread)', () => {
  const t = tempDir();
  afterAll(() => t.cleanup());

  it('gives inspect the same findings, plan and served records as the synchronous scan', async () => {
    const dataDir = join(t.dir, 'same');
    await messyDataDir(dataDir);
    const layout = { name: 'b1', dataDir, ...stores(dataDir) };
    const ahead = startDirSnapshots([{ dirs: [layout.volumes.dir, layout.snapshots.dir] }], '.json');
    const pre = { volumes: await ahead.dirs.get(layout.volumes.dir), snapshots: await ahead.dirs.get(layout.snapshots.dir) };
    // The worker really read both (undefined would mean the fallback ran, and the comparison proves nothing).
    expect(pre.volumes?.names.length).toBeGreaterThan(15);
    expect(pre.snapshots?.names.length).toBe(2);
    const withAhead = await inspectFileBackend({ ...layout, pre });
    const without = await inspectFileBackend(layout);
    expect(withAhead).toEqual(without);
    const kinds = new Set(without.findings.map((f) => f.kind));
    for (const k of ['interrupted-expand', 'image-missing', 'image-too-small', 'image-not-a-file', 'interrupted-delete', 'interrupted-create', 'stray-temp', 'unreadable-record', 'orphan-image', 'unknown-file', 'foreign-record'])
      expect(kinds, k).toContain(k);
  });

  it('a directory of many records (sent and parsed in several chunks): the same inspection, corrupt records in any chunk reported', async () => {
    const dataDir = join(t.dir, 'many');
    const { snap } = await messyDataDir(dataDir);
    const vd = join(dataDir, 'volumes');
    const template = JSON.parse(await fs.readFile(join(vd, `${snap.sourceVolumeId}.json`), 'utf8')) as VolumeRecord;
    const ids: string[] = [];
    for (let i = 0; i < 2600; i++) {
      const id = newVolumeId('b1');
      ids.push(id);
      writeFileSync(join(vd, `${id}.json`), JSON.stringify({ ...template, id, name: `many-${i}` }));
      if (i % 2) writeFileSync(join(vd, `${id}.img`), '');
    }
    // Unreadable ones spread over the sorted names, so over several chunks.
    const sorted = [...ids].sort();
    for (const k of [0, 1023, 1024, 2047, 2599]) writeFileSync(join(vd, `${sorted[k]}.json`), '{"id": "cut sh');
    // Images grown past their records in every chunk: interrupted expands, found only through the lstats the worker posts last.
    const grownIds = [2, 1030, 2100, 2590].map((k) => sorted[k]);
    for (const id of grownIds) writeFileSync(join(vd, `${id}.img`), Buffer.alloc(2 * MiB));
    const layout = { name: 'b1', dataDir, ...stores(dataDir) };
    const ahead = startDirSnapshots([{ dirs: [layout.volumes.dir, layout.snapshots.dir] }], '.json');
    const pre = { volumes: await ahead.dirs.get(layout.volumes.dir), snapshots: await ahead.dirs.get(layout.snapshots.dir) };
    expect(pre.volumes?.names.length).toBeGreaterThan(3 * 1024);
    const withAhead = await inspectFileBackend({ ...layout, pre });
    const without = await inspectFileBackend(layout);
    expect(withAhead).toEqual(without);
    const unreadable = without.findings.filter((f) => f.kind === 'unreadable-record').map((f) => f.subject);
    for (const k of [0, 1023, 1024, 2047, 2599]) expect(unreadable).toContain(join(vd, `${sorted[k]}.json`));
    expect(without.serve.volumes.filter((v) => v.name.startsWith('many-'))).toHaveLength(2600 - 5);
    const expands = without.plan.flatMap((r) => (r.do === 'record-size' ? [r.id] : []));
    for (const id of grownIds) expect(expands).toContain(id);
  });

  it('starts a backend from the read-ahead with the same recovery and volumes as without it', async () => {
    const a = join(t.dir, 'a');
    await messyDataDir(a);
    const b = join(t.dir, 'b');
    await fs.cp(a, b, { recursive: true });
    // Threshold 0: the fixture is small, and a small volumes directory is read without a worker.
    expect(readAheadFileBackends([fileBackendConfig('b1', a)])).toBeUndefined();
    const ahead = readAheadFileBackends([fileBackendConfig('b1', a)], 0)!;
    const fa = new FileBackend(fileBackendConfig('b1', a), exec, log, ahead);
    const fb = new FileBackend(fileBackendConfig('b1', b), exec, log);
    const ra = await fa.start();
    const rb = await fb.start();
    const norm = (s: string) => s.replaceAll(a, 'D').replaceAll(b, 'D');
    expect(JSON.parse(norm(JSON.stringify(ra)))).toEqual(JSON.parse(norm(JSON.stringify(rb))));
    expect(ra.recovered.join('\n')).toMatch(/recorded size .* after an interrupted expand/);
    expect([...fa.volumes()].map((v) => [v.name, v.sizeBytes]).sort()).toEqual([...fb.volumes()].map((v) => [v.name, v.sizeBytes]).sort());
    expect([...fa.volumes()].length).toBeGreaterThan(3);
    // What was repaired is on disk as well: a second start from disk finds nothing left to do.
    const again = await new FileBackend(fileBackendConfig('b1', a), exec, log).start();
    expect(again.recovered).toEqual([]);
  });

  it('falls back to reading itself when a directory is missing, reporting it as without read-ahead', async () => {
    const dataDir = join(t.dir, 'missing');
    mkdirSync(join(dataDir, 'volumes'), { recursive: true });
    const layout = { name: 'b1', dataDir, ...stores(dataDir) };
    const ahead = startDirSnapshots([{ dirs: [layout.volumes.dir, layout.snapshots.dir] }], '.json');
    const pre = { volumes: await ahead.dirs.get(layout.volumes.dir), snapshots: await ahead.dirs.get(layout.snapshots.dir) };
    expect(pre.snapshots).toBeUndefined();
    expect(await inspectFileBackend({ ...layout, pre })).toEqual(await inspectFileBackend(layout));
    expect((await inspectFileBackend(layout)).findings.map((f) => f.kind)).toContain('missing-directory');
    rmSync(dataDir, { recursive: true });
  });
});
