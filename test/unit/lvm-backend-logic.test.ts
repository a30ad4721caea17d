import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { stringMatching } from '../helpers/matchers.js';
import { stringify } from 'yaml';
import type { SnapshotRecord, VolumeRecord } from '../../src/backends/backend.js';
import { thickCapacity, thinCapacity } from '../../src/backends/lvm/capacity.js';
import { inspectLvm } from '../../src/backends/lvm/inspect.js';
import { classifyLvmError } from '../../src/backends/lvm/lvm-cli.js';
import { idOfLv, lvOfSnapshot, lvOfVolume } from '../../src/backends/lvm/names.js';
import { lvHealth, parseLvs, parseVgs, type LvInfo } from '../../src/backends/lvm/report.js';
import { decodeTags, encodeRecord, escapePayload, isValidTag, MAX_TAG_LENGTH, splitTags, tagChange, unescapePayload } from '../../src/backends/lvm/tags.js';
import { loadConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/config/error.js';

// Outputs recorded in the VM guest (lvm2 2.03.16, Linux 6.1): test/fixtures/record-lvm.sh.
const FIX = join(import.meta.dirname, '..', 'fixtures', 'lvm');
const fixture = (name: string) => readFileSync(join(FIX, name), 'utf8');

const VOL = 'lvm-1b4e28ba-2fa1-41d2-883f-0016d3cca427';
const SNAP = 'lvm@6fa459ea-ee8a-4ca4-894e-db77e160355e';
const volume = (over: Partial<VolumeRecord> = {}): VolumeRecord => ({
  id: VOL,
  name: 'pvc-0a1b2c3d',
  backend: 'lvm',
  sizeBytes: 64 * 1024 * 1024,
  state: 'available',
  parameters: { type: 'ssd' },
  capabilities: [{ accessType: 'mount', accessMode: 'SINGLE_NODE_WRITER', fsType: 'ext4' }],
  attachments: [],
  createdAt: '2026-12-06T04:00:00.000Z',
  updatedAt: '2026-12-06T04:00:00.000Z',
  ...over,
});

describe('LVM record tags: every tag is one LVM accepts, and every record reads back as written', () => {
  it('round-trips any record through the tag alphabet, in chunks of at most 1024 characters', () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.integer({ min: 1, max: 1e6 }), (rec, gen) => {
        const tags = encodeRecord(rec, gen);
        for (const t of tags) expect(isValidTag(t), t).toBe(true);
        const back = decodeTags(fc.sample(fc.shuffledSubarray(tags, { minLength: tags.length }), 1)[0]);
        expect(back.record).toEqual(JSON.parse(JSON.stringify(rec)));
        expect(back.generation).toBe(gen);
      }),
      { numRuns: 300 },
    );
  });

  it('escapes any string reversibly (unicode, JSON punctuation, the escape characters themselves)', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 40 }), (s) => {
        const e = escapePayload(s);
        expect(e === '' || /^[A-Za-z0-9_+.\-/=!:&#]+$/.test(e)).toBe(true);
        expect(unescapePayload(e)).toBe(s);
      }),
    );
  });

  it('cuts a large record into several tags without splitting an escape, and reads them in any order', () => {
    const big = volume({ parameters: Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`key${i}`, `välue "${i}", ${'x'.repeat(30)}`])) });
    const tags = encodeRecord(big, 7);
    expect(tags.length).toBeGreaterThan(2);
    expect(Math.max(...tags.map((t) => t.length))).toBeLessThanOrEqual(MAX_TAG_LENGTH);
    expect(decodeTags([...tags].reverse()).record).toEqual(big);
  });

  it('reads the newest complete generation when an update left the old one beside it, and names the old tags stale', () => {
    const old = encodeRecord(volume({ state: 'available' }), 3);
    const next = encodeRecord(volume({ state: 'in-use' }), 4);
    const d = decodeTags([...old, ...next, 'admin-tag']);
    expect((d.record as VolumeRecord).state).toBe('in-use');
    expect(d.stale.sort()).toEqual([...old].sort());
    expect(d.foreign).toEqual(['admin-tag']);
    // A newer generation missing a chunk (never written whole) loses to the complete older one.
    const big = encodeRecord(volume({ parameters: { p: 'y'.repeat(3000) } }), 5);
    const partial = decodeTags([...old, ...big.slice(1)]);
    expect((partial.record as VolumeRecord).state).toBe('available');
    expect(partial.stale).toEqual(big.slice(1));
  });

  it('an update adds the next generation and deletes every older sinter tag, leaving an administrator\'s', () => {
    const cur = [...encodeRecord(volume(), 1), 'backup=daily'];
    const { add, del } = tagChange(cur, volume({ state: 'in-use' }), 2);
    expect(del).toEqual(cur.slice(0, -1));
    expect(add.every((t) => t.startsWith('sinter:2:'))).toBe(true);
  });

  it('reads the tags lvs printed for a recorded LV (lv_tags is comma-joined)', () => {
    const lvs = parseLvs(fixture('lvs-all.out'));
    const thin = lvs.find((l) => l.name === 'v-lvm-11111111-1111-4111-8111-111111111111')!;
    expect(splitTags(thin.tags)).toEqual(['sinter.v=1', 'sinter:1:0/1:abc#22def']);
  });
});

describe('LVM reports recorded in the guest (lvm2 2.03.16)', () => {
  it('parses lvs: thin pool, thin volume, thin snapshot (activation skipped), thick origin and its classic snapshot', () => {
    const lvs = parseLvs(fixture('lvs-all.out'));
    const by = (n: string) => lvs.find((l) => l.name === n)!;
    expect(by('pool')).toMatchObject({ segtype: 'thin-pool', sizeBytes: 1073741824, dataPercent: 1.56, metadataPercent: 10.6, active: true, path: '' });
    expect(by('v-lvm-11111111-1111-4111-8111-111111111111')).toMatchObject({ segtype: 'thin', pool: 'pool', sizeBytes: 67108864, dataPercent: 25, active: true, skipActivation: false });
    expect(by('s-lvm-33333333-3333-4333-8333-333333333333')).toMatchObject({ segtype: 'thin', origin: 'v-lvm-11111111-1111-4111-8111-111111111111', active: false, skipActivation: true });
    expect(by('v-lvm-22222222-2222-4222-8222-222222222222')).toMatchObject({ segtype: 'linear', attr: 'owi-a-s---', sizeBytes: 33554432 });
    expect(by('s-lvm-44444444-4444-4444-8444-444444444444')).toMatchObject({ segtype: 'linear', origin: 'v-lvm-22222222-2222-4222-8222-222222222222', sizeBytes: 8388608 });
    // lvchange -ay -K activates a skipped thin snapshot; the flag stays.
    expect(parseLvs(fixture('lvs-snap-active.out'))[0]).toMatchObject({ active: true, skipActivation: true });
  });

  it('parses vgs, including the metadata area every tag is stored in', () => {
    expect(parseVgs(fixture('vgs-used.out'))[0]).toEqual({
      name: 'sinter-rec',
      sizeBytes: 2143289344,
      freeBytes: 1010827264,
      extentBytes: 4194304,
      freeExtents: 241,
      mdaBytes: 1044480,
      mdaFreeBytes: 517120,
    });
  });

  it('classifies the errors lvm printed', () => {
    expect(classifyLvmError(fixture('lvs-missing.err'), 5)).toBe('lv-not-found');
    expect(classifyLvmError(fixture('lvremove-missing.err'), 5)).toBe('lv-not-found');
    expect(classifyLvmError(fixture('vgs-missing.err'), 5)).toBe('vg-not-found');
    expect(classifyLvmError(fixture('lvcreate-no-vg.err'), 5)).toBe('vg-not-found');
    expect(classifyLvmError(fixture('lvcreate-exists.err'), 5)).toBe('lv-exists');
    expect(classifyLvmError(fixture('lvcreate-no-space.err'), 5)).toBe('no-space');
    expect(classifyLvmError(fixture('tag-comma.err'), 3)).toBe('bad-argument');
  });

  it('refuses tags LVM refused (comma, space, @) and accepts the ones it took', () => {
    const codes = Object.fromEntries(fixture('exit-codes.txt').trim().split('\n').map((l) => l.split(' ') as [string, string]));
    expect([codes['tag-comma'], codes['tag-space'], codes['tag-at'], codes['tag-allowed'], codes['tag-len-1024']]).toEqual(['3', '3', '3', '0', '0']);
    expect(['a,b', 'a b', 'a@b'].map(isValidTag)).toEqual([false, false, false]);
    expect(isValidTag('a_+.-/=!:&#Z9')).toBe(true);
    expect(isValidTag('x'.repeat(1024))).toBe(true);
  });

  it('reads an LV\'s health from lv_attr', () => {
    expect(lvHealth('twi-aotz--')).toBeUndefined();
    expect(lvHealth('twi-aotzD-')).toBe('out of data space');
    expect(lvHealth('swi-I-s---')).toMatch(/invalid snapshot/);
  });
});

describe('LVM names', () => {
  it('maps ids to LV names and back, and ignores LVs of other backends or not named by sinter', () => {
    expect(lvOfVolume(VOL)).toBe(`v-${VOL}`);
    expect(lvOfSnapshot(SNAP)).toBe('s-lvm-6fa459ea-ee8a-4ca4-894e-db77e160355e');
    expect(idOfLv(lvOfVolume(VOL), 'lvm')).toEqual({ kind: 'volume', id: VOL });
    expect(idOfLv(lvOfSnapshot(SNAP), 'lvm')).toEqual({ kind: 'snapshot', id: SNAP });
    expect(idOfLv(lvOfVolume(VOL), 'other')).toBeUndefined();
    expect(idOfLv('pool', 'lvm')).toBeUndefined();
    expect(idOfLv('v-home', 'lvm')).toBeUndefined();
  });
});

const lv = (over: Partial<LvInfo>): LvInfo => ({ name: 'x', path: '', attr: 'Vwi-a-tz--', sizeBytes: 64 * 1024 * 1024, segtype: 'thin', pool: 'pool', origin: '', tags: '', active: true, skipActivation: false, ...over });
const vgInfo = { name: 'vg', sizeBytes: 2 ** 31, freeBytes: 2 ** 30, extentBytes: 4 * 1024 * 1024, freeExtents: 256, mdaBytes: 1 << 20, mdaFreeBytes: 1 << 19 };
const withRecord = (name: string, rec: unknown, gen = 1, extra: string[] = []) => lv({ name, tags: [...encodeRecord(rec, gen), ...extra].join(',') });

describe('LVM crash plan (what start() applies and sinter fsck reports)', () => {
  const layout = (lvs: LvInfo[]) => ({ backend: 'lvm', vgName: 'vg', thinPool: 'pool', lvmType: 'auto' as const, vg: vgInfo, lvs: [lv({ name: 'pool', segtype: 'thin-pool', attr: 'twi-aotz--', pool: '' }), ...lvs] });

  it('rolls back a create the CO never heard of, finishes a delete, records an expand lvextend finished', () => {
    const creating = volume({ state: 'creating' });
    const deleting = { ...volume({ id: 'lvm-22222222-2222-4222-8222-222222222222', state: 'deleting' }) };
    const grown = volume({ id: 'lvm-33333333-3333-4333-8333-333333333333', sizeBytes: 64 * 1024 * 1024 });
    const ins = inspectLvm(
      layout([
        withRecord(lvOfVolume(creating.id), creating),
        withRecord(lvOfVolume(deleting.id), deleting),
        { ...withRecord(lvOfVolume(grown.id), grown), sizeBytes: 128 * 1024 * 1024 },
      ]),
    );
    expect(ins.plan).toEqual([
      { do: 'roll-back-create', what: 'volume', id: creating.id, name: creating.name, lv: lvOfVolume(creating.id) },
      { do: 'finish-delete', what: 'volume', id: deleting.id, name: deleting.name, lv: lvOfVolume(deleting.id) },
      { do: 'record-size', id: grown.id, lv: lvOfVolume(grown.id), sizeBytes: 128 * 1024 * 1024 },
    ]);
    expect(ins.findings.map((f) => [f.kind, f.remedy])).toEqual([
      ['interrupted-create', 'restart'],
      ['interrupted-delete', 'restart'],
      ['interrupted-expand', 'restart'],
    ]);
    expect(ins.serve.volumes.map((v) => v.id)).toEqual([grown.id]);
  });

  it('drops stale tags of an update cut short and serves the newer record', () => {
    const old = encodeRecord(volume(), 1);
    const ins = inspectLvm(layout([withRecord(lvOfVolume(VOL), volume({ state: 'in-use', attachments: [] }), 2, old)]));
    expect(ins.plan).toEqual([{ do: 'drop-stale-tags', lv: lvOfVolume(VOL), tags: old }]);
    expect(ins.serve.volumes[0].state).toBe('in-use');
    expect(ins.lvs.get(VOL)!.generation).toBe(2);
  });

  it('leaves for a person: an LV named like ours without a record, an unreadable record, a record of another id, a shrunk LV', () => {
    const ins = inspectLvm(
      layout([
        lv({ name: lvOfVolume(VOL) }),
        lv({ name: 'v-lvm-44444444-4444-4444-8444-444444444444', tags: 'sinter:1:0/1:&ZZ' }),
        withRecord('v-lvm-55555555-5555-4555-8555-555555555555', volume()),
        { ...withRecord('v-lvm-66666666-6666-4666-8666-666666666666', volume({ id: 'lvm-66666666-6666-4666-8666-666666666666' })), sizeBytes: 32 * 1024 * 1024 },
        lv({ name: 'home', tags: 'x' }),
      ]),
    );
    expect(ins.plan).toEqual([]);
    expect(ins.findings.map((f) => [f.kind, f.remedy])).toEqual([
      ['orphan-lv', 'operator'],
      ['unreadable-record', 'operator'],
      ['unreadable-record', 'operator'],
      ['lv-too-small', 'operator'],
    ]);
  });

  it('names a missing volume group, a missing thin pool, and a pool out of data space', () => {
    expect(inspectLvm({ ...layout([]), vg: undefined }).findings[0].kind).toBe('missing-volume-group');
    expect(inspectLvm({ ...layout([]), lvs: [], lvmType: 'thin' }).findings[0].kind).toBe('missing-thin-pool');
    const full = inspectLvm({ ...layout([]), lvs: [lv({ name: 'pool', segtype: 'thin-pool', attr: 'twi-aotzD-' })] });
    expect(full.findings[0]).toMatchObject({ kind: 'thin-pool-unhealthy', subject: 'vg/pool' });
  });

  it('serves snapshots, and a snapshot in creating is rolled back', () => {
    const snap: SnapshotRecord = { id: SNAP, name: 'snap-1', backend: 'lvm', sourceVolumeId: VOL, sizeBytes: 1, state: 'available', createdAt: 'x', updatedAt: 'x' };
    const other = { ...snap, id: 'lvm@77777777-7777-4777-8777-777777777777', state: 'creating' as const };
    const ins = inspectLvm(layout([withRecord(lvOfSnapshot(SNAP), snap), withRecord(lvOfSnapshot(other.id), other)]));
    expect(ins.serve.snapshots.map((s) => s.id)).toEqual([SNAP]);
    expect(ins.plan).toEqual([{ do: 'roll-back-create', what: 'snapshot', id: other.id, name: 'snap-1', lv: lvOfSnapshot(other.id) }]);
  });
});

describe('LVM capacity (Cinder\'s thin provisioning arithmetic)', () => {
  const GiB = 2 ** 30;
  const base = { pool: 'vg/pool', sizeBytes: 10 * GiB, dataPercent: 10, metadataPercent: 5, provisionedBytes: 50 * GiB, ratio: 20, reservedPercent: 10, highWaterPercent: 90 };

  it('thin: pool × ratio − provisioned − reserve', () => {
    expect(thinCapacity(base)).toEqual({ totalBytes: 10 * GiB, physicalFreeBytes: 9 * GiB, provisionedBytes: 50 * GiB, availableBytes: 200 * GiB - 50 * GiB - GiB });
  });

  it('thin: nothing past the high-water mark, data or metadata, with the pool named (the recorded pool at 89.45% data)', () => {
    const pool = parseLvs(fixture('lvs-pool-full.out'))[0];
    const at = (hw: number) => thinCapacity({ ...base, provisionedBytes: 0, reservedPercent: 0, sizeBytes: pool.sizeBytes, dataPercent: pool.dataPercent!, metadataPercent: pool.metadataPercent!, highWaterPercent: hw });
    expect(at(90).availableBytes).toBeGreaterThan(0);
    expect(at(85)).toMatchObject({ availableBytes: 0, note: stringMatching(/thin pool vg\/pool is past its high-water mark \(data 89\.45% used, thinPoolHighWaterPercent 85\)/) });
    expect(thinCapacity({ ...base, metadataPercent: 95 }).note).toMatch(/metadata 95\.00%/);
  });

  it('thin: nothing when the physically free part is within the reserve', () => {
    expect(thinCapacity({ ...base, dataPercent: 89, reservedPercent: 15 }).availableBytes).toBe(0);
  });

  it('thick: the volume group\'s free space less the reserve', () => {
    expect(thickCapacity({ vgSizeBytes: 100, vgFreeBytes: 40, provisionedBytes: 60, reservedPercent: 10 })).toEqual({ totalBytes: 100, physicalFreeBytes: 40, provisionedBytes: 60, availableBytes: 30 });
  });
});

describe('LVM backend configuration', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sinter-lvm-config-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  let n = 0;
  const load = (backends: object[]) => {
    const file = join(dir, `c${n++}.yaml`);
    writeFileSync(file, stringify({ backends }));
    return loadConfig('controller', ['--config', file, '--node-name', 'n1']);
  };
  const lvmB = { name: 'lvm', driver: 'lvm', volumeGroup: 'sinter-vg', iscsi: { portals: ['127.0.0.1:3260'] } };
  const err = (f: () => unknown) => {
    try {
      f();
    } catch (e) {
      expect(e).toBeInstanceOf(ConfigError);
      return (e as Error).message;
    }
    throw new Error('accepted');
  };

  it('has Cinder\'s defaults', () => {
    expect(load([lvmB]).backends[0]).toMatchObject({
      driver: 'lvm',
      dataDir: '/var/lib/sinter/lvm',
      lvmType: 'auto',
      thinPool: 'sinter-pool',
      maxOverSubscriptionRatio: 20,
      reservedPercent: 0,
      thinPoolHighWaterPercent: 90,
      volumeClear: 'zero',
      volumeClearSizeMiB: 0,
      thickSnapshotPercent: 100,
      export: 'iscsi',
    });
  });

  it('names the key at fault', () => {
    expect(err(() => load([{ ...lvmB, lvmType: 'thinn' }]))).toMatch(/backends\[0\]\.lvmType.*thin, thick, auto/);
    expect(err(() => load([{ ...lvmB, volumeGroup: '-bad' }]))).toMatch(/backends\[0\]\.volumeGroup/);
    expect(err(() => load([{ ...lvmB, dataDirr: '/x' }]))).toMatch(/dataDirr.*unknown key/);
    expect(err(() => load([{ ...lvmB, iscsi: undefined }]))).toMatch(/backends\[0\]\.iscsi/);
    expect(err(() => load([{ ...lvmB, driver: 'zfs' }]))).toMatch(/driver.*file, lvm/);
    expect(err(() => load([lvmB, { ...lvmB, name: 'lvm2', dataDir: '/var/lib/x' }]))).toMatch(/backends\[1\]\.volumeGroup.*already backend "lvm"/);
    expect(err(() => load([{ ...lvmB, name: 'a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-p', volumeGroup: 'v-g-'.repeat(10) + 'x' }]))).toMatch(/device-mapper names/);
  });

  it('the file backend still loads without a driver, and refuses lvm keys', () => {
    expect(load([{ name: 'f', dataDir: join(dir, 'f') }]).backends[0].driver).toBe('file');
    expect(err(() => load([{ name: 'f', dataDir: join(dir, 'f'), volumeGroup: 'x' }]))).toMatch(/volumeGroup.*unknown key/);
  });
});
