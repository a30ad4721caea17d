import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { encodeNodeId } from '../../src/contracts/nodeid.js';
import { csiNode, eventually } from '../helpers/kube-api-standin.js';
import { DRIVER, KubeFixture } from '../helpers/kube-fixture.js';
import { parseExposition, promtoolCheck, scrape } from '../helpers/metrics.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { requireIscsiTools, TestTgtd } from '../helpers/tgtd.js';

// The reconcilers' counters, as /metrics shows them after what they exist to
// notice: a tgtd that lost an export, an ACL nobody published, a tgtd that is
// down (real tgtd); a publish no VolumeAttachment holds (HTTP stand-in for the API server).

const createApp = async (...args: Parameters<typeof import('../../src/app.js').createApp>) => (await import('../../src/app.js')).createApp(...args);
const MiB = 1024 * 1024;
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe('reconciliation metrics', () => {
  it('export reconciliation: a lost ACL restored, a stray ACL revoked, a failed pass: each counted by backend (real tgtd)', async () => {
    requireIscsiTools();
    const t = tempDir('sinter-metrics-tgt-');
    cleanups.push(() => t.cleanup());
    const tgtd = await TestTgtd.start();
    cleanups.push(async () => {
      await tgtd.stop();
    });
    const prefix = 'iqn.2025-01.io.sinter.metrics:';
    const file = join(t.dir, 'c.yaml');
    writeFileSync(
      file,
      `endpoint: unix://${t.dir}/csi.sock\nmetricsAddress: "127.0.0.1:0"\nbackends:\n- name: tgt\n  dataDir: ${t.dir}/data\n  export: iscsi\n  iscsi:\n    portals: ["${tgtd.portal}"]\n    iqnPrefix: "${prefix}"\n    controlPort: ${tgtd.controlPort}\n    reconcileSeconds: 3600\n`,
    );
    const app = await createApp(loadConfig('controller', ['--config', file]), pino({ level: 'silent' }));
    cleanups.push(() => app.stop());
    const get = async () => parseExposition((await scrape(app.metrics!.address)).text);
    const tgtadm = (...args: string[]) => execa('tgtadm', ['-C', String(tgtd.controlPort), '--lld', 'iscsi', ...args]);
    const tid = async () => (await tgtadm('--op', 'show', '--mode', 'target')).stdout.match(/^Target (\d+): /m)?.[1];

    const node = encodeNodeId({ host: 'n1', iqn: 'iqn.2025-01.io.test:n1', wwpns: [] });
    const v = await app.volumes!.create({ name: 'r1', capacity: { required_bytes: 16 * MiB }, capabilities: [{ accessType: 'block', accessMode: 'SINGLE_NODE_WRITER' }], parameters: { own: {} } });
    await app.volumes!.publish(v.id, node, { accessType: 'block', accessMode: 'SINGLE_NODE_WRITER', mountFlags: [] }, false);
    const zero = await get();
    expect(zero.value('sinter_reconcile_exports_restored_total', { backend: 'tgt' })).toBe(0);
    expect(zero.value('sinter_reconcile_exports_revoked_total', { backend: 'tgt' })).toBe(0);

    // The node's ACL vanishes (as after a tgtd restart): the next pass puts it back.
    await tgtadm('--op', 'unbind', '--mode', 'target', '--tid', (await tid())!, '--initiator-name', 'iqn.2025-01.io.test:n1');
    await app.exportLoop!.pass();
    expect((await get()).value('sinter_reconcile_exports_restored_total', { backend: 'tgt' })).toBe(1);

    // Someone lets a second initiator in by hand: no publish explains it, the pass fences it.
    await tgtadm('--op', 'bind', '--mode', 'target', '--tid', (await tid())!, '--initiator-name', 'iqn.2025-01.io.test:intruder');
    await app.exportLoop!.pass();
    const fenced = await get();
    expect(fenced.value('sinter_reconcile_exports_revoked_total', { backend: 'tgt' })).toBe(1);
    expect(fenced.value('sinter_reconcile_exports_restored_total', { backend: 'tgt' })).toBe(1);
    expect(fenced.value('sinter_volumes', { backend: 'tgt', state: 'in-use' })).toBe(1);

    // tgtd down: the pass fails and says so.
    await tgtd.kill();
    try {
      await app.exportLoop!.pass();
      expect((await get()).value('sinter_reconcile_exports_failed_passes_total', { backend: 'tgt' })).toBe(1);
    } finally {
      await tgtd.startAgain();
    }
    // The restarted tgtd is empty: the export comes back, and is counted.
    await app.exportLoop!.pass();
    const back = await get();
    expect(back.value('sinter_reconcile_exports_restored_total', { backend: 'tgt' })).toBe(2);
    expect((await promtoolCheck((await scrape(app.metrics!.address)).text)).sinterFindings).toEqual([]);
    await app.volumes!.unpublish(v.id, node);
  });

  it('VolumeAttachment reconciliation: a revoked publish, passes and the API wait show (HTTP stand-in for the API server)', async () => {
    const fx = new KubeFixture();
    cleanups.push(() => fx.cleanup());
    await fx.setUp();
    fx.standin.create('csinodes', csiNode('node-1', [{ name: DRIVER, nodeID: 'node-1;;' }]));
    const file = join(fx.dir, 'sinter.yaml');
    writeFileSync(
      file,
      `endpoint: unix://${fx.dir}/csi.sock\nnodeName: node-1\nmetricsAddress: "127.0.0.1:0"\nbackends:\n- name: b1\n  dataDir: ${fx.dir}/data\nkubernetes:\n  enabled: true\n  kubeconfig: ${fx.kubeconfigPath()}\n  resyncSeconds: 0.1\n  graceSeconds: 0.2\n`,
    );
    const app = await createApp(loadConfig('controller', ['--config', file]), fx.logs.log);
    fx.onCleanup(() => app.stop());
    await app.listen();
    const get = async () => parseExposition((await scrape(app.metrics!.address)).text);
    await eventually(() => app.kube!.live && app.reconciler!.stats.passes > 0, 'the cache to sync and reconciliation to run');
    const live = await get();
    expect(live.value('sinter_reconcile_waiting')).toBe(0);
    expect(live.value('sinter_reconcile_passes_total')).toBeGreaterThan(0);
    expect(live.value('sinter_reconcile_last_pass_timestamp_seconds')).toBeGreaterThan(Date.now() / 1000 - 60);

    const v = await app.volumes!.create({ name: 'v', capacity: { required_bytes: 1 << 20 }, capabilities: [{ accessType: 'block', accessMode: 'SINGLE_NODE_WRITER' }], parameters: { own: {} } });
    await app.volumes!.publish(v.id, 'node-1;;', { accessType: 'block', accessMode: 'SINGLE_NODE_WRITER', mountFlags: [] }, false);
    await eventually(() => app.reconciler!.stats.revoked === 1, 'the publish without a VolumeAttachment to be revoked');
    const after = await get();
    expect(after.value('sinter_reconcile_exports_revoked_total', { backend: 'b1' })).toBe(1);
    expect(after.value('sinter_reconcile_revoke_failures_total')).toBe(0);
    expect(after.value('sinter_reconcile_pending_revocations')).toBe(0);
    expect(after.value('sinter_volumes', { backend: 'b1', state: 'available' })).toBe(1);

    // The API server goes away: reconciliation waits, and the gauge says so.
    await fx.standin.stop();
    await eventually(async () => (await get()).value('sinter_reconcile_waiting') === 1, 'the waiting gauge to show the API is unreachable', 20_000);
    expect((await get()).value('sinter_reconcile_waits_total')).toBeGreaterThan(0);
  });
});
