import { mkdirSync, readdirSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseTgtTargets } from '../../src/backends/targets/tgt-parse.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { MiB, mountCap, waitFor, type SinterProcess } from '../helpers/sinter-process.js';
import { requireIscsiTools, TestTgtd } from '../helpers/tgtd.js';
import { startIscsiSplit, type IscsiSplit } from '../helpers/iscsi-split.js';
import { arrayContaining } from '../helpers/matchers.js';

const NODE_IQN = 'iqn.2026-11.io.sinter.test:health-node';
const PREFIX = 'iqn.2026-11.io.sinter.test:';

type Condition = { abnormal?: boolean; message?: string };

/**
 * What the external-health-monitor controller (ListVolumes /
 * ControllerGetVolume) and kubelet (NodeGetVolumeStats) read from sinter,
 * for the faults of an iSCSI-exported volume, through the real gRPC sockets
 * of a `sinter controller` and a `sinter node` (user-space initiator), with
 * a real tgtd. Reconcile is slowed to an hour so a fault stays visible.
 */
describe('volume health of an iSCSI volume as the health monitor and kubelet see it: sinter controller + node processes, real tgtd and user-space sessions', () => {
  const t = tempDir('sinter-iscsi-health-');
  const nodeStateDir = join(t.dir, 'node', 'state');
  const dataDir = join(t.dir, 'data');
  let tgtd: TestTgtd;
  let ctl: SinterProcess;
  let node: SinterProcess;
  let nodeId: string;
  let split: IscsiSplit | undefined;

  beforeAll(async () => {
    requireIscsiTools();
    tgtd = await TestTgtd.start();
    split = await startIscsiSplit(t.dir, { tgtd, iqnPrefix: PREFIX, nodeIqn: NODE_IQN, nodeName: 'health-node', reconcileSeconds: 3600 });
    ({ ctl, node, nodeId } = split);
  });

  afterAll(async () => {
    await split?.cleanup();
    await tgtd?.stop();
    t.cleanup();
  });

  const tgtadm = (...args: string[]) => execa('tgtadm', ['-C', String(tgtd.controlPort), '--lld', 'iscsi', ...args]);
  const targetOf = async (id: string) => parseTgtTargets((await tgtadm('--op', 'show', '--mode', 'target')).stdout).find((x) => x.iqn === `${PREFIX}${id}`);
  const controllerSays = async (id: string): Promise<Condition> => (await ctl.client.controller.ControllerGetVolume({ volume_id: id })).status!.volume_condition!;
  const listSays = async (id: string): Promise<Condition> => {
    const entries = (await ctl.client.controller.ListVolumes({})).entries as { volume: { volume_id: string }; status: { volume_condition: Condition; published_node_ids: string[] } }[];
    const e = entries.find((x) => x.volume.volume_id === id);
    if (!e) throw new Error(`ListVolumes does not list ${id}`);
    return e.status.volume_condition;
  };
  const nodeSays = async (id: string, target: string): Promise<Condition> => (await node.client.node.NodeGetVolumeStats({ volume_id: id, volume_path: target })).volume_condition!;

  /** A volume published, staged (ext4) and published to a pod path on the node. */
  const inUse = async (name: string) => {
    const id = (await ctl.client.controller.CreateVolume({ name, capacity_range: { required_bytes: 32 * MiB }, volume_capabilities: [mountCap()] })).volume!.volume_id as string;
    const pub = await ctl.client.controller.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: mountCap() });
    const staging = join(node.kubeletRoot, 'staging', id);
    const target = join(node.kubeletRoot, 'pods', id, 'mount');
    mkdirSync(staging, { recursive: true });
    mkdirSync(join(target, '..'), { recursive: true });
    await node.client.node.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: mountCap(), publish_context: pub.publish_context });
    await node.client.node.NodePublishVolume({ volume_id: id, staging_target_path: staging, target_path: target, volume_capability: mountCap(), publish_context: pub.publish_context });
    return { id, staging, target };
  };
  const release = async (v: { id: string; staging: string; target: string }) => {
    await node.client.node.NodeUnpublishVolume({ volume_id: v.id, target_path: v.target });
    await node.client.node.NodeUnstageVolume({ volume_id: v.id, staging_target_path: v.staging });
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: v.id, node_id: nodeId });
    await ctl.client.controller.DeleteVolume({ volume_id: v.id });
  };
  /** The pid a daemon of the node's user-space chain for volume id wrote (one attachment directory per target). */
  const chainPid = (id: string, daemon: 'qemu-nbd' | 'nbdfuse'): number => {
    const base = join(nodeStateDir, 'iscsi-userspace');
    for (const d of readdirSync(base)) {
      const rec = JSON.parse(readFileSync(join(base, d, 'attachment.json'), 'utf8')) as { iqn: string };
      if (rec.iqn === `${PREFIX}${id}`) return Number(readFileSync(join(base, d, `${daemon}.pid`), 'utf8').trim());
    }
    throw new Error(`no user-space attachment for ${id}`);
  };

  it('the controller passes the start-up checks of csi-external-health-monitor-controller v0.18.0, and the node offers kubelet its volume condition (modelled from main.go at v0.18.0 and kubelet\'s csi_client.go)', async () => {
    // cmd/csi-external-health-monitor-controller/main.go (v0.18.0) exits unless the plugin has the
    // CONTROLLER_SERVICE, (LIST_VOLUMES or GET_VOLUME) and VOLUME_CONDITION.
    const plugin = (await ctl.client.identity.GetPluginCapabilities({})).capabilities.map(((c) => c.service?.type));
    expect(plugin).toContain('CONTROLLER_SERVICE');
    const rpcs = (await ctl.client.controller.ControllerGetCapabilities({})).capabilities.map((c) => c.rpc!.type);
    expect(rpcs).toEqual(arrayContaining(['LIST_VOLUMES', 'GET_VOLUME', 'VOLUME_CONDITION', 'LIST_VOLUMES_PUBLISHED_NODES']));
    // kubelet (pkg/volume/csi/csi_client.go, NodeSupportsVolumeStats / NodeSupportsVolumeCondition) asks the node.
    const node_ = (await node.client.node.NodeGetCapabilities({})).capabilities.map((c) => c.rpc!.type);
    expect(node_).toEqual(arrayContaining(['GET_VOLUME_STATS', 'VOLUME_CONDITION']));
  });

  it('healthy everywhere while all is well', async () => {
    const v = await inUse('health-ok');
    expect(await controllerSays(v.id)).toEqual({ abnormal: false, message: 'in-use: volume is healthy' });
    expect(await listSays(v.id)).toEqual({ abnormal: false, message: 'in-use: volume is healthy' });
    expect(await nodeSays(v.id, v.target)).toEqual({ abnormal: false, message: 'volume is attached and mounted' });
    await release(v);
  });

  it('the export gone from the target (ACL unbound, then the whole target deleted): ListVolumes and ControllerGetVolume name what is missing', async () => {
    // Published, not staged: a node staged on a target that vanished waits on
    // its I/O (libiscsi retries the login), which is another story.
    const id = (await ctl.client.controller.CreateVolume({ name: 'health-export', capacity_range: { required_bytes: 32 * MiB }, volume_capabilities: [mountCap()] })).volume!.volume_id as string;
    await ctl.client.controller.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: mountCap() });
    const v = { id };
    const tid = String((await targetOf(v.id))!.tid);
    await tgtadm('--op', 'unbind', '--mode', 'target', '--tid', tid, '--initiator-name', NODE_IQN);
    const acl = `published to ${nodeId}, but its initiator ${NODE_IQN} is not in the target's ACL (reconcile restores it)`;
    expect(await controllerSays(v.id)).toEqual({ abnormal: true, message: acl });
    expect(await listSays(v.id)).toEqual({ abnormal: true, message: acl });

    await tgtadm('--op', 'delete', '--mode', 'target', '--force', '--tid', tid);
    const gone = `published, but its iSCSI target ${PREFIX}${v.id} is missing (reconcile restores it)`;
    expect(await controllerSays(v.id)).toEqual({ abnormal: true, message: gone });
    expect(await listSays(v.id)).toEqual({ abnormal: true, message: gone });
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    expect(await controllerSays(id)).toEqual({ abnormal: false, message: 'available: volume is healthy' });
    await ctl.client.controller.DeleteVolume({ volume_id: id });
  });

  it('the image gone from the backend: abnormal, saying the data is gone and what to do', async () => {
    const v = await inUse('health-image');
    const image = join(dataDir, 'volumes', `${v.id}.img`);
    renameSync(image, `${image}.away`);
    try {
      const c = await controllerSays(v.id);
      expect(c.abnormal).toBe(true);
      expect(c.message).toBe(`image file ${v.id}.img is missing from backend "san": the volume's data is gone from the storage host; restore the file from a backup, or create a new volume from a snapshot`);
      expect(await listSays(v.id)).toEqual(c);
    } finally {
      renameSync(`${image}.away`, image);
    }
    expect((await controllerSays(v.id)).abnormal).toBe(false);
    await release(v);
  });

  it('the node\'s user-space session dies (qemu-nbd killed): NodeGetVolumeStats says the session is down and how to recover; unstage still cleans up', async () => {
    const v = await inUse('health-qemu');
    process.kill(chainPid(v.id, 'qemu-nbd'), 'SIGKILL');
    const c = await waitFor('the node to see the session down', async () => {
      const s = await nodeSays(v.id, v.target);
      return s.abnormal ? s : undefined;
    }, 10_000);
    expect(c.message).toBe(
      `the user-space iSCSI session to ${PREFIX}${v.id} LUN 1 at ${tgtd.portal} is down (its qemu-nbd process exited; see qemu-nbd.log in the node's iSCSI state directory); I/O to the volume fails until it is staged again: delete the pod using it so kubelet unstages and restages the volume`,
    );
    await release(v);
    expect(await targetOf(v.id)).toBeUndefined();
  });

  it('the FUSE bridge dies (nbdfuse killed): NodeGetVolumeStats says the attachment is broken', async () => {
    const v = await inUse('health-fuse');
    process.kill(chainPid(v.id, 'nbdfuse'), 'SIGKILL');
    const c = await waitFor('the node to see the chain broken', async () => {
      const s = await nodeSays(v.id, v.target);
      return s.abnormal ? s : undefined;
    }, 10_000);
    expect(c.message).toMatch(new RegExp(`^the user-space iSCSI attachment of ${PREFIX.replace(/\./g, '\\.')}${v.id} LUN 1 is broken \\(its nbdfuse process exited, the FUSE file behind the loop device is gone\\); I/O to the volume fails until it is staged again`));
    await release(v);
  });
});
