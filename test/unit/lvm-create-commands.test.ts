import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { LvmBackend } from '../../src/backends/lvm/backend.js';
import { loadConfig } from '../../src/config/load.js';
import type { LvmBackendConfig } from '../../src/config/types.js';
import type { ExecOptions, ExecResult, Executor } from '../../src/exec/run.js';

// How many LVM commands a CreateVolume costs, and what a restart reads back. Each LVM command is
// a metadata commit or a device scan: 2-4 s in the test guest under load (csi-sanity against
// lvm-thin + LIO: CreateVolume averaged 7 s for three of them). The LVM here is a few lines of
// state answering in the JSON report format recorded in the guest (test/fixtures/lvm/vgs-used.out,
// lvs-all.out: lvm2 2.03.16); the commands it is given are what the test checks.
const dir = mkdtempSync(join(tmpdir(), 'sinter-lvm-create-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const FIX = join(import.meta.dirname, '..', 'fixtures', 'lvm');
const VG = 'sinter-rec';

interface Lv {
  name: string;
  attr: string;
  size: number;
  segtype: string;
  pool: string;
  origin: string;
  tags: string[];
}

/** A volume group with a 1 GiB thin pool; lvcreate / lvchange --addtag / --deltag / lvremove change it, lvs / vgs report it. */
class FakeLvm implements Executor {
  readonly calls: string[][] = [];
  readonly lvs = new Map<string, Lv>([['pool', { name: 'pool', attr: 'twi-aotz--', size: 1 << 30, segtype: 'thin-pool', pool: '', origin: '', tags: [] }]]);

  async run(cmd: string, args: string[], _opts?: ExecOptions): Promise<ExecResult> {
    this.calls.push([cmd, ...args]);
    const ok = (stdout = '') => ({ stdout, stderr: '', exitCode: 0 });
    const tagsIn = (flag: string) => args.flatMap((a, i) => (args[i - 1] === flag ? [a] : []));
    // Discovery of the VG's PVs, the one command without --devices.
    if (cmd === 'pvs') return ok(JSON.stringify({ report: [{ pv: [{ pv_name: '/dev/vdb', vg_name: VG }] }] }));
    if (cmd === 'vgs') return ok(readFileSync(join(FIX, 'vgs-used.out'), 'utf8'));
    if (cmd === 'lvs') {
      const target = args.at(-1)!;
      const one = target.includes('/') ? target.split('/')[1] : undefined;
      const rows = [...this.lvs.values()].filter((l) => !one || l.name === one).map((l) => ({
        lv_name: l.name,
        lv_path: l.segtype === 'thin-pool' ? '' : `/dev/${VG}/${l.name}`,
        lv_attr: l.attr,
        lv_size: String(l.size),
        segtype: l.segtype,
        pool_lv: l.pool,
        origin: l.origin,
        data_percent: l.segtype === 'thin-pool' ? '1.56' : '',
        metadata_percent: l.segtype === 'thin-pool' ? '10.60' : '',
        lv_tags: l.tags.join(','),
        lv_active: 'active',
        lv_skip_activation: '',
      }));
      if (one && rows.length === 0) throw Object.assign(new Error('lvs failed'), { stderr: readFileSync(join(FIX, 'lvs-missing.err'), 'utf8'), exitCode: 5 });
      return ok(JSON.stringify({ report: [{ lv: rows }] }));
    }
    if (cmd === 'lvcreate') {
      const name = args[args.indexOf('-n') + 1];
      if (args.includes('-s')) {
        // A snapshot of the LV named last: thin (inactive, activation skipped) of a thin one, classic of a thick one.
        const src = this.lvs.get(args.at(-1)!.split('/')[1])!;
        const thinSnap = src.segtype === 'thin';
        this.lvs.set(name, { ...src, name, attr: thinSnap ? 'Vwi---tz-k' : 'swi-a-s---', origin: src.name, tags: tagsIn('--addtag') });
        return ok();
      }
      const thin = args.includes('--thinpool');
      const size = Number((args[args.indexOf(thin ? '-V' : '-L') + 1] ?? '0').replace(/b$/, ''));
      this.lvs.set(name, { name, attr: thin ? 'Vwi-a-tz--' : '-wi-a-----', size, segtype: thin ? 'thin' : 'linear', pool: thin ? 'pool' : '', origin: '', tags: tagsIn('--addtag') });
      return ok();
    }
    if (cmd === 'lvchange') {
      const lv = this.lvs.get(args.at(-1)!.split('/')[1])!;
      const del = tagsIn('--deltag');
      lv.tags = [...lv.tags.filter((t) => !del.includes(t)), ...tagsIn('--addtag')];
      return ok();
    }
    if (cmd === 'lvremove') {
      this.lvs.delete(args.at(-1)!.split('/')[1]);
      return ok();
    }
    // volume_clear's zeroing of a thick LV.
    if (cmd === 'dd') return ok();
    throw new Error(`unexpected command ${cmd}`);
  }

  lvmCommands(): string[] {
    return this.calls.map((c) => c[0]).filter((c) => c.startsWith('lv') || c.startsWith('vg'));
  }

  /** The commands run, by name, dd included. */
  commands(): string[] {
    return this.calls.map((c) => c[0]);
  }
}

let n = 0;
function backend(lvm: FakeLvm, type: 'thin' | 'thick'): LvmBackend {
  const file = join(dir, `c${n}.yaml`);
  const configfsRoot = join(dir, `configfs${n++}`);
  // nvmet's tree as a plain directory: the export is not what this test is about, and nvmet runs no command.
  for (const d of ['subsystems', 'ports', 'hosts']) mkdirSync(join(configfsRoot, 'nvmet', d), { recursive: true });
  const b = { name: 'lvm', driver: 'lvm', volumeGroup: VG, dataDir: join(dir, 'data'), lvmType: type, ...(type === 'thin' ? { thinPool: 'pool' } : {}), export: 'nvmeof', nvmeof: { portals: ['127.0.0.1:4420'], configfsRoot } };
  writeFileSync(file, stringify({ backends: [b] }));
  const cfg = loadConfig('controller', ['--config', file, '--node-name', 'n1']).backends[0] as LvmBackendConfig;
  return new LvmBackend(cfg, lvm, pino({ level: 'silent' }));
}

const spec = (id: string) => ({ id, name: `pvc-${id.slice(-4)}`, sizeBytes: 16 << 20, parameters: {}, capabilities: [] });

describe('LVM CreateVolume: LVM commands per volume, and the record a restart reads', () => {
  it('thin without a source: one lvcreate carries the record as available (no second metadata commit); a restart serves it as available', async () => {
    const lvm = new FakeLvm();
    const b = backend(lvm, 'thin');
    await b.start();
    lvm.calls.length = 0;
    const rec = await b.createVolume(spec('lvm-1b4e28ba-2fa1-41d2-883f-0016d3cca427'));
    expect(rec.state).toBe('available');
    // lvs: the pool's high-water check; then the lvcreate with the record in its tags, and nothing more.
    expect(lvm.lvmCommands()).toEqual(['lvs', 'lvcreate']);
    expect(b.volume(rec.id)).toMatchObject({ state: 'available', sizeBytes: 16 << 20 });

    const again = backend(lvm, 'thin');
    const report = await again.start();
    expect(report).toEqual({ recovered: [], orphans: [], corrupt: [] });
    expect(again.volume(rec.id)).toMatchObject({ id: rec.id, name: rec.name, state: 'available', sizeBytes: 16 << 20 });
    // Its later record writes start from the generation the lvcreate wrote.
    await again.setAttachments(rec.id, []);
    expect(again.volume(rec.id)?.state).toBe('available');
  });

  it('thick: the lvcreate writes creating (lvcreate zeroes and wipes after its commit), the lvchange available; a creating record left by a crash is rolled back at start', async () => {
    const lvm = new FakeLvm();
    lvm.lvs.delete('pool');
    const b = backend(lvm, 'thick');
    await b.start();
    lvm.calls.length = 0;
    const rec = await b.createVolume(spec('lvm-2b4e28ba-2fa1-41d2-883f-0016d3cca427'));
    expect(rec.state).toBe('available');
    expect(lvm.lvmCommands()).toEqual(['lvcreate', 'lvchange']);

    // A crash between the two leaves the LV with the creating record its lvcreate wrote.
    const id = 'lvm-3b4e28ba-2fa1-41d2-883f-0016d3cca427';
    const crashed = new FakeLvm();
    crashed.lvs.delete('pool');
    crashed.lvs.set(`v-${id}`, { name: `v-${id}`, attr: '-wi-a-----', size: 16 << 20, segtype: 'linear', pool: '', origin: '', tags: await creatingTags(id) });
    const restarted = backend(crashed, 'thick');
    const report = await restarted.start();
    expect(report.recovered.join('\n')).toMatch(/rolled back an interrupted create/);
    expect(crashed.lvs.has(`v-${id}`)).toBe(false);
  });
});

describe('LVM snapshots and deletes: one metadata commit where nothing can be left half done', () => {
  it('thin: CreateSnapshot is one lvcreate carrying the record as available (a restart serves it); DeleteSnapshot and DeleteVolume are one lvremove each, no deleting record first (there is no half-done state for a start to finish)', async () => {
    const lvm = new FakeLvm();
    const b = backend(lvm, 'thin');
    await b.start();
    const vol = await b.createVolume(spec('lvm-4b4e28ba-2fa1-41d2-883f-0016d3cca427'));
    lvm.calls.length = 0;
    const snap = await b.createSnapshot({ id: 'lvm@5c4e28ba-2fa1-41d2-883f-0016d3cca427', name: 'snap-1', sourceVolumeId: vol.id });
    expect(snap.state).toBe('available');
    // lvs: the source LV; then the lvcreate with the record in its tags, and nothing more.
    expect(lvm.lvmCommands()).toEqual(['lvs', 'lvcreate']);
    const again = backend(lvm, 'thin');
    expect(await again.start()).toEqual({ recovered: [], orphans: [], corrupt: [] });
    expect(again.snapshot(snap.id)).toMatchObject({ id: snap.id, name: 'snap-1', state: 'available', sourceVolumeId: vol.id });

    lvm.calls.length = 0;
    await again.deleteSnapshot(snap.id);
    expect(lvm.lvmCommands()).toEqual(['lvs', 'lvremove']);
    await again.deleteVolume(vol.id);
    expect(lvm.lvmCommands()).toEqual(['lvs', 'lvremove', 'lvs', 'lvremove']);
    expect([...lvm.lvs.keys()]).toEqual(['pool']);
    expect(again.volume(vol.id)).toBeUndefined();
  });

  it('thick with volume_clear: DeleteVolume writes the deleting record before zeroing (a crash mid-zeroing is finished at start), then lvremove', async () => {
    const lvm = new FakeLvm();
    lvm.lvs.delete('pool');
    const b = backend(lvm, 'thick');
    await b.start();
    const vol = await b.createVolume(spec('lvm-6b4e28ba-2fa1-41d2-883f-0016d3cca427'));
    lvm.calls.length = 0;
    await b.deleteVolume(vol.id);
    expect(lvm.commands()).toEqual(['lvs', 'lvchange', 'dd', 'lvremove']);
    expect(lvm.calls[1]).toContain('--addtag');
    expect(lvm.lvs.size).toBe(0);
  });
});

/** The tags a thick create writes in its lvcreate: recorded from a backend whose lvchange never comes. */
async function creatingTags(id: string): Promise<string[]> {
  const lvm = new FakeLvm();
  lvm.lvs.delete('pool');
  const b = backend(lvm, 'thick');
  await b.start();
  const real = lvm.run.bind(lvm);
  let tags: string[] = [];
  lvm.run = async (cmd, args, opts) => {
    if (cmd === 'lvcreate') tags = args.flatMap((a, i) => (args[i - 1] === '--addtag' ? [a] : []));
    if (cmd === 'lvchange') throw new Error('killed');
    return real(cmd, args, opts);
  };
  await b.createVolume(spec(id)).catch(() => undefined);
  return tags;
}
