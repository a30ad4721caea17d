import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Backend } from '../../src/backends/backend.js';
import { FileBackend } from '../../src/backends/file/backend.js';
import { parseTgtTargets } from '../../src/backends/targets/tgt-parse.js';
import { parseCapability } from '../../src/controller/capabilities.js';
import { KubeNodeRegistry } from '../../src/controller/kube-node-registry.js';
import { parseParameters } from '../../src/controller/parameters.js';
import { Reconciler } from '../../src/controller/reconcile.js';
import { VolumeManager } from '../../src/controller/volumes.js';
import { Code } from '../../src/errors/domain-error.js';
import { encodePublishContext } from '../../src/contracts/publish-context.js';
import { HostExecutor } from '../../src/exec/run.js';
import type { KubeCache } from '../../src/k8s/cache.js';
import { fileBackendConfig } from '../helpers/backend-config.js';
import { csiNode, eventually } from '../helpers/kube-api-standin.js';
import { DRIVER, KubeFixture } from '../helpers/kube-fixture.js';
import { inNetns, makeTwoHostNet, netnsWrapper, requireNetnsTools, type TwoHostNet } from '../helpers/netns.js';
import { MiB, startSinter, type SinterProcess } from '../helpers/sinter-process.js';
import { requireIscsiTools, TestTgtd } from '../helpers/tgtd.js';
import { forceCleanupUserspace } from '../helpers/userspace-cleanup.js';
import type { VolumeCapability } from '../../src/csi/messages.js';
import { stringContaining } from '../helpers/matchers.js';

const IQN_PREFIX = 'iqn.2026-11.io.sinter.test:';
const IQN_A = 'iqn.2026-11.io.sinter.test:node-a';
const IQN_B = 'iqn.2026-11.io.sinter.test:node-b';
const ISCSI_PORT = 3260;
const PV = 'pv-lost-node';
const MARKER = 'written on node-a before it was lost';
const OUT_OF_SERVICE = 'node.kubernetes.io/out-of-service';
/** kube-controller-manager's --attach-detach-reconcile-max-wait-unmount-duration default (6 min). */
const MAX_WAIT_FOR_UNMOUNT_MS = 6 * 60_000;

type VA = {
  metadata: { name: string; deletionTimestamp?: string; finalizers?: string[]; annotations?: Record<string, string> };
  spec: { attacher: string; nodeName: string; source: { persistentVolumeName?: string } };
  status?: { attached?: boolean; attachmentMetadata?: Record<string, string>; attachError?: { message: string }; detachError?: { message: string } };
};

/** Signals a process that may have exited already. */
function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* gone */
  }
}

/**
 * A third "host" for node-b: its own network namespace joined to the storage
 * namespace by a second veth pair, with a host route to the storage portal
 * address (which lives on the storage end of node-a's veth). The portal in
 * publish_context is the same for both nodes, as in a real cluster.
 */
async function addThirdHost(net: TwoHostNet, tag: string) {
  const ns = `sinter-nb-${tag}`;
  const stIf = `sstb${tag}`;
  const nbIf = `snb${tag}`;
  const third = Math.floor(Math.random() * 256);
  const base = 4 * Math.floor(Math.random() * 64);
  const stAddr = `10.251.${third}.${base + 1}`;
  const nbAddr = `10.251.${third}.${base + 2}`;
  const ip = async (args: string[]) => {
    const r = await execa('ip', args, { reject: false, stdin: 'ignore' });
    if (r.exitCode !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr.trim()}`);
  };
  const destroy = async () => {
    await execa('ip', ['netns', 'del', ns], { reject: false });
  };
  await destroy();
  try {
    await ip(['netns', 'add', ns]);
    await ip(['link', 'add', stIf, 'netns', net.storage.ns, 'type', 'veth', 'peer', 'name', nbIf, 'netns', ns]);
    await ip(['-n', net.storage.ns, 'addr', 'add', `${stAddr}/30`, 'dev', stIf]);
    await ip(['-n', ns, 'addr', 'add', `${nbAddr}/30`, 'dev', nbIf]);
    await ip(['-n', net.storage.ns, 'link', 'set', stIf, 'up']);
    await ip(['-n', ns, 'link', 'set', 'lo', 'up']);
    await ip(['-n', ns, 'link', 'set', nbIf, 'up']);
    await ip(['-n', ns, 'route', 'add', `${net.storage.address}/32`, 'via', stAddr]);
  } catch (e) {
    await destroy();
    throw e;
  }
  return { ns, address: nbAddr, wrapper: netnsWrapper(ns), destroy };
}

/**
 * external-attacher, modelled from kubernetes-csi/external-attacher v4.12.0
 * pkg/controller/csi_handler.go: a VolumeAttachment for our driver without a
 * deletionTimestamp and not attached → add the finalizer
 * `external-attacher/<driver>` and the node-id annotation (prepareVAFinalizer,
 * prepareVANodeID), ControllerPublishVolume with the node id from the CSINode,
 * then status.attached=true with the publish_context as attachmentMetadata
 * (markAsAttached), or status.attachError and a retry. With a
 * deletionTimestamp → ControllerUnpublishVolume with the node id from the
 * CSINode (or the annotation: getNodeID), then remove the finalizer
 * (markAsDetached), after which the API server deletes the object.
 */
class AttacherModel {
  readonly calls: string[] = [];
  /** Every error a CSI call returned (saved as attachError/detachError and retried by the real sidecar). */
  readonly errors: string[] = [];
  private timer: NodeJS.Timeout | undefined;
  private busy = false;
  constructor(
    private readonly fx: KubeFixture,
    private readonly volumes: VolumeManager,
    private readonly nodeIdOf: (nodeName: string) => string,
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.sync(), 50);
  }
  stop(): void {
    clearInterval(this.timer);
  }

  private async sync(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      for (const name of this.fx.standin.names('volumeattachments')) {
        const va = this.fx.standin.get('volumeattachments', name) as unknown as VA | undefined;
        if (!va || va.spec.attacher !== DRIVER) continue;
        const pv = this.fx.standin.get('persistentvolumes', va.spec.source.persistentVolumeName ?? '') as unknown as
          | { spec: { csi: { volumeHandle: string; fsType?: string }; accessModes: string[]; volumeMode?: string } }
          | undefined;
        if (!pv) continue;
        const handle = pv.spec.csi.volumeHandle;
        const finalizer = `external-attacher/${DRIVER.replace(/\//g, '-')}`;
        if (va.metadata.deletionTimestamp) {
          const nodeId = va.metadata.annotations?.['csi.alpha.kubernetes.io/node-id'] ?? this.nodeIdOf(va.spec.nodeName);
          try {
            this.calls.push(`ControllerUnpublishVolume ${va.spec.nodeName}`);
            await this.volumes.unpublish(handle, nodeId);
          } catch (e) {
            this.errors.push(`ControllerUnpublishVolume ${va.spec.nodeName}: ${(e as Error).message}`);
            this.fx.standin.update('volumeattachments', name, (o) => ((o as unknown as VA).status = { ...(o as unknown as VA).status, detachError: { message: (e as Error).message } }));
            continue;
          }
          // markAsDetached: the finalizer goes; with a deletionTimestamp and no finalizers left, the API server deletes it.
          this.fx.standin.remove('volumeattachments', name);
          continue;
        }
        if (va.status?.attached) continue;
        const nodeId = this.nodeIdOf(va.spec.nodeName);
        if (!va.metadata.finalizers?.includes(finalizer))
          this.fx.standin.update('volumeattachments', name, (o) => {
            const m = (o as unknown as VA).metadata;
            m.finalizers = [...(m.finalizers ?? []), finalizer];
            m.annotations = { ...m.annotations, 'csi.alpha.kubernetes.io/node-id': nodeId };
          });
        // GetVolumeCapabilities: ReadWriteOnce → SINGLE_NODE_WRITER, ReadWriteMany → MULTI_NODE_MULTI_WRITER; volumeMode Block → block, else the PV's fsType.
        const mode = pv.spec.accessModes.includes('ReadWriteOnce') ? 'SINGLE_NODE_WRITER' : 'MULTI_NODE_MULTI_WRITER';
        const cap = parseCapability(pv.spec.volumeMode === 'Block' ? { block: {}, access_mode: { mode } } : { mount: { fs_type: pv.spec.csi.fsType ?? '' }, access_mode: { mode } }, 'volume_capability');
        try {
          this.calls.push(`ControllerPublishVolume ${va.spec.nodeName}`);
          const ctx = await this.volumes.publish(handle, nodeId, cap, false);
          this.fx.standin.update('volumeattachments', name, (o) => ((o as unknown as VA).status = { attached: true, attachmentMetadata: encodePublishContext(ctx) }));
        } catch (e) {
          this.errors.push(`ControllerPublishVolume ${va.spec.nodeName}: ${(e as Error).message}`);
          this.fx.standin.update('volumeattachments', name, (o) => ((o as unknown as VA).status = { attached: false, attachError: { message: (e as Error).message } }));
        }
      }
    } finally {
      this.busy = false;
    }
  }
}

/**
 * kube-controller-manager's attach-detach controller for one CSI volume,
 * modelled from kubernetes v1.26:
 * - pkg/controller/volume/attachdetach/reconciler/reconciler.go reconcile():
 *   detaches before attaches; a volume attached to a node but no longer
 *   desired there is detached unless it is still mounted by that node
 *   (node.status.volumesInUse, which a dead kubelet never clears), and that
 *   check is skipped when maxWaitForUnmountDuration (6 min) has passed on an
 *   unhealthy node or when the node has the `node.kubernetes.io/out-of-service`
 *   taint (hasOutOfServiceTaint, feature NodeOutOfServiceVolumeDetach, beta and
 *   on in 1.26). An attach of a ReadWriteOnce volume that is attached to
 *   another node is refused with a Multi-Attach error until that detach is
 *   done (isMultiAttachAllowed / reportMultiAttachError).
 * - pkg/volume/csi/csi_attacher.go: Attach creates the VolumeAttachment named
 *   csi-<sha256(pv + driver + node)> and waits for status.attached; Detach
 *   deletes it and waits until it is gone.
 * - pkg/controller/podgc/gc_controller.go gcTerminating: pods on a node with
 *   the out-of-service taint that is not ready are force-deleted, which takes
 *   the volume out of that node's desired state.
 */
class AttachDetachModel {
  /** Actual state of world: node → mountedByNode. */
  readonly attached = new Map<string, { mountedByNode: boolean; detachRequestedAt?: number }>();
  /** Desired state of world: nodes whose (scheduled) pod uses the PV. */
  readonly desired = new Set<string>();
  readonly taints = new Map<string, string[]>();
  readonly ready = new Map<string, boolean>();
  readonly events: string[] = [];
  private pending = new Set<string>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly fx: KubeFixture,
    private readonly pv: string,
    /** isMultiAttachAllowed: false for ReadWriteOnce. */
    private readonly multiAttachAllowed: boolean,
  ) {}

  static vaName(pv: string, node: string): string {
    return `csi-${createHash('sha256').update(`${pv}${DRIVER}${node}`).digest('hex')}`;
  }

  start(): void {
    this.timer = setInterval(() => this.reconcile(), 100);
  }
  stop(): void {
    clearInterval(this.timer);
  }

  private hasOutOfServiceTaint(node: string): boolean {
    return (this.taints.get(node) ?? []).includes(OUT_OF_SERVICE);
  }

  /** podgc: the pod on an out-of-service, not-ready node is force-deleted. */
  private gcTerminating(): void {
    for (const node of [...this.desired]) if (this.hasOutOfServiceTaint(node) && this.ready.get(node) === false) this.desired.delete(node);
  }

  reconcile(): void {
    this.gcTerminating();
    for (const [node, st] of this.attached) {
      if (this.desired.has(node) || this.pending.has(`detach:${node}`)) continue;
      st.detachRequestedAt ??= Date.now();
      const timeout = Date.now() - st.detachRequestedAt > MAX_WAIT_FOR_UNMOUNT_MS;
      const forceDetach = this.ready.get(node) === false && timeout;
      if (st.mountedByNode && !forceDetach && !this.hasOutOfServiceTaint(node)) continue; // "Cannot detach volume because it is still mounted"
      this.pending.add(`detach:${node}`);
      void this.detach(node).finally(() => this.pending.delete(`detach:${node}`));
    }
    for (const node of this.desired) {
      if (this.attached.has(node) || this.pending.has(`attach:${node}`)) continue;
      const others = [...this.attached.keys()].filter((n) => n !== node);
      if (!this.multiAttachAllowed && others.length > 0) {
        const ev = `Multi-Attach error for volume "${this.pv}" Volume is already exclusively attached to one node and can't be attached to another`;
        if (!this.events.includes(ev)) this.events.push(ev);
        continue;
      }
      this.pending.add(`attach:${node}`);
      void this.attach(node).finally(() => this.pending.delete(`attach:${node}`));
    }
  }

  private async attach(node: string): Promise<void> {
    const name = AttachDetachModel.vaName(this.pv, node);
    if (!this.fx.standin.get('volumeattachments', name))
      this.fx.standin.create('volumeattachments', { metadata: { name }, spec: { attacher: DRIVER, nodeName: node, source: { persistentVolumeName: this.pv } }, status: { attached: false } });
    await eventually(() => (this.fx.standin.get('volumeattachments', name) as unknown as VA | undefined)?.status?.attached === true, `${name} to be attached`, 60_000, 50);
    this.attached.set(node, { mountedByNode: false });
  }

  private async detach(node: string): Promise<void> {
    const name = AttachDetachModel.vaName(this.pv, node);
    // The Delete: with the attacher's finalizer on it, the API server only sets the deletionTimestamp.
    if (this.fx.standin.get('volumeattachments', name))
      this.fx.standin.update('volumeattachments', name, (o) => ((o as unknown as VA).metadata.deletionTimestamp ??= new Date().toISOString()));
    await eventually(() => !this.fx.standin.get('volumeattachments', name), `${name} to be deleted`, 60_000, 50);
    this.attached.delete(node);
  }
}

describe('non-graceful node shutdown (modelled attach-detach controller of kubernetes v1.26 and external-attacher v4.12.0; HTTP stand-in for the API server; real tgtd; nodes in network namespaces with the user-space initiator)', () => {
  const fx = new KubeFixture();
  const tag = String(process.pid).slice(-7);
  let net: TwoHostNet | undefined;
  let hostB: Awaited<ReturnType<typeof addThirdHost>> | undefined;
  let tgtd: TestTgtd | undefined;
  let nodeA: SinterProcess | undefined;
  let nodeB: SinterProcess | undefined;
  let cache: KubeCache;
  let volumes: VolumeManager;
  let reconciler: Reconciler;
  let attacher: AttacherModel;
  let adc: AttachDetachModel;
  const frozen: number[] = [];
  const nodeIds = new Map<string, string>();

  const stateOf = (node: 'a' | 'b') => join(fx.dir, `node-${node}`, 'state');

  beforeAll(async () => {
    requireIscsiTools();
    requireNetnsTools();
    await fx.setUp();
    net = await makeTwoHostNet(tag);
    hostB = await addThirdHost(net, tag);
    tgtd = await TestTgtd.start({ address: net.storage.address, port: ISCSI_PORT, wrapper: net.storage.wrapper });

    const log = fx.logs.log;
    const exec = new HostExecutor({ mode: 'direct', hostRoot: '/', defaultTimeoutMs: 30_000 });
    const b = new FileBackend(
      fileBackendConfig('san', join(fx.dir, 'data'), {
        export: 'iscsi',
        iscsi: { helper: 'tgt', portals: [tgtd.portal], iqnPrefix: IQN_PREFIX, controlPort: tgtd.controlPort, writeCache: true, blockSize: 512, reconcileSeconds: 3600, openPortals: false },
      }),
      exec,
      log,
    );
    await b.start();
    const backends = new Map<string, Backend>([['san', b]]);
    cache = fx.cache();
    volumes = new VolumeManager(backends, new KubeNodeRegistry(cache.nodeDirectory()), log, { externalAttachments: (id) => cache.volumeAttachmentNodes(id) });
    volumes.index();
    // A grace of ten minutes: whatever fences node-a in this test, it is not the stale-export reconciler.
    reconciler = new Reconciler({ volumes, backends, source: cache, log, graceMs: 600_000, intervalMs: 200, debounceMs: 5 });
    fx.onCleanup(() => reconciler.stop());

    for (const [n, host, iqn] of [
      ['a', net.node, IQN_A],
      ['b', hostB, IQN_B],
    ] as const) {
      const base = join(fx.dir, `node-${n}`);
      mkdirSync(base, { recursive: true });
      writeFileSync(join(base, 'node.yaml'), ['node:', `  iscsiInitiatorName: ${iqn}`, '  initiator: userspace', `  stateDir: ${join(base, 'state')}`].join('\n'));
      const p = await startSinter({ role: 'node', base, nodeName: `node-${n}`, wrapper: host.wrapper, args: ['--config', join(base, 'node.yaml')] });
      if (n === 'a') nodeA = p;
      else nodeB = p;
      const id = (await p.client.node.NodeGetInfo({})).node_id as string;
      nodeIds.set(`node-${n}`, id);
      fx.standin.create('csinodes', csiNode(`node-${n}`, [{ name: DRIVER, nodeID: id }]));
    }
    cache.start();
    reconciler.start();
    attacher = new AttacherModel(fx, volumes, (node) => nodeIds.get(node)!);
    adc = new AttachDetachModel(fx, PV, false);
    attacher.start();
    adc.start();
    fx.onCleanup(() => {
      attacher.stop();
      adc.stop();
    });
  }, 120_000);

  afterAll(async () => {
    const problems: string[] = [];
    const step = async (what: string, fn: () => Promise<unknown>) => {
      try {
        await fn();
      } catch (e) {
        problems.push(`${what}: ${(e as Error).message}`);
      }
    };
    // Node-a comes back from the dead only to be cleaned up: its daemons are thawed and killed first, so
    // no unmount waits on a session that can never log in again.
    for (const pid of frozen) signal(pid, 'SIGCONT');
    await step('kill node-a qemu-nbd', async () => {
      for (const pid of chainPids(stateOf('a'), 'qemu-nbd')) signal(pid, 'SIGKILL');
    });
    for (const p of [nodeB, nodeA]) await step('stop a node plugin', async () => p?.cleanup());
    for (const n of ['a', 'b'] as const) await step(`user-space leftovers of node-${n}`, () => forceCleanupUserspace(join(stateOf(n), 'iscsi-userspace')));
    await step('stop tgtd', async () => {
      await tgtd?.stop();
    });
    await step('fixture', () => fx.cleanup());
    await step('namespace of node-b', async () => hostB?.destroy());
    if (net) problems.push(...(await net.destroy()));
    expect(problems).toEqual([]);
  }, 120_000);

  /** The pids of one daemon of every user-space attachment under a node's state dir. */
  function chainPids(stateDir: string, daemon: 'qemu-nbd' | 'nbdfuse', iqn?: string): number[] {
    const dir = join(stateDir, 'iscsi-userspace');
    let names: string[] = [];
    try {
      names = readdirSync(dir);
    } catch {
      return [];
    }
    return names.flatMap((d) => {
      try {
        if (iqn && (JSON.parse(readFileSync(join(dir, d, 'attachment.json'), 'utf8')) as { iqn: string }).iqn !== iqn) return [];
        return [Number(readFileSync(join(dir, d, `${daemon}.pid`), 'utf8').trim())];
      } catch {
        return [];
      }
    });
  }

  const targetOf = async (id: string) =>
    parseTgtTargets((await execa('tgtadm', ['-C', String(tgtd!.controlPort), '--lld', 'iscsi', '--op', 'show', '--mode', 'target'])).stdout).find((x) => x.iqn === `${IQN_PREFIX}${id}`);
  const va = (node: string) => fx.standin.get('volumeattachments', AttachDetachModel.vaName(PV, node)) as unknown as VA | undefined;
  const mountCap: VolumeCapability = { mount: { fs_type: 'ext4', mount_flags: [] }, access_mode: { mode: 'SINGLE_NODE_WRITER' } };

  /** kubelet on a node: NodeStage + NodePublish with what the VolumeAttachment carries. */
  const kubeletMounts = async (p: SinterProcess, id: string, node: string) => {
    const staging = join(p.kubeletRoot, 'plugins', 'kubernetes.io', 'csi', DRIVER, 'staging', id);
    const target = join(p.kubeletRoot, 'pods', `pod-on-${node}`, 'volumes', 'kubernetes.io~csi', PV, 'mount');
    mkdirSync(staging, { recursive: true });
    mkdirSync(join(target, '..'), { recursive: true });
    const ctx = va(node)!.status!.attachmentMetadata!;
    await p.client.node.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: mountCap, publish_context: ctx });
    await p.client.node.NodePublishVolume({ volume_id: id, staging_target_path: staging, target_path: target, volume_capability: mountCap, publish_context: ctx });
    return { staging, target };
  };

  it('a multi-node volume (ReadWriteMany block): node-a lost with its session frozen mid-flight; the taint detaches it from node-a alone: its ACL and session are revoked while node-b keeps its session and its I/O', async () => {
    const pv = 'pv-shared-block';
    const shared = new AttachDetachModel(fx, pv, true);
    shared.start();
    fx.onCleanup(() => shared.stop());
    const v = await volumes.create({ name: 'lost-node-shared', capacity: { required_bytes: 16 * MiB }, capabilities: [{ accessType: 'block', accessMode: 'MULTI_NODE_MULTI_WRITER' }], parameters: parseParameters({}) });
    fx.standin.create('persistentvolumes', {
      metadata: { name: pv },
      spec: { capacity: { storage: '16Mi' }, accessModes: ['ReadWriteMany'], volumeMode: 'Block', persistentVolumeReclaimPolicy: 'Delete', csi: { driver: DRIVER, volumeHandle: v.id } },
      status: { phase: 'Bound' },
    });
    await eventually(() => cache.live && cache.persistentVolumes.size === fx.standin.names('persistentvolumes').length && nodeIds.size === 2, 'the cache to sync');
    for (const n of ['node-a', 'node-b']) shared.ready.set(n, true);
    shared.desired.add('node-a');
    shared.desired.add('node-b');
    await eventually(() => shared.attached.has('node-a') && shared.attached.has('node-b'), 'the volume to attach to both nodes', 30_000, 50);
    const blockCap: VolumeCapability = { block: {}, access_mode: { mode: 'MULTI_NODE_MULTI_WRITER' } };
    const stage = async (p: SinterProcess, node: string) => {
      const staging = join(p.kubeletRoot, 'plugins', 'kubernetes.io', 'csi', DRIVER, 'staging', `${v.id}-blk`);
      mkdirSync(staging, { recursive: true });
      const ctx = (fx.standin.get('volumeattachments', AttachDetachModel.vaName(pv, node)) as unknown as VA).status!.attachmentMetadata!;
      await p.client.node.NodeStageVolume({ volume_id: v.id, staging_target_path: staging, volume_capability: blockCap, publish_context: ctx });
      shared.attached.get(node)!.mountedByNode = true;
      return staging;
    };
    const stagingA = await stage(nodeA!, 'node-a');
    const stagingB = await stage(nodeB!, 'node-b');
    const iqn = `${IQN_PREFIX}${v.id}`;
    expect((await targetOf(v.id))?.sessions.map((s) => s.initiator).sort()).toEqual([IQN_A, IQN_B]);

    // node-a's initiator freezes with its session open (a hung host: TCP connection up, nobody answering).
    const aChain = [...chainPids(stateOf('a'), 'qemu-nbd', iqn), ...chainPids(stateOf('a'), 'nbdfuse', iqn)];
    expect(aChain).toHaveLength(2);
    for (const pid of aChain) process.kill(pid, 'SIGSTOP');
    try {
      shared.ready.set('node-a', false);
      const tTaint = performance.now();
      shared.taints.set('node-a', [OUT_OF_SERVICE]);
      await eventually(() => !shared.attached.has('node-a'), 'node-a to be detached', 60_000, 50);
      const detach = performance.now() - tTaint;
      expect(detach).toBeLessThan(20_000);
      expect(attacher.errors).toEqual([]);
      expect(reconciler.stats.revoked).toBe(0);
      const t = await targetOf(v.id);
      expect(t?.acls).toEqual([IQN_B]);
      expect(t?.sessions.map((s) => s.initiator)).toEqual([IQN_B]);
      // Same network path, node-a's name: the ACL no longer lets it in (tgt answers as if the target did not exist).
      const loginA = await inNetns(net!.node.ns, 'iscsi-inq', ['-i', IQN_A, `iscsi://${net!.storage.address}:${ISCSI_PORT}/${iqn}/1`], { timeoutMs: 20_000 }).then(
        () => 'let in',
        (e: { stderr?: string; message: string }) => e.stderr || e.message,
      );
      expect(loginA).toMatch(/Target not found/);
      // node-b's I/O goes on over its own session: a direct write and read back through its device.
      const devB = join(stagingB, v.id);
      const block = Buffer.alloc(4096, 0x5b);
      writeFileSync(join(fx.dir, 'blk'), block);
      await execa('dd', [`if=${join(fx.dir, 'blk')}`, `of=${devB}`, 'bs=4096', 'count=1', 'oflag=direct', 'conv=notrunc']);
      const back = await execa('dd', [`if=${devB}`, 'bs=4096', 'count=1', 'iflag=direct', 'status=none'], { encoding: 'buffer' });
      expect(Buffer.compare(back.stdout as unknown as Buffer, block)).toBe(0);
      console.log(`node loss (multi-node volume): taint → node-a fenced in ${detach.toFixed(0)} ms`);
    } finally {
      for (const pid of aChain) signal(pid, 'SIGCONT');
      for (const pid of chainPids(stateOf('a'), 'qemu-nbd', iqn)) signal(pid, 'SIGKILL');
    }
    // node-a's leftovers go with its unstage (its plugin still runs here); node-b lets go; the target goes with the last detach.
    await nodeA!.client.node.NodeUnstageVolume({ volume_id: v.id, staging_target_path: stagingA });
    await nodeB!.client.node.NodeUnstageVolume({ volume_id: v.id, staging_target_path: stagingB });
    shared.attached.get('node-b')!.mountedByNode = false; // node-b's kubelet drops it from volumesInUse
    shared.desired.delete('node-b');
    await eventually(() => !shared.attached.has('node-b'), 'node-b to be detached', 30_000, 50);
    expect(await targetOf(v.id)).toBeUndefined();
    shared.stop();
  }, 120_000);

  it('node-a is lost with the volume mounted; the out-of-service taint has it detached (ControllerUnpublishVolume fences node-a: session ended, login refused) and attached to node-b at once, where the data is', async () => {
    const v = await volumes.create({ name: 'lost-node', capacity: { required_bytes: 64 * MiB }, capabilities: [{ accessType: 'mount', accessMode: 'SINGLE_NODE_WRITER', fsType: 'ext4' }], parameters: parseParameters({}) });
    fx.standin.create('persistentvolumes', {
      metadata: { name: PV },
      spec: { capacity: { storage: '64Mi' }, accessModes: ['ReadWriteOnce'], persistentVolumeReclaimPolicy: 'Delete', csi: { driver: DRIVER, volumeHandle: v.id, fsType: 'ext4' } },
      status: { phase: 'Bound' },
    });
    await eventually(() => cache.live && cache.persistentVolumes.size === fx.standin.names('persistentvolumes').length && nodeIds.size === 2, 'the cache to sync');
    for (const n of ['node-a', 'node-b']) adc.ready.set(n, true);

    const callsBefore = attacher.calls.length;
    // The pod is scheduled on node-a: attach (VolumeAttachment → ControllerPublishVolume), stage, publish, write.
    adc.desired.add('node-a');
    await eventually(() => adc.attached.has('node-a'), 'the volume to attach to node-a', 30_000, 50);
    const a = await kubeletMounts(nodeA!, v.id, 'node-a');
    adc.attached.get('node-a')!.mountedByNode = true; // node-a's kubelet reports it in status.volumesInUse
    writeFileSync(join(a.target, 'marker.txt'), MARKER);
    await execa('sync', ['-f', join(a.target, 'marker.txt')]);
    const t0 = await targetOf(v.id);
    expect(t0?.acls).toEqual([IQN_A]);
    expect(t0?.sessions.filter((s) => s.initiator === IQN_A)).toHaveLength(1);

    // node-a is lost: everything of it freezes mid-flight (no unmount, no unstage, no logout).
    for (const pid of [nodeA!.proc.pid!, ...chainPids(stateOf('a'), 'qemu-nbd'), ...chainPids(stateOf('a'), 'nbdfuse')]) {
      process.kill(pid, 'SIGSTOP');
      frozen.push(pid);
    }
    adc.ready.set('node-a', false);
    // The replacement pod lands on node-b (a Deployment's; a StatefulSet's waits for the old pod to go).
    adc.desired.add('node-b');

    // Without the taint: the pod on node-a stays (Terminating), the volume stays mounted there as far as
    // anyone knows, and the attach to node-b is refused as a Multi-Attach error; sinter too refuses a
    // second node for a single-node-writer volume.
    await new Promise((r) => setTimeout(r, 1500));
    expect(adc.events).toEqual([`Multi-Attach error for volume "${PV}" Volume is already exclusively attached to one node and can't be attached to another`]);
    expect(va('node-a')?.status?.attached).toBe(true);
    expect(va('node-b')).toBeUndefined();
    expect(attacher.calls.slice(callsBefore)).toEqual(['ControllerPublishVolume node-a']);
    await expect(volumes.publish(v.id, nodeIds.get('node-b')!, parseCapability(mountCap, 'volume_capability'), false)).rejects.toMatchObject({
      code: Code.FAILED_PRECONDITION,
      message: stringContaining(`is published to node ${nodeIds.get('node-a')} and its access mode allows a single node; unpublish it there first`),
    });
    expect((await targetOf(v.id))?.sessions.filter((s) => s.initiator === IQN_A)).toHaveLength(1);

    // The operator confirms node-a is down: `kubectl taint nodes node-a node.kubernetes.io/out-of-service=nodeshutdown:NoExecute`.
    const tTaint = performance.now();
    adc.taints.set('node-a', [OUT_OF_SERVICE]);
    await eventually(() => va('node-b')?.status?.attached === true, 'the volume to attach to node-b', 60_000, 50);
    const failover = performance.now() - tTaint;
    // The single-node-writer volume: the publish to node-b is the first call after node-a's unpublish, and succeeds first time.
    expect(attacher.calls.slice(callsBefore)).toEqual(['ControllerPublishVolume node-a', 'ControllerUnpublishVolume node-a', 'ControllerPublishVolume node-b']);
    expect(attacher.errors).toEqual([]);
    expect(va('node-a')).toBeUndefined();
    expect(va('node-b')?.status?.attachError).toBeUndefined();
    // At once: not after the 6-minute force-detach timeout, nor after the reconciler's grace.
    expect(failover).toBeLessThan(20_000);
    expect(reconciler.stats.revoked).toBe(0);
    expect(volumes.get(v.id)?.attachments.map((x) => x.nodeId)).toEqual([nodeIds.get('node-b')]);

    // The fence, in the real tgtd: node-a's session is gone and only node-b is let in.
    const t1 = await targetOf(v.id);
    expect(t1?.acls).toEqual([IQN_B]);
    expect(t1?.sessions.filter((s) => s.initiator === IQN_A)).toEqual([]);
    const loginA = await inNetns(net!.node.ns, 'iscsi-inq', ['-i', IQN_A, `iscsi://${net!.storage.address}:${ISCSI_PORT}/${IQN_PREFIX}${v.id}/1`], { timeoutMs: 20_000 }).then(
      (ok) => ({ letIn: true, out: ok.stdout }),
      (e: { stderr?: string; message: string }) => ({ letIn: false, out: e.stderr || e.message }),
    );
    expect(loginA.letIn, loginA.out).toBe(false);
    expect(loginA.out).toMatch(/Target not found|Login Failed|Authorization/i);

    // node-b stages the volume over its own path and sees node-a's data.
    const bMounts = await kubeletMounts(nodeB!, v.id, 'node-b');
    expect(readFileSync(join(bMounts.target, 'marker.txt'), 'utf8')).toBe(MARKER);
    const t2 = await targetOf(v.id);
    expect(t2?.sessions.map((s) => s.initiator)).toEqual([IQN_B]);
    expect(t2?.sessions[0]?.connections.map((c) => c.address)).toEqual([hostB!.address]);
    console.log(`node loss: taint → attached on node-b in ${failover.toFixed(0)} ms`);

    // node-a comes back (its initiator thaws; its kubelet would still think the pod runs) and writes
    // through its stale mount: the write cannot reach the volume. Its session is gone and a new
    // login is refused, so the fsync fails (or blocks until the initiator dies).
    const LATE = 'written by node-a after it was fenced';
    const chainA = [...chainPids(stateOf('a'), 'qemu-nbd'), ...chainPids(stateOf('a'), 'nbdfuse')];
    for (const pid of chainA) process.kill(pid, 'SIGCONT');
    writeFileSync(join(fx.dir, 'late.txt'), LATE);
    const late = execa('dd', [`if=${join(fx.dir, 'late.txt')}`, `of=${join(a.target, 'late.txt')}`, 'conv=fsync', 'status=none'], { reject: false, timeout: 60_000 });
    const settled = await Promise.race([late.then(() => true), new Promise<false>((r) => setTimeout(() => r(false), 10_000))]);
    if (!settled) for (const pid of chainPids(stateOf('a'), 'qemu-nbd')) signal(pid, 'SIGKILL'); // a hung write ends with its initiator
    const lateResult = await late;
    expect(lateResult.exitCode, `node-a's late write: ${lateResult.stderr}`).not.toBe(0);
    expect(readFileSync(join(fx.dir, 'data', 'volumes', `${v.id}.img`)).includes(Buffer.from(LATE))).toBe(false);
    expect(readFileSync(join(bMounts.target, 'marker.txt'), 'utf8')).toBe(MARKER);

    await nodeB!.client.node.NodeUnpublishVolume({ volume_id: v.id, target_path: bMounts.target });
    await nodeB!.client.node.NodeUnstageVolume({ volume_id: v.id, staging_target_path: bMounts.staging });
  }, 180_000);
});
