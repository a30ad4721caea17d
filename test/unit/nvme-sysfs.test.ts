import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { DomainError } from '../../src/errors/domain-error.js';
import { ExecError, type Executor } from '../../src/exec/run.js';
import { NvmeConnector } from '../../src/node/connectors/nvme.js';
import { controllerAt, NvmeSysfs, parseNvmeAddress } from '../../src/node/connectors/nvme-sysfs.js';
import { SysfsTree } from '../../src/node/connectors/sysfs.js';
import { tempDir } from '../helpers/scratch-fs.js';

const FIXTURES = new URL('../fixtures/nvme/', import.meta.url).pathname;
const NQN = 'nqn.2026-11.io.sinter:file-1b4e28ba-2fa1-11d2-883f-0016d3cca427';
const HOST = 'nqn.2014-08.org.nvmexpress:uuid:1f895b65-8771-41e5-8943-40869203f363';

/**
 * Rebuilds the sysfs an NVMe/TCP host showed in the test guest (recorded by
 * test/fixtures/nvme/record-nvme.sh: Linux 6.1, nvme-cli 2.3, native
 * multipath, one subsystem over 127.0.0.1 and 127.0.0.2) under `root`.
 */
function treeFromRecording(root: string, file = 'sysfs-multipath.txt'): void {
  for (const line of readFileSync(join(FIXTURES, file), 'utf8').split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const kind = line[0];
    const [path, value] = line.slice(2).split('\t') as [string, string | undefined];
    const p = join(root, path);
    if (kind === 'D') mkdirSync(p, { recursive: true });
    else if (kind === 'F') {
      mkdirSync(dirname(p), { recursive: true });
      writeFileSync(p, `${value ?? ''}\n`);
    } else if (kind === 'L') {
      mkdirSync(dirname(p), { recursive: true });
      symlinkSync(value!, p);
    }
  }
}

describe('NVMe sysfs lookup, against the layout recorded in the test guest (record-nvme.sh, Linux 6.1, native multipath)', () => {
  const t = tempDir('sinter-nvme-sysfs-');
  afterAll(() => t.cleanup());
  const sys = join(t.dir, 'sys');
  treeFromRecording(sys);
  const nvme = new NvmeSysfs(new SysfsTree(sys, join(t.dir, 'dev')));

  it('reads both controllers of the subsystem with their address, transport, state and host NQN', async () => {
    const ctrls = await nvme.controllers();
    expect(ctrls).toEqual([
      { name: 'nvme0', subsysnqn: NQN, transport: 'tcp', traddr: '127.0.0.1', trsvcid: '4420', state: 'live', hostnqn: HOST },
      { name: 'nvme1', subsysnqn: NQN, transport: 'tcp', traddr: '127.0.0.2', trsvcid: '4420', state: 'live', hostnqn: HOST },
    ]);
    expect(controllerAt(ctrls[1], '127.0.0.2', 4420)).toBe(true);
    expect(controllerAt(ctrls[1], '127.0.0.2', 4421)).toBe(false);
  });

  it('finds ONE block device for the namespace over both paths (the multipath head nvme0n1, never a hidden path device nvme0cXn1)', async () => {
    expect(await nvme.namespaces()).toEqual([{ device: 'nvme0n1', nqn: NQN, nsid: 1 }]);
    expect(await nvme.namespaceDevice(NQN, 1)).toBe('nvme0n1');
    expect(await nvme.namespaceDevice(NQN, 2)).toBeUndefined();
    expect(await nvme.namespaceDevice('nqn.2026-11.io.sinter:other', 1)).toBeUndefined();
  });

  it('without native multipath (nvme_core.multipath=N; layout from drivers/nvme/host/core.c, not recorded): the namespace device under its controller', async () => {
    const d = join(t.dir, 'nomp');
    mkdirSync(join(d, 'class/nvme/nvme3/nvme3n1'), { recursive: true });
    writeFileSync(join(d, 'class/nvme/nvme3/subsysnqn'), `${NQN}\n`);
    writeFileSync(join(d, 'class/nvme/nvme3/transport'), 'tcp\n');
    writeFileSync(join(d, 'class/nvme/nvme3/address'), 'traddr=10.0.0.5,trsvcid=4420\n');
    writeFileSync(join(d, 'class/nvme/nvme3/state'), 'live\n');
    writeFileSync(join(d, 'class/nvme/nvme3/nvme3n1/nsid'), '1\n');
    expect(await new NvmeSysfs(new SysfsTree(d, '/dev')).namespaceDevice(NQN, 1)).toBe('nvme3n1');
  });

  it('parses the kernel address attribute (with and without src_addr)', () => {
    expect(parseNvmeAddress('traddr=127.0.0.1,trsvcid=4420,src_addr=127.0.0.1')).toEqual({ traddr: '127.0.0.1', trsvcid: '4420', src_addr: '127.0.0.1' });
    expect(parseNvmeAddress('traddr=fd00::2,trsvcid=4421')).toEqual({ traddr: 'fd00::2', trsvcid: '4421' });
  });
});

describe('NVMe connector against the recorded tree (nvme-cli stood in by its recorded answers)', () => {
  const t = tempDir('sinter-nvme-conn-');
  afterAll(() => t.cleanup());
  const sys = join(t.dir, 'sys');
  const dev = join(t.dir, 'dev');
  treeFromRecording(sys);
  mkdirSync(join(sys, 'module/nvme_tcp'), { recursive: true });
  mkdirSync(join(sys, 'module/nvme_fabrics'), { recursive: true });
  mkdirSync(dev, { recursive: true });
  writeFileSync(join(dev, 'nvme0n1'), '');
  const ctx = { transport: 'nvmeof' as const, nqn: NQN, portals: ['127.0.0.1:4420', '127.0.0.2:4420'], nsid: 1 };
  const calls: string[][] = [];
  /** nvme-cli 2.3's recorded stderr for each case (test/fixtures/nvme/connect-*.err). */
  const recorded = (name: string) => readFileSync(join(FIXTURES, `connect-${name}.err`), 'utf8').replace(/\nexit \d+\n?$/, '');
  const execWith = (stderr?: string): Executor => ({
    run: async (cmd, args) => {
      calls.push([cmd, ...args]);
      if (stderr !== undefined) throw new ExecError(`${cmd} ${args.join(' ')}`, 1, stderr, false);
      return { stdout: '', stderr: '', exitCode: 0 };
    },
  });
  const connector = (exec: Executor, hostNqn: string | undefined = HOST) =>
    new NvmeConnector({ ...(hostNqn ? { hostNqn } : {}), sysfs: new SysfsTree(sys, dev), deviceTimeoutMs: 200, mountInfoPath: '/dev/null' }, exec, pino({ level: 'silent' }));

  it('reuses the controllers the kernel already has for (nqn, address, port): no nvme connect, the multipath device back', async () => {
    calls.length = 0;
    const r = await connector(execWith()).attach(ctx, {});
    expect(r).toEqual({ device: join(dev, 'nvme0n1'), attached: false });
    expect(calls).toEqual([]);
  });

  it('connects the portal that has no controller, with the host NQN', async () => {
    calls.length = 0;
    await connector(execWith()).attach({ ...ctx, portals: [...ctx.portals, '127.0.0.3:4420'] }, {});
    expect(calls).toEqual([['nvme', 'connect', '-t', 'tcp', '-a', '127.0.0.3', '-s', '4420', '-n', NQN, '--hostnqn', HOST]]);
  });

  it.each([
    ['refused', 'failed-precondition', /does not exist or does not allow this node's host NQN/],
    ['no-listener', 'unavailable', /nothing listens there/],
  ])('names what nvme-cli answered (%s) when no portal connects', async (name, code, re) => {
    const e = await connector(execWith(recorded(name)))
      .attach({ ...ctx, portals: ['127.0.0.9:4420'] }, {})
      .catch((x: unknown) => x);
    expect(e).toBeInstanceOf(DomainError);
    expect((e as DomainError).code).toBe(code);
    expect((e as DomainError).message).toMatch(re);
  });

  it('a racing connect ("already connected", exit 1) is success', async () => {
    const r = await connector(execWith(recorded('again')))
      .attach({ ...ctx, portals: [...ctx.portals, '127.0.0.3:4420'] }, {})
      .catch((x: unknown) => x);
    expect(r).toEqual({ device: join(dev, 'nvme0n1'), attached: false });
  });

  it('names the missing package and the missing host NQN', async () => {
    const noCli: Executor = { run: async (cmd) => Promise.reject(new ExecError(cmd, undefined, `spawn ${cmd} ENOENT`, false)) };
    const e = (await connector(noCli).attach({ ...ctx, portals: ['127.0.0.9:4420'] }, {}).catch((x: unknown) => x)) as DomainError;
    expect(e.message).toMatch(/install the nvme-cli package/);
    const e2 = (await connector(execWith(), '').attach(ctx, {}).catch((x: unknown) => x)) as DomainError;
    expect(e2.code).toBe('failed-precondition');
    expect(e2.message).toMatch(/no NVMe host NQN/);
  });

  it('names the missing kernel module when modprobe cannot load it', async () => {
    const bare = join(t.dir, 'bare');
    mkdirSync(join(bare, 'module/nvme_fabrics'), { recursive: true });
    const c = new NvmeConnector({ hostNqn: HOST, sysfs: new SysfsTree(bare, dev) }, execWith('modprobe: FATAL: Module nvme-tcp not found'), pino({ level: 'silent' }));
    const e = (await c.attach(ctx, {}).catch((x: unknown) => x)) as DomainError;
    expect(e.message).toMatch(/nvme-tcp kernel module is not loaded/);
  });

  it('lists the namespace for the orphan report, releasable only under sinter\'s NQN prefix', async () => {
    expect(await connector(execWith()).attached()).toEqual([{ device: join(dev, 'nvme0n1'), source: `${NQN} nsid 1` }]);
    const foreign = new NvmeConnector({ hostNqn: HOST, sysfs: new SysfsTree(sys, dev), orphanNqnPrefixes: ['nqn.2026-11.io.other:'] }, execWith(), pino({ level: 'silent' }));
    expect((await foreign.attached())[0]?.notReleasable).toMatch(/not one of sinter's/);
    expect(await foreign.release(join(dev, 'nvme0n1'), `${NQN} nsid 1`, [])).toBe(false);
  });
});
