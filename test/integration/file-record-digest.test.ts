// The record digest a clean shutdown leaves (src/store/dir-digest.ts,
// src/backends/file/digest.ts): a start that reads it must serve, repair and
// report exactly what a start from the files does, must pass it over once
// anything changed the directories, and must remove it before its first
// change so that a crash never leaves one behind. The read-ahead worker is the
// built one (dist/), as `sinter controller` runs it.
import { existsSync, promises as fs, readFileSync, renameSync, rmSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { pino } from 'pino';
import type { SnapshotRecord, VolumeRecord } from '../../src/backends/backend.js';
import { FileBackend } from '../../src/backends/file/backend.js';
import { writeRecordDigest } from '../../src/backends/file/digest.js';
import { fileBackendDirs } from '../../src/backends/file/layout.js';
import { newVolumeId } from '../../src/backends/ids.js';
import type { ReadAhead } from '../../src/store/dir-snapshot.js';
import { RecordStore } from '../../src/store/record-store.js';
import { HostExecutor } from '../../src/exec/run.js';
import { fileBackendConfig } from '../helpers/backend-config.js';
import { messyDataDir } from '../helpers/messy-data-dir.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { MiB, mountCap, sinterArgs, startSinter, waitFor, type SinterProcess } from '../helpers/sinter-process.js';

const log = pino({ level: 'silent' });
const exec = new HostExecutor({ mode: 'direct', hostRoot: '/', defaultTimeoutMs: 60_000 });

type ReadAheadAll = (b: unknown[], minDirBytes?: number, version?: string) => ReadAhead | undefined;
let readAheadFileBackends: ReadAheadAll;
let VERSION: string;

beforeAll(async () => {
  // dist/ is built by test/global-setup.ts; its worker is dist/store/dir-snapshot-worker.js.
  const root = new URL('../..', import.meta.url).pathname;
  ({ readAheadFileBackends } = (await import(join(root, 'dist/backends/file/read-ahead.js'))) as { readAheadFileBackends: ReadAheadAll });
  ({ VERSION } = (await import(join(root, 'dist/version.js'))) as { VERSION: string });
});

const digestOf = (dataDir: string) => fileBackendDirs(dataDir).digest;
const layoutOf = (dataDir: string) => ({
  name: 'b1',
  dataDir,
  volumes: new RecordStore<VolumeRecord>(fileBackendDirs(dataDir).volumes),
  snapshots: new RecordStore<SnapshotRecord>(fileBackendDirs(dataDir).snapshots),
});

/** A logger whose lines a test can read. */
function capture() {
  const lines: string[] = [];
  return { log: pino({ level: 'info' }, { write: (l: string) => lines.push(l) }), text: () => lines.join('') };
}

/** Starts a backend on `dataDir` through the read-ahead (threshold 0: the fixtures are small); what it served and where its records came from. */
async function startWithReadAhead(dataDir: string, version = VERSION) {
  const cfg = fileBackendConfig('b1', dataDir);
  const ahead = readAheadFileBackends([cfg], 0, version)!;
  const c = capture();
  const backend = new FileBackend(cfg, exec, c.log, ahead);
  const report = await backend.start();
  const from = /"records loaded"/.test(c.text()) ? (/"from":"(\w+)"/.exec(c.text())?.[1] ?? '') : '';
  return { backend, report, fromDigest: from === 'digest' };
}

/** A start from the files alone. */
async function startFromFiles(dataDir: string) {
  const backend = new FileBackend(fileBackendConfig('b1', dataDir), exec, log);
  return { backend, report: await backend.start() };
}

/** messyDataDir after a start repaired what a start repairs: what a clean shutdown leaves, findings for a person included. */
async function shutDownMessy(dataDir: string) {
  await messyDataDir(dataDir);
  await startFromFiles(dataDir);
}

const served = (b: FileBackend) =>
  [...b.volumes()]
    .map((v) => [v.name, v.sizeBytes, v.state])
    .sort((x, y) => String(x[0]).localeCompare(String(y[0])));

describe('the record digest of a clean shutdown', () => {
  const t = tempDir();
  afterAll(() => t.cleanup());

  it('a start from it serves and reports exactly what a start from the files does, and removes it first', async () => {
    const a = join(t.dir, 'same-a');
    const b = join(t.dir, 'same-b');
    await shutDownMessy(a);
    await fs.cp(a, b, { recursive: true });
    await writeRecordDigest(layoutOf(a), log, 0);
    expect(existsSync(digestOf(a))).toBe(true);

    const withDigest = await startWithReadAhead(a);
    const fromFiles = await startFromFiles(b);
    // Really from the digest: otherwise the comparison below proves nothing.
    expect(withDigest.fromDigest).toBe(true);
    const norm = (x: unknown) => JSON.parse(JSON.stringify(x).replaceAll(a, 'D').replaceAll(b, 'D')) as unknown;
    expect(norm(withDigest.report)).toEqual(norm(fromFiles.report));
    expect(served(withDigest.backend)).toEqual(served(fromFiles.backend));
    // What a person must look at is still reported: unreadable and foreign records, an orphan image.
    expect(withDigest.report.corrupt.length).toBeGreaterThan(2);
    expect(withDigest.report.orphans.length).toBeGreaterThan(0);
    expect(existsSync(digestOf(a))).toBe(false);
    // A second start has no digest, reads the files, and serves the same.
    const again = await startWithReadAhead(a);
    expect(again.fromDigest).toBe(false);
    expect(served(again.backend)).toEqual(served(fromFiles.backend));
  });

  it('is not written while a start would have repairs to make: those are made from the files', async () => {
    const dir = join(t.dir, 'repairs');
    await messyDataDir(dir); // an interrupted create, delete and expand, a stray temp file
    const c = capture();
    await writeRecordDigest(layoutOf(dir), c.log, 0);
    expect(existsSync(digestOf(dir))).toBe(false);
    expect(c.text()).toContain('the next start has repairs to make');
  });

  it('is passed over once a record or an image was added, replaced or removed after it was written', async () => {
    const base = join(t.dir, 'changed');
    await shutDownMessy(base);
    const first = (await startFromFiles(base)).backend;
    // messyDataDir's "ok" (image sound) and "small" (an image file, shorter than its record).
    const byName = (n: string) => [...first.volumes()].find((v) => v.name === n)!;
    const [v1, v2] = [byName('ok'), byName('small')];
    expect(v1 && v2).toBeTruthy();

    const cases: [string, (dir: string) => void, (b: FileBackend) => void][] = [
      [
        'a record replaced by rename, as sinter writes one',
        (dir) => {
          const rec = JSON.parse(readFileSync(join(dir, `${v1.id}.json`), 'utf8')) as VolumeRecord;
          writeFileSync(join(dir, '.replace.tmp'), JSON.stringify({ ...rec, name: 'renamed-by-hand' }));
          renameSync(join(dir, '.replace.tmp'), join(dir, `${v1.id}.json`));
        },
        (b) => expect([...b.volumes()].some((v) => v.name === 'renamed-by-hand')).toBe(true),
      ],
      [
        'a record added',
        (dir) => {
          const rec = JSON.parse(readFileSync(join(dir, `${v1.id}.json`), 'utf8')) as VolumeRecord;
          const id = newVolumeId('b1');
          writeFileSync(join(dir, `${id}.json`), JSON.stringify({ ...rec, id, name: 'added-by-hand' }));
          writeFileSync(join(dir, `${id}.img`), Buffer.alloc(0));
          truncateSync(join(dir, `${id}.img`), rec.sizeBytes);
        },
        (b) => expect([...b.volumes()].some((v) => v.name === 'added-by-hand')).toBe(true),
      ],
      ['an image removed', (dir) => unlinkSync(join(dir, `${v2.id}.img`)), (b) => expect([...b.volumes()].some((v) => v.id === v2.id)).toBe(true)],
    ];
    for (const [what, change, check] of cases) {
      const dir = join(t.dir, `changed-${cases.findIndex((c) => c[0] === what)}`);
      await fs.cp(base, dir, { recursive: true });
      await writeRecordDigest(layoutOf(dir), log, 0);
      expect(existsSync(digestOf(dir)), what).toBe(true);
      // Straight after the digest was written: it waited out the clock tick, so this change still moves the stamp.
      change(fileBackendDirs(dir).volumes);
      const r = await startWithReadAhead(dir);
      expect(r.fromDigest, what).toBe(false);
      check(r.backend);
      const copy = `${dir}-files`;
      await fs.cp(dir, copy, { recursive: true });
      expect(served(r.backend), what).toEqual(served((await startFromFiles(copy)).backend));
    }
    // The removed image shows where it should: fsck's inspection names it missing.
    const inspected = await new FileBackend(fileBackendConfig('b1', join(t.dir, 'changed-2')), exec, log).inspect();
    expect(inspected.findings.some((f) => f.kind === 'image-missing' && f.subject === `volume ${v2.id}`)).toBe(true);
  });

  it("is passed over when another version or backend wrote it, it is damaged, or its names are not the directory's", async () => {
    const base = join(t.dir, 'bad');
    await shutDownMessy(base);
    await fs.cp(base, join(t.dir, 'bad-files'), { recursive: true });
    const expected = served((await startFromFiles(join(t.dir, 'bad-files'))).backend);
    const lines = (digest: string) => readFileSync(digest, 'latin1').split('\n');
    const variants: [string, (digest: string) => void, string?][] = [
      ['another version', () => undefined, 'some-other-version'],
      [
        'a damaged value',
        (digest) => {
          const [header, listings, extra, ...values] = lines(digest);
          values[values.length >> 1] = '{"id": "cut sh';
          writeFileSync(digest, [header, listings, extra, ...values].join('\n'));
        },
      ],
      [
        'a value that is no volume record',
        (digest) => {
          const [header, listings, extra, ...values] = lines(digest);
          values[0] = '{"id": "not-a-volume-id"}';
          writeFileSync(digest, [header, listings, extra, ...values].join('\n'));
        },
      ],
      [
        'values cut short',
        (digest) => {
          const [header, listings, extra, ...values] = lines(digest);
          writeFileSync(digest, [header, listings, extra, ...values.slice(0, 2)].join('\n'));
        },
      ],
      [
        "another backend's",
        (digest) => {
          const [header, listings, extra, ...values] = lines(digest);
          writeFileSync(digest, [header, listings, JSON.stringify({ ...(JSON.parse(extra) as object), backend: 'b2' }), ...values].join('\n'));
        },
      ],
      [
        'a name the directory does not hold (the stamps still match)',
        (digest) => {
          const [header, listings, ...rest] = lines(digest);
          const l = JSON.parse(listings) as { names: string[]; kinds: number[]; sizes: number[] }[];
          l[0].names.push('zzz-not-there.img');
          l[0].kinds.push(1);
          l[0].sizes.push(0);
          writeFileSync(digest, [header, JSON.stringify(l), ...rest].join('\n'));
        },
      ],
      ['not a digest at all', (digest) => writeFileSync(digest, 'hello\n')],
    ];
    for (const [what, damage, version] of variants) {
      const dir = join(t.dir, `bad-${variants.findIndex((v) => v[0] === what)}`);
      await fs.cp(base, dir, { recursive: true });
      await writeRecordDigest(layoutOf(dir), log, 0);
      expect(existsSync(digestOf(dir)), what).toBe(true);
      damage(digestOf(dir));
      const r = await startWithReadAhead(dir, version);
      expect(r.fromDigest, what).toBe(false);
      expect(served(r.backend), what).toEqual(expected);
      expect(existsSync(digestOf(dir)), what).toBe(false);
    }
  });

  it('is written only where the next start reads ahead, and not while something else changes the directory', async () => {
    const dir = join(t.dir, 'small');
    await shutDownMessy(dir);
    await writeRecordDigest(layoutOf(dir), log); // the default threshold: a few records are read as fast as a digest
    expect(existsSync(digestOf(dir))).toBe(false);

    // Another process renaming a file in the volumes directory as fast as it can: the directory never holds still.
    const busy = join(t.dir, 'busy');
    await shutDownMessy(busy);
    const vd = fileBackendDirs(busy).volumes;
    const churn = execa('node', ['-e', `const fs = require('fs'); for (;;) { fs.writeFileSync('${vd}/.churn.tmp', 'x'); fs.renameSync('${vd}/.churn.tmp', '${vd}/churn.txt'); }`], { reject: false });
    try {
      await waitFor('the churn to start', () => existsSync(join(vd, 'churn.txt')) || undefined);
      const c = capture();
      await writeRecordDigest(layoutOf(busy), c.log, 0);
      expect(existsSync(digestOf(busy))).toBe(false);
      expect(c.text()).toContain('changed while its digest was read');
    } finally {
      churn.kill('SIGKILL');
      await churn;
    }
  });
});

describe('sinter controller: clean stop, start, crash', () => {
  let s: SinterProcess | undefined;
  const t = tempDir();
  afterAll(async () => {
    await s?.cleanup();
    t.cleanup();
  });

  /** The "records loaded" line of the last start. */
  const loaded = (p: SinterProcess) => {
    const line = p
      .logs()
      .split('\n')
      .filter((l) => l.includes('"records loaded"'))
      .at(-1);
    return line ? (JSON.parse(line) as { volumes: number; from: string }) : undefined;
  };
  const listed = async (p: SinterProcess) => {
    const out: string[] = [];
    let token = '';
    do {
      const r = await p.client.controller.ListVolumes({ max_entries: 200, starting_token: token });
      for (const e of r.entries) out.push(String(e.volume?.volume_id));
      token = r.next_token ?? '';
    } while (token);
    return out.sort();
  };

  it('starts from the digest after a clean stop, and from the files after a crash that followed a change', async () => {
    const base = t.dir;
    // Enough volumes for the volumes directory to pass the read-ahead threshold (64 KiB).
    const N = 500;
    s = await startSinter({ role: 'controller', base });
    const ids = new Map<string, string>();
    for (let i = 0; i < N; i += 25) {
      const made = await Promise.all(
        Array.from({ length: Math.min(25, N - i) }, (_, k) => s!.client.controller.CreateVolume({ name: `d-${i + k}`, capacity_range: { required_bytes: MiB }, volume_capabilities: [mountCap()] })),
      );
      made.forEach((m, k) => ids.set(`d-${i + k}`, String(m.volume?.volume_id)));
    }
    const before = await listed(s);
    expect(before).toEqual([...ids.values()].sort());
    await s.stop();
    expect(s.logs()).toContain('wrote the record digest for the next start');
    const digest = digestOf(s.dataDir);
    expect(existsSync(digest)).toBe(true);

    s = await startSinter({ role: 'controller', base });
    expect(loaded(s)).toMatchObject({ volumes: N, from: 'digest' });
    expect(existsSync(digest)).toBe(false);
    expect(await listed(s)).toEqual(before);

    // A change, then a crash: no digest may tell the next start otherwise.
    await s.client.controller.DeleteVolume({ volume_id: ids.get('d-0') });
    await s.client.controller.CreateVolume({ name: 'after-digest', capacity_range: { required_bytes: MiB }, volume_capabilities: [mountCap()] });
    const changed = await listed(s);
    await s.kill();
    expect(existsSync(digest)).toBe(false);

    s = await startSinter({ role: 'controller', base });
    expect(loaded(s)).toMatchObject({ volumes: N, from: 'files' });
    expect(await listed(s)).toEqual(changed);
    await s.stop();
    expect(existsSync(digest)).toBe(true);

    // Starts killed part-way, before or after they removed the digest: nothing has changed yet, so the
    // next start may use the digest if it is still there, and must serve the same either way.
    for (const ms of [40, 150, 300, 600]) {
      const p = execa('node', sinterArgs(base, { role: 'controller', logLevel: 'warn' }), { reject: false, stdout: 'ignore', stderr: 'ignore' });
      await sleep(ms);
      p.kill('SIGKILL');
      await p;
      rmSync(join(base, 'csi.sock'), { force: true });
    }
    s = await startSinter({ role: 'controller', base });
    expect(loaded(s)?.volumes).toBe(N);
    expect(await listed(s)).toEqual(changed);
    await s.stop();
    s = await startSinter({ role: 'controller', base });
    expect(loaded(s)).toMatchObject({ volumes: N, from: 'digest' });
    expect(await listed(s)).toEqual(changed);
  });
});
