import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blockCap, codeOf, MiB, mountCap, SLOW, startSinter, type SinterProcess } from '../helpers/sinter-process.js';
import { requireTgt, TestTgtd } from '../helpers/tgtd.js';

// Issue 11, defect 2: a local-export volume whose PV required
// topology.sinter.csi.io/node In [node-1] was published OK to node-2. The
// volume's accessible topology is its backend's; ControllerPublishVolume must
// refuse every node outside it, for volumes created in this run and for those
// a hand-written PV names by handle after a restart, on local and iSCSI exports.

const NODE_KEY = 'topology.sinter.csi.io/node';
const N1 = 'node-1;iqn.2026-11.io.sinter.test:node-1;';
const N2 = 'node-2;iqn.2026-11.io.sinter.test:node-2;';
const IQN_PREFIX = 'iqn.2026-11.io.sinter.topo:';

describe('ControllerPublishVolume keeps a volume inside its accessible topology (sinter controller, real tgtd)', () => {
  let s: SinterProcess;
  let tgtd: TestTgtd;
  let base: string;
  const ctl = () => s.client.controller;
  const start = () => startSinter({ role: 'controller', base, args: ['--config', join(base, 'sinter.yaml')] });
  const create = async (name: string, backend: string, cap: object = mountCap()) => {
    const r = await ctl().CreateVolume({ name, capacity_range: { required_bytes: 4 * MiB }, volume_capabilities: [cap], parameters: { backend } });
    return r.volume as { volume_id: string; accessible_topology: { segments: Record<string, string> }[] };
  };
  const publish = (volume_id: string, node_id: string, cap: object = mountCap()) => ctl().ControllerPublishVolume({ volume_id, node_id, volume_capability: cap });
  const refusal = async (p: Promise<unknown>) => {
    const e = (await p.then(
      () => undefined,
      (err: unknown) => err,
    )) as { code?: number; details?: string } | undefined;
    expect(e, 'the publish must be refused').toBeDefined();
    return e!;
  };
  const acl = (volumeId: string): string => {
    const out = execFileSync('tgtadm', ['-C', String(tgtd.controlPort), '--lld', 'iscsi', '--mode', 'target', '--op', 'show'], { encoding: 'utf8' });
    const at = out.indexOf(`${IQN_PREFIX}${volumeId}`);
    if (at < 0) return '';
    const next = out.indexOf('\nTarget ', at);
    return out.slice(at, next < 0 ? undefined : next);
  };

  beforeAll(async () => {
    // The controller half only: tgtd and tgtadm, no initiator (the same in the VM guest).
    requireTgt();
    tgtd = await TestTgtd.start();
    base = mkdtempSync(join(tmpdir(), 'sinter-topo-'));
    const backend = (name: string, topology: Record<string, string>, extra = '') =>
      `  - name: ${name}\n    driver: file\n    dataDir: ${join(base, name)}\n    topology: ${JSON.stringify(topology)}\n${extra}`;
    writeFileSync(
      join(base, 'sinter.yaml'),
      [
        'backends:',
        backend('near', { [NODE_KEY]: 'node-1' }),
        backend('zoned', { 'topology.sinter.csi.io/zone': 'a' }),
        backend('anywhere', {}),
        backend(
          'san',
          { [NODE_KEY]: 'node-1' },
          `    export: iscsi\n    iscsi:\n      portals: ["${tgtd.portal}"]\n      iqnPrefix: "${IQN_PREFIX}"\n      controlPort: ${tgtd.controlPort}\n`,
        ),
      ].join('\n'),
    );
    s = await start();
  }, 60_000 * SLOW);
  afterAll(async () => {
    await s?.cleanup();
    await tgtd?.stop();
    if (base) rmSync(base, { recursive: true, force: true });
  });

  it('local export: refuses node-2 with FAILED_PRECONDITION naming the node and the segment, records nothing, and publishes to node-1', async () => {
    const v = await create('topo-local', 'near');
    expect(v.accessible_topology).toEqual([{ segments: { [NODE_KEY]: 'node-1' } }]);
    const e = await refusal(publish(v.volume_id, N2));
    expect(await codeOf(publish(v.volume_id, N2))).toBe('FAILED_PRECONDITION');
    expect(e.details).toContain('node node-2');
    expect(e.details).toContain(`${NODE_KEY}=node-1`);
    expect((await ctl().ControllerGetVolume({ volume_id: v.volume_id })).status!.published_node_ids).toEqual([]);
    const ok = await publish(v.volume_id, N1);
    expect(ok.publish_context.transport).toBe('local');
    // A multi-node block volume published on node-1 still cannot spread to node-2.
    const multi = await create('topo-local-multi', 'near', blockCap('MULTI_NODE_MULTI_WRITER'));
    await publish(multi.volume_id, N1, blockCap('MULTI_NODE_MULTI_WRITER'));
    expect(await codeOf(publish(multi.volume_id, N2, blockCap('MULTI_NODE_MULTI_WRITER')))).toBe('FAILED_PRECONDITION');
  });

  it('iSCSI export: refuses node-2 before any export exists for its initiator, and exports to node-1 only', async () => {
    const v = await create('topo-san', 'san');
    expect(await codeOf(publish(v.volume_id, N2))).toBe('FAILED_PRECONDITION');
    expect(acl(v.volume_id)).not.toContain('node-2');
    const ok = await publish(v.volume_id, N1);
    expect(ok.publish_context).toMatchObject({ transport: 'iscsi', iqn: `${IQN_PREFIX}${v.volume_id}` });
    expect(acl(v.volume_id)).toContain('iqn.2026-11.io.sinter.test:node-1');
    expect(acl(v.volume_id)).not.toContain('iqn.2026-11.io.sinter.test:node-2');
    await ctl().ControllerUnpublishVolume({ volume_id: v.volume_id, node_id: N1 });
  });

  it('a segment the controller cannot learn for the node (a zone, without Kubernetes) counts as missing', async () => {
    const v = await create('topo-zone', 'zoned');
    const e = await refusal(publish(v.volume_id, N1));
    expect(await codeOf(publish(v.volume_id, N1))).toBe('FAILED_PRECONDITION');
    expect(e.details).toMatch(/node node-1 reports no topology\.sinter\.csi\.io\/zone segment/);
    // A backend without topology reaches every node.
    const any = await create('topo-any', 'anywhere');
    expect((await publish(any.volume_id, N2)).publish_context.transport).toBe('local');
  });

  it('pre-provisioned volumes: after a restart, a PV written by hand naming the handles gets the same answers', async () => {
    const local = await create('topo-static-local', 'near');
    const san = await create('topo-static-san', 'san');
    await s.stop();
    s = await start();
    // The attacher sends what the PV holds: the handle, the node, the capability, its volumeAttributes.
    const byHand = (volume_id: string, node_id: string) =>
      ctl().ControllerPublishVolume({ volume_id, node_id, volume_capability: mountCap(), volume_context: { backend: volume_id.split('-')[0] } });
    for (const id of [local.volume_id, san.volume_id]) {
      const e = await refusal(byHand(id, N2));
      expect(e.details).toContain('node node-2');
      expect(await codeOf(byHand(id, N2))).toBe('FAILED_PRECONDITION');
      expect(await codeOf(byHand(id, N1))).toBe('OK');
      await ctl().ControllerUnpublishVolume({ volume_id: id, node_id: N1 });
    }
    expect(acl(san.volume_id)).not.toContain('node-2');
  }, 60_000 * SLOW);
});
