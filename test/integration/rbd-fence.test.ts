import { randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RbdBackend } from '../../src/backends/rbd/backend.js';
import { firstJsonValue } from '../../src/backends/rbd/blocklist.js';
import type { StoredVolume } from '../../src/backends/rbd/records.js';
import { parseConfig, rbdBackendSchema } from '../../src/config/schema.js';
import { encodeNodeId } from '../../src/contracts/nodeid.js';
import type { PublishContext } from '../../src/contracts/publish-context.js';
import { StaticNodeRegistry } from '../../src/controller/node-registry.js';
import { VolumeManager } from '../../src/controller/volumes.js';
import { HostExecutor } from '../../src/exec/run.js';
import { RbdConnector } from '../../src/node/connectors/rbd.js';
import { cephForFile, type FileCeph } from '../helpers/ceph-shared.js';
import { stringMatching } from '../helpers/matchers.js';
import { requireIscsiTools } from '../helpers/tgtd.js';
import { forceCleanupUserspace } from '../helpers/userspace-cleanup.js';

// Blocklist fencing of rbd clients on a real single-node Ceph (started by this
// file): two "nodes" are two user-space attach chains (qemu-nbd's librbd →
// nbdfuse → loop) with their own state dirs on this host, the controller is
// the VolumeManager over the rbd backend. Node A keeps the image open while
// its publish is taken away (what a lost node looks like to the controller:
// the attacher's force-detach or sinter's reconciler revoke both unpublish
// without NodeUnstage); its client instance is blocklisted, its writes fail
// and never reach the image, node B's succeed, and A's entry goes when A gets
// the volume back.

const MiB = 1024 * 1024;
const log = pino({ level: 'silent' });
const exec = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 60_000 });
const cap = { accessType: 'block' as const, accessMode: 'SINGLE_NODE_WRITER', mountFlags: [] };
const nodeA = encodeNodeId({ host: 'node-a', wwpns: [] });
const nodeB = encodeNodeId({ host: 'node-b', wwpns: [] });

let c: FileCeph;
let scratch: string;
let b: RbdBackend;
let vm: VolumeManager;
// Each "node" marks the images it closed with its host name, as sinter node does with its node id's host.
const connector = (name: string) => new RbdConnector({ stateDir: join(scratch, name), user: c.user, keyFile: c.keyFile, openTimeoutMs: 30_000, nodeHost: name }, exec, log);

beforeAll(async () => {
  requireIscsiTools(); // qemu-nbd, nbdfuse, fusermount3, losetup
  // Lifting a fence (osd blocklist rm) needs this cap beside `profile rbd` (docs/rbd.md).
  c = await cephForFile('rbd-fence', { sinterMonCaps: "allow command 'osd blocklist'" });
  scratch = mkdtempSync(join(tmpdir(), 'sinter-rbd-fence-'));
  b = new RbdBackend(parseConfig(rbdBackendSchema, { name: 'ceph', driver: 'rbd', pool: c.pool, monitors: [c.monitors], user: c.user, keyFile: c.keyFile, fenceSeconds: 600 }), exec, log);
  await b.start();
  vm = new VolumeManager(new Map([['ceph', b]]), new StaticNodeRegistry(undefined), log);
}, 150_000);

afterAll(async () => {
  for (const n of ['node-a', 'node-b', 'stray']) if (scratch) await forceCleanupUserspace(join(scratch, n));
  await c?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

const watchers = async (image: string) => (JSON.parse(await c.rbd(['status', '--format', 'json', `${c.pool}/${image}`])) as { watchers: { address: string }[] }).watchers.map((w) => w.address);
// Pacific prints the client entries, then (a second array) the range entries.
const blocklisted = async () => (JSON.parse(firstJsonValue(await c.ceph(['osd', 'blocklist', 'ls', '--format', 'json']))) as { addr: string }[]).map((e) => e.addr);
const record = async (id: string) => JSON.parse((JSON.parse(await c.rbd(['image-meta', 'list', '--format', 'json', `${c.pool}/${id}`])) as Record<string, string>)['sinter.volume']) as StoredVolume;
/** The first 4 KiB of the image as Ceph has it (rbd export, no client of the test's nodes). */
const head = async (id: string) => (await execa('rbd', ['-c', c.conf, 'export', '--no-progress', `${c.pool}/${id}`, '-'], { encoding: 'buffer', stripFinalNewline: false })).stdout.subarray(0, 4096);
/** One 4 KiB block of `byte` written with O_DIRECT|O_SYNC through a node's loop device. */
const write = (device: string, byte: number) =>
  execa('bash', ['-c', `head -c 4096 /dev/zero | tr '\\0' '\\${byte.toString(8).padStart(3, '0')}' | timeout 60 dd of=${device} bs=4096 count=1 oflag=direct,sync status=none`], { reject: false });

/**
 * Node A cut off, as Ceph sees it: `fn` runs with the OSDs dropping a silent client's watch after
 * 5 s (osd_client_watch_timeout, 30 s by default; for watches made from now on) and gets
 * `silence()`, which SIGSTOPs A's qemu-nbd (it runs librbd) and waits for its watch on `id` to
 * lapse, and `wake()`. A's client is woken and the setting restored whatever happens.
 */
async function partitioned(id: string, fn: (silence: () => Promise<void>, wake: () => void) => Promise<void>): Promise<void> {
  await c.ceph(['config', 'set', 'osd', 'osd_client_watch_timeout', '5']);
  let stopped: number | undefined;
  const wake = () => {
    if (stopped) process.kill(stopped, 'SIGCONT');
    stopped = undefined;
  };
  try {
    await fn(async () => {
      const pids = readdirSync(join(scratch, 'node-a'), { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('qemu-nbd.pid'));
      expect(pids).toHaveLength(1);
      stopped = Number(readFileSync(join(scratch, 'node-a', pids[0]), 'utf8').trim());
      process.kill(stopped, 'SIGSTOP');
      const deadline = Date.now() + 60_000;
      while ((await watchers(id)).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 1000));
      expect(await watchers(id)).toEqual([]);
    }, wake);
  } finally {
    wake();
    await c.ceph(['config', 'rm', 'osd', 'osd_client_watch_timeout']);
  }
}

/** After the unpublish: `client` is on the blocklist, and once woken its write fails and the image keeps `before`. */
async function fencedAfterWake(id: string, dev: string, client: string, wake: () => void, before: number): Promise<void> {
  expect(await blocklisted()).toContain(client);
  wake();
  expect((await write(dev, 0xee)).exitCode).not.toBe(0);
  expect((await head(id)).every((x) => x === before)).toBe(true);
  // The entry would keep the next test's blocklist from being empty.
  await c.ceph(['osd', 'blocklist', 'rm', client]);
}

describe('rbd fencing: the old node\'s client is blocklisted before another node maps the image', () => {
  it('A attached, A unpublished without unstaging → A blocklisted, A\'s writes fail, B\'s land; A gets the volume back → entry lifted', async () => {
    const id = `ceph-${randomUUID()}`;
    await b.createVolume({ id, name: 'pvc-fence', sizeBytes: 16 * MiB, parameters: {}, capabilities: [{ accessType: 'block', accessMode: 'SINGLE_NODE_WRITER' }] });
    const a = connector('node-a');
    const ctxA: PublishContext = await vm.publish(id, nodeA, cap, false);
    const devA = await a.connect(ctxA, {});
    expect((await write(devA, 0xa1)).exitCode).toBe(0);
    expect((await head(id)).every((x) => x === 0xa1)).toBe(true);
    const [clientA] = await watchers(id);
    expect(clientA).toMatch(/^127\.0\.0\.1:\d+\/\d+$/);
    // The controller's agent (its own Ceph client, left out of the node's clients) knows its real global id.
    expect(b.agent?.ownClient()).toMatch(/^client\.\d+$/);

    // A single-node volume published to A: B is refused, naming A.
    await expect(vm.publish(id, nodeB, cap, false)).rejects.toMatchObject({ code: 'failed-precondition', message: stringMatching(/published to node node-a/) });
    // The client scan attributes the watcher to A.
    await vm.reconcileExports(b);
    expect((await record(id)).rbd?.clients).toEqual([expect.objectContaining({ nodeId: nodeA, address: clientA })]);

    // A is lost: its publish is taken away while its client still runs.
    await vm.unpublish(id, nodeA, { wait: true });
    expect(await blocklisted()).toContain(clientA);
    expect((await record(id)).rbd?.fenced).toEqual([expect.objectContaining({ nodeId: nodeA, address: clientA })]);

    // A's writes fail and do not reach the image.
    const late = await write(devA, 0xa2);
    expect(late.exitCode).not.toBe(0);
    expect((await head(id)).every((x) => x === 0xa1)).toBe(true);

    // B is published and maps; its writes land.
    const bConn = connector('node-b');
    const ctxB = await vm.publish(id, nodeB, cap, false);
    const devB = await bConn.connect(ctxB, {});
    expect((await write(devB, 0xb1)).exitCode).toBe(0);
    expect((await head(id)).every((x) => x === 0xb1)).toBe(true);
    expect(await watchers(id)).not.toContain(clientA);

    // B leaves cleanly (unstage, then unpublish): nothing to fence.
    await bConn.disconnect(ctxB);
    await vm.unpublish(id, nodeB, { wait: true });
    expect((await record(id)).rbd?.fenced?.map((f) => f.nodeId)).toEqual([nodeA]);

    // A comes back: its kubelet unstages what was left, the volume is published to A again: A's entry is lifted.
    await a.disconnect(ctxA);
    const again = await vm.publish(id, nodeA, cap, false);
    expect(await blocklisted()).not.toContain(clientA);
    expect((await record(id)).rbd?.fenced ?? []).toEqual([]);
    const devA2 = await a.connect(again, {});
    expect((await write(devA2, 0xa3)).exitCode).toBe(0);
    expect((await head(id)).every((x) => x === 0xa3)).toBe(true);
    await a.disconnect(again);
    await vm.unpublish(id, nodeA, { wait: true });
    expect(await blocklisted()).toEqual([]);
    await b.deleteVolume(id);
  }, 180_000);

  it('the scan recorded A\'s client, A unstages cleanly, then is unpublished → no blocklist entry (the client is gone)', async () => {
    const id = `ceph-${randomUUID()}`;
    await b.createVolume({ id, name: 'pvc-clean', sizeBytes: 16 * MiB, parameters: {}, capabilities: [{ accessType: 'block', accessMode: 'SINGLE_NODE_WRITER' }] });
    const a = connector('node-a');
    const ctx = await vm.publish(id, nodeA, cap, false);
    const dev = await a.connect(ctx, {});
    expect((await write(dev, 0xc1)).exitCode).toBe(0);
    const [clientA] = await watchers(id);
    await vm.reconcileExports(b);
    expect((await record(id)).rbd?.clients).toEqual([expect.objectContaining({ nodeId: nodeA, address: clientA })]);
    // NodeUnstageVolume: qemu-nbd closes the image (watch and exclusive lock released) and A marks it closed, then ControllerUnpublishVolume.
    await a.disconnect(ctx);
    expect(Object.keys(JSON.parse(await c.rbd(['image-meta', 'list', '--format', 'json', `${c.pool}/${id}`])) as Record<string, string>)).toContain('sinter.closed.node-a');
    await vm.unpublish(id, nodeA, { wait: true });
    expect(await blocklisted()).toEqual([]);
    const rec = await record(id);
    expect(rec.rbd?.fenced ?? []).toEqual([]);
    expect(rec.rbd?.clients ?? []).toEqual([]);
    // B gets the volume at once and writes.
    const bConn = connector('node-b');
    const ctxB = await vm.publish(id, nodeB, cap, false);
    const devB = await bConn.connect(ctxB, {});
    expect((await write(devB, 0xc2)).exitCode).toBe(0);
    expect((await head(id)).every((x) => x === 0xc2)).toBe(true);
    await bConn.disconnect(ctxB);
    await vm.unpublish(id, nodeB, { wait: true });
    await b.deleteVolume(id);
  }, 120_000);

  it('A\'s client goes silent holding the image (its watch lapses, its lock stays) → still blocklisted at unpublish; its writes fail after it wakes', async () => {
    const id = `ceph-${randomUUID()}`;
    await b.createVolume({ id, name: 'pvc-silent', sizeBytes: 16 * MiB, parameters: {}, capabilities: [{ accessType: 'block', accessMode: 'SINGLE_NODE_WRITER' }] });
    const a = connector('node-a');
    await partitioned(id, async (silence, wake) => {
      const ctx = await vm.publish(id, nodeA, cap, false);
      const dev = await a.connect(ctx, {});
      expect((await write(dev, 0xd1)).exitCode).toBe(0);
      const [clientA] = await watchers(id);
      await vm.reconcileExports(b);
      expect((await record(id)).rbd?.clients).toEqual([expect.objectContaining({ nodeId: nodeA, address: clientA })]);
      await silence();
      // It still holds the image's exclusive lock (and A never said it closed the image).
      expect((await b.pool.lockHolders(id))?.map((l) => l.address)).toEqual([clientA]);
      await vm.unpublish(id, nodeA, { wait: true });
      await fencedAfterWake(id, dev, clientA, wake, 0xd1);
      await a.disconnect(ctx);
    });
    await b.deleteVolume(id);
  }, 180_000);

  it('A\'s clean unstage marks the image closed and its next stage clears the mark; the new client, gone silent after a read, is blocklisted (no mark) and cannot write after it wakes', async () => {
    const id = `ceph-${randomUUID()}`;
    await b.createVolume({ id, name: 'pvc-reader', sizeBytes: 16 * MiB, parameters: {}, capabilities: [{ accessType: 'block', accessMode: 'SINGLE_NODE_WRITER' }] });
    const a = connector('node-a');
    const meta = async () => JSON.parse(await c.rbd(['image-meta', 'list', '--format', 'json', `${c.pool}/${id}`])) as Record<string, string>;
    await partitioned(id, async (silence, wake) => {
      // A clean stage and unstage first: A's closed mark is set...
      const ctx = await vm.publish(id, nodeA, cap, false);
      await a.connect(ctx, {});
      await a.disconnect(ctx);
      expect(Object.keys(await meta())).toContain('sinter.closed.node-a');
      // ...and the next stage clears it before opening the image: the mark must not speak for the new client.
      const dev = await a.connect(ctx, {});
      expect(Object.keys(await meta())).not.toContain('sinter.closed.node-a');
      expect((await execa('dd', [`if=${dev}`, 'of=/dev/null', 'bs=4096', 'count=1', 'iflag=direct', 'status=none'])).exitCode).toBe(0);
      const [clientA] = await watchers(id);
      await vm.reconcileExports(b);
      expect((await record(id)).rbd?.clients).toEqual([expect.objectContaining({ nodeId: nodeA, address: clientA })]);
      // (qemu's librbd takes the exclusive lock even to read; the kernel's does not before its first I/O: rbd-kernel.guest.test.ts.)
      await silence();
      await vm.unpublish(id, nodeA, { wait: true });
      await fencedAfterWake(id, dev, clientA, wake, 0);
      await a.disconnect(ctx);
    });
    await b.deleteVolume(id);
  }, 180_000);

  it('a client no publish explains keeps every node out, named in the refusal, until it is gone', async () => {
    const id = `ceph-${randomUUID()}`;
    await b.createVolume({ id, name: 'pvc-stray', sizeBytes: 16 * MiB, parameters: {}, capabilities: [{ accessType: 'block', accessMode: 'SINGLE_NODE_WRITER' }] });
    const stray = connector('stray');
    const ctx: PublishContext = { transport: 'rbd', pool: c.pool, image: id, monitors: [c.monitors] };
    await stray.connect(ctx, {});
    const addr = (await watchers(id))[0] ?? 'none';
    await expect(vm.publish(id, nodeB, cap, false)).rejects.toMatchObject({ code: 'failed-precondition', message: stringMatching(new RegExp(`still open by Ceph client\\.\\d+ at ${addr.replace(/\./g, '\\.')}`)) });
    // Nothing recorded by the refused publish.
    expect((await record(id)).attachments).toEqual([]);
    await stray.disconnect(ctx);
    await vm.publish(id, nodeB, cap, false);
    await vm.unpublish(id, nodeB, { wait: true });
    // A clean departure fences nothing.
    expect(await blocklisted()).toEqual([]);
    await b.deleteVolume(id);
  }, 120_000);
});
