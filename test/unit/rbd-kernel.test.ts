import { mkdirSync, readFileSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { nodeSchema, parseConfig } from '../../src/config/schema.js';
import type { PublishContext } from '../../src/contracts/publish-context.js';
import { ExecError, type DaemonSpawner, type ExecOptions, type ExecResult, type Executor } from '../../src/exec/run.js';
import { RbdConnector } from '../../src/node/connectors/rbd.js';
import { effectiveMapOptions, KernelRbdConnector, KrbdSysfs, mappingMatches, monitorsOfConfigInfo, parseRbdDeviceList } from '../../src/node/connectors/rbd-kernel.js';
import { SysfsTree } from '../../src/node/connectors/sysfs.js';
import { stringMatching } from '../helpers/matchers.js';
import { tempDir } from '../helpers/scratch-fs.js';

/**
 * The kernel rbd attach against what the real rbd CLI and the kernel showed in
 * the test guest (test/fixtures/rbd/, recorded by `SINTER_RECORD_KRBD=1`
 * test/integration/rbd-kernel.guest.test.ts: ceph 16.2.15 pacific, Linux 6.1, see
 * recorded-versions.txt). The "kernel" here is a fake `rbd` that adds and
 * removes /sys/bus/rbd/devices/<id> in a temp tree with the recorded
 * attributes, and answers with the recorded errors.
 */
const FIXTURES = new URL('../fixtures/rbd/', import.meta.url).pathname;
const fixture = (f: string) => readFileSync(join(FIXTURES, f), 'utf8');
const errOf = (f: string) => ({ exit: Number(/^# exit (\d+)/.exec(fixture(f))?.[1] ?? 1), stderr: fixture(f).split('\n').slice(1).join('\n') });
/** attr → value of the recorded mapping (POOL / IMAGE in place of the names). */
const RECORDED: Record<string, string> = Object.fromEntries(
  fixture('krbd-sysfs.txt')
    .split('\n')
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => l.split('\t') as [string, string]),
);
const MON = monitorsOfConfigInfo(RECORDED.config_info)[0];
const ctxOf = (image: string, monitors = [MON]): Extract<PublishContext, { transport: 'rbd' }> => ({ transport: 'rbd', pool: 'kube', image, monitors });
const KEY = 'AQBzGFJnAAAAABAAXgw0rQEOj2y9dXgGyR7wYw==';

interface Call {
  cmd: string;
  args: string[];
  opts?: ExecOptions;
  keyFileMode?: number;
  keyFileText?: string;
}

/** The fake kernel + rbd CLI. */
class FakeKrbd implements Executor {
  calls: Call[] = [];
  /** Next `rbd device map` fails with this recorded error. */
  mapFails?: { exit: number; stderr: string };
  busy = new Set<string>();
  modprobeOk = false;
  constructor(readonly sys: string) {}

  private add(pool: string, image: string): string {
    const base = join(this.sys, 'bus/rbd/devices');
    mkdirSync(base, { recursive: true });
    let id = 0;
    while (existsSync(join(base, String(id)))) id++;
    const d = join(base, String(id));
    mkdirSync(d);
    for (const [a, v] of Object.entries(RECORDED)) {
      const val = a === 'pool' ? pool : a === 'name' ? image : a === 'config_info' ? v.replace(' POOL IMAGE ', ` ${pool} ${image} `) : a === 'client_id' ? `client${4129 + id}` : v;
      writeFileSync(join(d, a), `${val}\n`);
    }
    writeFileSync(join(d, 'refresh'), '');
    return `/dev/rbd${id}`;
  }

  /** Commands that answer `--version` (what the node checks before the mode a StorageClass asks for); others are not installed. */
  installed = new Set(['rbd']);

  async run(cmd: string, args: string[], opts?: ExecOptions): Promise<ExecResult> {
    const call: Call = { cmd, args, opts };
    this.calls.push(call);
    if (args.length === 1 && args[0] === '--version') {
      if (!this.installed.has(cmd)) throw new ExecError(cmd, undefined, `spawn ${cmd} ENOENT`, false);
      return { stdout: `${cmd} version 1`, stderr: '', exitCode: 0 };
    }
    if (cmd === 'modprobe') {
      if (this.modprobeOk) mkdirSync(join(this.sys, 'bus/rbd'), { recursive: true });
      return { stdout: '', stderr: this.modprobeOk ? '' : 'modprobe: FATAL: Module rbd not found', exitCode: this.modprobeOk ? 0 : 1 };
    }
    if (cmd !== 'rbd') throw new Error(`unexpected command ${cmd}`);
    if (args[0] === 'device' && args[1] === 'map') {
      const kf = args[args.indexOf('--keyfile') + 1];
      call.keyFileMode = statSync(kf).mode & 0o777;
      call.keyFileText = readFileSync(kf, 'utf8');
      if (this.mapFails) {
        const f = this.mapFails;
        this.mapFails = undefined;
        throw new ExecError(`rbd ${args.join(' ')}`, f.exit, f.stderr, false);
      }
      const [pool, image] = args.at(-1)!.split('/') as [string, string];
      return { stdout: this.add(pool, image), stderr: '', exitCode: 0 };
    }
    if (args[0] === 'device' && args[1] === 'unmap') {
      const dev = args.at(-1)!;
      if (this.busy.has(dev)) {
        const e = errOf('unmap-busy.err');
        throw new ExecError(`rbd ${args.join(' ')}`, e.exit, e.stderr, false);
      }
      rmSync(join(this.sys, 'bus/rbd/devices', dev.replace('/dev/rbd', '')), { recursive: true, force: true });
      return { stdout: '', stderr: '', exitCode: 0 };
    }
    if (args[0] === 'image-meta' && (args[1] === 'remove' || args[1] === 'set')) {
      // No mark there: what `rbd image-meta remove` says then (exit 2, ENOENT).
      if (args[1] === 'remove') throw new ExecError(`rbd ${args.join(' ')}`, 2, 'rbd: failed to remove metadata sinter.closed.node-a of image : (2) No such file or directory', false);
      return { stdout: '', stderr: '', exitCode: 0 };
    }
    throw new Error(`unexpected rbd ${args.join(' ')}`);
  }

  metas(): string[] {
    return this.calls.filter((c) => c.cmd === 'rbd' && c.args[0] === 'image-meta').map((c) => c.args[1]);
  }

  maps(): Call[] {
    return this.calls.filter((c) => c.cmd === 'rbd' && c.args[1] === 'map');
  }
}

const log = pino({ level: 'silent' });

describe('krbd parsing, against the outputs recorded in the guest (ceph 16.2.15, Linux 6.1)', () => {
  it('reads `rbd device list --format json`', () => {
    expect(parseRbdDeviceList(fixture('device-list.json'))).toEqual([{ id: '0', pool: 'POOL', namespace: '', image: 'IMAGE', snap: '-', device: '/dev/rbd0' }]);
    expect(parseRbdDeviceList('')).toEqual([]);
    expect(() => parseRbdDeviceList('rbd: error')).toThrow(/not JSON/);
  });

  it('config_info names the monitors, the user and key=client.USER, never the secret', () => {
    // noshare: sinter maps each volume with a client of its own (the fence blocklists one volume's client, not the node's).
    expect(RECORDED.config_info).toMatch(/ name=sinter,key=client\.sinter,ms_mode=prefer-crc,queue_depth=64,noshare POOL IMAGE -$/);
    expect(MON).toMatch(/^\d+\.\d+\.\d+\.\d+:\d+$/);
    expect(RECORDED.config_info).not.toMatch(/secret=/);
  });

  it('a mapping matches the head of the same pool and image on a cluster whose monitors it shows', () => {
    const m = { id: '0', pool: 'kube', namespace: '', image: 'img', snap: '-', monitors: [MON], device: '/dev/rbd0' };
    expect(mappingMatches(m, ctxOf('img'))).toBe(true);
    expect(mappingMatches(m, ctxOf('img', [`v2:${MON}`]))).toBe(true);
    expect(mappingMatches(m, ctxOf('other'))).toBe(false);
    expect(mappingMatches({ ...m, snap: 'snap1' }, ctxOf('img'))).toBe(false);
    expect(mappingMatches({ ...m, namespace: 'ns' }, ctxOf('img'))).toBe(false);
    // Another cluster with a pool and image of the same name.
    expect(mappingMatches(m, ctxOf('img', ['10.9.9.9:3300']))).toBe(false);
    // Monitors by name: the kernel shows addresses, pool and image decide.
    expect(mappingMatches(m, ctxOf('img', ['mon-a.example:3300']))).toBe(true);
  });

  it('ms_mode: msgr2 (prefer-crc) for v2 monitors unless the config names one; legacy monitors get none; noshare (one client per volume, for the fence) unless share is asked for', () => {
    expect(effectiveMapOptions([], ['10.0.0.1:3300'])).toEqual(['ms_mode=prefer-crc', 'noshare']);
    expect(effectiveMapOptions(['queue_depth=64'], ['v2:10.0.0.1:3300'])).toEqual(['queue_depth=64', 'ms_mode=prefer-crc', 'noshare']);
    expect(effectiveMapOptions(['ms_mode=secure'], ['10.0.0.1:3300'])).toEqual(['ms_mode=secure', 'noshare']);
    expect(effectiveMapOptions([], ['10.0.0.1:6789'])).toEqual(['noshare']);
    expect(effectiveMapOptions(['share'], ['v1:10.0.0.1'])).toEqual(['share']);
  });
});

describe('KernelRbdConnector (fake rbd CLI and sysfs, recorded attributes and errors)', () => {
  const t = tempDir('sinter-krbd-');
  afterAll(() => t.cleanup());
  let n = 0;
  let fake: FakeKrbd;
  let conn: KernelRbdConnector;
  let sys: string;
  let state: string;
  const keyFile = join(t.dir, 'node.key');
  writeFileSync(keyFile, KEY, { mode: 0o600 });

  beforeEach(() => {
    const root = join(t.dir, String(++n));
    sys = join(root, 'sys');
    state = join(root, 'state');
    mkdirSync(join(sys, 'bus/rbd/devices'), { recursive: true });
    fake = new FakeKrbd(sys);
    conn = new KernelRbdConnector({ stateDir: state, user: 'sinter', keyFile, mapOptions: ['queue_depth=64'], sysfsRoot: sys, devRoot: '/dev' }, fake, log);
  });

  it('maps with the node\'s key file, explicit monitors and --conf /dev/null; a second stage finds the same device without mapping again', async () => {
    const first = await conn.attach(ctxOf('vol-1'), {});
    expect(first).toEqual({ device: '/dev/rbd0', attached: true });
    const [map] = fake.maps();
    expect(map.args).toEqual(['device', 'map', '--conf', '/dev/null', '--client_mount_timeout', '60', '--id', 'sinter', '--keyfile', keyFile, '-m', MON, '-o', 'queue_depth=64,ms_mode=prefer-crc,noshare', 'kube/vol-1']);
    expect(await conn.attach(ctxOf('vol-1'), {})).toEqual({ device: '/dev/rbd0', attached: false });
    expect(await conn.find(ctxOf('vol-1'))).toBe('/dev/rbd0');
    expect(fake.maps()).toHaveLength(1);
    // Another image gets its own device.
    expect(await conn.connect(ctxOf('vol-2'), {})).toBe('/dev/rbd1');
    expect(await conn.find(ctxOf('vol-3'))).toBeUndefined();
  });

  it('a stage secret\'s key goes to a 0600 file for the map only, never on the command line or in a log', async () => {
    await conn.attach(ctxOf('vol-s'), { userID: 'tenant', userKey: KEY });
    const [map] = fake.maps();
    expect(map.args).toContain('tenant');
    expect(map.args.join(' ')).not.toContain(KEY);
    expect(map.keyFileMode).toBe(0o600);
    expect(map.keyFileText).toBe(KEY);
    expect(map.opts?.secrets).toEqual([KEY]);
    expect(existsSync(map.args[map.args.indexOf('--keyfile') + 1])).toBe(false);
  });

  it('without a key anywhere: FAILED_PRECONDITION naming node.rbd.keyFile', async () => {
    const bare = new KernelRbdConnector({ stateDir: state, sysfsRoot: sys }, fake, log);
    await expect(bare.attach(ctxOf('v'), {})).rejects.toMatchObject({ code: 'failed-precondition', message: stringMatching(/node\.rbd\.keyFile/) });
  });

  it('the recorded map errors become actionable FAILED_PRECONDITION messages (missing image, refused key)', async () => {
    fake.mapFails = errOf('map-missing.err');
    await expect(conn.attach(ctxOf('gone'), {})).rejects.toMatchObject({ code: 'failed-precondition', message: stringMatching(/kube\/gone does not exist/) });
    fake.mapFails = errOf('map-denied.err');
    await expect(conn.attach(ctxOf('v'), {})).rejects.toMatchObject({ code: 'failed-precondition', message: stringMatching(/check the node's cephx key/) });
    expect(fake.maps().every((m) => !m.args.join(' ').includes(KEY))).toBe(true);
  });

  it('unstage unmaps only this volume\'s device; again is a no-op; a mounted device is FAILED_PRECONDITION (recorded EBUSY)', async () => {
    const a = await conn.connect(ctxOf('vol-a'), {});
    const b = await conn.connect(ctxOf('vol-b'), {});
    fake.busy.add(a);
    await expect(conn.disconnect(ctxOf('vol-a'), a)).rejects.toMatchObject({ code: 'failed-precondition', message: stringMatching(/still in use/) });
    fake.busy.clear();
    await conn.disconnect(ctxOf('vol-a'), a);
    expect(await conn.find(ctxOf('vol-a'))).toBeUndefined();
    expect(await conn.find(ctxOf('vol-b'))).toBe(b);
    await conn.disconnect(ctxOf('vol-a'), a);
    expect(fake.calls.filter((c) => c.args[1] === 'unmap').map((c) => c.args.at(-1))).toEqual([a, a]);
  });

  it('condition: a mapped device is normal; a device gone or now another image\'s is abnormal and not attached', async () => {
    const d = await conn.connect(ctxOf('vol-c'), {});
    expect(await conn.condition(ctxOf('vol-c'), d)).toMatchObject({ abnormal: false, attached: true, message: stringMatching(/client4129/) });
    rmSync(join(sys, 'bus/rbd/devices/0'), { recursive: true });
    expect(await conn.condition(ctxOf('vol-c'), d)).toMatchObject({ abnormal: true, attached: false, message: stringMatching(/no longer mapped/) });
    await conn.connect(ctxOf('vol-d'), {}); // takes id 0 again
    expect(await conn.condition(ctxOf('vol-c'), d)).toMatchObject({ abnormal: true, attached: false, message: stringMatching(/now maps rbd image kube\/vol-d/) });
  });

  it('rescan asks the kernel to refresh the header of that mapping', async () => {
    const d = await conn.connect(ctxOf('vol-r'), {});
    await conn.rescan(ctxOf('vol-r'), d);
    expect(readFileSync(join(sys, 'bus/rbd/devices/0/refresh'), 'utf8')).toBe('1');
    await expect(conn.rescan(ctxOf('vol-r'), '/dev/rbd7')).rejects.toMatchObject({ code: 'failed-precondition' });
  });

  it('orphans: a mapping sinter recorded is releasable unless a staged volume uses it; one without a record (an admin\'s) never is', async () => {
    const mine = await conn.connect(ctxOf('vol-o'), {});
    await fake.run('rbd', ['device', 'map', '--keyfile', keyFile, 'kube/admins']); // mapped by hand, no record
    const list = await conn.attached();
    expect(list).toEqual([
      { device: mine, source: 'rbd:kube/vol-o' },
      { device: '/dev/rbd1', source: 'rbd:kube/admins', notReleasable: expect.stringMatching(/not mapped by sinter/) as unknown },
    ]);
    expect(await conn.release('/dev/rbd1', 'rbd:kube/admins', [])).toBe(false);
    expect(await conn.release(mine, 'rbd:kube/vol-o', [ctxOf('vol-o')])).toBe(false);
    expect(await conn.release(mine, 'rbd:kube/vol-o', [])).toBe(true);
    expect(await conn.find(ctxOf('vol-o'))).toBeUndefined();
    expect(await conn.find(ctxOf('admins'))).toBe('/dev/rbd1');
  });

  it('reads the recorded mapping from sysfs as the kernel shows it', async () => {
    await fake.run('rbd', ['device', 'map', '--keyfile', keyFile, 'POOL/IMAGE']);
    const m = await new KrbdSysfs(new SysfsTree(sys, '/dev')).mapping('0');
    expect(m).toEqual({ id: '0', pool: 'POOL', namespace: '', image: 'IMAGE', snap: '-', clientId: 'client4129', monitors: [MON], device: '/dev/rbd0' });
  });
});

describe('node.rbd.attach: auto picks the kernel only where the rbd module is there or loads', () => {
  const t = tempDir('sinter-krbd-mode-');
  afterAll(() => t.cleanup());
  const spawner = {} as DaemonSpawner;
  const make = (sys: string, fake: FakeKrbd, attach?: 'kernel' | 'userspace' | 'auto') =>
    new RbdConnector({ stateDir: join(t.dir, 'rbd-userspace'), attach, sysfsRoot: sys, keyFile: '/nonexistent' }, Object.assign<FakeKrbd, DaemonSpawner>(fake, spawner), log);

  it('no /sys/bus/rbd and modprobe fails: user space', async () => {
    const sys = join(t.dir, 'a');
    mkdirSync(sys);
    const fake = new FakeKrbd(sys);
    expect(await make(sys, fake).mode()).toBe('userspace');
    expect(fake.calls.map((c) => c.cmd)).toEqual(['modprobe']);
  });

  it('modprobe rbd loads it: kernel; /sys/bus/rbd already there: kernel without modprobe; userspace and kernel as configured', async () => {
    const sys = join(t.dir, 'b');
    mkdirSync(sys);
    const fake = new FakeKrbd(sys);
    fake.modprobeOk = true;
    expect(await make(sys, fake).mode()).toBe('kernel');
    const again = new FakeKrbd(sys);
    expect(await make(sys, again).mode()).toBe('kernel');
    expect(again.calls).toEqual([]);
    expect(await make(sys, again, 'userspace').mode()).toBe('userspace');
    expect(await make(join(t.dir, 'none'), again, 'kernel').mode()).toBe('kernel');
  });

  it('the start-up orphan scan on a node with no rbd mapping runs no command (no modprobe: it would load execa into every node start)', async () => {
    const sys = join(t.dir, 'c');
    mkdirSync(sys);
    const fake = new FakeKrbd(sys);
    expect(await make(sys, fake).attached()).toEqual([]);
    expect(fake.calls).toEqual([]);
    // The auto choice still happens at the first use.
    expect(await make(sys, fake).mode()).toBe('userspace');
    expect(fake.calls.map((c) => c.cmd)).toEqual(['modprobe']);
  });
});

describe('StorageClass rbdAttach (publish_context attach, from volume_context): honoured where the node can, FAILED_PRECONDITION naming it where not', () => {
  const t = tempDir('sinter-krbd-class-');
  afterAll(() => t.cleanup());
  const spawner = {} as DaemonSpawner;
  const make = (sys: string, fake: FakeKrbd, attach?: 'kernel' | 'userspace' | 'auto') =>
    new RbdConnector({ stateDir: join(t.dir, sys, 'rbd-userspace'), attach, sysfsRoot: join(t.dir, sys), keyFile: keyFileIn(t.dir) }, Object.assign<FakeKrbd, DaemonSpawner>(fake, spawner), log);
  const keyFileIn = (dir: string) => {
    const f = join(dir, 'node.key');
    writeFileSync(f, KEY, { mode: 0o600 });
    return f;
  };
  const asked = (image: string, attach: 'kernel' | 'userspace'): PublishContext => ({ ...ctxOf(image), attach });

  it('kernel asked on a node without the rbd module (its default: user space) → FAILED_PRECONDITION naming rbdAttach, nothing mapped', async () => {
    mkdirSync(join(t.dir, 'nomod'));
    const fake = new FakeKrbd(join(t.dir, 'nomod'));
    const conn = make('nomod', fake, 'auto');
    await expect(conn.validate(asked('img', 'kernel'))).rejects.toMatchObject({ code: 'failed-precondition', message: stringMatching(/StorageClass parameter rbdAttach .* asks for the kernel rbd attach, but this node has no rbd kernel module/) });
    await expect(conn.connect(asked('img', 'kernel'), {})).rejects.toMatchObject({ code: 'failed-precondition' });
    expect(fake.maps()).toEqual([]);
  });

  it('kernel asked, the module is there but not the rbd command → FAILED_PRECONDITION naming the package', async () => {
    mkdirSync(join(t.dir, 'nocli', 'bus/rbd'), { recursive: true });
    const fake = new FakeKrbd(join(t.dir, 'nocli'));
    fake.installed.clear();
    await expect(make('nocli', fake, 'userspace').validate(asked('img', 'kernel'))).rejects.toMatchObject({ code: 'failed-precondition', message: stringMatching(/rbdAttach.*no rbd command \(Debian package ceph-common\)/) });
  });

  it('kernel asked on a node whose default is user space but which has the module → mapped by the kernel; unstage (the recorded connection) unmaps it', async () => {
    mkdirSync(join(t.dir, 'both', 'bus/rbd'), { recursive: true });
    const fake = new FakeKrbd(join(t.dir, 'both'));
    const conn = make('both', fake, 'userspace');
    expect(await conn.mode()).toBe('userspace');
    const ctx = asked('img', 'kernel');
    await conn.validate(ctx);
    expect(await conn.connect(ctx, {})).toBe('/dev/rbd0');
    expect(fake.maps()).toHaveLength(1);
    expect(await conn.find(ctx)).toBe('/dev/rbd0');
    // The orphan scan of a user-space node sees the kernel mapping sinter made.
    expect((await conn.attached()).map((a) => a.device)).toEqual(['/dev/rbd0']);
    // Without attach, the node's default (user space) has no such attachment.
    expect(await conn.find(ctxOf('img'))).toBeUndefined();
    await conn.disconnect(ctx, '/dev/rbd0');
    expect(existsSync(join(t.dir, 'both', 'bus/rbd/devices/0'))).toBe(false);
  });

  it('the closed mark: cleared before the first map, not again on a retried stage that finds the device mapped; set after the unmap', async () => {
    mkdirSync(join(t.dir, 'mark', 'bus/rbd'), { recursive: true });
    const fake = new FakeKrbd(join(t.dir, 'mark'));
    const conn = new RbdConnector(
      { stateDir: join(t.dir, 'mark', 'rbd-userspace'), attach: 'kernel', sysfsRoot: join(t.dir, 'mark'), keyFile: keyFileIn(t.dir), nodeHost: 'node-a' },
      Object.assign<FakeKrbd, DaemonSpawner>(fake, spawner),
      log,
    );
    const ctx = ctxOf('marked');
    expect(await conn.connect(ctx, {})).toBe('/dev/rbd0');
    expect(fake.metas()).toEqual(['remove']);
    // The kubelet retries NodeStageVolume: the mapping is there, Ceph is not asked again.
    expect(await conn.connect(ctx, {})).toBe('/dev/rbd0');
    expect(fake.metas()).toEqual(['remove']);
    expect(fake.maps()).toHaveLength(1);
    await conn.disconnect(ctx, '/dev/rbd0');
    expect(fake.metas()).toEqual(['remove', 'set']);
    // Staged again after that: cleared again before the new map.
    await conn.connect(ctx, {});
    expect(fake.metas()).toEqual(['remove', 'set', 'remove']);
  });

  it('userspace asked on a kernel node without qemu-nbd/nbdfuse → FAILED_PRECONDITION naming rbdAttach and what is missing; with them the user-space connector takes it', async () => {
    mkdirSync(join(t.dir, 'kern', 'bus/rbd'), { recursive: true });
    const fake = new FakeKrbd(join(t.dir, 'kern'));
    const conn = make('kern', fake, 'kernel');
    await expect(conn.validate(asked('img', 'userspace'))).rejects.toMatchObject({ code: 'failed-precondition', message: stringMatching(/rbdAttach.*userspace rbd attach, but this node has no qemu-nbd and nbdfuse/) });
    fake.installed.add('qemu-nbd').add('nbdfuse');
    await conn.validate(asked('img', 'userspace'));
    // The user-space connector answers: no attachment in its state dir, and no rbd command run for it.
    const before = fake.calls.length;
    expect(await conn.find(asked('img', 'userspace'))).toBeUndefined();
    expect(fake.calls.length).toBe(before);
  });

  it('no attach in the connection: the node default, no tool check', async () => {
    mkdirSync(join(t.dir, 'dflt', 'bus/rbd'), { recursive: true });
    const fake = new FakeKrbd(join(t.dir, 'dflt'));
    const conn = make('dflt', fake, 'auto');
    expect(await conn.connect(ctxOf('img'), {})).toBe('/dev/rbd0');
    expect(fake.calls.filter((c) => c.args[0] === '--version')).toEqual([]);
    await conn.disconnect(ctxOf('img'), '/dev/rbd0');
  });
});

describe('node.rbd config', () => {
  it('attach defaults to auto, mapOptions to none; krbd options are accepted, options carrying a key or changing the mapping are refused', async () => {
    const ok = parseConfig(nodeSchema, { rbd: { attach: 'kernel', mapOptions: ['queue_depth=128', 'noudev', 'ms_mode=secure'] } });
    expect(ok.rbd).toMatchObject({ attach: 'kernel', mapOptions: ['queue_depth=128', 'noudev', 'ms_mode=secure'] });
    expect(parseConfig(nodeSchema, {}).rbd).toMatchObject({ attach: 'auto', mapOptions: [] });
    expect(() => parseConfig(nodeSchema, { rbd: { mapOptions: ['secret=AQB'] } })).toThrow(/mapOptions.*set by sinter itself/s);
    expect(() => parseConfig(nodeSchema, { rbd: { mapOptions: ['ro'] } })).toThrow(/set by sinter itself/);
    expect(() => parseConfig(nodeSchema, { rbd: { mapOptions: ['a,b'] } })).toThrow(/krbd map option/);
    expect(() => parseConfig(nodeSchema, { rbd: { attach: 'nbd' } })).toThrow(/attach/);
  });
});
