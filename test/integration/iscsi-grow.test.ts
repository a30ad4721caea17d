import { Code } from '../../src/errors/domain-error.js';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileBackend } from '../../src/backends/file/backend.js';
import { newVolumeId } from '../../src/backends/ids.js';
import { TgtTargetHelper } from '../../src/backends/targets/tgt.js';
import { tgtShownMB } from '../../src/backends/targets/tgt-parse.js';
import type { FileBackendConfig } from '../../src/config/types.js';
import { encodeNodeId } from '../../src/contracts/nodeid.js';
import { HostExecutor } from '../../src/exec/run.js';
import { UserspaceIscsiInitiator } from '../../src/node/connectors/iscsi/userspace.js';
import type { IscsiTarget } from '../../src/node/connectors/iscsi/types.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { requireIscsiTools, TestTgtd } from '../helpers/tgtd.js';
import { forceCleanupUserspace } from '../helpers/userspace-cleanup.js';
import { readAt, writeAt } from '../helpers/file-io.js';
import { fileBackendConfig, iscsiExport } from '../helpers/backend-config.js';
import { stringMatching } from '../helpers/matchers.js';

const MiB = 1024 * 1024;
const log = pino({ level: 'silent' });
const exec = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 30_000 }, log);
const PREFIX = 'iqn.2025-01.io.sinter.grow:';
const NODE_IQN = 'iqn.2025-01.io.test:grow-node';
const node = { host: 'grow-node', iqn: NODE_IQN, wwpns: [] };
const mount = { accessType: 'mount' as const, accessMode: 'SINGLE_NODE_WRITER', fsType: 'ext4' };
const noLock = <T>(_id: string, fn: () => Promise<T>) => fn();



/**
 * Crash safety of an online iSCSI expand (image grown, then LUN reopened) at
 * the backend: every interrupted state is finished by the CO's retry or by
 * reconcile, and a refresh that cannot happen is a clear error, never a
 * silent success.
 */
describe('growing a published iSCSI volume: retry and reconcile finish an interrupted expand (real tgtd, real session)', () => {
  const t = tempDir('sinter-iscsi-grow-');
  const dataDir = join(t.dir, 'data');
  const stateDir = join(t.dir, 'initiator');
  let tgtd: TestTgtd;
  let helper: TgtTargetHelper;
  let us: UserspaceIscsiInitiator;
  let cfg: FileBackendConfig;
  let id: string;
  let target: IscsiTarget;

  const backend = async () => {
    const b = new FileBackend(cfg, exec, log);
    await b.start();
    return b;
  };
  const lun1 = async () => (await helper.listTargets()).find((x) => x.volumeId === id)?.luns.find((l) => l.lun === 1);
  const readCapacity = async () => {
    const r = await execa('iscsi-readcapacity16', ['-i', NODE_IQN, `iscsi://${tgtd.portal}/${target.iqn}/1`]);
    return Number(/Total size:(\d+)/.exec(r.stdout)?.[1]);
  };

  beforeAll(async () => {
    requireIscsiTools();
    tgtd = await TestTgtd.start();
    cfg = fileBackendConfig('grow', dataDir, iscsiExport(tgtd, PREFIX));
    helper = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: PREFIX }, exec, log);
    us = new UserspaceIscsiInitiator({ stateDir, loginTimeoutMs: 20_000, stopTimeoutMs: 6_000 }, exec, log);
    const b = await backend();
    id = newVolumeId('grow');
    await b.createVolume({ id, name: 'grow-1', sizeBytes: 64 * MiB, parameters: {}, capabilities: [mount] });
    const ctx = await b.exportVolume(id, node, false, {});
    if (ctx.transport !== 'iscsi') throw new Error('expected an iscsi publish_context');
    await b.setAttachments(id, [{ nodeId: encodeNodeId(node), readonly: false, accessType: 'mount', accessMode: 'SINGLE_NODE_WRITER', fsType: 'ext4', at: new Date().toISOString() }]);
    target = { portals: ctx.portals, iqn: ctx.iqn, lun: ctx.lun };
  });

  afterAll(async () => {
    try {
      if (us && target) await us.disconnect(target).catch(() => undefined);
    } finally {
      await forceCleanupUserspace(stateDir);
      await tgtd?.stop();
      t.cleanup();
    }
  });

  it('an expand of a published volume grows the image and the LUN; the logged-in initiator is drained, logs in again, and keeps its data path', async () => {
    const a = await us.connect(target, { initiatorName: NODE_IQN });
    const data = Buffer.from('before the online expand'.padEnd(4096, '.'));
    await writeAt(a.devicePath, 3 * MiB, data);
    const sessions = (await helper.listTargets()).find((x) => x.volumeId === id)!.sessions;
    const b = await backend();
    const rec = await b.expandVolume(id, 96 * MiB);
    expect(rec.sizeBytes).toBe(96 * MiB);
    expect((await fs.stat(b.imagePath(id))).size).toBe(96 * MiB);
    expect((await lun1())!.sizeMB).toBe(tgtShownMB(96 * MiB));
    expect(await readCapacity()).toBe(96 * MiB);
    // The reopen ended the session (tgt cannot reopen under commands in flight); the expand returned once
    // the same initiator was logged in again, in a new session.
    const now = (await helper.listTargets()).find((x) => x.volumeId === id)!.sessions;
    expect(now.map((s) => s.initiator)).toEqual(sessions.map((s) => s.initiator));
    expect(now.map((s) => s.sid)).not.toEqual(sessions.map((s) => s.sid));
    expect((await readAt(a.devicePath, 3 * MiB, data.length)).equals(data)).toBe(true);
    const after = Buffer.from('after the online expand'.padEnd(4096, ','));
    await writeAt(a.devicePath, 5 * MiB, after);
    expect((await readAt(b.imagePath(id), 5 * MiB, after.length)).equals(after)).toBe(true);
    expect(await b.volumeHealth(id)).toMatchObject({ abnormal: false });
  });

  it('a crash after the image grew, before the LUN was reopened: the retry of the expand reopens it', async () => {
    // What a crash leaves: the image grown (start() then records the size), the LUN at its old size.
    await fs.truncate(join(dataDir, 'volumes', `${id}.img`), 128 * MiB);
    const b = await backend();
    expect(b.volume(id)!.sizeBytes).toBe(128 * MiB);
    expect((await lun1())!.sizeMB).toBe(tgtShownMB(96 * MiB));
    expect(await b.volumeHealth(id)).toMatchObject({ abnormal: true, message: stringMatching(/interrupted expand; reconcile refreshes it/) });
    // The CO retries with the size it asked for, which the record already has.
    const rec = await b.expandVolume(id, 128 * MiB);
    expect(rec.sizeBytes).toBe(128 * MiB);
    expect((await lun1())!.sizeMB).toBe(tgtShownMB(128 * MiB));
    expect(await readCapacity()).toBe(128 * MiB);
    expect(await b.volumeHealth(id)).toMatchObject({ abnormal: false });
    // Once done, a further retry reopens nothing.
    const before = (await lun1())!;
    await b.expandVolume(id, 128 * MiB);
    expect(await lun1()).toEqual(before);
  });

  it('the same crash, and no retry: reconcile notices the LUN smaller than its image and reopens it', async () => {
    await fs.truncate(join(dataDir, 'volumes', `${id}.img`), 160 * MiB);
    const b = await backend();
    expect((await lun1())!.sizeMB).toBe(tgtShownMB(128 * MiB));
    await b.reconcileExports(noLock);
    expect((await lun1())!.sizeMB).toBe(tgtShownMB(160 * MiB));
    expect(await readCapacity()).toBe(160 * MiB);
    // The session survived that too.
    const [att] = await us.list();
    expect((await helper.listTargets()).find((x) => x.volumeId === id)!.sessions.map((s) => s.initiator)).toEqual([NODE_IQN]);
    expect((await readAt(att.devicePath!, 3 * MiB, 24)).toString()).toBe('before the online expand');
    await us.disconnect(target);
  });

  it('a refresh that truly fails is a clear error naming the LUN; the record keeps the grown size and the next reconcile finishes it', async () => {
    const b = await backend();
    await tgtd.kill();
    const err = await b.expandVolume(id, 192 * MiB).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: Code.UNAVAILABLE, message: stringMatching(/grew to 201326592 bytes, but its iSCSI LUN still shows the old size: tgtd is not reachable.*retrying the expand/) });
    expect(b.volume(id)!.sizeBytes).toBe(192 * MiB);
    await tgtd.startAgain();
    await b.reconcileExports(noLock);
    expect((await lun1())!.sizeMB).toBe(tgtShownMB(192 * MiB));
    expect(await readCapacity()).toBe(192 * MiB);
  });
});
