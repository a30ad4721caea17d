import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { LvmBackend } from '../../src/backends/lvm/backend.js';
import { classifyLvmError, LvmCli, LvmError } from '../../src/backends/lvm/lvm-cli.js';
import { loadConfig } from '../../src/config/load.js';
import type { LvmBackendConfig } from '../../src/config/types.js';
import { ExecError, type ExecOptions, type ExecResult, type Executor } from '../../src/exec/run.js';

// Every LVM command sinter runs opens only the volume group's physical volumes (--devices): a scan of
// every disk on a storage host that is also a node reads the iSCSI disks of its own exports, which wait
// while a classic snapshot suspends the LV behind them. The answers below are lvm2 2.03.16's, recorded
// in the VM guest by test/fixtures/record-lvm-devices.sh (test/fixtures/lvm/devices-*).
const FIX = join(import.meta.dirname, '..', 'fixtures', 'lvm');
const fx = (name: string) => readFileSync(join(FIX, name), 'utf8');
const VG = 'sinter-rec';
const dir = mkdtempSync(join(tmpdir(), 'sinter-lvm-devices-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

type Answer = { stdout?: string; stderr?: string; exitCode?: number };
/** An Executor that records each command and answers from a script: `pvs` from `pvsOut`, the rest from `answer`. */
class ScriptedLvm implements Executor {
  readonly calls: string[][] = [];
  pvsOut = fx('devices-pvs.out');
  answer: (cmd: string, args: string[]) => Answer = () => ({});

  async run(cmd: string, args: string[], _opts?: ExecOptions): Promise<ExecResult> {
    this.calls.push([cmd, ...args]);
    const a = cmd === 'pvs' ? { stdout: this.pvsOut } : this.answer(cmd, args);
    const r = { stdout: a.stdout ?? '', stderr: a.stderr ?? '', exitCode: a.exitCode ?? 0 };
    if (r.exitCode !== 0) throw new ExecError([cmd, ...args].join(' '), r.exitCode, r.stderr, false);
    return r;
  }

  /** The --devices value of each call (undefined for a call without one). */
  devicesOf(): (string | undefined)[] {
    return this.calls.map((c) => (c.includes('--devices') ? c[c.indexOf('--devices') + 1] : undefined));
  }
}

const cli = (exec: Executor, devices?: string[]) => new LvmCli(exec, { vg: VG, devices, log: pino({ level: 'silent' }) });

describe('LvmCli: every command restricted to the volume group\'s physical volumes', () => {
  it('finds the PVs with one pvs (the only command without --devices) and gives every command after it --devices with them', async () => {
    const x = new ScriptedLvm();
    x.answer = (cmd) => ({ stdout: cmd === 'vgs' ? fx('vgs-used.out') : cmd === 'lvs' ? fx('lvs-all.out') : '' });
    const l = cli(x);
    expect(await l.vg(VG)).toMatchObject({ name: VG });
    await l.lvs(VG);
    await l.lvcreate(['-L', '4m', '-n', 'x', VG]);
    await l.lvchange(VG, 'x', ['--addtag', 't']);
    await l.lvextend(VG, 'x', 8 << 20);
    await l.lvremove(VG, 'x');
    expect(x.calls.map((c) => c[0])).toEqual(['pvs', 'vgs', 'lvs', 'lvcreate', 'lvchange', 'lvextend', 'lvremove']);
    // devices-pvs.out: /dev/vdb is the VG's, /dev/vdc a PV of no VG.
    expect(x.devicesOf()).toEqual([undefined, '/dev/vdb', '/dev/vdb', '/dev/vdb', '/dev/vdb', '/dev/vdb', '/dev/vdb']);
  });

  it('a PV named "[unknown]" (in the metadata, out of sight) or another VG\'s is not listed', async () => {
    const x = new ScriptedLvm();
    x.pvsOut = JSON.stringify({ report: [{ pv: [{ pv_name: '/dev/sdc', vg_name: VG }, { pv_name: '[unknown]', vg_name: VG }, { pv_name: '/dev/vdc', vg_name: 'sinter-other' }, { pv_name: '/dev/sdb', vg_name: VG }] }] });
    expect(await cli(x).devices()).toEqual(['/dev/sdb', '/dev/sdc']);
  });

  it('the VG extended onto a PV the list lacks: a write LVM refuses is run again, once, on the PVs found again', async () => {
    const x = new ScriptedLvm();
    const l = cli(x);
    await l.devices();
    x.pvsOut = fx('devices-pvs-grown.out');
    x.answer = (cmd, args) => (args[1] === '/dev/vdb' ? { stderr: fx(`devices-${cmd}-missing-pv.err`), exitCode: 5 } : {});
    await l.lvcreate(['-L', '4m', '-n', 'lv3', VG]);
    expect(x.calls.map((c) => c[0])).toEqual(['pvs', 'lvcreate', 'pvs', 'lvcreate']);
    expect(x.devicesOf().slice(1)).toEqual(['/dev/vdb', undefined, '/dev/vdb,/dev/vdc']);
    // The next command starts from the new list, without a scan.
    await l.lvextend(VG, 'lv3', 8 << 20);
    expect(x.calls.slice(4).map((c) => [c[0], c[2]])).toEqual([['lvextend', '/dev/vdb,/dev/vdc']]);
  });

  it('a read that succeeded with a PV out of sight (a partial report) is read again on the new list', async () => {
    const x = new ScriptedLvm();
    const l = cli(x);
    await l.devices();
    x.pvsOut = fx('devices-pvs-grown.out');
    x.answer = (_cmd, args) => (args[1] === '/dev/vdb' ? { stdout: fx('devices-lvs-missing-pv.out'), stderr: fx('devices-lvs-missing-pv.err') } : { stdout: fx('devices-lvs-both.out') });
    const lvs = await l.lvs(VG);
    expect(x.calls.map((c) => c[0])).toEqual(['pvs', 'lvs', 'pvs', 'lvs']);
    // The answer of the second run (devices-lvs-both.out), not the first.
    expect(lvs.map((v) => v.name)).toEqual(['lv2']);
  });

  it('the VG not found on the listed PVs (a disk renamed): found again, the command runs once more; a VG gone is answered as gone after one scan', async () => {
    const x = new ScriptedLvm();
    const l = cli(x);
    await l.devices();
    x.pvsOut = JSON.stringify({ report: [{ pv: [{ pv_name: '/dev/sdb', vg_name: VG }] }] });
    x.answer = (_cmd, args) => (args[1] === '/dev/vdb' ? { stderr: fx('devices-vgs-wrong-pv.err'), exitCode: 5 } : { stdout: fx('vgs-used.out') });
    expect(await l.vg(VG)).toMatchObject({ name: VG });
    expect(x.devicesOf()).toEqual([undefined, '/dev/vdb', undefined, '/dev/sdb']);

    // Now really gone: one scan finds no PV, and LVM is not asked without a list.
    x.calls.length = 0;
    x.pvsOut = fx('devices-pvs-two-vgs.out').replaceAll(VG, 'someone-else');
    x.answer = () => ({ stderr: fx('devices-vgs-wrong-pv.err'), exitCode: 5 });
    expect(await l.vg(VG)).toBeUndefined();
    expect(x.calls.map((c) => c[0])).toEqual(['vgs', 'pvs']);
    expect(await l.devices()).toEqual([]);
    // Each later command looks once more (the VG may be created while sinter runs), and still runs nothing unrestricted.
    x.calls.length = 0;
    await expect(l.lvcreate(['-L', '4m', '-n', 'x', VG])).rejects.toMatchObject({ kind: 'vg-not-found', message: `lvcreate: volume group ${VG} not found (no physical volume of it is visible)` });
    expect(x.calls.map((c) => c[0])).toEqual(['pvs']);
  });

  it('a stale answer that a new scan does not change stands: no second run (a disk really missing)', async () => {
    const x = new ScriptedLvm();
    const l = cli(x);
    x.answer = () => ({ stderr: fx('devices-lvcreate-missing-pv.err'), exitCode: 5 });
    await l.devices();
    const e = await l.lvcreate(['-L', '4m', '-n', 'lv3', VG]).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(LvmError);
    expect(e).toMatchObject({ kind: 'pv-missing' });
    // The RPC's message: LVM's words, without the host's device list.
    expect((e as Error).message).not.toMatch(/--devices|\/dev\/vdb,/);
    expect(x.calls.map((c) => c[0])).toEqual(['pvs', 'lvcreate', 'pvs']);
  });

  it('concurrent stale answers share one scan', async () => {
    const x = new ScriptedLvm();
    const l = cli(x);
    await l.devices();
    x.pvsOut = fx('devices-pvs-grown.out');
    x.answer = (cmd, args) => (args[1] === '/dev/vdb' ? { stderr: fx('devices-lvcreate-missing-pv.err'), exitCode: 5 } : { stdout: cmd === 'vgs' ? fx('vgs-used.out') : '' });
    await Promise.all([l.lvcreate(['-n', 'a', VG]), l.lvcreate(['-n', 'b', VG]), l.vg(VG)]);
    expect(x.calls.filter((c) => c[0] === 'pvs')).toHaveLength(2);
  });

  it('a configured list is used as given: no pvs ever, and a stale answer is not retried', async () => {
    const x = new ScriptedLvm();
    const l = cli(x, ['/dev/vdc', '/dev/vdb']);
    x.answer = () => ({ stderr: fx('devices-lvcreate-missing-pv.err'), exitCode: 5 });
    await expect(l.lvcreate(['-n', 'a', VG])).rejects.toMatchObject({ kind: 'pv-missing' });
    x.answer = () => ({ stderr: fx('devices-vgs-wrong-pv.err'), exitCode: 5 });
    expect(await l.vg(VG)).toBeUndefined();
    expect(x.calls.map((c) => c[0])).toEqual(['lvcreate', 'vgs']);
    expect(x.devicesOf()).toEqual(['/dev/vdb,/dev/vdc', '/dev/vdb,/dev/vdc']);
  });

  it('classifies lvm2 2.03.16\'s answers with a stale list', () => {
    const kind = (name: string, code: number) => classifyLvmError(fx(`${name}.err`), code);
    expect(kind('devices-lvcreate-missing-pv', 5)).toBe('pv-missing');
    expect(kind('devices-lvextend-missing-pv', 5)).toBe('pv-missing');
    expect(kind('devices-vgs-wrong-pv', 5)).toBe('vg-not-found');
    expect(kind('devices-lvs-gone', 5)).toBe('vg-not-found');
    // An LV missing is still that, with or without a list.
    expect(kind('devices-lvs-lv-missing', 5)).toBe('lv-not-found');
  });
});

describe('LVM backend: the devices option', () => {
  let n = 0;
  const message = (b: object) => {
    const file = join(dir, `c${n++}.yaml`);
    writeFileSync(file, stringify({ backends: [{ name: 'l1', driver: 'lvm', volumeGroup: VG, dataDir: join(dir, 'l1'), export: 'nvmeof', nvmeof: { portals: ['127.0.0.1:4420'] }, ...b }] }));
    try {
      return loadConfig('controller', ['--config', file, '--node-name', 'n1']).backends[0] as LvmBackendConfig;
    } catch (e) {
      return (e as Error).message;
    }
  };

  it('takes absolute /dev paths and says which entry is wrong otherwise', () => {
    expect(message({ devices: ['/dev/vdb', '/dev/disk/by-id/wwn-0x5000c500a1b2c3d4'] })).toMatchObject({ devices: ['/dev/vdb', '/dev/disk/by-id/wwn-0x5000c500a1b2c3d4'] });
    expect((message({}) as LvmBackendConfig).devices).toBeUndefined();
    expect(message({ devices: ['vdb'] })).toMatch(/^backends\[0\]\.devices\[0\]: "vdb" must be an absolute path/);
    expect(message({ devices: ['/dev/vdb', '/var/lib/disk.img'] })).toMatch(/^backends\[0\]\.devices\[1\]: "\/var\/lib\/disk\.img" is not a device path under \/dev\//);
    expect(message({ devices: ['/dev/vdb,/dev/vdc'] })).toMatch(/^backends\[0\]\.devices\[0\]: .* \(without commas\)/);
    expect(message({ devices: [] })).toMatch(/^backends\[0\]\.devices: must list at least one physical volume/);
    expect(message({ devices: '/dev/vdb' })).toMatch(/^backends\[0\]\.devices: must be a list of the volume group's physical volumes/);
  });

  it('a configured list restricts the backend\'s commands from the first one, with no scan', async () => {
    const cfg = message({ devices: ['/dev/mapper/mpatha'], lvmType: 'thick', nvmeof: { portals: ['127.0.0.1:4420'], configfsRoot: dir } });
    expect(typeof cfg).toBe('object');
    const x = new ScriptedLvm();
    x.answer = (cmd) => ({ stdout: cmd === 'vgs' ? fx('vgs-used.out') : cmd === 'lvs' ? JSON.stringify({ report: [{ lv: [] }] }) : '' });
    const b = new LvmBackend(cfg as LvmBackendConfig, x, pino({ level: 'silent' }));
    await b.inspect();
    expect(x.calls.map((c) => c[0])).toEqual(['vgs', 'lvs']);
    expect(x.devicesOf()).toEqual(['/dev/mapper/mpatha', '/dev/mapper/mpatha']);
  });
});
