import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RbdBackend } from '../../src/backends/rbd/backend.js';
import { parseConfig, rbdBackendSchema } from '../../src/config/schema.js';
import { DomainError } from '../../src/errors/domain-error.js';
import { HostExecutor } from '../../src/exec/run.js';
import { cephForFile, rbdSinterConfig, type FileCeph } from '../helpers/ceph-shared.js';
import { MAIN } from '../helpers/sinter-process.js';

// The rbd backend against a real single-node Ceph (Debian 12's 16.2; the host
// run's shared cluster, a pool of this file's own): lifecycle, records in image metadata, snapshots, clones,
// flatten limits, trash, growth, capacity, crash recovery and fsck.

const MiB = 1024 * 1024;
let c: FileCeph;
let scratch: string;
const log = pino({ level: 'silent' });
const exec = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 60_000 });

function backendCfg(extra: Record<string, unknown> = {}) {
  return parseConfig(rbdBackendSchema, { name: 'ceph', driver: 'rbd', pool: c.pool, monitors: [c.monitors], user: c.user, keyFile: c.keyFile, ...extra });
}

async function started(extra: Record<string, unknown> = {}): Promise<RbdBackend> {
  const b = new RbdBackend(backendCfg(extra), exec, log);
  await b.start();
  return b;
}

const vid = () => `ceph-${randomUUID()}`;
const sid = () => `ceph@${randomUUID()}`;
const spec = (id: string, sizeBytes = 8 * MiB, source?: { type: 'volume' | 'snapshot'; id: string }) => ({
  id,
  name: `pvc-${id.slice(-8)}`,
  sizeBytes,
  parameters: { type: 'ceph' },
  capabilities: [{ accessType: 'mount' as const, accessMode: 'SINGLE_NODE_WRITER' }],
  source,
});

const info = async (image: string) => JSON.parse(await c.rbd(['info', '--format', 'json', `${c.pool}/${image}`])) as { size: number; features: string[]; parent?: { image: string; snapshot: string; trash: boolean } };
const meta = async (image: string) => JSON.parse((await c.rbd(['image-meta', 'list', '--format', 'json', `${c.pool}/${image}`])) || '{}') as Record<string, string>;
/** The stored record of an image (image-meta key). */
const record = async (image: string, key = 'sinter.volume') => JSON.parse((await meta(image))[key] ?? 'null') as { sizeBytes: number; rbd: { cloneDepth: number } } & Record<string, unknown>;
const trash = async () => JSON.parse((await c.rbd(['trash', 'ls', '--all', '--format', 'json', c.pool])) || '[]') as { id: string; name: string }[];
const images = async () => (await c.rbd(['ls', c.pool])).split('\n').filter(Boolean);

beforeAll(async () => {
  c = await cephForFile('rbd-backend');
  scratch = mkdtempSync(join(tmpdir(), 'sinter-rbd-'));
  console.log(`test Ceph cluster (${c.shared ? 'shared, this file\'s pool made' : 'own, HEALTH_OK'}) in ${c.startMs} ms`);
}, 150_000);

afterAll(async () => {
  await c?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

describe('the test cluster', () => {
  it('is one healthy node whose pool keeps one copy and is initialised for rbd', async () => {
    expect((await c.ceph(['health'])).trim()).toBe('HEALTH_OK');
    expect((JSON.parse(await c.ceph(['osd', 'pool', 'get', c.pool, 'size', '--format', 'json'])) as { size: number }).size).toBe(1);
    expect(JSON.parse(await c.ceph(['osd', 'pool', 'application', 'get', c.pool, '--format', 'json']))).toHaveProperty('rbd');
  });
});

describe('rbd backend', () => {
  it('creates an image named by the volume id with the configured features, its record in image-meta, and a new controller reads it back', async () => {
    const b = await started();
    const id = vid();
    const rec = await b.createVolume(spec(id, 8 * MiB + 512));
    expect(rec.state).toBe('available');
    const i = await info(id);
    expect(i.size).toBe(8 * MiB + 512);
    expect(i.features).toEqual(expect.arrayContaining(['layering', 'exclusive-lock', 'object-map', 'fast-diff', 'deep-flatten']));
    const stored = await record(id);
    expect(stored).toMatchObject({ id, name: rec.name, state: 'available', sizeBytes: 8 * MiB + 512, parameters: { type: 'ceph' } });
    // Nothing on local disk: a second controller (another replica) serves the same volume.
    const other = await started();
    expect(other.volume(id)).toMatchObject({ id, name: rec.name, sizeBytes: 8 * MiB + 512, state: 'available' });
    await b.deleteVolume(id);
    expect(await images()).not.toContain(id);
  });

  it('takes snapshots as clone images, clones volumes and snapshots (format 2, no protect, no temporary snapshot left), and keeps a volume with snapshots in the trash until the last goes', async () => {
    const b = await started();
    const v = vid();
    await b.createVolume(spec(v));
    await c.rbd(['bench', '--io-type', 'write', '--io-size', '4096', '--io-total', String(64 * 1024), `${c.pool}/${v}`]);
    const s = sid();
    const snap = await b.createSnapshot({ id: s, name: 'snap-1', sourceVolumeId: v });
    expect(snap).toMatchObject({ id: s, sourceVolumeId: v, sizeBytes: 8 * MiB, state: 'available' });
    const sImage = `ceph.snap.${s.slice(5)}`;
    expect((await info(sImage)).parent).toMatchObject({ image: v });
    expect(await record(sImage, 'sinter.snapshot')).toMatchObject({ id: s, name: 'snap-1', sourceVolumeId: v });
    // The temporary snapshot lives on only in the trash namespace.
    expect(JSON.parse((await c.rbd(['snap', 'ls', '--format', 'json', `${c.pool}/${v}`])) || '[]')).toEqual([]);

    const fromSnap = vid();
    await b.createVolume(spec(fromSnap, 16 * MiB, { type: 'snapshot', id: s }));
    expect((await info(fromSnap)).parent).toMatchObject({ image: sImage });
    expect((await info(fromSnap)).size).toBe(16 * MiB);
    const fromVol = vid();
    await b.createVolume(spec(fromVol, 8 * MiB, { type: 'volume', id: v }));
    expect((await info(fromVol)).parent).toMatchObject({ image: v });
    // Same bytes: rbd's own diff of a clone against nothing lists the parent's data as the clone's.
    const exported = async (img: string) => (await execa('rbd', ['-c', c.conf, 'export', `${c.pool}/${img}`, '-'], { encoding: 'buffer', stripFinalNewline: false })).stdout;
    expect(Buffer.compare((await exported(fromVol)).subarray(0, 8 * MiB), (await exported(v)).subarray(0, 8 * MiB))).toBe(0);

    // The volume goes while its snapshot and clone read from it: to the trash, its record gone from the CO's view.
    await b.deleteVolume(v);
    expect(b.volume(v)).toBeUndefined();
    expect((await trash()).map((t) => t.name)).toContain(v);
    // The snapshot still clones after its volume is gone.
    const late = vid();
    await b.createVolume(spec(late, 8 * MiB, { type: 'snapshot', id: s }));
    await b.deleteVolume(fromVol);
    await b.deleteVolume(late);
    await b.deleteVolume(fromSnap);
    await b.deleteSnapshot(s);
    // The last clone gone, the trashed volume is purged.
    expect((await trash()).map((t) => t.name)).not.toContain(v);
    expect((await images()).filter((i) => i.startsWith('ceph'))).toEqual([]);
  });

  it('flattens a clone chain in the background at the soft depth limit and before use at the hard one', async () => {
    const b = await started({ cloneDepthSoftLimit: 2, cloneDepthHardLimit: 3 });
    const chain = [vid()];
    await b.createVolume(spec(chain[0]));
    for (let i = 1; i <= 3; i++) {
      chain.push(vid());
      await b.createVolume(spec(chain[i], 8 * MiB, { type: 'volume', id: chain[i - 1] }));
      if (i === 1) expect((await info(chain[1])).parent).toBeDefined();
      if (i === 2) {
        // Soft limit (depth 2): returned at once, flattened behind the create.
        await b.settled(chain[2]);
        expect((await info(chain[2])).parent).toBeUndefined();
        expect((await record(chain[2])).rbd.cloneDepth).toBe(0);
      }
    }
    // chain[3] cloned from the flattened chain[2] has depth 1: below both limits.
    expect((await info(chain[3])).parent).toMatchObject({ image: chain[2] });
    // A hard-limit clone: depth 3 straight away (limits 1/… on a fresh backend).
    const hard = await started({ cloneDepthSoftLimit: 1, cloneDepthHardLimit: 1 });
    const flat = vid();
    await hard.createVolume(spec(flat, 8 * MiB, { type: 'volume', id: chain[3] }));
    expect((await info(flat)).parent).toBeUndefined();
    for (const id of [flat, ...chain.reverse()]) await hard.deleteVolume(id);
    expect(await trash()).toEqual([]);
  });

  it('grows an image with rbd resize and reports capacity from the pool max_avail', async () => {
    const b = await started();
    const id = vid();
    await b.createVolume(spec(id));
    const before = await b.capacity();
    const df = JSON.parse(await c.ceph(['df', '--format', 'json'])) as { pools: { name: string; stats: { max_avail: number } }[] };
    const maxAvail = df.pools.find((p) => p.name === c.pool)!.stats.max_avail;
    expect(Math.abs(before.physicalFreeBytes - maxAvail)).toBeLessThan(64 * MiB);
    expect(before.provisionedBytes).toBe(8 * MiB);
    expect(before.availableBytes).toBe(before.totalBytes - 8 * MiB);
    await b.expandVolume(id, 24 * MiB);
    expect((await info(id)).size).toBe(24 * MiB);
    expect((await record(id)).sizeBytes).toBe(24 * MiB);
    expect((await b.capacity()).provisionedBytes).toBe(24 * MiB);
    await b.deleteVolume(id);
  });

  it('explains a crash between the image and its record (sinter fsck), and the next start rolls it back', async () => {
    const b = await started();
    const id = vid();
    // What a controller killed after `rbd create` leaves: an image of this backend with no record.
    await c.rbd(['create', '--size', '4M', `${c.pool}/${id}`]);
    // And one killed between a clone's temporary snapshot and the clone.
    const src = vid();
    await b.createVolume(spec(src));
    await c.rbd(['snap', 'create', `${c.pool}/${src}@sinter-clone.${vid()}`]);
    const ins = await b.inspect();
    expect(ins.findings.map((f) => `${f.kind} ${f.remedy} ${f.subject}`)).toEqual(
      expect.arrayContaining([`interrupted-create restart volume ${id}`, expect.stringMatching(/^stray-temp restart /)]),
    );
    // The CLI says the same, from a config naming the pool.
    const cfgFile = join(scratch, 'fsck.yaml');
    writeFileSync(cfgFile, rbdSinterConfig(c, { controllerStateDir: join(scratch, 'controller') }));
    const r = await execa('node', [MAIN, 'fsck', 'controller', '--config', cfgFile, '--endpoint', `unix://${join(scratch, 'none.sock')}`, '--json'], { reject: false });
    const report = JSON.parse(r.stdout) as { findings: { kind: string; subject: string; remedy: string; detail: string }[] };
    const f = report.findings.find((x) => x.subject === `volume ${id}`);
    expect(f).toMatchObject({ kind: 'interrupted-create', remedy: 'restart' });
    expect(f!.detail).toMatch(/no record/);
    expect(r.stdout + r.stderr).not.toContain(c.key);
    // A start repairs both, once the image is older than any create takes (it could be another controller's, in progress).
    await new Promise((r) => setTimeout(r, 5000));
    const again = new RbdBackend(backendCfg({ staleCreateSeconds: 5 }), exec, log);
    const report2 = await again.start();
    expect(report2.recovered.join('\n')).toMatch(new RegExp(`volume ${id}: rolled back`));
    expect(await images()).not.toContain(id);
    expect(JSON.parse((await c.rbd(['snap', 'ls', '--format', 'json', `${c.pool}/${src}`])) || '[]')).toEqual([]);
    expect((await again.inspect()).findings).toEqual([]);
    await again.deleteVolume(src);
  });

  it('names the fault, never the key: a wrong key is PERMISSION_DENIED, unreachable monitors UNAVAILABLE', async () => {
    const wrongKey = join(scratch, 'wrong.key');
    writeFileSync(wrongKey, 'AQBw3hRrVgDbLxAAxErYKrXMPDhppKhrHWfG9w==', { mode: 0o600 });
    const bad = new RbdBackend(backendCfg({ keyFile: wrongKey, commandTimeoutSeconds: 10 }), exec, log);
    const e1 = await bad.capacity().catch((e: unknown) => e);
    expect(e1).toBeInstanceOf(DomainError);
    expect((e1 as DomainError).code, (e1 as Error).message).toBe('permission-denied');
    expect((e1 as Error).message).toMatch(/client\.sinter/);
    expect((e1 as Error).message).not.toContain('AQBw3hRr');
    const t0 = Date.now();
    const dead = new RbdBackend(backendCfg({ monitors: ['127.0.0.1:9'], commandTimeoutSeconds: 3 }), exec, log);
    const e2 = await dead.probe().catch((e: unknown) => e);
    expect((e2 as DomainError).code).toBe('unavailable');
    expect((e2 as Error).message).toMatch(/127\.0\.0\.1:9/);
    expect(Date.now() - t0).toBeLessThan(15_000);
  });
});
