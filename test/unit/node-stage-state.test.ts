import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { StageState, type StageRecord } from '../../src/node/stage-state.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'sinter-state-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const rec = (id: string, extra: Partial<StageRecord> = {}): StageRecord => ({
  version: 1,
  volumeId: id,
  stagingPath: `/var/lib/kubelet/staging/${id}`,
  createdStagingDir: false,
  access: 'mount',
  fsType: 'ext4',
  mountFlags: [],
  accessMode: 'SINGLE_NODE_WRITER',
  publishContext: { transport: 'local', path: '/data/x.img' },
  phase: 'staged',
  publishes: [],
  updatedAt: '',
  ...extra,
});

describe('StageState', () => {
  it('round-trips records and replaces them whole, leaving no temp files', async () => {
    const s = new StageState(dir);
    expect(await s.get('file-a')).toBeUndefined();
    await s.put(rec('file-a'));
    await s.put(rec('file-a', { phase: 'error', lastError: 'boom' }));
    expect(await s.get('file-a')).toMatchObject({ phase: 'error', lastError: 'boom' });
    expect(await readdir(join(dir, 'volumes'))).toEqual(['file-a.json']);
    await s.remove('file-a');
    await s.remove('file-a');
    expect(await s.get('file-a')).toBeUndefined();
  });

  it('lists good records, reports unreadable ones and leftovers of interrupted writes', async () => {
    const s = new StageState(dir);
    await s.put(rec('file-a'));
    await s.put(rec('file-b'));
    await writeFile(join(dir, 'volumes', 'file-c.json'), '{"version":1,');
    await writeFile(join(dir, 'volumes', 'file-d.json'), JSON.stringify(rec('file-OTHER')));
    await writeFile(join(dir, 'volumes', '.file-a.json.ffff.tmp'), 'partial');
    const l = await s.list();
    expect(l.records.map((r) => r.volumeId)).toEqual(['file-a', 'file-b']);
    expect(l.corrupt.map((c) => c.file.split('/').pop())).toEqual(['file-c.json', 'file-d.json']);
    expect(l.strayTemps).toHaveLength(1);
    await s.removeStrayTemps(l.strayTemps);
    expect((await readdir(join(dir, 'volumes'))).sort()).toEqual(['file-a.json', 'file-b.json', 'file-c.json', 'file-d.json']);
    // The old record is intact despite the interrupted write.
    expect((JSON.parse(await readFile(join(dir, 'volumes', 'file-a.json'), 'utf8')) as { volumeId: string }).volumeId).toBe('file-a');
  });

  it('never builds a file name from a malformed id', async () => {
    const s = new StageState(dir);
    await expect(s.put(rec('../escape'))).rejects.toThrow(/malformed/);
    await expect(s.get('a/b')).rejects.toThrow(/malformed/);
  });
});

describe('StageState.volumesAt (the in-memory index of staging paths)', () => {
  it('reads the records once, then follows put and remove, including those made while it loads', async () => {
    const first = new StageState(dir);
    await first.put(rec('file-a', { stagingPath: '/k/p1' }));
    await first.put(rec('file-b', { stagingPath: '/k/p2' }));
    await writeFile(join(dir, 'volumes', 'file-c.json'), '{"version":1,');
    const s = new StageState(dir);
    // A put and a remove racing the first load end up in the index as they end up on disk.
    const [at1] = await Promise.all([s.volumesAt('/k/p1'), s.put(rec('file-d', { stagingPath: '/k/p1' })), s.remove('file-b')]);
    expect(at1.sort()).toEqual(expect.arrayContaining(['file-a']));
    expect((await s.volumesAt('/k/p1')).sort()).toEqual(['file-a', 'file-d']);
    expect(await s.volumesAt('/k/p2')).toEqual([]);
    await s.put(rec('file-a', { stagingPath: '/k/p2' }));
    expect(await s.volumesAt('/k/p1')).toEqual(['file-d']);
    expect(await s.volumesAt('/k/p2')).toEqual(['file-a']);
    // What a fresh reader of the directory finds is what the index says.
    const fresh = new StageState(dir);
    for (const p of ['/k/p1', '/k/p2']) expect((await fresh.volumesAt(p)).sort()).toEqual((await s.volumesAt(p)).sort());
  });

  it('seeded at start-up, it reads no file', async () => {
    const s = new StageState(join(dir, 'nowhere'));
    s.seed([rec('file-a', { stagingPath: '/k/p1' })]);
    expect(await s.volumesAt('/k/p1')).toEqual(['file-a']);
  });
});
