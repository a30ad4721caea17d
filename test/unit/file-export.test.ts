import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import type { Attachment } from '../../src/backends/backend.js';
import { FileBackend } from '../../src/backends/file/backend.js';
import { loadConfig } from '../../src/config/load.js';
import type { FileBackendConfig } from '../../src/config/types.js';
import { encodeNodeId } from '../../src/contracts/nodeid.js';
import type { Executor } from '../../src/exec/run.js';

// The file backend exports through VolumeExport, as LVM does: with `export: nvmeof` an image file is
// an nvmet file-backed namespace. nvmet's configfs is modelled here by a plain directory (the
// attribute names and layout of drivers/nvme/target/configfs.c, Linux 6.1: subsystems/<nqn>/
// {attr_allow_any_host,namespaces/1/{device_path,buffered_io,enable,revalidate_size},allowed_hosts/
// <link>}, ports/<n>/{addr_*,subsystems/<link>}). A plain directory cannot do what the kernel
// does on rmdir (drop the attribute files), so removal is left to test/vm/nvme.vm.test.ts, which runs
// `sinter controller` with a file backend and export: nvmeof against the guest kernel's nvmet.
const dir = mkdtempSync(join(tmpdir(), 'sinter-file-export-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const NQN_PREFIX = 'nqn.2026-12.io.sinter.file:';
const HOST_A = 'nqn.2014-08.org.nvmexpress:uuid:6b2f3a4c-1d2e-4f50-8a9b-0c1d2e3f4a5b';
const HOST_B = 'nqn.2014-08.org.nvmexpress:uuid:7c3f4b5d-2e3f-4061-9b0c-1d2e3f4a5b6c';
const VOL = 'files-1b4e28ba-2fa1-41d2-883f-0016d3cca427';
const MiB = 1024 * 1024;

/** The file backend runs no host command for nvmet: any call fails this test. */
const noCommands: Executor = {
  run: async (cmd) => {
    throw new Error(`unexpected command ${cmd}`);
  },
};

let n = 0;
function backend(configfsRoot: string, extra: object = {}): FileBackend {
  const file = join(dir, `c${n++}.yaml`);
  const raw = { name: 'files', dataDir: join(dir, `data${n}`), export: 'nvmeof', nvmeof: { portals: ['127.0.0.1:4420'], nqnPrefix: NQN_PREFIX, configfsRoot, reconcileSeconds: 9 }, ...extra };
  writeFileSync(file, stringify({ backends: [raw] }));
  const cfg = loadConfig('controller', ['--config', file, '--node-name', 'n1']).backends[0] as FileBackendConfig;
  return new FileBackend(cfg, noCommands, pino({ level: 'silent' }));
}
const spec = { id: VOL, name: 'pvc-1', sizeBytes: 8 * MiB, parameters: {}, capabilities: [] };
const node = (host: string, nqn: string) => ({ host, nqn, wwpns: [] as string[] });
const attached = (...hosts: [string, string][]): Attachment[] =>
  hosts.map(([h, nqn]) => ({ nodeId: encodeNodeId(node(h, nqn)), readonly: false, accessType: 'mount', accessMode: 'SINGLE_NODE_MULTI_WRITER', at: new Date().toISOString() }));

describe('file backend with export: nvmeof (VolumeExport, nvmet helper; configfs modelled by a directory)', () => {
  it('Probe names the modules to load when nvmet is missing, and reconciles on nvmeof.reconcileSeconds', async () => {
    const b = backend(join(dir, 'no-nvmet'));
    await b.start();
    expect(b.reconcileIntervalMs).toBe(9000);
    await expect(b.probe()).rejects.toMatchObject({ code: 'failed-precondition', message: expect.stringMatching(/modprobe nvmet nvmet-tcp/) as unknown });
    expect(b.listExports).toBeTypeOf('function');
  });

  it('exports the image file as namespace 1 of a subsystem, allows exactly the publishing node, and fences the one that leaves', async () => {
    const root = join(dir, 'configfs');
    const nvmet = join(root, 'nvmet');
    mkdirSync(join(nvmet, 'hosts'), { recursive: true });
    // What the kernel makes by itself (configfs default groups) and a plain directory cannot:
    // a port's subsystems/ (here an existing port on the portal) and a subsystem's namespaces/ and allowed_hosts/.
    mkdirSync(join(nvmet, 'ports', '1', 'subsystems'), { recursive: true });
    for (const [f, v] of [['addr_trtype', 'tcp'], ['addr_adrfam', 'ipv4'], ['addr_traddr', '127.0.0.1'], ['addr_trsvcid', '4420']]) writeFileSync(join(nvmet, 'ports', '1', f), `${v}\n`);
    for (const g of ['namespaces', 'allowed_hosts']) mkdirSync(join(nvmet, 'subsystems', NQN_PREFIX + VOL, g), { recursive: true });
    const b = backend(root);
    await b.start();
    await expect(b.probe()).resolves.toBeUndefined();
    await b.createVolume(spec);
    const image = b.imagePath(VOL);

    const ctx = await b.exportVolume(VOL, node('a', HOST_A), false, {});
    expect(ctx).toEqual({ transport: 'nvmeof', nqn: NQN_PREFIX + VOL, portals: ['127.0.0.1:4420'], nsid: 1 });
    const sub = join(nvmet, 'subsystems', NQN_PREFIX + VOL);
    const attr = (rel: string) => readFileSync(join(sub, rel), 'utf8').trim();
    expect(attr('namespaces/1/device_path')).toBe(image);
    // A file goes through the page cache (nvmet's file backend with buffered_io).
    expect(attr('namespaces/1/buffered_io')).toBe('1');
    expect(attr('namespaces/1/enable')).toBe('1');
    expect(attr('attr_allow_any_host')).toBe('0');
    expect(lstatSync(join(sub, 'allowed_hosts', HOST_A)).isSymbolicLink()).toBe(true);
    const port = readlinkSync(join(nvmet, 'ports', '1', 'subsystems', NQN_PREFIX + VOL));
    expect(port).toBe(sub);
    // DH-HMAC-CHAP is refused, not ignored (the guest kernel has no CONFIG_NVME_TARGET_AUTH).
    await expect(b.exportVolume(VOL, node('a', HOST_A), false, { 'dhchap-secret': 'x' })).rejects.toMatchObject({ code: 'invalid-argument' });

    await b.exportVolume(VOL, node('b', HOST_B), false, {});
    await b.setAttachments(VOL, attached(['a', HOST_A], ['b', HOST_B]));
    expect(await b.listExports!()).toEqual([{ volumeId: VOL, target: NQN_PREFIX + VOL, initiators: [HOST_A, HOST_B].sort() }]);
    expect(await b.volumeHealth(VOL)).toMatchObject({ abnormal: false });

    // B leaves while A stays: B's host goes from allowed_hosts, the subsystem stays for A.
    await b.unexportVolume(VOL, node('b', HOST_B));
    expect(existsSync(join(sub, 'allowed_hosts', HOST_B))).toBe(false);
    expect(existsSync(join(sub, 'allowed_hosts', HOST_A))).toBe(true);
    await b.setAttachments(VOL, attached(['a', HOST_A]));

    // A grown image: nvmet is asked to re-read the namespace's size.
    await b.expandVolume(VOL, 16 * MiB);
    expect(attr('namespaces/1/revalidate_size')).toBe('1');

    // An allowed host no publish explains is revoked by reconcile; a lost one restored.
    mkdirSync(join(nvmet, 'hosts', HOST_B), { recursive: true });
    symlinkSync(join(nvmet, 'hosts', HOST_B), join(sub, 'allowed_hosts', HOST_B));
    unlinkSync(join(sub, 'allowed_hosts', HOST_A));
    expect(await b.volumeHealth(VOL)).toMatchObject({ abnormal: true, message: expect.stringMatching(/not in the subsystem's allowed_hosts/) as unknown });
    expect(await b.reconcileExports((_id, fn) => fn())).toEqual({ restored: 1, revoked: 1 });
    expect(existsSync(join(sub, 'allowed_hosts', HOST_A))).toBe(true);
    expect(existsSync(join(sub, 'allowed_hosts', HOST_B))).toBe(false);
  });

  it('export: local exports nothing and lists no exports', async () => {
    const b = backend(join(dir, 'unused'), { export: 'local', nvmeof: undefined });
    await b.start();
    await b.createVolume({ ...spec });
    expect(await b.exportVolume(VOL, node('a', HOST_A), false, {})).toEqual({ transport: 'local', path: b.imagePath(VOL) });
    expect(b.listExports).toBeUndefined();
    expect(b.reconcileIntervalMs).toBeUndefined();
    await expect(b.unexportVolume(VOL, node('a', HOST_A))).resolves.toBeUndefined();
  });
});
