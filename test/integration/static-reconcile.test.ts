// Static volumes' publish records under VolumeAttachment reconciliation,
// against the HTTP stand-in for the API server: a lost detach must not pin a
// static SINGLE_NODE_WRITER LUN to its old node forever.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Backend } from '../../src/backends/backend.js';
import { KubeNodeRegistry } from '../../src/controller/kube-node-registry.js';
import { Reconciler } from '../../src/controller/reconcile.js';
import { StaticVolumes } from '../../src/controller/static-volumes.js';
import { VolumeManager } from '../../src/controller/volumes.js';
import { Code } from '../../src/errors/domain-error.js';
import { csiNode, eventually, persistentVolume, volumeAttachment } from '../helpers/kube-api-standin.js';
import { DRIVER, KubeFixture } from '../helpers/kube-fixture.js';

const N1 = 'node-1;iqn.2004-10.com.ubuntu:01:node1;21000024ff3a1b2c';
const N2 = 'node-2;iqn.2004-10.com.ubuntu:01:node2;21000024ff3a1b2d';
const FC = { transport: 'fc', wwns: '500601603ba02c1f', lun: '3' };
const cap = { accessType: 'mount' as const, accessMode: 'SINGLE_NODE_WRITER', fsType: 'ext4', mountFlags: [] as string[] };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('static volume publishes are reconciled with VolumeAttachments (HTTP stand-in for the API server)', () => {
  let fx: KubeFixture;
  beforeEach(() => {
    fx = new KubeFixture();
  });
  afterEach(async () => fx.cleanup());

  async function controller(graceMs: number) {
    await fx.setUp();
    const log = fx.logs.log;
    const cache = fx.cache();
    const registry = new KubeNodeRegistry(cache.nodeDirectory());
    const backends = new Map<string, Backend>();
    const volumes = new VolumeManager(backends, registry, log);
    const statics = new StaticVolumes({ stateDir: join(fx.dir, 'ctl'), nodes: registry, log });
    await statics.start();
    const reconciler = new Reconciler({ volumes, backends, statics, source: cache, log, graceMs, intervalMs: 50, debounceMs: 5 });
    fx.onCleanup(() => reconciler.stop());
    cache.start();
    reconciler.start();
    fx.standin.create('csinodes', csiNode('node-1', [{ name: DRIVER, nodeID: N1 }]));
    fx.standin.create('csinodes', csiNode('node-2', [{ name: DRIVER, nodeID: N2 }]));
    fx.standin.create('persistentvolumes', persistentVolume('pv-static', 'static-lun3'));
    await eventually(() => cache.live && cache.persistentVolumes.size === 1 && registry.lookup(N2) !== undefined, 'the cache to sync');
    const nodesOf = (id: string) => statics.get(id)?.attachments.map((a) => a.nodeId) ?? [];
    return { cache, statics, reconciler, nodesOf };
  }

  it('drops a static publish no VolumeAttachment holds after the grace period, so another node can then attach the LUN', async () => {
    const grace = 400;
    const c = await controller(grace);
    await c.statics.publish('static-lun3', N1, cap, false, FC); // a publish whose detach got lost
    await expect(c.statics.publish('static-lun3', N2, cap, false, FC)).rejects.toMatchObject({ code: Code.FAILED_PRECONDITION });
    await sleep(grace / 2);
    expect(c.nodesOf('static-lun3')).toEqual([N1]);
    await eventually(() => c.nodesOf('static-lun3').length === 0, 'the revocation', grace + 2000);
    expect(existsSync(join(c.statics.dir, 'static-lun3.json'))).toBe(false);
    await eventually(() => c.reconciler.stats.revoked === 1, 'the revocation to be counted');
    await c.statics.publish('static-lun3', N2, cap, false, FC);
  });

  it('keeps a static publish its VolumeAttachment holds, and reports one that says attached without a publish', async () => {
    const grace = 200;
    const c = await controller(grace);
    fx.standin.create('volumeattachments', volumeAttachment('va-s', { nodeName: 'node-1', pvName: 'pv-static', attached: true }));
    await eventually(() => c.reconciler.stats.missingPublishes === 1, 'the missing publish to be reported');
    await c.statics.publish('static-lun3', N1, cap, false, FC);
    await eventually(() => c.reconciler.stats.missingPublishes === 0, 'the report to clear');
    await sleep(grace * 3);
    expect(c.nodesOf('static-lun3')).toEqual([N1]);
    expect(c.reconciler.stats).toMatchObject({ revoked: 0, pendingRevocations: 0 });
    fx.standin.remove('volumeattachments', 'va-s');
    await eventually(() => c.nodesOf('static-lun3').length === 0, 'the revocation', grace + 2000);
  });
});
