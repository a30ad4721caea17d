import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Backend } from '../../src/backends/backend.js';
import { FileBackend } from '../../src/backends/file/backend.js';
import { KubeNodeRegistry } from '../../src/controller/kube-node-registry.js';
import { parseParameters } from '../../src/controller/parameters.js';
import { Reconciler } from '../../src/controller/reconcile.js';
import { VolumeManager } from '../../src/controller/volumes.js';
import { HostExecutor } from '../../src/exec/run.js';
import { UserspaceIscsiInitiator } from '../../src/node/connectors/iscsi/userspace.js';
import { csiNode, eventually, persistentVolume } from '../helpers/kube-api-standin.js';
import { DRIVER, KubeFixture } from '../helpers/kube-fixture.js';
import { requireIscsiTools, TestTgtd } from '../helpers/tgtd.js';
import { forceCleanupUserspace } from '../helpers/userspace-cleanup.js';
import { fileBackendConfig, iscsiExport } from '../helpers/backend-config.js';

const MiB = 1024 * 1024;
const IQN = 'iqn.2026-11.io.sinter.test:node-1';
const N1 = `node-1;${IQN};`;
const block = { accessType: 'block' as const, accessMode: 'SINGLE_NODE_WRITER', mountFlags: [] as string[] };

describe('the fence after a lost detach: HTTP stand-in for the API server, real tgtd, real iSCSI logins', () => {
  let fx: KubeFixture;
  let tgtd: TestTgtd;
  beforeEach(async () => {
    requireIscsiTools();
    fx = new KubeFixture();
    tgtd = await TestTgtd.start();
  });
  afterEach(async () => {
    await forceCleanupUserspace(join(fx.dir, 'initiator'));
    await fx.cleanup();
    await tgtd.stop();
  });

  it('revokes the export no VolumeAttachment holds within the grace period; that node can no longer log in', async () => {
    await fx.setUp();
    const log = fx.logs.log;
    const exec = new HostExecutor({ mode: 'direct', hostRoot: '/', defaultTimeoutMs: 30_000 });
    const b = new FileBackend(
      fileBackendConfig('san', join(fx.dir, 'data'), iscsiExport(tgtd, 'iqn.2026-11.io.sinter.test:')),
      exec,
      log,
    );
    await b.start();
    const backends = new Map<string, Backend>([['san', b]]);
    const cache = fx.cache();
    const volumes = new VolumeManager(backends, new KubeNodeRegistry(cache.nodeDirectory()), log, { externalAttachments: (id) => cache.volumeAttachmentNodes(id) });
    volumes.index();
    const grace = 1500;
    const reconciler = new Reconciler({ volumes, backends, source: cache, log, graceMs: grace, intervalMs: 100, debounceMs: 5 });
    fx.onCleanup(() => reconciler.stop());
    fx.standin.create('csinodes', csiNode('node-1', [{ name: DRIVER, nodeID: N1 }]));
    cache.start();
    reconciler.start();

    const v = await volumes.create({ name: 'lost-detach', capacity: { required_bytes: 16 * MiB }, capabilities: [block], parameters: parseParameters({}) });
    fx.standin.create('persistentvolumes', persistentVolume('pv-lost', v.id));
    await eventually(() => cache.live && cache.persistentVolumes.size === 1, 'the cache to sync');

    // A publish whose VolumeAttachment is gone (the detach was lost): the node can still log in.
    const t0 = performance.now();
    const ctx = await volumes.publish(v.id, N1, block, false);
    if (ctx.transport !== 'iscsi') throw new Error('expected an iSCSI publish');
    const ini = new UserspaceIscsiInitiator({ stateDir: join(fx.dir, 'initiator'), loginTimeoutMs: 15_000 }, exec);
    const target = { portals: ctx.portals, iqn: ctx.iqn, lun: ctx.lun };
    const att = await ini.connect(target, { initiatorName: IQN });
    expect(att.devicePath).toMatch(/^\/dev\/loop\d+$/);
    await ini.disconnect(target);

    await eventually(() => reconciler.stats.revoked >= 1, 'the reconciler to revoke the stale publish', 10_000);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(grace);
    expect(volumes.get(v.id)?.attachments).toEqual([]);
    await expect(ini.connect(target, { initiatorName: IQN })).rejects.toThrow();
  });
});
