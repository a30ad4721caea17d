import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { Code } from '../../src/errors/domain-error.js';
import { csiNode, eventually } from '../helpers/kube-api-standin.js';
import { DRIVER, KubeFixture } from '../helpers/kube-fixture.js';

const createApp = async (...args: Parameters<typeof import('../../src/app.js').createApp>) => (await import('../../src/app.js')).createApp(...args);

describe('app wiring of the Kubernetes cache and reconciler (HTTP stand-in for the API server)', () => {
  let fx: KubeFixture;
  beforeEach(() => {
    fx = new KubeFixture();
  });
  afterEach(async () => fx.cleanup());

  const configFile = (extra: string) => {
    const file = join(fx.dir, 'sinter.yaml');
    writeFileSync(file, `endpoint: unix://${fx.dir}/csi.sock\nnodeName: node-1\nbackends:\n- name: b1\n  dataDir: ${fx.dir}/data\n${extra}`);
    return file;
  };

  it('`sinter controller` with kubernetes.enabled reads CSINode/VolumeAttachment, reconciles, and stops its watches on shutdown', async () => {
    await fx.setUp();
    fx.standin.create('csinodes', csiNode('node-1', [{ name: DRIVER, nodeID: 'node-1;;' }]));
    const cfg = loadConfig('controller', ['--config', configFile(`kubernetes:\n  enabled: true\n  kubeconfig: ${fx.kubeconfigPath()}\n  resyncSeconds: 0.1\n  graceSeconds: 0.2\n`)]);
    const app = await createApp(cfg, fx.logs.log);
    let stopped = false;
    fx.onCleanup(async () => {
      if (!stopped) await app.stop();
    });
    expect(app.kube).toBeDefined();
    expect(app.reconciler).toBeDefined();
    await app.listen();
    await eventually(() => app.kube!.live && app.reconciler!.stats.passes > 0, 'the cache to sync and reconciliation to run');

    const vols = app.volumes!;
    const v = await vols.create({ name: 'v', capacity: { required_bytes: 1 << 20 }, capabilities: [{ accessType: 'block', accessMode: 'SINGLE_NODE_WRITER' }], parameters: { own: {} } });
    const cap = { accessType: 'block' as const, accessMode: 'SINGLE_NODE_WRITER', mountFlags: [] };
    await expect(vols.publish(v.id, 'node-2;;', cap, false)).rejects.toMatchObject({ code: Code.NOT_FOUND });
    await vols.publish(v.id, 'node-1;;', cap, false);
    await eventually(() => app.reconciler!.stats.revoked === 1, 'the publish without a VolumeAttachment to be revoked');

    await app.stop();
    stopped = true;
    await eventually(() => fx.standin.openWatches() === 0, 'the watches to close');
  });

  it('`sinter all` stays standalone even in a pod with a kubeconfig, unless kubernetes.enabled is true', async () => {
    await fx.setUp();
    const old = { ...process.env };
    Object.assign(process.env, { KUBERNETES_SERVICE_HOST: '127.0.0.1', KUBERNETES_SERVICE_PORT: String(fx.standin.port) });
    try {
      const cfg = loadConfig('all', ['--config', configFile(`kubernetes:\n  kubeconfig: ${fx.kubeconfigPath()}\n`)]);
      expect(cfg.kubernetes.enabled).toBe(false);
      const app = await createApp(cfg, fx.logs.log);
      fx.onCleanup(() => app.stop());
      expect(app.kube).toBeUndefined();
      expect(app.reconciler).toBeUndefined();
      expect(fx.standin.requests).toHaveLength(0);
    } finally {
      process.env = old;
    }
  });
});
