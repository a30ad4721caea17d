import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Backend } from '../../src/backends/backend.js';
import { FileBackend } from '../../src/backends/file/backend.js';
import { newVolumeId } from '../../src/backends/ids.js';
import { TgtTargetHelper } from '../../src/backends/targets/tgt.js';
import { encodeNodeId } from '../../src/contracts/nodeid.js';
import { StaticNodeRegistry } from '../../src/controller/node-registry.js';
import { VolumeManager } from '../../src/controller/volumes.js';
import { HostExecutor } from '../../src/exec/run.js';
import { fileBackendConfig, iscsiExport } from '../helpers/backend-config.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { requireTgt, TestTgtd } from '../helpers/tgtd.js';

const MiB = 1024 * 1024;
const log = pino({ level: 'silent' });
const exec = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 30_000 }, log);
const PREFIX = 'iqn.2025-01.io.sinter.rec:';
const node = { host: 'rec-node', iqn: 'iqn.2025-01.io.test:rec-node', wwpns: [] };
const nodeId = encodeNodeId(node);
const cap = { accessType: 'mount' as const, accessMode: 'SINGLE_NODE_WRITER' as const, fsType: 'ext4', mountFlags: [] };
const noLock = <T>(_id: string, fn: () => Promise<T>) => fn();
const CHAP_USER = 'sinter-rec-chap';
const chapSecrets = { 'node.session.auth.username': CHAP_USER, 'node.session.auth.password': 'S3cret-rec-pass' };

/**
 * A file backend exported through tgtd writes a publish's attachment record
 * while the export is made (recordsBesideExport), not strictly before it (and
 * an unpublish's while the export goes). Safe because a crash at any point is
 * settled by what the controller does on start before serving (app.ts:
 * backend start(), then the export reconcile): each state a crash can leave is
 * made here on the real tgtd and the disk, then a new backend on the same data
 * directory (the restarted controller) must end with the export exactly when
 * the durable record holds the publish. Failures without a crash undo the half
 * that succeeded.
 */
describe('publish/unpublish records written beside the tgt export: every crash point and failure ends right (real tgtd)', () => {
  const t = tempDir('sinter-tgt-rec-');
  let tgtd: TestTgtd;
  let helper: TgtTargetHelper;
  let dataDir: string;

  const target = async (id: string) => (await helper.listTargets()).find((x) => x.volumeId === id);
  const attachment = () => ({ nodeId, readonly: false, accessType: 'mount' as const, accessMode: 'SINGLE_NODE_WRITER' as const, fsType: 'ext4', at: new Date().toISOString() });
  /** The controller restarting: a new backend on the same directory, started, then the export reconcile (app.ts's order). */
  const restart = async () => {
    const b = new FileBackend(fileBackendConfig('rec', dataDir, iscsiExport(tgtd, PREFIX)), exec, log);
    await b.start();
    await b.reconcileExports(noLock);
    return b;
  };
  const manager = (b: Backend) => {
    const m = new VolumeManager(new Map<string, Backend>([['rec', b]]), new StaticNodeRegistry(undefined), log);
    m.index();
    return m;
  };
  /** The volume's CHAP records (0600 files beside the records). */
  const chapFiles = async (id: string) => (await fs.readdir(join(dataDir, 'secrets')).catch(() => [] as string[])).filter((f) => f.startsWith(`${id}.`));
  /** What a user would notice: the node's ACL either absent or behind CHAP, never open. */
  const neverOpen = async (id: string) => {
    const t = await target(id);
    if (t?.acls.includes(node.iqn)) expect(t.accounts, `${id}: ACL for ${node.iqn} restored without CHAP`).toContainEqual({ user: CHAP_USER, outgoing: false });
    return t;
  };
  const newVolume = async (b: FileBackend) => {
    const id = newVolumeId('rec');
    await b.createVolume({ id, name: id, sizeBytes: 16 * MiB, parameters: {}, capabilities: [cap] });
    return id;
  };

  beforeAll(async () => {
    requireTgt();
    tgtd = await TestTgtd.start();
    dataDir = join(t.dir, 'data');
    helper = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: PREFIX }, exec, log);
  });
  afterAll(async () => {
    try {
      await tgtd?.stop();
    } finally {
      t.cleanup();
    }
  });

  it('the file backend exported through tgt opts in; export: local does not', () => {
    expect(new FileBackend(fileBackendConfig('rec', dataDir, iscsiExport(tgtd, PREFIX)), exec, log).recordsBesideExport).toBe(true);
    expect(new FileBackend(fileBackendConfig('loc', join(t.dir, 'local')), exec, log).recordsBesideExport).toBe(false);
  });

  it('publish crashed with the export made and no record: the restart removes the export; with the record and no export: it restores it', async () => {
    let b = await restart();
    const exportedOnly = await newVolume(b);
    const recordedOnly = await newVolume(b);
    await b.exportVolume(exportedOnly, node, false, {});
    await b.setAttachments(recordedOnly, [attachment()]);
    expect(await target(exportedOnly)).toBeDefined();
    expect(await target(recordedOnly)).toBeUndefined();
    b = await restart();
    expect(await target(exportedOnly)).toBeUndefined();
    expect(b.volume(exportedOnly)).toMatchObject({ state: 'available', attachments: [] });
    expect((await target(recordedOnly))?.acls).toEqual([node.iqn]);
    expect(b.volume(recordedOnly)).toMatchObject({ state: 'in-use', attachments: [{ nodeId }] });
    await b.setAttachments(recordedOnly, []);
    await b.unexportVolume(recordedOnly, node);
  });

  it('unpublish crashed with the record written and the export there: the restart removes it; with the export gone and the record not: it comes back for the retry to remove', async () => {
    let b = await restart();
    const recordedGone = await newVolume(b);
    const revokedOnly = await newVolume(b);
    for (const id of [recordedGone, revokedOnly]) {
      await b.setAttachments(id, [attachment()]);
      await b.exportVolume(id, node, false, {});
    }
    await b.setAttachments(recordedGone, []);
    await b.unexportVolume(revokedOnly, node);
    b = await restart();
    expect(await target(recordedGone)).toBeUndefined();
    expect((await target(revokedOnly))?.acls).toEqual([node.iqn]);
    // The CO's retry of the unpublish, through the controller.
    const volumes = new VolumeManager(new Map<string, Backend>([['rec', b]]), new StaticNodeRegistry(undefined), log);
    volumes.index();
    await volumes.unpublish(revokedOnly, nodeId);
    expect(await target(revokedOnly)).toBeUndefined();
    expect((await restart()).volume(revokedOnly)).toMatchObject({ state: 'available', attachments: [] });
  });

  it('CHAP unpublish crashed with the export revoked and the record still naming the node: the restart restores it with its CHAP, never open', async () => {
    let b = await restart();
    const id = await newVolume(b);
    await manager(b).publish(id, nodeId, cap, false, chapSecrets);
    expect(await target(id)).toMatchObject({ acls: [node.iqn], accounts: [{ user: CHAP_USER, outgoing: false }] });
    // The crash: the last node's revocation (the target went) is done, the record without it is not durable.
    await b.unexportVolume(id, node);
    expect(await target(id)).toBeUndefined();
    b = await restart();
    expect(b.volume(id)).toMatchObject({ state: 'in-use', attachments: [{ nodeId }] });
    expect((await neverOpen(id))?.acls).toEqual([node.iqn]);
    // A tgtd restart later: restored again from the same records, again with CHAP.
    await tgtd.kill();
    await tgtd.startAgain();
    await b.reconcileExports(noLock);
    expect((await neverOpen(id))?.acls).toEqual([node.iqn]);
    // The CO's retry of the unpublish fences it; nothing restores it afterwards.
    await manager(b).unpublish(id, nodeId);
    expect(await target(id)).toBeUndefined();
    await restart();
    expect(await target(id)).toBeUndefined();
    expect(await chapFiles(id)).toEqual([]);
  });

  it('CHAP publish crashed with the record written and the export not made: the restart restores it with its CHAP, never open', async () => {
    let b = await restart();
    const id = await newVolume(b);
    // The process stops inside the export (it never returns): what is durable by then is what the restart finds.
    const dies = new Proxy(b, {
      get(obj, key, recv) {
        if (key === 'exportVolume') return () => new Promise<never>(() => undefined);
        const v = Reflect.get(obj, key, recv) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(obj) : v;
      },
    });
    void manager(dies).publish(id, nodeId, cap, false, chapSecrets).catch(() => undefined);
    // The backend shows the attachment once its record is durable.
    await expect.poll(() => b.volume(id)?.attachments.length, { timeout: 10_000 }).toBe(1);
    b = await restart();
    expect((await neverOpen(id))?.acls).toEqual([node.iqn]);
    // The CO's retry of the publish answers; its unpublish fences.
    await manager(b).publish(id, nodeId, cap, false, chapSecrets);
    expect((await neverOpen(id))?.acls).toEqual([node.iqn]);
    await manager(b).unpublish(id, nodeId);
    expect(await target(id)).toBeUndefined();
  });

  it('CHAP unpublish crashed with the record written first: the CHAP record left behind opens nothing, and reconcile drops it', async () => {
    let b = await restart();
    const id = await newVolume(b);
    await manager(b).publish(id, nodeId, cap, false, chapSecrets);
    expect(await chapFiles(id)).toHaveLength(1);
    // The crash: the record without the node is durable, the export still there.
    await b.setAttachments(id, []);
    b = await restart();
    expect(await target(id)).toBeUndefined();
    expect(await chapFiles(id)).toEqual([]);

    // A complete unpublish: the CHAP record outlives the record's write, then the next reconcile drops it.
    await manager(b).publish(id, nodeId, cap, false, chapSecrets);
    await manager(b).unpublish(id, nodeId);
    expect(await target(id)).toBeUndefined();
    await b.reconcileExports(noLock);
    expect(await target(id)).toBeUndefined();
    expect(await chapFiles(id)).toEqual([]);

    // A new publish that asks for no CHAP is not held to the credentials an earlier one left.
    await manager(b).publish(id, nodeId, cap, false, chapSecrets);
    await manager(b).unpublish(id, nodeId);
    expect(await chapFiles(id)).toHaveLength(1);
    await manager(b).publish(id, nodeId, cap, false, {});
    expect(await target(id)).toMatchObject({ acls: [node.iqn], accounts: [] });
    expect(await chapFiles(id)).toEqual([]);
    await manager(b).unpublish(id, nodeId);

    // DeleteVolume takes the CHAP records with the volume, whatever an unpublish left.
    await manager(b).publish(id, nodeId, cap, false, chapSecrets);
    await manager(b).unpublish(id, nodeId);
    await manager(b).delete(id);
    expect(await chapFiles(id)).toEqual([]);
  });

  it('through the controller: publish and unpublish leave record and export in step, also after a restart', async () => {
    const b = await restart();
    const volumes = new VolumeManager(new Map<string, Backend>([['rec', b]]), new StaticNodeRegistry(undefined), log);
    const id = await newVolume(b);
    volumes.index();
    const ctx = await volumes.publish(id, nodeId, cap, false, {});
    expect(ctx).toMatchObject({ transport: 'iscsi', iqn: `${PREFIX}${id}` });
    expect((await target(id))?.acls).toEqual([node.iqn]);
    expect((await restart()).volume(id)).toMatchObject({ state: 'in-use', attachments: [{ nodeId }] });
    await volumes.unpublish(id, nodeId);
    expect(await target(id)).toBeUndefined();
    expect((await restart()).volume(id)).toMatchObject({ state: 'available', attachments: [] });
  });

  it('a record that cannot be written takes the export back; an export that cannot be revoked keeps the publish recorded for the retry', async () => {
    const b = await restart();
    const id = await newVolume(b);
    let failRecord = false;
    // The backend as the controller sees it, with the record write failing on demand.
    const flaky = new Proxy(b, {
      get(obj, key, recv) {
        if (key === 'setAttachments' && failRecord) return () => Promise.reject(new Error('disk full'));
        const v = Reflect.get(obj, key, recv) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(obj) : v;
      },
    });
    const volumes = new VolumeManager(new Map<string, Backend>([['rec', flaky]]), new StaticNodeRegistry(undefined), log);
    volumes.index();
    failRecord = true;
    await expect(volumes.publish(id, nodeId, cap, false, {})).rejects.toThrow(/disk full/);
    failRecord = false;
    expect(await target(id)).toBeUndefined();
    expect(b.volume(id)).toMatchObject({ state: 'available', attachments: [] });

    await volumes.publish(id, nodeId, cap, false, {});
    // tgtd gone: the revocation fails while the record (to "not published") is written beside it.
    await tgtd.kill();
    await expect(volumes.unpublish(id, nodeId)).rejects.toThrow(/tgtd is not reachable/);
    expect(b.volume(id)).toMatchObject({ state: 'in-use', attachments: [{ nodeId }] });
    await tgtd.startAgain();
    // The restarted controller restores the export the record holds; the retry then fences it.
    const again = await restart();
    expect((await target(id))?.acls).toEqual([node.iqn]);
    const v2 = new VolumeManager(new Map<string, Backend>([['rec', again]]), new StaticNodeRegistry(undefined), log);
    v2.index();
    await v2.unpublish(id, nodeId);
    expect(await target(id)).toBeUndefined();
    expect(again.volume(id)).toMatchObject({ state: 'available', attachments: [] });
  });
});
