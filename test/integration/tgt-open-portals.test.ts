import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TgtTargetHelper } from '../../src/backends/targets/tgt.js';
import { HostExecutor } from '../../src/exec/run.js';
import { sanBackendYaml } from '../helpers/iscsi-split.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { MiB, mountCap, startSinter, waitFor, type SinterProcess } from '../helpers/sinter-process.js';
import { requireIscsiTools, TestTgtd } from '../helpers/tgtd.js';
import { forceCleanupUserspace } from '../helpers/userspace-cleanup.js';

const PREFIX = 'iqn.2026-11.io.sinter.test:';
const NODE_IQN = 'iqn.2026-11.io.sinter.test:node-portals';
const exec = () => new HostExecutor({ mode: 'direct', defaultTimeoutMs: 30_000 }, pino({ level: 'silent' }));

describe('tgt with iscsi.openPortals (real tgtd started on a parking portal, as deploy/ runs it): sinter opens the portal only once every export is restored', () => {
  const t = tempDir('sinter-tgt-portals-');
  let tgtd: TestTgtd;
  let ctl: SinterProcess | undefined;
  let node: SinterProcess | undefined;
  let nodeId: string;
  let tgt: TgtTargetHelper;
  const nodeStateDir = join(t.dir, 'node', 'state');

  beforeAll(async () => {
    requireIscsiTools();
    tgtd = await TestTgtd.start({ portalClosed: true });
    tgt = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: PREFIX }, exec());
    // Two backends on one tgtd, reconciling at different rates: the portal waits for both.
    const backend = (name: string, reconcileSeconds: number) =>
      sanBackendYaml({ name, dataDir: join(t.dir, name), portal: tgtd.portal, controlPort: tgtd.controlPort, iqnPrefix: PREFIX, reconcileSeconds, openPortals: true });
    writeFileSync(join(t.dir, 'controller.yaml'), [backend('fast', 1), backend('slow', 3).split('\n').slice(1).join('\n')].join('\n'));
    writeFileSync(join(t.dir, 'node.yaml'), ['node:', `  iscsiInitiatorName: ${NODE_IQN}`, '  initiator: userspace', `  stateDir: ${nodeStateDir}`].join('\n'));
    for (const d of ['ctl', 'node']) mkdirSync(join(t.dir, d), { recursive: true });
    ctl = await startSinter({ role: 'controller', base: join(t.dir, 'ctl'), args: ['--config', join(t.dir, 'controller.yaml')] });
    node = await startSinter({ role: 'node', base: join(t.dir, 'node'), nodeName: 'node-portals', args: ['--config', join(t.dir, 'node.yaml')] });
    nodeId = (await node.client.node.NodeGetInfo({})).node_id!;
  });

  afterAll(async () => {
    await node?.cleanup();
    await forceCleanupUserspace(join(nodeStateDir, 'iscsi-userspace'));
    await ctl?.cleanup();
    await tgtd?.stop();
    t.cleanup();
  });

  const provision = async (name: string, backend: string) => {
    const v = (await ctl!.client.controller.CreateVolume({ name, capacity_range: { required_bytes: 64 * MiB }, volume_capabilities: [mountCap()], parameters: { backend } })).volume;
    return v!.volume_id as string;
  };
  const paths = (id: string) => {
    const staging = join(node!.kubeletRoot, 'staging', id);
    const target = join(node!.kubeletRoot, 'pods', id, 'mount');
    mkdirSync(staging, { recursive: true });
    mkdirSync(join(target, '..'), { recursive: true });
    return { staging, target };
  };
  /** Every published volume's target with LUN 1 and the node's ACL. */
  const exported = async (ids: string[]) => {
    const targets = await tgt.listTargets();
    return ids.every((id) => targets.some((x) => x.volumeId === id && x.luns.some((l) => l.lun === 1) && x.acls.includes(NODE_IQN)));
  };

  it('the controller opens the portal of a fresh tgtd after its first reconcile', async () => {
    await waitFor('the portal to open', async () => ((await tgtd.portalAccepts()) ? true : undefined), 20_000);
    expect(ctl!.logs()).toContain('opened them now that every export is restored');
    // Both backends' first passes ran at once: one opened the portal, neither failed over it.
    expect(ctl!.logs()).not.toContain('cannot reconcile exports');
  });

  it('tgtd killed and started again: while the portal is open every export is there; the attached volume carries on', async () => {
    const a = await provision('portals-fast', 'fast');
    const b = await provision('portals-slow', 'slow');
    const ctx: Record<string, Record<string, string>> = {};
    for (const id of [a, b]) ctx[id] = (await ctl!.client.controller.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: mountCap() })).publish_context!;
    const { staging, target } = paths(a);
    await node!.client.node.NodeStageVolume({ volume_id: a, staging_target_path: staging, volume_capability: mountCap(), publish_context: ctx[a] });
    await node!.client.node.NodePublishVolume({ volume_id: a, staging_target_path: staging, target_path: target, volume_capability: mountCap(), publish_context: ctx[a] });
    writeFileSync(join(target, 'before.txt'), 'before the restart');

    await tgtd.kill();
    await tgtd.startAgain({ portalClosed: true });
    // Probe first, then read: a portal seen open must have every export behind it.
    let closedSamples = 0;
    let openTooEarly = false;
    await waitFor(
      'the portal to open again',
      async () => {
        const open = await tgtd.portalAccepts();
        const complete = await exported([a, b]);
        if (open) {
          openTooEarly ||= !complete;
          return true;
        }
        closedSamples++;
        return undefined;
      },
      30_000,
      50,
    );
    expect(openTooEarly, 'the portal accepted connections before every export was restored').toBe(false);
    expect(closedSamples).toBeGreaterThan(0);

    // The user-space session (libiscsi) logs in again by itself; the filesystem is writable through it.
    writeFileSync(join(target, 'after.txt'), 'after the restart');
    await node!.client.node.NodeUnpublishVolume({ volume_id: a, target_path: target });
    await node!.client.node.NodeUnstageVolume({ volume_id: a, staging_target_path: staging });
    const image = readFileSync(join(t.dir, 'fast', 'volumes', `${a}.img`));
    for (const s of ['before the restart', 'after the restart']) expect(image.includes(Buffer.from(s))).toBe(true);

    // The other backend's volume stages through the reopened portal.
    const pb = paths(b);
    await node!.client.node.NodeStageVolume({ volume_id: b, staging_target_path: pb.staging, volume_capability: mountCap(), publish_context: ctx[b] });
    await node!.client.node.NodeUnstageVolume({ volume_id: b, staging_target_path: pb.staging });
    for (const id of [a, b]) {
      await ctl!.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
      await ctl!.client.controller.DeleteVolume({ volume_id: id });
    }
  });
});
