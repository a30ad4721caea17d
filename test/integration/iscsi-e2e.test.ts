import { mkdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa, execaSync } from 'execa';
import { TgtTargetHelper } from '../../src/backends/targets/tgt.js';
import { tgtShownMB } from '../../src/backends/targets/tgt-parse.js';
import { HostExecutor } from '../../src/exec/run.js';
import { UserspaceIscsiInitiator } from '../../src/node/connectors/iscsi/userspace.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { codeOf, MiB, mountCap, waitFor, type SinterProcess, hostNqnTail } from '../helpers/sinter-process.js';
import { requireIscsiTools, TestTgtd } from '../helpers/tgtd.js';
import { forceCleanupUserspace } from '../helpers/userspace-cleanup.js';
import { startIscsiSplit, type IscsiSplit } from '../helpers/iscsi-split.js';
import { stringMatching } from '../helpers/matchers.js';

const NODE_IQN = 'iqn.2026-11.io.sinter.test:node-1';
const CHAP = { 'node.session.auth.username': 'sinter-node', 'node.session.auth.password': 'Right-chap-secret-1' };

describe('iSCSI across processes: sinter controller (tgtd export) + sinter node (user-space initiator), real sessions on 127.0.0.1', () => {
  const t = tempDir('sinter-iscsi-e2e-');
  let tgtd: TestTgtd;
  let ctl: SinterProcess;
  let node: SinterProcess;
  let nodeId: string;
  let tgt: TgtTargetHelper;
  let split: IscsiSplit | undefined;

  beforeAll(async () => {
    requireIscsiTools();
    tgtd = await TestTgtd.start();
    tgt = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: 'iqn.2026-11.io.sinter.test:' }, new HostExecutor({ mode: 'direct', defaultTimeoutMs: 30_000 }, pino({ level: 'silent' })));
    split = await startIscsiSplit(t.dir, { tgtd, iqnPrefix: 'iqn.2026-11.io.sinter.test:', nodeIqn: NODE_IQN, nodeName: 'node-1', reconcileSeconds: 1 });
    ({ ctl, node, nodeId } = split);
  });

  afterAll(async () => {
    await split?.cleanup();
    await tgtd?.stop();
    t.cleanup();
  });

  const provision = async (name: string) => {
    const v = (await ctl.client.controller.CreateVolume({ name, capacity_range: { required_bytes: 64 * MiB }, volume_capabilities: [mountCap()] })).volume;
    return v!.volume_id as string;
  };
  const paths = (id: string) => {
    const staging = join(node.kubeletRoot, 'staging', id);
    const target = join(node.kubeletRoot, 'pods', id, 'mount');
    mkdirSync(staging, { recursive: true });
    mkdirSync(join(target, '..'), { recursive: true });
    return { staging, target };
  };

  it('carries the initiator name in the node id', () => {
    expect(nodeId).toBe(`node-1;${NODE_IQN};${hostNqnTail()}`);
  });

  it('create → publish (ACL + CHAP) → stage over iSCSI → format → publish → write → teardown: the bytes are in the image', async () => {
    const id = await provision('e2e-1');
    const pub = await ctl.client.controller.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: mountCap(), secrets: CHAP });
    expect(pub.publish_context).toEqual({ transport: 'iscsi', portals: tgtd.portal, iqn: `iqn.2026-11.io.sinter.test:${id}`, lun: '1' });
    expect(JSON.stringify(pub.publish_context)).not.toContain(CHAP['node.session.auth.password']);
    const { staging, target } = paths(id);
    await node.client.node.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: mountCap(), publish_context: pub.publish_context, secrets: CHAP });
    await node.client.node.NodePublishVolume({ volume_id: id, staging_target_path: staging, target_path: target, volume_capability: mountCap(), publish_context: pub.publish_context });
    writeFileSync(join(target, 'over-iscsi.txt'), 'bytes that crossed an iSCSI session');
    await node.client.node.NodeUnpublishVolume({ volume_id: id, target_path: target });
    await node.client.node.NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    const image = readFileSync(join(t.dir, 'data', 'volumes', `${id}.img`));
    expect(image.includes(Buffer.from('bytes that crossed an iSCSI session'))).toBe(true);
    for (const p of [ctl, node]) expect(p.logs()).not.toContain(CHAP['node.session.auth.password']);
  });

  it('a wrong CHAP secret fails NodeStage with an error naming CHAP', async () => {
    const id = await provision('e2e-chap');
    const pub = await ctl.client.controller.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: mountCap(), secrets: CHAP });
    const { staging } = paths(id);
    const wrong = { ...CHAP, 'node.session.auth.password': 'Wrong-chap-secret-2' };
    const r = node.client.node.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: mountCap(), publish_context: pub.publish_context, secrets: wrong });
    await expect(r).rejects.toMatchObject({ details: stringMatching(/CHAP/) });
    expect(node.logs()).not.toContain('Wrong-chap-secret-2');
    await node.client.node.NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
  });

  it('after ControllerUnpublishVolume the fence holds: a login with that initiator name is refused', async () => {
    const id = await provision('e2e-fence');
    const pub = await ctl.client.controller.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: mountCap() });
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    const exec = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 30_000 }, pino({ level: 'silent' }));
    const probeDir = join(t.dir, 'fence-probe');
    const ini = new UserspaceIscsiInitiator({ stateDir: probeDir, loginTimeoutMs: 15_000 }, exec);
    try {
      const login = ini.connect({ portals: [tgtd.portal], iqn: pub.publish_context.iqn, lun: 1 }, { initiatorName: NODE_IQN });
      await expect(login).rejects.toThrow();
    } finally {
      await forceCleanupUserspace(probeDir);
    }
  });

  it('a static (pre-provisioned) iSCSI LUN: publish from its attributes, stage, write; DeleteVolume leaves the LUN alone', async () => {
    // The array team's LUN: a target sinter did not create, outside any backend.
    const exec = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 30_000 }, pino({ level: 'silent' }));
    const lunFile = join(t.dir, 'array-lun.img');
    writeFileSync(lunFile, '');
    truncateSync(lunFile, 64 * MiB);
    const array = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: 'iqn.2026-11.com.example.array:' }, exec);
    const ref = await array.ensureTarget('lun-42', lunFile);
    await array.allowInitiator('lun-42', NODE_IQN, { user: CHAP['node.session.auth.username'], password: CHAP['node.session.auth.password'] });
    const id = 'static-array-lun-42';
    const attrs = { transport: 'iscsi', portals: tgtd.portal, iqn: ref.iqn, lun: String(ref.lun) };
    const pub = await ctl.client.controller.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: mountCap(), volume_context: attrs });
    expect(pub.publish_context).toMatchObject({ transport: 'iscsi', iqn: ref.iqn, lun: '1' });
    const { staging, target } = paths(id);
    await node.client.node.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: mountCap(), publish_context: pub.publish_context, volume_context: attrs, secrets: CHAP });
    await node.client.node.NodePublishVolume({ volume_id: id, staging_target_path: staging, target_path: target, volume_capability: mountCap(), publish_context: pub.publish_context });
    writeFileSync(join(target, 'static.txt'), 'written to a LUN sinter did not create');
    await node.client.node.NodeUnpublishVolume({ volume_id: id, target_path: target });
    await node.client.node.NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    expect(await codeOf(ctl.client.controller.DeleteVolume({ volume_id: id }))).toBe('OK');
    // The controller's reconcile never touches a target outside its prefix, and delete left the LUN.
    expect((await array.listTargets()).some((x) => x.iqn === ref.iqn)).toBe(true);
    expect(readFileSync(lunFile).includes(Buffer.from('written to a LUN sinter did not create'))).toBe(true);
    await array.removeTarget('lun-42');
  });

  it('grows a published, staged volume online: the controller grows image and LUN under the live session; the user-space node says to stage again, then grows the filesystem', async () => {
    const xfs = mountCap('SINGLE_NODE_WRITER', 'xfs');
    const id = (await ctl.client.controller.CreateVolume({ name: 'e2e-grow', capacity_range: { required_bytes: 320 * MiB }, volume_capabilities: [xfs] })).volume!.volume_id as string;
    const { staging, target } = paths(id);
    const ctx = (await ctl.client.controller.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: xfs, secrets: CHAP })).publish_context;
    const stage = () => node.client.node.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: xfs, publish_context: ctx, secrets: CHAP });
    const publish = () => node.client.node.NodePublishVolume({ volume_id: id, staging_target_path: staging, target_path: target, volume_capability: xfs, publish_context: ctx });
    const expandNode = () =>
      node.client.node.NodeExpandVolume({ volume_id: id, volume_path: target, staging_target_path: staging, capacity_range: { required_bytes: 640 * MiB }, volume_capability: xfs });
    const total = async () => (await node.client.node.NodeGetVolumeStats({ volume_id: id, volume_path: target })).usage.find((u) => u.unit === 'BYTES')!.total as number;
    // A new session's READ CAPACITY, as the allowed initiator with the volume's CHAP (libiscsi).
    const readCapacity = async () => {
      const user = CHAP['node.session.auth.username'];
      const pass = CHAP['node.session.auth.password'];
      const r = await execa('iscsi-readcapacity16', ['-i', NODE_IQN, `iscsi://${user}%${pass}@${tgtd.portal}/${ctx.iqn}/1`]);
      return Number(/Total size:(\d+)/.exec(r.stdout)?.[1]);
    };
    await stage();
    await publish();
    writeFileSync(join(target, 'before.txt'), 'written before the online expand');
    const before = await total();
    const sessions = async () => (await tgt.listTargets()).find((x) => x.iqn === ctx.iqn)!.sessions.map((s) => s.sid);
    const sids = await sessions();
    expect(sids).toHaveLength(1);

    const r = await ctl.client.controller.ControllerExpandVolume({ volume_id: id, capacity_range: { required_bytes: 640 * MiB }, volume_capability: xfs });
    expect(r).toMatchObject({ capacity_bytes: 640 * MiB, node_expansion_required: true });
    expect(await readCapacity()).toBe(640 * MiB);
    // The reopen ended the session (tgt cannot reopen under commands in flight), libiscsi logged in
    // again by itself, and the expand returned only then: one new session, the file reads back, new writes work.
    const after = await sessions();
    expect(after).toHaveLength(1);
    expect(after).not.toEqual(sids);
    expect(readFileSync(join(target, 'before.txt'), 'utf8')).toBe('written before the online expand');
    writeFileSync(join(target, 'after.txt'), 'written after the online expand');
    execaSync('sync', ['-f', join(target, 'after.txt')]);
    expect((await ctl.client.controller.ControllerGetVolume({ volume_id: id })).status!.volume_condition!.abnormal).toBe(false);

    // The user-space chain cannot see the LUN grow: a clear refusal, and the filesystem is not claimed grown.
    const refused = await expandNode().then(
      () => undefined,
      (e: { code: number; details: string }) => e,
    );
    expect(refused).toMatchObject({ code: 9, details: stringMatching(/user-space iSCSI initiator cannot see an attached LUN grow.*unstage and stage the volume again/) });
    expect(await total()).toBe(before);

    // The next stage logs in afresh and sees 640 MiB; NodeExpandVolume grows the filesystem.
    await node.client.node.NodeUnpublishVolume({ volume_id: id, target_path: target });
    await node.client.node.NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
    await stage();
    await publish();
    const grown = await expandNode();
    expect(Number(grown.capacity_bytes)).toBe(640 * MiB);
    expect(await total()).toBeGreaterThan(before + 250 * MiB);
    expect(readFileSync(join(target, 'before.txt'), 'utf8')).toBe('written before the online expand');
    expect(readFileSync(join(target, 'after.txt'), 'utf8')).toBe('written after the online expand');
    await node.client.node.NodeUnpublishVolume({ volume_id: id, target_path: target });
    await node.client.node.NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    await ctl.client.controller.DeleteVolume({ volume_id: id });
    for (const p of [ctl, node]) expect(p.logs()).not.toContain(CHAP['node.session.auth.password']);
  });

  it('a controller killed between growing the image and reopening the LUN: after its restart, reconcile reopens the LUN under the live session', async () => {
    const id = await provision('e2e-grow-crash');
    const ctx = (await ctl.client.controller.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: mountCap(), secrets: CHAP })).publish_context;
    const { staging, target } = paths(id);
    await node.client.node.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: mountCap(), publish_context: ctx, secrets: CHAP });
    await node.client.node.NodePublishVolume({ volume_id: id, staging_target_path: staging, target_path: target, volume_capability: mountCap(), publish_context: ctx });
    writeFileSync(join(target, 'crash.txt'), 'across a controller crash');
    await ctl.stop('SIGKILL');
    ctl.client.close();
    // What the crash left: the image grown (the first step of the expand), the LUN not reopened.
    truncateSync(join(t.dir, 'data', 'volumes', `${id}.img`), 96 * MiB);
    ctl = await split!.restartController();
    await waitFor('reconcile to reopen the LUN', async () => {
      const lun = (await tgt.listTargets()).find((x) => x.iqn === ctx.iqn)?.luns.find((l) => l.lun === 1);
      return lun?.sizeMB === tgtShownMB(96 * MiB) ? true : undefined;
    }, 20_000);
    expect(Number((await ctl.client.controller.ControllerGetVolume({ volume_id: id })).volume!.capacity_bytes)).toBe(96 * MiB);
    expect((await tgt.listTargets()).find((x) => x.iqn === ctx.iqn)!.sessions).toHaveLength(1);
    expect(readFileSync(join(target, 'crash.txt'), 'utf8')).toBe('across a controller crash');
    writeFileSync(join(target, 'crash-after.txt'), 'still writable');
    await node.client.node.NodeUnpublishVolume({ volume_id: id, target_path: target });
    await node.client.node.NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    expect(readFileSync(join(t.dir, 'data', 'volumes', `${id}.img`)).includes(Buffer.from('still writable'))).toBe(true);
    await ctl.client.controller.DeleteVolume({ volume_id: id });
  });

  it('a node plugin killed and restarted leaves staged volumes working; unstage afterwards cleans up', async () => {
    const id = await provision('e2e-node-restart');
    const ctx = (await ctl.client.controller.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: mountCap(), secrets: CHAP })).publish_context;
    const { staging, target } = paths(id);
    await node.client.node.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: mountCap(), publish_context: ctx, secrets: CHAP });
    await node.client.node.NodePublishVolume({ volume_id: id, staging_target_path: staging, target_path: target, volume_capability: mountCap(), publish_context: ctx });
    await node.stop('SIGKILL');
    node.client.close();
    // The session lives in its own processes: the pod's files stay readable and writable meanwhile.
    writeFileSync(join(target, 'during-restart.txt'), 'still here');
    node = await split!.restartNode();
    const stats = await node.client.node.NodeGetVolumeStats({ volume_id: id, volume_path: target });
    expect(stats.volume_condition?.abnormal ?? false).toBe(false);
    // A repeated stage after the restart is recognised, not redone.
    await node.client.node.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: mountCap(), publish_context: ctx, secrets: CHAP });
    expect(readFileSync(join(target, 'during-restart.txt'), 'utf8')).toBe('still here');
    await node.client.node.NodeUnpublishVolume({ volume_id: id, target_path: target });
    await node.client.node.NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    const image = readFileSync(join(t.dir, 'data', 'volumes', `${id}.img`));
    expect(image.includes(Buffer.from('still here'))).toBe(true);
  });

  it('tgtd killed and restarted: the controller reconciles the exports and a new stage works', async () => {
    const id = await provision('e2e-restart');
    const pub = await ctl.client.controller.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: mountCap(), secrets: CHAP });
    await tgtd.kill();
    await tgtd.startAgain();
    // The reconcile loop (every second here) puts the target, LUN, ACL and CHAP back.
    await waitFor('the export to be restored', async () => {
      const v = await ctl.client.controller.ControllerGetVolume({ volume_id: id });
      return v.status!.volume_condition!.abnormal ? undefined : true;
    }, 20_000);
    const { staging } = paths(id);
    await node.client.node.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: mountCap(), publish_context: pub.publish_context, secrets: CHAP });
    await node.client.node.NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    expect(await codeOf(ctl.client.controller.DeleteVolume({ volume_id: id }))).toBe('OK');
  });
});
