import { randomBytes } from 'node:crypto';
import { sanBackendYaml } from '../helpers/iscsi-split.js';
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, readdirSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseTgtTargets } from '../../src/backends/targets/tgt-parse.js';
import { canReach, inNetns, makeTwoHostNet, requireNetnsTools, type TwoHostNet } from '../helpers/netns.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { blockCap, MiB, mountCap, startSinter, waitFor, type SinterProcess, hostNqnTail } from '../helpers/sinter-process.js';
import { requireIscsiTools, TestTgtd } from '../helpers/tgtd.js';
import { forceCleanupUserspace } from '../helpers/userspace-cleanup.js';

/**
 * Issue #4's multi-node acceptance: the storage host (tgtd + `sinter
 * controller`) and the node (`sinter node`, user-space initiator) are two
 * network namespaces joined by a veth pair on a private /30, so every iSCSI
 * byte crosses the veth. The README's "Multi-node walkthrough" is this test
 * done by hand on two machines.
 *
 * Processes enter their namespace with `nsenter --net` only (see netns.ts):
 * the node's mounts, FUSE file and loop device stay in the host's mount
 * namespace, where the test reads them and cleans them up.
 */

const NODE_IQN = 'iqn.2026-11.io.sinter.test:node-b';
const IQN_PREFIX = 'iqn.2026-11.io.sinter.test:';
const CHAP = { 'node.session.auth.username': 'sinter-node-b', 'node.session.auth.password': 'Netns-chap-secret-4' };
const ISCSI_PORT = 3260;
const MARKER = 'bytes that crossed the veth between two network namespaces';

describe('two hosts in network namespaces joined by a veth: sinter controller + real tgtd on the storage host, sinter node with the user-space initiator on the other', () => {
  const t = tempDir('sinter-netns-');
  const nodeStateDir = join(t.dir, 'node', 'state');
  const dataDir = join(t.dir, 'data');
  let net: TwoHostNet | undefined;
  let tgtd: TestTgtd | undefined;
  let ctl: SinterProcess | undefined;
  let node: SinterProcess | undefined;
  let nodeId = '';

  /** Stops everything this file started, in reverse order; safe after a partial beforeAll and when run twice. */
  const teardown = async (): Promise<string[]> => {
    const problems: string[] = [];
    const step = async (what: string, fn: () => Promise<unknown>) => {
      try {
        await fn();
      } catch (e) {
        problems.push(`${what}: ${(e as Error).message}`);
      }
    };
    await step('stop the node plugin', async () => node?.cleanup());
    node = undefined;
    await step('detach user-space iSCSI leftovers', () => forceCleanupUserspace(join(nodeStateDir, 'iscsi-userspace')));
    await step('stop the controller', async () => ctl?.cleanup());
    ctl = undefined;
    await step('stop tgtd', async () => {
      await tgtd?.stop();
    });
    tgtd = undefined;
    if (net) problems.push(...(await net.destroy()));
    net = undefined;
    // What must be gone: our mounts, loop devices and initiator daemons (other
    // engineers' runs share this machine, so only ours are looked at).
    const mine = (s: string) => s.includes(t.dir);
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter(mine);
    problems.push(...mounts.map((m) => `mount left: ${m}`));
    const loops = (await execa('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE'], { reject: false })).stdout.split('\n').filter(mine);
    problems.push(...loops.map((l) => `loop device left: ${l.trim()}`));
    for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
      let cmd = '';
      try {
        cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
      } catch {
        continue;
      }
      if (mine(cmd)) problems.push(`process left: ${pid} ${cmd}`);
    }
    t.cleanup();
    return problems;
  };

  beforeAll(async () => {
    try {
      requireIscsiTools();
      requireNetnsTools();
      net = await makeTwoHostNet();
      const { storage, node: nodeHost } = net;
      tgtd = await TestTgtd.start({ address: storage.address, port: ISCSI_PORT, wrapper: storage.wrapper });
      writeFileSync(
        join(t.dir, 'controller.yaml'),
        sanBackendYaml({ dataDir, portal: `${storage.address}:${ISCSI_PORT}`, controlPort: tgtd.controlPort, iqnPrefix: IQN_PREFIX, reconcileSeconds: 30 }),
      );
      writeFileSync(join(t.dir, 'node.yaml'), ['node:', `  iscsiInitiatorName: ${NODE_IQN}`, '  initiator: userspace', `  stateDir: ${nodeStateDir}`].join('\n'));
      mkdirSync(join(t.dir, 'ctl'));
      mkdirSync(join(t.dir, 'node'));
      ctl = await startSinter({ role: 'controller', base: join(t.dir, 'ctl'), wrapper: storage.wrapper, args: ['--config', join(t.dir, 'controller.yaml')] });
      node = await startSinter({ role: 'node', base: join(t.dir, 'node'), nodeName: 'node-b', wrapper: nodeHost.wrapper, args: ['--config', join(t.dir, 'node.yaml')] });
      nodeId = (await node.client.node.NodeGetInfo({})).node_id!;
    } catch (e) {
      const left = await teardown();
      if (left.length) console.error(`cleanup after the failed setup: ${left.join('; ')}`);
      throw e;
    }
  });

  afterAll(async () => {
    const left = await teardown();
    expect(left).toEqual([]);
    // Our namespaces are gone from the host's list too.
    const list = (await execa('ip', ['netns', 'list'])).stdout;
    expect(list).not.toMatch(new RegExp(`sinter-(st|nd)-${process.pid}\\b`));
  });

  /** tgtd's view of the volume's target, read through its control socket. */
  const targetOf = async (id: string) => {
    const r = await execa('tgtadm', ['-C', String(tgtd!.controlPort), '--lld', 'iscsi', '--op', 'show', '--mode', 'target']);
    return parseTgtTargets(r.stdout).find((x) => x.iqn === `${IQN_PREFIX}${id}`);
  };
  /** A one-shot libiscsi login and INQUIRY (iscsi-inq) from the node's namespace, with CHAP, as `initiator`. */
  const inquiryFromNode = (iqn: string, initiator = NODE_IQN) =>
    inNetns(net!.node.ns, 'iscsi-inq', ['-i', initiator, `iscsi://${net!.storage.address}:${ISCSI_PORT}/${iqn}/1`], {
      timeoutMs: 20_000,
      env: { LIBISCSI_CHAP_USERNAME: CHAP['node.session.auth.username'], LIBISCSI_CHAP_PASSWORD: CHAP['node.session.auth.password'] },
    });
  /** The error output of a login from the node's namespace that must fail; throws if it was let in. */
  const loginRefused = async (iqn: string, initiator: string) => {
    const r = await inquiryFromNode(iqn, initiator).then(
      (ok) => ({ let_in: true, out: ok.stdout }),
      (e: { exitCode?: number; stderr?: string; message: string }) => ({ let_in: false, out: e.stderr || e.message }),
    );
    if (r.let_in) throw new Error(`${initiator} logged in to ${iqn} from the node's namespace after ControllerUnpublishVolume: ${r.out}`);
    return r.out;
  };
  const rxBytes = async (ns: string, iface: string) => {
    const [link] = JSON.parse((await execa('ip', ['-n', ns, '-s', '-j', 'link', 'show', 'dev', iface])).stdout) as { stats64: { rx: { bytes: number } } }[];
    return link.stats64.rx.bytes;
  };

  it('the node id carries the node\'s initiator name, and the node reaches the storage portal over the veth', async () => {
    expect(nodeId).toBe(`node-b;${NODE_IQN};${hostNqnTail()}`);
    expect(await canReach(net!.node.ns, net!.storage.address, ISCSI_PORT)).toBe(true);
    // The namespaces see only the veth's /30: nothing else leads to the portal.
    const routes = (await execa('ip', ['-n', net!.node.ns, '-4', 'route', 'show'])).stdout.trim().split('\n');
    expect(routes).toHaveLength(1);
    expect(routes[0]).toMatch(new RegExp(`^${net!.subnet.replace(/\./g, '\\.')} dev ${net!.node.iface}\\b`));
  });

  it('create → publish → stage over iSCSI across the veth → format → publish → write → teardown: the bytes are in the image on the storage host, and the fence holds', async () => {
    const { storage, node: nodeHost } = net!;
    const c = ctl!.client.controller;
    const n = node!.client.node;
    const id = (await c.CreateVolume({ name: 'two-hosts-1', capacity_range: { required_bytes: 64 * MiB }, volume_capabilities: [mountCap()] })).volume!.volume_id as string;
    const pub = await c.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: mountCap(), secrets: CHAP });
    expect(pub.publish_context).toEqual({ transport: 'iscsi', portals: `${storage.address}:${ISCSI_PORT}`, iqn: `${IQN_PREFIX}${id}`, lun: '1' });
    const iqn = pub.publish_context.iqn;

    // While published, a login from the node's namespace with its name and CHAP is let in.
    const inq = await inquiryFromNode(iqn);
    expect(inq.stdout).toMatch(/Vendor:SINTER\s*\nProduct:volume/);

    const staging = join(node!.kubeletRoot, 'staging', id);
    const target = join(node!.kubeletRoot, 'pods', id, 'mount');
    mkdirSync(staging, { recursive: true });
    mkdirSync(join(target, '..'), { recursive: true });
    const rxBefore = await rxBytes(storage.ns, storage.iface);
    await n.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: mountCap(), publish_context: pub.publish_context, secrets: CHAP });

    // The session tgtd holds comes from the node's address on the veth.
    const tgt = await targetOf(id);
    const sessions = tgt?.sessions.filter((s) => s.initiator === NODE_IQN) ?? [];
    expect(sessions).toHaveLength(1);
    expect(sessions[0].connections.map((x) => x.address)).toEqual([nodeHost.address]);
    const conn = (await execa('tgtadm', ['-C', String(tgtd!.controlPort), '--lld', 'iscsi', '--op', 'show', '--mode', 'conn', '--tid', String(tgt!.tid)])).stdout;
    expect(conn).toContain(`IP Address: ${nodeHost.address}`);

    await n.NodePublishVolume({ volume_id: id, staging_target_path: staging, target_path: target, volume_capability: mountCap(), publish_context: pub.publish_context });
    // The mount is in the host's mount namespace (the node entered only a network namespace).
    expect(readFileSync('/proc/self/mountinfo', 'utf8')).toContain(` ${target} `);
    writeFileSync(join(target, 'marker.txt'), MARKER);
    const bulk = randomBytes(2 * MiB);
    const fd = openSync(join(target, 'bulk.bin'), 'w');
    try {
      writeSync(fd, bulk);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    await n.NodeUnpublishVolume({ volume_id: id, target_path: target });
    await n.NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
    // Every written byte reached the storage host through its end of the veth.
    expect((await rxBytes(storage.ns, storage.iface)) - rxBefore).toBeGreaterThan(bulk.length);
    await waitFor('the node\'s session to end after unstage', async () => ((await targetOf(id))?.sessions.some((s) => s.initiator === NODE_IQN) ? undefined : true), 10_000);

    await c.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    // The fence: the last publish gone, the target went with it, and a login from the node is refused.
    expect(await targetOf(id)).toBeUndefined();
    expect(await loginRefused(iqn, NODE_IQN)).toMatch(/Login Failed/);

    const image = readFileSync(join(dataDir, 'volumes', `${id}.img`));
    expect(image.includes(Buffer.from(MARKER))).toBe(true);
    for (const p of [ctl!, node!]) expect(p.logs()).not.toContain(CHAP['node.session.auth.password']);
    await c.DeleteVolume({ volume_id: id });
  });

  it('the fence is per initiator: unpublished from this node, a volume still published to another keeps its target, and only this node\'s login is refused', async () => {
    const shared = blockCap('MULTI_NODE_MULTI_WRITER');
    const otherIqn = 'iqn.2026-11.io.sinter.test:node-c';
    const otherNodeId = `node-c;${otherIqn};`;
    const c = ctl!.client.controller;
    const id = (await c.CreateVolume({ name: 'two-hosts-shared', capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [shared] })).volume!.volume_id as string;
    const iqn = (await c.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: shared, secrets: CHAP })).publish_context.iqn;
    await c.ControllerPublishVolume({ volume_id: id, node_id: otherNodeId, volume_capability: shared, secrets: CHAP });
    expect((await inquiryFromNode(iqn, NODE_IQN)).stdout).toMatch(/Vendor:SINTER/);
    await c.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    const t1 = await targetOf(id);
    expect(t1?.acls).toEqual([otherIqn]);
    // Same network path, same CHAP: only the initiator name differs, so the refusal is the ACL's
    // (tgt answers an initiator its ACL does not list as if the target did not exist).
    expect(await loginRefused(iqn, NODE_IQN)).toMatch(/Target not found/);
    expect((await inquiryFromNode(iqn, otherIqn)).stdout).toMatch(/Vendor:SINTER/);
    await c.ControllerUnpublishVolume({ volume_id: id, node_id: otherNodeId });
    expect(await targetOf(id)).toBeUndefined();
    await c.DeleteVolume({ volume_id: id });
  });
});
