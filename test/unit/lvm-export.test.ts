import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { LvmBackend } from '../../src/backends/lvm/backend.js';
import { ConfigError } from '../../src/config/error.js';
import { loadConfig } from '../../src/config/load.js';
import type { LvmBackendConfig } from '../../src/config/types.js';
import type { ExecOptions, ExecResult, Executor } from '../../src/exec/run.js';

// The LVM backend's export is whichever target helper its configuration names: tgt or LIO
// (export: iscsi) or nvmet (export: nvmeof). What nvmet does with an LV on a real kernel is
// tested in test/vm/lvm.vm.test.ts; here: the configuration, and that the backend
// reads (and only reads) the target its `export` names.
const dir = mkdtempSync(join(tmpdir(), 'sinter-lvm-export-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const FIX = join(import.meta.dirname, '..', 'fixtures', 'lvm');
const NQN_PREFIX = 'nqn.2026-12.io.sinter.lvm:';
const HOST = 'nqn.2014-08.org.nvmexpress:uuid:6b2f3a4c-1d2e-4f50-8a9b-0c1d2e3f4a5b';
const VOL = 'lvm-1b4e28ba-2fa1-41d2-883f-0016d3cca427';
const OTHER = 'file-2b4e28ba-2fa1-41d2-883f-0016d3cca427';

let n = 0;
const load = (backends: object[], role: 'controller' | 'node' = 'controller') => {
  const file = join(dir, `c${n++}.yaml`);
  writeFileSync(file, stringify({ backends }));
  return loadConfig(role, ['--config', file, '--node-name', 'n1']);
};
const err = (f: () => unknown) => {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as Error).message;
  }
  throw new Error('accepted');
};
const nvmeB = { name: 'lvm', driver: 'lvm', volumeGroup: 'sinter-vg', export: 'nvmeof', nvmeof: { portals: ['127.0.0.1:4420'], nqnPrefix: NQN_PREFIX } };

/**
 * Answers vgs and the PV lookup (pvs) from the reports recorded in the guest, the VG named as this
 * test's; anything else the backend runs is a failure of this test.
 */
class RecordedVgs implements Executor {
  readonly calls: string[] = [];
  async run(cmd: string, args: string[], _opts?: ExecOptions): Promise<ExecResult> {
    this.calls.push([cmd, ...args].join(' '));
    if (cmd === 'vgs') return { stdout: readFileSync(join(FIX, 'vgs-used.out'), 'utf8'), stderr: '', exitCode: 0 };
    if (cmd === 'pvs') return { stdout: readFileSync(join(FIX, 'devices-pvs.out'), 'utf8').replaceAll('"sinter-rec"', '"sinter-vg"'), stderr: '', exitCode: 0 };
    throw new Error(`unexpected command ${cmd}`);
  }
}

describe('LVM backend export configuration (tgt, LIO or nvmet)', () => {
  it('takes export: nvmeof with an nvmeof section, with nvmet\'s defaults', () => {
    expect(load([nvmeB]).backends[0]).toMatchObject({
      export: 'nvmeof',
      nvmeof: { portals: ['127.0.0.1:4420'], nqnPrefix: NQN_PREFIX, configfsRoot: '/sys/kernel/config', reconcileSeconds: 30 },
    });
    expect(load([{ ...nvmeB, export: 'iscsi', nvmeof: undefined, iscsi: { helper: 'lio', portals: ['127.0.0.1:3260'] } }]).backends[0]).toMatchObject({ export: 'iscsi', iscsi: { helper: 'lio' } });
  });

  it('names the section that is missing or does not apply', () => {
    expect(err(() => load([{ ...nvmeB, nvmeof: undefined }]))).toMatch(/backends\[0\]\.nvmeof.*required with export: nvmeof/);
    expect(err(() => load([{ ...nvmeB, iscsi: { portals: ['127.0.0.1:3260'] } }]))).toMatch(/backends\[0\]\.iscsi.*only applies with export: iscsi/);
    expect(err(() => load([{ ...nvmeB, export: 'local' }]))).toMatch(/backends\[0\]\.export.*iscsi, nvmeof/);
    expect(err(() => load([{ ...nvmeB, nvmeof: { portals: ['storage.example:4420'] } }]))).toMatch(/backends\[0\]\.nvmeof\.portals\[0\].*IP address/);
  });

  it('a node with an lvm nvmeof backend in its configuration may clean orphan controllers of that backend\'s prefix', () => {
    expect(load([nvmeB], 'node').node.orphanNqnPrefixes).toEqual(['nqn.2026-11.io.sinter:', NQN_PREFIX]);
  });
});

describe('LVM backend with export: nvmeof reads nvmet, not a tgtd', () => {
  const cfgOf = (configfsRoot: string) => ({ ...load([{ ...nvmeB, dataDir: join(dir, 'data'), nvmeof: { ...nvmeB.nvmeof, configfsRoot, reconcileSeconds: 7 } }]).backends[0] }) as LvmBackendConfig;

  it('Probe names the modules to load when nvmet\'s configfs tree is missing, and reconciles on nvmeof.reconcileSeconds', async () => {
    const exec = new RecordedVgs();
    const b = new LvmBackend(cfgOf(join(dir, 'no-nvmet')), exec, pino({ level: 'silent' }));
    expect(b.reconcileIntervalMs).toBe(7000);
    await expect(b.probe()).rejects.toMatchObject({ code: 'failed-precondition', message: expect.stringMatching(/nvmet's configfs tree .* is missing: load the kernel modules \(modprobe nvmet nvmet-tcp\)/) as unknown });
    // The volume group's PVs were looked up once, then the VG read through vgs restricted to them; no tgtadm was run.
    expect(exec.calls.map((c) => c.split(' ').slice(0, 3).join(' '))).toEqual(['pvs --reportformat json', 'vgs --devices /dev/vdb']);
  });

  it('lists the subsystems of its own volumes (namespace on the LV, allowed hosts), not another backend\'s', async () => {
    const root = join(dir, 'configfs');
    const nvmet = join(root, 'nvmet');
    const subsystem = (vol: string, device: string) => {
      const s = join(nvmet, 'subsystems', NQN_PREFIX + vol);
      mkdirSync(join(s, 'namespaces', '1'), { recursive: true });
      mkdirSync(join(s, 'allowed_hosts', HOST), { recursive: true });
      writeFileSync(join(s, 'namespaces', '1', 'device_path'), `${device}\n`);
      writeFileSync(join(s, 'namespaces', '1', 'enable'), '1\n');
      writeFileSync(join(s, 'attr_allow_any_host'), '0\n');
      mkdirSync(join(nvmet, 'ports', '1', 'subsystems', NQN_PREFIX + vol), { recursive: true });
    };
    mkdirSync(join(nvmet, 'ports', '1'), { recursive: true });
    for (const [f, v] of [['addr_trtype', 'tcp'], ['addr_traddr', '127.0.0.1'], ['addr_trsvcid', '4420']]) writeFileSync(join(nvmet, 'ports', '1', f), `${v}\n`);
    subsystem(VOL, `/dev/sinter-vg/v-${VOL}`);
    subsystem(OTHER, '/var/lib/sinter/file/volumes/x.img');
    const b = new LvmBackend(cfgOf(root), new RecordedVgs(), pino({ level: 'silent' }));
    expect(b.devicePath(`v-${VOL}`)).toBe(`/dev/sinter-vg/v-${VOL}`);
    expect(await b.listExports()).toEqual([{ volumeId: VOL, target: NQN_PREFIX + VOL, initiators: [HOST] }]);
    await expect(b.probe()).resolves.toBeUndefined();
  });
});

describe('the LVM example configuration (deploy/config-examples/controller-lvm.yaml)', () => {
  it('loads: thin over tgt, thick over LIO, thin over nvmet, each on its own volume group', () => {
    const prev = process.env.HOST_IP;
    process.env.HOST_IP = '10.0.0.10';
    try {
      const c = loadConfig('controller', ['--config', join(import.meta.dirname, '../../deploy/config-examples/controller-lvm.yaml'), '--node-name', 'n1']);
      expect(c.backends.map((b) => (b.driver === 'lvm' ? [b.name, b.lvmType, b.export, b.export === 'iscsi' ? b.iscsi?.helper : b.nvmeof?.portals.join(',')] : b.driver))).toEqual([
        ['fast', 'thin', 'iscsi', 'tgt'],
        ['bulk', 'thick', 'iscsi', 'lio'],
        ['nvme', 'thin', 'nvmeof', '10.0.0.10:4420'],
      ]);
    } finally {
      if (prev === undefined) delete process.env.HOST_IP;
      else process.env.HOST_IP = prev;
    }
  });
});
