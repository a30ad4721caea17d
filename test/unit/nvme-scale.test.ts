import { mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { ExecError, type Executor } from '../../src/exec/run.js';
import type { PublishContext } from '../../src/contracts/publish-context.js';
import { NvmeConnector } from '../../src/node/connectors/nvme.js';
import { NvmeSysfs } from '../../src/node/connectors/nvme-sysfs.js';
import { SysfsTree } from '../../src/node/connectors/sysfs.js';
import { stringContaining } from '../helpers/matchers.js';
import { tempDir } from '../helpers/scratch-fs.js';

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '../fixtures/nvme');
const HOST = 'nqn.2014-08.org.nvmexpress:uuid:1f895b65-8771-41e5-8943-40869203f363';
const nqnOf = (i: number) => `nqn.2026-11.io.sinter:lvm-00000000-0000-4000-8000-${String(i).padStart(12, '0')}`;

/**
 * A node's NVMe/TCP sysfs with any number of subsystems, in the layout
 * recorded in the test guest (test/fixtures/nvme/sysfs-multipath.txt: Linux
 * 6.1, native multipath): class/nvme-subsystem/nvme-subsysK/{subsysnqn,
 * nvmeN → controller, nvmeKnY/nsid}, class/nvme/nvmeN/{subsysnqn,transport,
 * address,state}, block/nvmeKnY/{dev,holders/}, /dev/nvmeKnY. It plays the
 * kernel's part as drivers/nvme/host/core.c (6.1) does: `nvme connect` makes
 * a controller with the lowest free instance number (nvme_instance_ida), a
 * new subsystem is named after its first controller's instance
 * (nvme_init_subsystem: dev_set_name "nvme-subsys%d", ctrl->instance), and
 * writing delete_controller removes the controller, then the subsystem with
 * its last one, freeing both numbers for the next connect.
 */
class FlatNvmeHost {
  readonly t = tempDir('sinter-nvme-scale-');
  readonly sys = join(this.t.dir, 'sys');
  readonly dev = join(this.t.dir, 'dev');

  constructor() {
    mkdirSync(join(this.sys, 'class/nvme-subsystem'), { recursive: true });
    mkdirSync(join(this.sys, 'class/nvme'), { recursive: true });
    mkdirSync(join(this.sys, 'module/nvme_tcp'), { recursive: true });
    mkdirSync(join(this.sys, 'module/nvme_fabrics'), { recursive: true });
    mkdirSync(this.dev, { recursive: true });
  }

  private file(rel: string, value: string): void {
    mkdirSync(join(this.sys, rel, '..'), { recursive: true });
    writeFileSync(join(this.sys, rel), `${value}\n`);
  }

  private lowestFree(dir: string, re: RegExp): number {
    const used = new Set(readdirSync(join(this.sys, dir)).map((n) => re.exec(n)?.[1]).filter(Boolean).map(Number));
    let i = 0;
    while (used.has(i)) i++;
    return i;
  }

  subsystemOf(nqn: string): string | undefined {
    return readdirSync(join(this.sys, 'class/nvme-subsystem')).find((s) => readFileSync(join(this.sys, 'class/nvme-subsystem', s, 'subsysnqn'), 'utf8').trim() === nqn);
  }

  /** `nvme connect` to nqn at traddr: a controller, and (new subsystem) the subsystem with its namespace 1's head device. */
  connect(nqn: string, traddr = '127.0.0.1'): string {
    const n = this.lowestFree('class/nvme', /^nvme(\d+)$/);
    const ctrl = `nvme${n}`;
    this.file(`class/nvme/${ctrl}/subsysnqn`, nqn);
    this.file(`class/nvme/${ctrl}/transport`, 'tcp');
    this.file(`class/nvme/${ctrl}/address`, `traddr=${traddr},trsvcid=4420,src_addr=127.0.0.1`);
    this.file(`class/nvme/${ctrl}/state`, 'live');
    this.file(`class/nvme/${ctrl}/hostnqn`, HOST);
    this.file(`class/nvme/${ctrl}/delete_controller`, '');
    let sub = this.subsystemOf(nqn);
    if (!sub) {
      sub = `nvme-subsys${n}`;
      this.file(`class/nvme-subsystem/${sub}/subsysnqn`, nqn);
      const head = `nvme${n}n1`;
      this.file(`class/nvme-subsystem/${sub}/${head}/nsid`, '1');
      this.file(`block/${head}/nsid`, '1');
      this.file(`block/${head}/dev`, `259:${n}`);
      mkdirSync(join(this.sys, 'block', head, 'holders'), { recursive: true });
      writeFileSync(join(this.dev, head), '');
    }
    symlinkSync(`../../nvme-fabrics/ctl/${ctrl}`, join(this.sys, 'class/nvme-subsystem', sub, ctrl));
    return sub;
  }

  /** What writing delete_controller makes the kernel do. */
  deleteController(ctrl: string): void {
    const nqn = readFileSync(join(this.sys, 'class/nvme', ctrl, 'subsysnqn'), 'utf8').trim();
    rmSync(join(this.sys, 'class/nvme', ctrl), { recursive: true, force: true });
    const sub = this.subsystemOf(nqn);
    if (!sub) return;
    const subDir = join(this.sys, 'class/nvme-subsystem', sub);
    rmSync(join(subDir, ctrl), { force: true });
    if (readdirSync(subDir).some((e) => /^nvme\d+$/.test(e))) return;
    for (const head of readdirSync(subDir).filter((e) => /^nvme\d+n\d+$/.test(e))) {
      rmSync(join(this.sys, 'block', head), { recursive: true, force: true });
      rmSync(join(this.dev, head), { force: true });
    }
    rmSync(subDir, { recursive: true, force: true });
  }

  disconnect(nqn: string): void {
    const sub = this.subsystemOf(nqn);
    if (!sub) return;
    for (const c of readdirSync(join(this.sys, 'class/nvme-subsystem', sub)).filter((e) => /^nvme\d+$/.test(e))) this.deleteController(c);
  }

  /** A SysfsTree over this tree that counts every sysfs and /dev look (reads, listings, stats, writes). */
  tree(): { tree: SysfsTree; looks: () => number } {
    let n = 0;
    const deleteController = (ctrl: string) => this.deleteController(ctrl);
    class Counting extends SysfsTree {
      override read(rel: string) {
        n++;
        return super.read(rel);
      }
      override list(rel: string) {
        n++;
        return super.list(rel);
      }
      override exists(rel: string) {
        n++;
        return super.exists(rel);
      }
      override devExists(rel: string) {
        n++;
        return super.devExists(rel);
      }
    }
    const tree = new Counting(this.sys, this.dev, (path, value) => {
      n++;
      const m = /\/class\/nvme\/(nvme\d+)\/delete_controller$/.exec(path);
      if (m && value === '1') deleteController(m[1]);
    });
    return { tree, looks: () => n };
  }

  /**
   * nvme-cli stood in: `nvme connect -a ADDR -n NQN` connects in this tree,
   * unless a controller of NQN at ADDR exists: then nvme-cli 2.3 makes none
   * and answers as recorded in the guest (test/fixtures/nvme/connect-again.err).
   */
  exec(calls: string[][] = []): Executor {
    return {
      run: async (cmd, args) => {
        calls.push([cmd, ...args]);
        if (cmd === 'nvme' && args[0] === 'connect') {
          const [nqn, traddr] = [args[args.indexOf('-n') + 1], args[args.indexOf('-a') + 1]];
          const at = (c: string) => readFileSync(join(this.sys, 'class/nvme', c, 'address'), 'utf8').startsWith(`traddr=${traddr},`);
          const ofNqn = (c: string) => readFileSync(join(this.sys, 'class/nvme', c, 'subsysnqn'), 'utf8').trim() === nqn;
          if (readdirSync(join(this.sys, 'class/nvme')).some((c) => ofNqn(c) && at(c))) throw new ExecError('nvme', 1, readFileSync(join(FIXTURES, 'connect-again.err'), 'utf8').replace(/\nexit \d+\n?$/, ''), false);
          this.connect(nqn, traddr);
        }
        return { stdout: '', stderr: '', exitCode: 0 };
      },
    };
  }

  cleanup(): void {
    this.t.cleanup();
  }
}

const ctxOf = (nqn: string, portals = ['127.0.0.1:4420']): PublishContext => ({ transport: 'nvmeof', nqn, portals, nsid: 1 });

describe('NVMe lookups by NQN stay right when the kernel reuses subsystem numbers (index re-checked on every use; kernel behaviour from drivers/nvme/host/core.c, Linux 6.1)', () => {
  let host: FlatNvmeHost;
  afterEach(() => host?.cleanup());

  it('a reused nvme-subsysK that now belongs to another NQN is not taken for the old one', async () => {
    host = new FlatNvmeHost();
    const [a, b] = [nqnOf(1), nqnOf(2)];
    expect(host.connect(a)).toBe('nvme-subsys0');
    const { tree } = host.tree();
    const nvme = new NvmeSysfs(tree);
    expect((await nvme.subsystem(a))?.name).toBe('nvme-subsys0');
    expect(await nvme.namespaceDevice(a, 1)).toBe('nvme0n1');
    // a goes (outside sinter: an administrator, or ctrl_loss_tmo), b takes its numbers.
    host.disconnect(a);
    expect(host.connect(b)).toBe('nvme-subsys0');
    expect(await nvme.subsystem(a)).toBeNull();
    expect(await nvme.namespaceDevice(a, 1)).toBeUndefined();
    expect(await nvme.controllersOf(a)).toEqual([]);
    expect((await nvme.subsystem(b))?.name).toBe('nvme-subsys0');
    // and back: the index follows the NQN, not the number.
    host.disconnect(b);
    host.connect(b); // nvme-subsys0 again
    expect(host.connect(a, '127.0.0.2')).toBe('nvme-subsys1');
    expect((await nvme.subsystem(a))?.name).toBe('nvme-subsys1');
    expect(await nvme.namespaceDevice(a, 1)).toBe('nvme1n1');
    expect((await nvme.controllersOf(a)).map((c) => [c.name, c.traddr])).toEqual([['nvme1', '127.0.0.2']]);
  });

  it('a controller number another subsystem took since is not counted among the old subsystem\'s controllers', async () => {
    host = new FlatNvmeHost();
    const [a, b] = [nqnOf(1), nqnOf(2)];
    host.connect(a);
    host.connect(a, '127.0.0.2'); // nvme1 joins nvme-subsys0
    const nvme = new NvmeSysfs(host.tree().tree);
    expect((await nvme.controllersOf(a)).map((c) => c.name)).toEqual(['nvme0', 'nvme1']);
    // nvme1 went but the subsystem still links it (the kernel drops the link in nvme_free_ctrl, after the class device), and b got nvme1.
    rmSync(join(host.sys, 'class/nvme/nvme1'), { recursive: true });
    host.connect(b); // nvme1, nvme-subsys1
    expect(readdirSync(join(host.sys, 'class/nvme-subsystem/nvme-subsys0'))).toContain('nvme1');
    expect((await nvme.controllersOf(a)).map((c) => c.name)).toEqual(['nvme0']);
    expect((await nvme.controllersOf(b)).map((c) => c.name)).toEqual(['nvme1']);
  });

  it('a subsystem that appeared since the last look is found, reading only the new one', async () => {
    host = new FlatNvmeHost();
    for (let i = 0; i < 20; i++) host.connect(nqnOf(i));
    const { tree, looks } = host.tree();
    const nvme = new NvmeSysfs(tree);
    expect(await nvme.subsystem(nqnOf(99))).toBeNull(); // a full look: the index knows all 20
    host.connect(nqnOf(99));
    const before = looks();
    expect((await nvme.subsystem(nqnOf(99)))?.name).toBe('nvme-subsys20');
    // The listing of subsystems, the new one's NQN, then its own listing and NQN: none of the 20 others read.
    expect(looks() - before).toBe(4);
  });

  it('a disconnected subsystem is not reported, by the lookups nor by the connector', async () => {
    host = new FlatNvmeHost();
    const a = nqnOf(1);
    host.connect(nqnOf(0));
    host.connect(a);
    const { tree } = host.tree();
    const c = new NvmeConnector({ hostNqn: HOST, sysfs: tree, mountInfoPath: '/dev/null', deviceTimeoutMs: 200 }, host.exec(), pino({ level: 'silent' }));
    expect(await c.find(ctxOf(a))).toBe(join(host.dev, 'nvme1n1'));
    host.disconnect(a);
    expect(await c.find(ctxOf(a))).toBeUndefined();
    expect(await c.condition(ctxOf(a), join(host.dev, 'nvme1n1'))).toMatchObject({ attached: false });
    expect(await new NvmeSysfs(tree).subsystem(a)).toBeNull();
    // A disconnect of it now is a no-op success, and leaves the other subsystem alone.
    await c.disconnect(ctxOf(a));
    expect(host.subsystemOf(nqnOf(0))).toBe('nvme-subsys0');
  });

  it('a namespace whose device node is bound from devtmpfs (a published block volume) keeps its controllers: disconnect refuses, naming where', async () => {
    host = new FlatNvmeHost();
    const a = nqnOf(1);
    host.connect(a);
    const mountInfo = join(host.t.dir, 'mountinfo');
    writeFileSync(mountInfo, '22 1 0:21 / / rw - ext4 /dev/root rw\n44 22 0:6 /nvme0n1 /var/lib/kubelet/pods/p/volumeDevices/dev rw - devtmpfs devtmpfs rw,mode=755\n');
    const c = new NvmeConnector({ hostNqn: HOST, sysfs: host.tree().tree, mountInfoPath: mountInfo }, host.exec(), pino({ level: 'silent' }));
    await expect(c.disconnect(ctxOf(a))).rejects.toMatchObject({ code: 'failed-precondition', message: stringContaining('nvme0n1 is mounted at /var/lib/kubelet/pods/p/volumeDevices/dev') });
    expect(host.subsystemOf(a)).toBe('nvme-subsys0');
  });

  it('without native multipath (nvme_core.multipath=N; not recorded): the namespace device under its controller, found through the subsystem', async () => {
    host = new FlatNvmeHost();
    const a = nqnOf(1);
    host.connect(nqnOf(0));
    host.connect(a);
    // Move nvme1's namespace from the subsystem (a multipath head) to the controller (drivers/nvme/host/core.c, nvme_alloc_ns without a head disk).
    rmSync(join(host.sys, 'class/nvme-subsystem/nvme-subsys1/nvme1n1'), { recursive: true });
    mkdirSync(join(host.sys, 'class/nvme/nvme1/nvme1n1'));
    writeFileSync(join(host.sys, 'class/nvme/nvme1/nvme1n1/nsid'), '1\n');
    const nvme = new NvmeSysfs(host.tree().tree);
    expect(await nvme.namespaceDevice(a, 1)).toBe('nvme1n1');
    expect(await nvme.namespaceDevice(nqnOf(0), 1)).toBe('nvme0n1');
  });
});

describe('NVMe connector: sysfs looks per RPC do not grow with the subsystems already attached (a flat tree of N subsystems)', () => {
  let host: FlatNvmeHost;
  afterEach(() => host?.cleanup());

  /** Looks for each step of one volume's life, with `others` subsystems already attached and known to the connector. */
  async function lifeOfOneVolume(others: number) {
    host = new FlatNvmeHost();
    for (let i = 0; i < others; i++) host.connect(nqnOf(i));
    const { tree, looks } = host.tree();
    const calls: string[][] = [];
    const c = new NvmeConnector({ hostNqn: HOST, sysfs: tree, mountInfoPath: '/dev/null', deviceTimeoutMs: 2_000 }, host.exec(calls), pino({ level: 'silent' }));
    // The node has been attaching all along: the connector has seen every subsystem.
    for (let i = 0; i < others; i++) expect(await c.find(ctxOf(nqnOf(i)))).toBeDefined();
    // (and has looked once, so the one-time check of class/nvme-subsystem is behind it at N=1 too).
    expect(await c.find(ctxOf(nqnOf(8888)))).toBeUndefined();
    const me = ctxOf(nqnOf(9999), ['127.0.0.1:4420', '127.0.0.2:4420']);
    const step = async <T>(fn: () => Promise<T>): Promise<[T, number]> => {
      const n = looks();
      const r = await fn();
      return [r, looks() - n];
    };
    const [att, attach] = await step(() => c.attach(me, {}));
    expect(att).toEqual({ device: join(host.dev, `nvme${others}n1`), attached: true });
    expect(calls.map((x) => x[5])).toEqual(['127.0.0.1', '127.0.0.2']);
    const [again, reattach] = await step(() => c.attach(me, {}));
    expect(again.attached).toBe(false);
    const [cond, condition] = await step(() => c.condition(me, att.device));
    expect(cond).toMatchObject({ abnormal: false, attached: true });
    const [, find] = await step(() => c.find(me));
    const [, disconnect] = await step(() => c.disconnect(me));
    expect(host.subsystemOf(nqnOf(9999))).toBeUndefined();
    expect(readdirSync(join(host.sys, 'class/nvme-subsystem'))).toHaveLength(others);
    host.cleanup();
    return { attach, reattach, condition, find, disconnect };
  }

  it('N=1 vs N=200: a new volume\'s attach, its re-stage, condition, find and disconnect cost the same (no NQN of the 199 others read)', async () => {
    const one = await lifeOfOneVolume(0);
    const many = await lifeOfOneVolume(199);
    expect(many).toEqual(one);
    expect(one.attach).toBeLessThan(40);
    expect(one.reattach).toBeLessThan(30);
    expect(one.disconnect).toBeLessThan(30);
    console.log(`sysfs looks per step, N=1: ${JSON.stringify(one)}; N=200: ${JSON.stringify(many)}`);
  });

  it('a subsystem connected outside sinter under a number the connector knows as another NQN\'s is still found by attach, and counted as attached before (a failed stage would not undo it)', async () => {
    host = new FlatNvmeHost();
    const [other, mine] = [nqnOf(1), nqnOf(2)];
    for (let i = 10; i < 30; i++) host.connect(nqnOf(i));
    expect(host.connect(other)).toBe('nvme-subsys20');
    const { tree, looks } = host.tree();
    const calls: string[][] = [];
    const c = new NvmeConnector({ hostNqn: HOST, sysfs: tree, mountInfoPath: '/dev/null', deviceTimeoutMs: 2_000 }, host.exec(calls), pino({ level: 'silent' }));
    expect(await c.find(ctxOf(other))).toBe(join(host.dev, 'nvme20n1'));
    // Between two looks of the connector: `other` goes, and an administrator connects `mine` by hand, which takes its numbers.
    host.disconnect(other);
    expect(host.connect(mine)).toBe('nvme-subsys20');
    const n = looks();
    expect(await c.attach(ctxOf(mine), {})).toEqual({ device: join(host.dev, 'nvme20n1'), attached: false });
    // nvme-cli was asked once and made no second controller; the full look that followed read the others' NQNs.
    expect(calls.filter((x) => x[0] === 'nvme')).toHaveLength(1);
    expect(readdirSync(join(host.sys, 'class/nvme-subsystem/nvme-subsys20')).filter((e) => /^nvme\d+$/.test(e))).toEqual(['nvme20']);
    expect(looks() - n).toBeGreaterThan(20);
    // Known from now on: a re-stage reads none of them.
    const m = looks();
    expect(await c.attach(ctxOf(mine), {})).toEqual({ device: join(host.dev, 'nvme20n1'), attached: false });
    expect(calls.filter((x) => x[0] === 'nvme')).toHaveLength(1);
    expect(looks() - m).toBeLessThan(20);
  });

  it('the same, connected by hand at another portal only: attach adds its own portal, finds the hand-made controller, and still counts the volume as attached before', async () => {
    host = new FlatNvmeHost();
    const [other, mine] = [nqnOf(1), nqnOf(2)];
    for (let i = 10; i < 30; i++) host.connect(nqnOf(i));
    expect(host.connect(other)).toBe('nvme-subsys20');
    const calls: string[][] = [];
    const c = new NvmeConnector({ hostNqn: HOST, sysfs: host.tree().tree, mountInfoPath: '/dev/null', deviceTimeoutMs: 2_000 }, host.exec(calls), pino({ level: 'silent' }));
    expect(await c.find(ctxOf(other))).toBe(join(host.dev, 'nvme20n1'));
    host.disconnect(other);
    expect(host.connect(mine, '127.0.0.2')).toBe('nvme-subsys20');
    expect(await c.attach(ctxOf(mine, ['127.0.0.1:4420', '127.0.0.2:4420']), {})).toEqual({ device: join(host.dev, 'nvme20n1'), attached: false });
    expect(calls.map((x) => x[5])).toEqual(['127.0.0.1']);
  });
});
