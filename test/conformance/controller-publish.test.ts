import { afterAll, beforeAll, expect } from 'vitest';
import { blockCap, codeOf, MiB, mountCap, type SinterProcess } from '../helpers/sinter-process.js';
import { conformance, expectedPublishContext } from '../helpers/conformance.js';

// perBackend: also run for each LVM backend x target helper (test/vm/lvm-conformance.vm.test.ts).
const { describe, it, startSinter } = conformance();

// Both initiator names, so any export (iSCSI, NVMe/TCP) can publish to them.
const NODE_A = 'node-a;iqn.2026-11.io.sinter:node-a;;nqn.2026-11.io.sinter:node-a';
const NODE_B = 'node-b;iqn.2026-11.io.sinter:node-b;;nqn.2026-11.io.sinter:node-b';

describe.perBackend('ControllerPublish/Unpublish (sinter controller: any well-formed node id)', () => {
  let s: SinterProcess;
  const ctl = () => s.client.controller;
  const create = async (name: string, cap: object = mountCap()) =>
    (await ctl().CreateVolume({ name, capacity_range: { required_bytes: 2 * MiB }, volume_capabilities: [cap] })).volume!.volume_id as string;
  beforeAll(async () => {
    s = await startSinter({ role: 'controller' });
  });
  afterAll(async () => s?.cleanup());

  it('requires volume_id, node_id and volume_capability', async () => {
    const id = await create('p-req');
    expect(await codeOf(ctl().ControllerPublishVolume({ node_id: NODE_A, volume_capability: mountCap() }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(ctl().ControllerPublishVolume({ volume_id: id, volume_capability: mountCap() }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(ctl().ControllerPublishVolume({ volume_id: id, node_id: NODE_A }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(ctl().ControllerUnpublishVolume({ node_id: NODE_A }))).toBe('INVALID_ARGUMENT');
  });

  it('is NOT_FOUND for an unknown volume and for a malformed node id', async () => {
    const id = await create('p-nf');
    expect(await codeOf(ctl().ControllerPublishVolume({ volume_id: 'default-00000000-0000-4000-8000-000000000000', node_id: NODE_A, volume_capability: mountCap() }))).toBe('NOT_FOUND');
    expect(await codeOf(ctl().ControllerPublishVolume({ volume_id: id, node_id: 'some-fake-node-id', volume_capability: mountCap() }))).toBe('NOT_FOUND');
  });

  it.perBackend('returns the transport context (local: the image path; iSCSI: portal, IQN, LUN), idempotently, and records the volume in-use', async () => {
    const id = await create('p-ok');
    const a = await ctl().ControllerPublishVolume({ volume_id: id, node_id: NODE_A, volume_capability: mountCap() });
    expect(a.publish_context).toEqual(expectedPublishContext(s, id));
    const b = await ctl().ControllerPublishVolume({ volume_id: id, node_id: NODE_A, volume_capability: mountCap() });
    expect(b.publish_context).toEqual(a.publish_context);
    const got = await ctl().ControllerGetVolume({ volume_id: id });
    expect(got.status!.published_node_ids).toEqual([NODE_A]);
  });

  it('is ALREADY_EXISTS when re-published with another readonly flag or capability', async () => {
    const id = await create('p-ae');
    await ctl().ControllerPublishVolume({ volume_id: id, node_id: NODE_A, volume_capability: mountCap() });
    expect(await codeOf(ctl().ControllerPublishVolume({ volume_id: id, node_id: NODE_A, volume_capability: mountCap(), readonly: true }))).toBe('ALREADY_EXISTS');
    expect(await codeOf(ctl().ControllerPublishVolume({ volume_id: id, node_id: NODE_A, volume_capability: mountCap('SINGLE_NODE_READER_ONLY') }))).toBe('ALREADY_EXISTS');
  });

  it.perBackend('is FAILED_PRECONDITION to publish a single-node volume to a second node', async () => {
    const id = await create('p-2nd');
    await ctl().ControllerPublishVolume({ volume_id: id, node_id: NODE_A, volume_capability: mountCap() });
    expect(await codeOf(ctl().ControllerPublishVolume({ volume_id: id, node_id: NODE_B, volume_capability: mountCap() }))).toBe('FAILED_PRECONDITION');
    await ctl().ControllerUnpublishVolume({ volume_id: id, node_id: NODE_A });
    expect(await codeOf(ctl().ControllerPublishVolume({ volume_id: id, node_id: NODE_B, volume_capability: mountCap() }))).toBe('OK');
  });

  it.perBackend('lets multi-node modes publish to several nodes', async () => {
    const id = await create('p-multi', blockCap('MULTI_NODE_MULTI_WRITER'));
    await ctl().ControllerPublishVolume({ volume_id: id, node_id: NODE_A, volume_capability: blockCap('MULTI_NODE_MULTI_WRITER') });
    await ctl().ControllerPublishVolume({ volume_id: id, node_id: NODE_B, volume_capability: blockCap('MULTI_NODE_MULTI_WRITER') });
    const got = await ctl().ControllerGetVolume({ volume_id: id });
    expect(got.status!.published_node_ids.sort()).toEqual([NODE_A, NODE_B]);
    // Unpublish without a node id unpublishes from every node.
    await ctl().ControllerUnpublishVolume({ volume_id: id });
    expect((await ctl().ControllerGetVolume({ volume_id: id })).status!.published_node_ids ?? []).toEqual([]);
  });

  it.perBackend('unpublish is idempotent, also for unknown volumes', async () => {
    const id = await create('p-unpub');
    await ctl().ControllerPublishVolume({ volume_id: id, node_id: NODE_A, volume_capability: mountCap() });
    await ctl().ControllerUnpublishVolume({ volume_id: id, node_id: NODE_A });
    await ctl().ControllerUnpublishVolume({ volume_id: id, node_id: NODE_A });
    expect(await codeOf(ctl().ControllerUnpublishVolume({ volume_id: 'default-00000000-0000-4000-8000-000000000000', node_id: NODE_A }))).toBe('OK');
    expect(await codeOf(ctl().DeleteVolume({ volume_id: id }))).toBe('OK');
  });

  it.perBackendType('keeps publishes across a restart (the attachment table is on disk)', async () => {
    const id = await create('p-restart');
    await ctl().ControllerPublishVolume({ volume_id: id, node_id: NODE_A, volume_capability: mountCap() });
    await s.stop();
    s.client.close();
    const again = await startSinter({ role: 'controller', base: s.base });
    const old = s;
    s = { ...again, cleanup: async () => { await again.cleanup(); await old.cleanup(); } };
    expect((await ctl().ControllerGetVolume({ volume_id: id })).status!.published_node_ids).toEqual([NODE_A]);
    expect(await codeOf(ctl().DeleteVolume({ volume_id: id }))).toBe('FAILED_PRECONDITION');
  });
});

describe('per-node attach limit (sinter all --max-volumes-per-node 2)', () => {
  let s: SinterProcess;
  beforeAll(async () => {
    s = await startSinter({ args: ['--max-volumes-per-node', '2'] });
  });
  afterAll(async () => s?.cleanup());

  it('reports the limit and refuses a third publish with RESOURCE_EXHAUSTED until one is unpublished', async () => {
    const info = await s.client.node.NodeGetInfo({});
    expect(info.max_volumes_per_node).toBe(2);
    const ids: string[] = [];
    for (const n of ['l1', 'l2', 'l3'])
      ids.push((await s.client.controller.CreateVolume({ name: n, capacity_range: { required_bytes: MiB }, volume_capabilities: [blockCap()] })).volume!.volume_id!);
    const pub = (id: string) => s.client.controller.ControllerPublishVolume({ volume_id: id, node_id: info.node_id, volume_capability: blockCap() });
    await pub(ids[0]);
    await pub(ids[1]);
    expect(await codeOf(pub(ids[2]))).toBe('RESOURCE_EXHAUSTED');
    // A repeat of an existing publish is not a new attachment.
    expect(await codeOf(pub(ids[1]))).toBe('OK');
    await s.client.controller.ControllerUnpublishVolume({ volume_id: ids[0], node_id: info.node_id });
    expect(await codeOf(pub(ids[2]))).toBe('OK');
  });
});
