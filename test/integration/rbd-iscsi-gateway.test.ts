import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RbdBackend } from '../../src/backends/rbd/backend.js';
import { firstJsonValue } from '../../src/backends/rbd/blocklist.js';
import { VOLUME_META_KEY } from '../../src/backends/rbd/records.js';
import { parseConfig, rbdBackendSchema } from '../../src/config/schema.js';
import { encodeNodeId } from '../../src/contracts/nodeid.js';
import { StaticNodeRegistry } from '../../src/controller/node-registry.js';
import { VolumeManager } from '../../src/controller/volumes.js';
import { HostExecutor } from '../../src/exec/run.js';
import { cephForFile, type FileCeph } from '../helpers/ceph-shared.js';
import { requireIscsiTools, TestTgtd } from '../helpers/tgtd.js';

// The iSCSI gateway of an rbd backend (`export: iscsi`) on a real single-node
// Ceph and a real tgtd with Debian 12's tgt-rbd (tgt 1.0.85: usr/bs_rbd.c's
// bs_rbd_init reads bsopts `conf=`, `id=`, `cluster=`, `virsecretuuid=`,
// `cephx_key=`, ';'-separated, and logs them, so sinter passes
// `conf=<its own conf>;id=<user>` and keeps the key in the conf's `keyfile`).
// The initiator is libiscsi in user space (qemu-io's iscsi driver, what the
// user-space stage chain runs), with the node's initiator name; the bytes are
// read back with `rbd export`, no client of the node's.

const MiB = 1024 * 1024;
const log = pino({ level: 'silent' });
const exec = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 60_000 });
const cap = { accessType: 'block' as const, accessMode: 'SINGLE_NODE_WRITER', mountFlags: [] };
const IQN_A = 'iqn.2026-12.io.sinter.test:node-a';
const IQN_B = 'iqn.2026-12.io.sinter.test:node-b';
const nodeA = encodeNodeId({ host: 'node-a', iqn: IQN_A, wwpns: [] });

let c: FileCeph;
let tgtd: TestTgtd;
let scratch: string;
let b: RbdBackend;
let vm: VolumeManager;

beforeAll(async () => {
  requireIscsiTools();
  if (!readFileSync('/var/lib/dpkg/status', 'utf8').includes('Package: tgt-rbd')) throw new Error('the gateway test needs tgt-rbd: apt-get install tgt-rbd (scripts/setup.sh does)');
  c = await cephForFile('rbd-gw');
  tgtd = await TestTgtd.start();
  scratch = mkdtempSync(join(tmpdir(), 'sinter-rbd-gw-'));
  const cfg = parseConfig(rbdBackendSchema, {
    name: 'ceph',
    driver: 'rbd',
    pool: c.pool,
    monitors: [c.monitors],
    user: c.user,
    keyFile: c.keyFile,
    export: 'iscsi',
    dataDir: join(scratch, 'gw'),
    iscsi: { helper: 'tgt', portals: [tgtd.portal], controlPort: tgtd.controlPort },
  });
  b = new RbdBackend(cfg, exec, log);
  await b.start();
  vm = new VolumeManager(new Map([['ceph', b]]), new StaticNodeRegistry(undefined), log);
}, 150_000);

afterAll(async () => {
  await tgtd?.stop();
  await c?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

/** One 4 KiB write of `byte` at offset 0 through libiscsi as `initiator`. */
type IscsiCtx = { transport: 'iscsi'; portals: string[]; iqn: string; lun: number };
const iscsiWrite = (ctx: IscsiCtx, initiator: string, byte: number, chap?: { user: string; password: string }) =>
  execa(
    'qemu-io',
    [
      ...(chap ? ['--object', `secret,id=chap,data=${chap.password}`] : []),
      '--image-opts',
      `driver=iscsi,transport=tcp,portal=${ctx.portals[0]},target=${ctx.iqn},lun=${ctx.lun},initiator-name=${initiator}${chap ? `,user=${chap.user},password-secret=chap` : ''}`,
      '-c',
      `write -P 0x${byte.toString(16)} 0 4096`,
      '-c',
      'flush',
    ],
    { reject: false, timeout: 60_000 },
  );
const head = async (id: string) => (await execa('rbd', ['-c', c.conf, 'export', '--no-progress', `${c.pool}/${id}`, '-'], { encoding: 'buffer', stripFinalNewline: false })).stdout.subarray(0, 4096);

describe('rbd iSCSI gateway (tgtd + tgt-rbd)', () => {
  it('publish exports the image through tgtd for the node\'s initiator only; its writes reach the image; unpublish fences it', async () => {
    const id = `ceph-${randomUUID()}`;
    await b.createVolume({ id, name: 'pvc-gw', sizeBytes: 16 * MiB, parameters: {}, capabilities: [{ accessType: 'block', accessMode: 'SINGLE_NODE_WRITER' }] });
    const ctx = (await vm.publish(id, nodeA, cap, false)) as IscsiCtx;
    expect(ctx).toMatchObject({ transport: 'iscsi', portals: [tgtd.portal], lun: 1 });
    // tgtd serves the image through its rbd backing store, the one Ceph client of the image.
    const show = (await execa('tgtadm', ['-C', String(tgtd.controlPort), '--lld', 'iscsi', '--op', 'show', '--mode', 'target'])).stdout;
    expect(show).toMatch(new RegExp(`Backing store type: rbd[\\s\\S]*Backing store path: ${c.pool}/${id}`));
    expect(show).not.toContain(c.key);

    const w = await iscsiWrite(ctx, IQN_A, 0x5a);
    expect(w.exitCode, w.stderr + w.stdout).toBe(0);
    expect((await head(id)).every((x) => x === 0x5a)).toBe(true);
    // Another initiator is not let in.
    expect((await iscsiWrite(ctx, IQN_B, 0x66)).exitCode).not.toBe(0);
    expect((await head(id)).every((x) => x === 0x5a)).toBe(true);

    // Unpublish: the target goes, and with it the node's access and tgtd's client of the image.
    await vm.unpublish(id, nodeA, { wait: true });
    expect((await iscsiWrite(ctx, IQN_A, 0x77)).exitCode).not.toBe(0);
    expect((await head(id)).every((x) => x === 0x5a)).toBe(true);
    expect((JSON.parse(await c.rbd(['status', '--format', 'json', `${c.pool}/${id}`])) as { watchers: unknown[] }).watchers).toEqual([]);
    // No blocklist fence for the gateway: its client is tgtd's, which stays healthy.
    expect(JSON.parse(firstJsonValue(await c.ceph(['osd', 'blocklist', 'ls', '--format', 'json'])))).toEqual([]);
    await b.deleteVolume(id);
    expect((await c.rbd(['ls', c.pool])).trim()).toBe('');
  }, 120_000);

  it('a publish with CHAP secrets admits the node only with them', async () => {
    const id = `ceph-${randomUUID()}`;
    await b.createVolume({ id, name: 'pvc-gw-chap', sizeBytes: 16 * MiB, parameters: {}, capabilities: [{ accessType: 'block', accessMode: 'SINGLE_NODE_WRITER' }] });
    const chap = { user: 'gw-user', password: 'sinterchap123456' };
    const ctx = (await vm.publish(id, nodeA, cap, false, { 'node.session.auth.username': chap.user, 'node.session.auth.password': chap.password })) as IscsiCtx;
    expect((await iscsiWrite(ctx, IQN_A, 0x11)).exitCode).not.toBe(0);
    const w = await iscsiWrite(ctx, IQN_A, 0x22, chap);
    expect(w.exitCode, w.stderr + w.stdout).toBe(0);
    expect((await head(id)).every((x) => x === 0x22)).toBe(true);
    await vm.unpublish(id, nodeA, { wait: true });
    await b.deleteVolume(id);
  }, 120_000);

  it('an attachment record the pool refuses leaves the controller\'s view as the pool has it; the retry records it', async () => {
    const id = `ceph-${randomUUID()}`;
    await b.createVolume({ id, name: 'pvc-gw-eio', sizeBytes: 16 * MiB, parameters: {}, capabilities: [{ accessType: 'block', accessMode: 'SINGLE_NODE_WRITER' }] });
    // The record write (image metadata) fails as an OSD error would; everything else reaches Ceph.
    const pool = (b as unknown as { pool: { setMeta: (...a: unknown[]) => Promise<void> } }).pool;
    const refuse = () => (pool.setMeta = () => Promise.reject(new Error('rbd image-meta set: (5) Input/output error')));
    const allow = () => delete (pool as { setMeta?: unknown }).setMeta;
    const onPool = async () => (JSON.parse(await c.rbd(['image-meta', 'get', `${c.pool}/${id}`, VOLUME_META_KEY])) as { attachments: unknown[] }).attachments;
    try {
      refuse();
      await expect(vm.publish(id, nodeA, cap, false)).rejects.toThrow(/Input\/output error/);
      expect(b.volume(id)).toMatchObject({ state: 'available', attachments: [] });
      allow();
      expect(await onPool()).toEqual([]);
      await vm.publish(id, nodeA, cap, false);
      expect(await onPool()).toMatchObject([{ nodeId: nodeA }]);

      refuse();
      await expect(vm.unpublish(id, nodeA, { wait: true })).rejects.toThrow(/Input\/output error/);
      expect(b.volume(id)).toMatchObject({ state: 'in-use', attachments: [{ nodeId: nodeA }] });
      allow();
      // The retry must not find "nothing to do" while the pool still records the publish.
      await vm.unpublish(id, nodeA, { wait: true });
      expect(await onPool()).toEqual([]);
    } finally {
      allow();
    }
    await b.deleteVolume(id);
  }, 120_000);
});
