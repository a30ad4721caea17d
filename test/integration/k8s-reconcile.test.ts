import { asSidecar } from '../helpers/sinter-process.js';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileBackend } from '../../src/backends/file/backend.js';
import type { Backend } from '../../src/backends/backend.js';
import { KubeNodeRegistry } from '../../src/controller/kube-node-registry.js';
import { parseParameters } from '../../src/controller/parameters.js';
import { Reconciler } from '../../src/controller/reconcile.js';
import { VolumeManager } from '../../src/controller/volumes.js';
import { Code } from '../../src/errors/domain-error.js';
import { HostExecutor } from '../../src/exec/run.js';
import type { KubeCache } from '../../src/k8s/cache.js';
import { csiNode, eventually, persistentVolume, volumeAttachment } from '../helpers/kube-api-standin.js';
import { DRIVER, KubeFixture } from '../helpers/kube-fixture.js';
import { stringMatching } from '../helpers/matchers.js';

const MiB = 1024 * 1024;
const N1 = 'node-1;iqn.2004-10.com.ubuntu:01:node1;';
const block = { accessType: 'block' as const, accessMode: 'SINGLE_NODE_WRITER', mountFlags: [] as string[] };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Controller {
  cache: KubeCache;
  volumes: VolumeManager;
  reconciler: Reconciler;
  /** Creates a volume on the real file backend and its PV in the stand-in. */
  volume(name: string): Promise<string>;
  published(volumeId: string, nodeId?: string): boolean;
}

describe('VolumeAttachment reconciliation against an HTTP stand-in for the API server (real client-node, real file backend)', () => {
  let fx: KubeFixture;
  beforeEach(() => {
    fx = new KubeFixture();
  });
  afterEach(async () => fx.cleanup());

  async function controller(graceMs: number, { serverUp = true } = {}): Promise<Controller> {
    await fx.setUp(serverUp);
    const log = fx.logs.log;
    const exec = new HostExecutor({ mode: 'direct', hostRoot: '/', defaultTimeoutMs: 30_000 });
    const b = new FileBackend(
      { name: 'b1', driver: 'file', dataDir: join(fx.dir, 'data'), labels: {}, topology: {}, overSubscriptionRatio: 1, reservedPercent: 0, capacityBytes: 0, export: 'local' },
      exec,
      log,
    );
    await b.start();
    const backends = new Map<string, Backend>([['b1', b]]);
    const cache = fx.cache();
    const volumes = new VolumeManager(backends, new KubeNodeRegistry(cache.nodeDirectory()), log, { externalAttachments: (id) => cache.volumeAttachmentNodes(id) });
    volumes.index();
    const reconciler = new Reconciler({ volumes, backends, source: cache, log, graceMs, intervalMs: 50, debounceMs: 5 });
    fx.onCleanup(() => reconciler.stop());
    cache.start();
    reconciler.start();
    return {
      cache,
      volumes,
      reconciler,
      async volume(name) {
        const v = await volumes.create({ name, capacity: { required_bytes: MiB }, capabilities: [block], parameters: parseParameters({}) });
        if (fx.standin.up) fx.standin.create('persistentvolumes', persistentVolume(`pv-${name}`, v.id));
        return v.id;
      },
      published: (id, nodeId = N1) => volumes.get(id)?.attachments.some((a) => a.nodeId === nodeId) ?? false,
    };
  }

  const node1 = () => fx.standin.create('csinodes', csiNode('node-1', [{ name: DRIVER, nodeID: N1 }]));

  it('revokes a stale publish that no VolumeAttachment holds once the grace period has passed, and not before', async () => {
    const grace = 600;
    const c = await controller(grace);
    node1();
    const vol = await c.volume('stale');
    await eventually(() => c.cache.live && c.cache.persistentVolumes.size === 1, 'the cache to sync');

    const t0 = performance.now();
    await c.volumes.publish(vol, N1, block, false); // e.g. a publish whose detach got lost
    expect(c.volumes.get(vol)?.state).toBe('in-use');
    await sleep(grace / 2);
    expect(c.published(vol)).toBe(true);
    expect(c.reconciler.stats).toMatchObject({ revoked: 0, pendingRevocations: 1 });

    await eventually(() => !c.published(vol), 'the revocation', grace + 2000);
    const elapsed = performance.now() - t0;
    expect(elapsed).toBeGreaterThanOrEqual(grace);
    expect(elapsed).toBeLessThan(grace + 1000);
    expect(c.volumes.get(vol)?.state).toBe('available');
    // The record changes inside unpublish; the counters right after it returns.
    await eventually(() => c.reconciler.stats.revoked === 1, 'the revocation to be counted');
    expect(c.reconciler.stats).toMatchObject({ revoked: 1, revokeFailures: 0, pendingRevocations: 0 });
    expect(fx.logged(/revoked a publish/)).toHaveLength(1);
  });

  it('never revokes a publish a VolumeAttachment holds (attaching, then attached); revokes it once the VolumeAttachment is gone', async () => {
    const grace = 300;
    const c = await controller(grace);
    node1();
    const vol = await c.volume('held');
    fx.standin.create('volumeattachments', volumeAttachment('va-held', { nodeName: 'node-1', pvName: 'pv-held', attached: false }));
    await eventually(() => c.cache.live && c.cache.attachmentsOfVolume(vol).length === 1, 'the VolumeAttachment in the cache');

    await c.volumes.publish(vol, N1, block, false);
    await sleep(grace * 2);
    fx.standin.update('volumeattachments', 'va-held', (o) => {
      (o.status as { attached: boolean }).attached = true;
    });
    await sleep(grace * 2);
    expect(c.published(vol)).toBe(true);
    expect(c.reconciler.stats).toMatchObject({ revoked: 0, pendingRevocations: 0, missingPublishes: 0 });
    expect(c.reconciler.stats.passes).toBeGreaterThan(5);

    // Someone removes the VolumeAttachment's finalizer by force: the detach never reaches us.
    const t0 = performance.now();
    fx.standin.remove('volumeattachments', 'va-held');
    await eventually(() => !c.published(vol), 'the revocation', grace + 2000);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(grace);
  });

  it('a VolumeAttachment being deleted holds nothing: a stuck detach is fenced after the grace period; DeleteVolume still waits for the object to go', async () => {
    const grace = 300;
    const c = await controller(grace);
    node1();
    const vol = await c.volume('detaching');
    fx.standin.create('volumeattachments', volumeAttachment('va-d', { nodeName: 'node-1', pvName: 'pv-detaching', attached: true }));
    await eventually(() => c.cache.live && c.cache.attachmentsOfVolume(vol).length === 1, 'the VolumeAttachment in the cache');
    await c.volumes.publish(vol, N1, block, false);

    const t0 = performance.now();
    fx.standin.update('volumeattachments', 'va-d', (o) => {
      o.metadata.deletionTimestamp = new Date().toISOString();
    });
    await eventually(() => !c.published(vol), 'the revocation', grace + 2000);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(grace);
    // The revocation may still hold the volume's lock: the sidecar retries an ABORTED delete.
    await expect(asSidecar(() => c.volumes.delete(vol))).rejects.toMatchObject({ code: Code.FAILED_PRECONDITION });

    fx.standin.remove('volumeattachments', 'va-d');
    await eventually(() => c.cache.attachmentsOfVolume(vol).length === 0, 'the VolumeAttachment to go');
    await c.volumes.delete(vol);
    expect(c.volumes.get(vol)).toBeUndefined();
  });

  it('DeleteVolume is FAILED_PRECONDITION while a VolumeAttachment for the volume exists, even though the backend records no publish', async () => {
    const c = await controller(60_000);
    node1();
    const vol = await c.volume('attached');
    fx.standin.create('volumeattachments', volumeAttachment('va-x', { nodeName: 'node-1', pvName: 'pv-attached', attached: true }));
    await eventually(() => c.cache.live && c.cache.attachmentsOfVolume(vol).length === 1, 'the VolumeAttachment in the cache');
    expect(c.volumes.get(vol)?.attachments).toEqual([]);

    const err = await c.volumes.delete(vol).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: Code.FAILED_PRECONDITION, message: stringMatching(/VolumeAttachment on node node-1/) });
    expect(c.volumes.get(vol)?.state).toBe('available');

    fx.standin.remove('volumeattachments', 'va-x');
    await eventually(async () => {
      await c.volumes.delete(vol);
      return true;
    }, 'DeleteVolume to succeed once the VolumeAttachment is gone');
    expect(c.volumes.get(vol)).toBeUndefined();
  });

  it('KubeNodeRegistry: a node id no CSINode of our driver carries is NOT_FOUND on publish, until its CSINode appears', async () => {
    const c = await controller(60_000);
    node1();
    const vol = await c.volume('nodes');
    await eventually(() => c.cache.live && c.cache.hasNodeId(N1), 'the cache to sync');

    const unknown = 'node-9;;';
    await expect(c.volumes.publish(vol, unknown, block, false)).rejects.toMatchObject({ code: Code.NOT_FOUND, message: stringMatching(/node_id/) });
    await expect(c.volumes.publish(vol, 'not a node id', block, false)).rejects.toMatchObject({ code: Code.NOT_FOUND });
    // Registered for another driver only: still unknown to us.
    fx.standin.create('csinodes', csiNode('node-8', [{ name: 'other.csi.io', nodeID: 'node-8;;' }]));
    await eventually(() => c.cache.csiNodes.counters.watches >= 1 && fx.standin.openWatches('csinodes') === 1, 'watching');
    await expect(c.volumes.publish(vol, 'node-8;;', block, false)).rejects.toMatchObject({ code: Code.NOT_FOUND });

    fx.standin.create('csinodes', csiNode('node-9', [{ name: DRIVER, nodeID: unknown }]));
    await eventually(() => c.cache.hasNodeId(unknown), 'node-9 to register');
    await c.volumes.publish(vol, unknown, block, false);
    expect(c.published(vol, unknown)).toBe(true);
    await c.volumes.publish(vol, unknown, block, false); // idempotent
  });

  it('reports a VolumeAttachment that says attached while the backend has no publish, once; the next ControllerPublish repairs it', async () => {
    const c = await controller(60_000);
    node1();
    const vol = await c.volume('lost-record');
    fx.standin.create('volumeattachments', volumeAttachment('va-lost', { nodeName: 'node-1', pvName: 'pv-lost-record', attached: true }));
    await eventually(() => c.reconciler.stats.missingPublishes === 1, 'the missing publish to be reported');
    const passes = c.reconciler.stats.passes;
    await eventually(() => c.reconciler.stats.passes >= passes + 3, 'more passes');
    expect(c.reconciler.stats.missingReported).toBe(1);
    const warned = fx.logged(/VolumeAttachment says attached but the backend has no publish/);
    expect(warned).toHaveLength(1);
    expect(warned[0]).toMatchObject({ volumeAttachment: 'va-lost', volume_id: vol, node_id: N1, volumeExists: true });

    // What the attacher does next (its reconcile-sync sees the volume missing from ListVolumes' published nodes).
    await c.volumes.publish(vol, N1, block, false);
    await eventually(() => c.reconciler.stats.missingPublishes === 0, 'the report to clear');
    expect(c.reconciler.stats.missingReported).toBe(1);
    expect(c.published(vol)).toBe(true);
    expect(c.reconciler.stats.revoked).toBe(0);
  });

  it('API server down at start: CSI calls are served, reconciliation waits and revokes nothing; it runs once the server is up', async () => {
    const grace = 300;
    const c = await controller(grace, { serverUp: false });
    const vol = await c.volume('early');
    const other = await c.volume('other');

    // CSI keeps working: publish (any well-formed node id until CSINode is known), unpublish, publish again.
    await c.volumes.publish(vol, N1, block, false);
    await c.volumes.unpublish(vol, N1);
    expect(c.published(vol)).toBe(false);
    await c.volumes.publish(vol, N1, block, false);
    await expect(c.volumes.publish(vol, 'garbage', block, false)).rejects.toMatchObject({ code: Code.NOT_FOUND });
    // DeleteVolume cannot know yet whether a VolumeAttachment exists: retryable UNAVAILABLE, volume kept.
    await expect(c.volumes.delete(other)).rejects.toMatchObject({ code: Code.UNAVAILABLE });
    expect(c.volumes.get(other)).toBeDefined();

    await sleep(grace * 3);
    expect(c.published(vol)).toBe(true);
    expect(c.reconciler.stats).toMatchObject({ waiting: true, passes: 0, revoked: 0 });
    expect(c.reconciler.stats.waits).toBeGreaterThan(3);
    expect(fx.logged(/reconciliation waits for the Kubernetes API/)).toHaveLength(1);
    expect(fx.logged(/Kubernetes API unreachable/)).toHaveLength(1);

    // The API server comes up: node-1 is registered, there is no VolumeAttachment for the publish.
    await fx.standin.start(fx.standin.port);
    node1();
    fx.standin.create('persistentvolumes', persistentVolume('pv-early', vol));
    fx.standin.create('persistentvolumes', persistentVolume('pv-other', other));
    await eventually(() => c.cache.live, 'the cache to sync', 5000);
    const live = performance.now();
    await eventually(() => !c.reconciler.stats.waiting && c.reconciler.stats.passes > 0, 'reconciliation to start');
    await eventually(() => !c.published(vol), 'the stale publish to be revoked', grace + 2000);
    expect(performance.now() - live).toBeGreaterThanOrEqual(grace - 20);
    expect(fx.logged(/reconciliation of publishes with VolumeAttachments is running/)).toHaveLength(1);

    await c.volumes.delete(other);
    expect(c.volumes.get(other)).toBeUndefined();
  });
});
