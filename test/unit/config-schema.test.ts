import { keyOf } from '../helpers/config-key.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, expectTypeOf, it } from 'vitest';
import { stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import type { BackendConfig, Config, ExecConfig, FileBackendConfig, IscsiExportConfig, LvmBackendConfig, NodeConfig, NvmeofExportConfig } from '../../src/config/types.js';

const dir = mkdtempSync(join(tmpdir(), 'sinter-config-schema-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
function load(cfg: object, role: 'all' | 'node' | 'controller' = 'controller', flags: string[] = []) {
  const file = join(dir, `c${n++}.yaml`);
  writeFileSync(file, stringify(cfg));
  return loadConfig(role, ['--config', file, '--node-name', 'n1', ...flags]);
}
const iscsiBackend = { name: 'b1', dataDir: join(dir, 'b1'), export: 'iscsi', iscsi: { portals: ['127.0.0.1:3260'] } };
const full = {
  backends: [iscsiBackend],
  node: { fc: {}, iscsi: {} },
  controller: {},
  exec: {},
  kubernetes: {},
};

/** Puts `bogus: 1` into the map at `path` of a copy of `full`. */
function withUnknown(path: (string | number)[]): object {
  const copy = structuredClone(full) as Record<string, unknown>;
  let at: Record<string | number, unknown> = copy;
  for (const p of path) at = at[p] as Record<string | number, unknown>;
  at.bogus = 1;
  return copy;
}

describe('configuration schema', () => {
  it('loads the full example', () => {
    expect(() => load(full)).not.toThrow();
  });

  it('file and lvm backends: an iscsi or nvmeof section exactly when export names it, the error naming that key', () => {
    const lvm = { name: 'l1', driver: 'lvm', volumeGroup: 'vg0', dataDir: join(dir, 'l1') };
    const iscsi = { portals: ['127.0.0.1:3260'] };
    const nvmeof = { portals: ['127.0.0.1:4420'] };
    const message = (b: object) => {
      try {
        load({ backends: [b] });
      } catch (e) {
        return (e as Error).message;
      }
      return 'accepted';
    };
    for (const b of [iscsiBackend, { ...lvm, export: 'iscsi', iscsi }]) {
      expect(message({ ...b, iscsi: undefined })).toMatch(/^backends\[0\]\.iscsi: is required with export: iscsi \(at least portals\)/);
      expect(message({ ...b, nvmeof })).toMatch(/^backends\[0\]\.nvmeof: only applies with export: nvmeof/);
      expect(message({ ...b, export: 'nvmeof', nvmeof })).toMatch(/^backends\[0\]\.iscsi: only applies with export: iscsi/);
      expect(message({ ...b, export: 'nvmeof', iscsi: undefined })).toMatch(/^backends\[0\]\.nvmeof: is required with export: nvmeof/);
      expect(message({ ...b, export: 'nvmeof', iscsi: undefined, nvmeof })).toBe('accepted');
    }
    expect(message({ name: 'f1', dataDir: join(dir, 'f1'), iscsi })).toMatch(/^backends\[0\]\.iscsi: only applies with export: iscsi/);
  });

  it.each([
    [[], 'bogus'],
    [['backends', 0], 'backends[0].bogus'],
    [['backends', 0, 'iscsi'], 'backends[0].iscsi.bogus'],
    [['node'], 'node.bogus'],
    [['node', 'fc'], 'node.fc.bogus'],
    [['node', 'iscsi'], 'node.iscsi.bogus'],
    [['controller'], 'controller.bogus'],
    [['exec'], 'exec.bogus'],
    [['kubernetes'], 'kubernetes.bogus'],
  ] as const)('refuses an unknown key in %j, naming %s and the keys allowed there', (path, key) => {
    const cfg = withUnknown([...path]);
    expect(keyOf(() => load(cfg))).toBe(key);
    expect(() => load(cfg)).toThrow(/unknown key \(allowed: /);
  });

  it('refuses a list where a map belongs (a list is not a map of index keys)', () => {
    expect(keyOf(() => load({ ...full, node: ['x'] }))).toBe('node');
    expect(keyOf(() => load({ ...full, backends: [{ ...iscsiBackend, labels: ['ssd'] }] }))).toBe('backends[0].labels');
    expect(keyOf(() => load({ ...full, backends: [{ ...iscsiBackend, iscsi: [] }] }))).toBe('backends[0].iscsi');
  });

  it('names the element of a list at fault', () => {
    const bad = { ...iscsiBackend, iscsi: { portals: ['127.0.0.1:3260', '-x:99999'] } };
    expect(keyOf(() => load({ backends: [iscsiBackend, { ...bad, name: 'b2', dataDir: join(dir, 'b2') }] }))).toBe('backends[1].iscsi.portals[1]');
    expect(keyOf(() => load({ backends: [iscsiBackend], kubeletRoots: ['/var/lib/kubelet', 'rel'] }))).toBe('kubeletRoots[1]');
    expect(keyOf(() => load({ backends: [iscsiBackend], node: { orphanTargetPrefixes: ['iqn.2026-11.io.sinter:', 'x'] } }))).toBe('node.orphanTargetPrefixes[1]');
  });

  it('names a flag when the value came from it, the file key otherwise', () => {
    expect(keyOf(() => load({ backends: [iscsiBackend] }, 'controller', ['--kubelet-root', '/k', '--kubelet-root', 'rel']))).toBe('--kubelet-root[1]');
    expect(keyOf(() => load({ backends: [iscsiBackend], node: { maxVolumesPerNode: 'x' } }, 'node', ['--max-volumes-per-node', '3']))).toBeUndefined();
    expect(keyOf(() => load({ backends: [iscsiBackend], node: { maxVolumesPerNode: 'x' } }, 'node'))).toBe('node.maxVolumesPerNode');
    expect(keyOf(() => load({ backends: [iscsiBackend] }, 'node', ['--max-volumes-per-node', '-1']))).toBe('--max-volumes-per-node');
    expect(keyOf(() => load({}, 'all', ['--data-dir', 'rel']))).toBe('--data-dir');
    expect(keyOf(() => load({ backends: [iscsiBackend] }, 'node', ['--node-id', '']))).toBe('--node-id');
  });

  it('checks node.iscsiInitiatorName with the node id contract (isValidIqn)', () => {
    expect(keyOf(() => load({ backends: [iscsiBackend], node: { iscsiInitiatorName: 'not an iqn' } }))).toBe('node.iscsiInitiatorName');
    expect(load({ backends: [iscsiBackend], node: { iscsiInitiatorName: 'iqn.2026-11.io.example:n1' } }).node.iscsiInitiatorName).toBe('iqn.2026-11.io.example:n1');
  });

  it('node.iscsi: the kernel initiator\'s waits, 30 s for the disk and 5 s for multipathd\'s map by default, in bounds', () => {
    expect(load({ backends: [iscsiBackend] }).node.iscsi).toEqual({ deviceTimeoutSeconds: 30, multipathWaitSeconds: 5 });
    expect(load({ backends: [iscsiBackend], node: { iscsi: { multipathWaitSeconds: 60, deviceTimeoutSeconds: 120 } } }).node.iscsi).toEqual({ deviceTimeoutSeconds: 120, multipathWaitSeconds: 60 });
    expect(keyOf(() => load({ backends: [iscsiBackend], node: { iscsi: { deviceTimeoutSeconds: 0 } } }))).toBe('node.iscsi.deviceTimeoutSeconds');
    expect(keyOf(() => load({ backends: [iscsiBackend], node: { iscsi: { multipathWaitSeconds: 601 } } }))).toBe('node.iscsi.multipathWaitSeconds');
  });

  it('types are inferred from the schema (a key added there appears in Config; typecheck fails on drift)', () => {
    expectTypeOf<ExecConfig>().toEqualTypeOf<{ mode: 'direct' | 'nsenter' | 'chroot'; hostRoot: string; timeoutSeconds: number; nsenterTarget: 'host' | 'iscsid'; spawnVia: 'runner' | 'self' }>();
    expectTypeOf<IscsiExportConfig['blockSize']>().toEqualTypeOf<512 | 4096>();
    expectTypeOf<FileBackendConfig['export']>().toEqualTypeOf<'local' | 'iscsi' | 'nvmeof'>();
    expectTypeOf<FileBackendConfig['iscsi']>().toEqualTypeOf<IscsiExportConfig | undefined>();
    // The export-section checks (one helper for file and lvm) keep each schema's own output type.
    expectTypeOf<FileBackendConfig>().not.toBeAny();
    expectTypeOf<FileBackendConfig>().not.toBeUnknown();
    expectTypeOf<FileBackendConfig['nvmeof']>().toEqualTypeOf<NvmeofExportConfig | undefined>();
    expectTypeOf<FileBackendConfig['capacityBytes']>().toEqualTypeOf<number>();
    expectTypeOf<LvmBackendConfig>().not.toBeAny();
    expectTypeOf<LvmBackendConfig['export']>().toEqualTypeOf<'iscsi' | 'nvmeof'>();
    expectTypeOf<LvmBackendConfig['nvmeof']>().toEqualTypeOf<NvmeofExportConfig | undefined>();
    expectTypeOf<LvmBackendConfig['volumeClear']>().toEqualTypeOf<'zero' | 'none'>();
    expectTypeOf<Extract<BackendConfig, { driver: 'lvm' }>>().toEqualTypeOf<LvmBackendConfig>();
    expectTypeOf<NodeConfig['stateDir']>().toEqualTypeOf<string>();
    expectTypeOf<NodeConfig['orphanTargetPrefixes']>().toEqualTypeOf<string[]>();
    expectTypeOf<Config['kubernetes']['enabled']>().toEqualTypeOf<boolean>();
    expectTypeOf<Config['node']['fc']>().toEqualTypeOf<{ scanTimeoutSeconds: number; removeTimeoutSeconds: number }>();
    const c = load(full);
    expect(Object.keys(c.exec).sort()).toEqual(['hostRoot', 'mode', 'nsenterTarget', 'spawnVia', 'timeoutSeconds']);
    const b0 = c.backends[0];
    expect(b0.driver === 'file' ? b0.iscsi : undefined).toMatchObject({ helper: 'tgt', blockSize: 512, writeCache: true, reconcileSeconds: 30 });
  });

  it('iscsi.helper: lio — portals must be IP literals (LIO binds them), discard is a LIO switch only', () => {
    const lio = (iscsi: object) => load({ backends: [{ ...iscsiBackend, iscsi: { portals: ['127.0.0.1:3260'], helper: 'lio', ...iscsi } }] });
    const iscsiOf = (c: ReturnType<typeof load>) => {
      const b = c.backends[0];
      return b.driver === 'rbd' ? undefined : b.iscsi;
    };
    expect(iscsiOf(lio({}))).toMatchObject({ helper: 'lio', portals: ['127.0.0.1:3260'] });
    expect(iscsiOf(lio({ discard: false }))?.discard).toBe(false);
    expect(keyOf(() => lio({ portals: ['storage.example:3260'] }))).toBe('backends[0].iscsi.portals');
    expect(keyOf(() => load({ backends: [{ ...iscsiBackend, iscsi: { portals: ['storage.example:3260'] } }] }))).toBeUndefined();
    expect(keyOf(() => load({ backends: [{ ...iscsiBackend, iscsi: { portals: ['127.0.0.1:3260'], discard: true } }] }))).toBe('backends[0].iscsi.discard');
    expect(keyOf(() => lio({ helper: 'lioadm' }))).toBe('backends[0].iscsi.helper');
  });

  it('iscsi.openPortals: tgt only, and its portals must be IP literals (sinter binds them on tgtd); off by default', () => {
    const tgt = (iscsi: object) => load({ backends: [{ ...iscsiBackend, iscsi: { portals: ['127.0.0.1:3260'], ...iscsi } }] });
    const iscsiOf = (c: Config) => (c.backends[0].driver === 'file' ? c.backends[0].iscsi : undefined);
    expect(iscsiOf(tgt({}))?.openPortals).toBe(false);
    expect(iscsiOf(tgt({ openPortals: true, portals: ['[fd00::1]:3260', '10.0.0.1:3260'] }))).toMatchObject({ openPortals: true, portals: ['[fd00::1]:3260', '10.0.0.1:3260'] });
    expect(keyOf(() => tgt({ openPortals: true, portals: ['storage.example:3260'] }))).toBe('backends[0].iscsi.portals');
    expect(keyOf(() => tgt({ openPortals: true, helper: 'lio' }))).toBe('backends[0].iscsi.openPortals');
    expect(keyOf(() => tgt({ openPortals: 'yes' }))).toBe('backends[0].iscsi.openPortals');
  });

  it('loads the LIO example configuration (deploy/config-examples/controller-lio.yaml)', () => {
    const prev = process.env.HOST_IP;
    process.env.HOST_IP = '10.0.0.10';
    try {
      const c = loadConfig('controller', ['--config', join(import.meta.dirname, '../../deploy/config-examples/controller-lio.yaml'), '--node-name', 'n1']);
      const b = c.backends[0];
      expect(b.driver === 'file' ? b.iscsi : undefined).toMatchObject({ helper: 'lio', portals: ['10.0.0.10:3260'], discard: true, writeCache: true });
    } finally {
      if (prev === undefined) delete process.env.HOST_IP;
      else process.env.HOST_IP = prev;
    }
  });
});
