import { afterAll, beforeAll, expect } from 'vitest';
import { asSidecar, blockCap, codeOf, MiB, mountCap, type SinterProcess } from '../helpers/sinter-process.js';
import { conformance, hideVolumeImage, volumeAllocatedBytes, volumeImageSize } from '../helpers/conformance.js';
import { stringMatching } from '../helpers/matchers.js';

// perBackend: also run for each LVM backend x target helper (test/vm/lvm-conformance.vm.test.ts).
const { describe, it, startSinter } = conformance();

describe.perBackendType('Controller volumes (sinter all)', () => {
  let s: SinterProcess;
  let nodeId: string;
  let topology: Record<string, string>;
  const ctl = () => s.client.controller;
  beforeAll(async () => {
    s = await startSinter();
    const info = await s.client.node.NodeGetInfo({});
    nodeId = info.node_id!;
    topology = info.accessible_topology!.segments;
  });
  afterAll(async () => s?.cleanup());

  it('advertises its controller capabilities', async () => {
    const r = await ctl().ControllerGetCapabilities({});
    const types = r.capabilities.map((c) => c.rpc!.type);
    for (const t of ['CREATE_DELETE_VOLUME', 'PUBLISH_UNPUBLISH_VOLUME', 'LIST_VOLUMES', 'GET_CAPACITY', 'CREATE_DELETE_SNAPSHOT', 'LIST_SNAPSHOTS', 'CLONE_VOLUME', 'PUBLISH_READONLY', 'EXPAND_VOLUME', 'LIST_VOLUMES_PUBLISHED_NODES', 'VOLUME_CONDITION', 'GET_VOLUME'])
      expect(types).toContain(t);
  });

  describe.perBackend('CreateVolume', () => {
    it('requires a name and capabilities', async () => {
      expect(await codeOf(ctl().CreateVolume({ volume_capabilities: [mountCap()] }))).toBe('INVALID_ARGUMENT');
      expect(await codeOf(ctl().CreateVolume({ name: 'no-caps' }))).toBe('INVALID_ARGUMENT');
      expect(await codeOf(ctl().CreateVolume({ name: 'no-mode', volume_capabilities: [{ mount: {} }] }))).toBe('INVALID_ARGUMENT');
      expect(await codeOf(ctl().CreateVolume({ name: 'no-type', volume_capabilities: [{ access_mode: { mode: 'SINGLE_NODE_WRITER' } }] }))).toBe('INVALID_ARGUMENT');
    });

    it('makes a sparse image of the rounded size, with the backend topology', async () => {
      const r = await ctl().CreateVolume({ name: 'cv-size', capacity_range: { required_bytes: 10 * MiB + 1 }, volume_capabilities: [mountCap()] });
      expect(r.volume!.capacity_bytes).toBe(11 * MiB);
      expect(r.volume!.volume_id).toMatch(/^default-[0-9a-f-]{36}$/);
      expect(r.volume!.accessible_topology).toEqual([{ segments: topology }]);
      expect(volumeImageSize(s, r.volume!.volume_id!)).toBe(11 * MiB);
      expect(volumeAllocatedBytes(s, r.volume!.volume_id!)).toBeLessThan(MiB);
    });

    it.perBackend('is idempotent by name, and ALREADY_EXISTS for an incompatible repeat', async () => {
      const req = { name: 'cv-idem', capacity_range: { required_bytes: 20 * MiB }, volume_capabilities: [mountCap('SINGLE_NODE_WRITER', 'ext4')], parameters: { mkfsOptions: '-m 0' } };
      const a = await ctl().CreateVolume(req);
      const b = await ctl().CreateVolume(req);
      expect(b.volume!.volume_id).toBe(a.volume!.volume_id);
      expect(await codeOf(ctl().CreateVolume({ ...req, capacity_range: { required_bytes: 40 * MiB } }))).toBe('ALREADY_EXISTS');
      expect(await codeOf(ctl().CreateVolume({ ...req, parameters: {} }))).toBe('ALREADY_EXISTS');
      expect(await codeOf(ctl().CreateVolume({ ...req, volume_capabilities: [mountCap('SINGLE_NODE_WRITER', 'xfs')] }))).toBe('ALREADY_EXISTS');
    });

    it('returns one volume to 20 concurrent creates of one name; a create still in progress answers ABORTED', async () => {
      const req = { name: 'cv-race', capacity_range: { required_bytes: 5 * MiB }, volume_capabilities: [blockCap()] };
      const first: string[] = [];
      const rs = await Promise.all(Array.from({ length: 20 }, () => asSidecar(() => ctl().CreateVolume(req), first)));
      expect(new Set(rs.map((r) => r.volume!.volume_id)).size).toBe(1);
      expect(first).toContain('ABORTED');
      expect(new Set(first)).toEqual(new Set(['OK', 'ABORTED']));
      const refusal = await Promise.allSettled([ctl().CreateVolume({ ...req, name: 'cv-race-2' }), ctl().CreateVolume({ ...req, name: 'cv-race-2' })]);
      expect(refusal[1]).toMatchObject({ status: 'rejected', reason: { code: 10, details: stringMatching(/volume name "cv-race-2" is already in progress; retry/) } });
      const listed = (await ctl().ListVolumes({})).entries.filter((e) => e.volume!.volume_id === rs[0].volume!.volume_id);
      expect(listed).toHaveLength(1);
    });

    it('names an unknown parameter, and refuses mount with a multi-node writer', async () => {
      const bad = ctl().CreateVolume({ name: 'cv-param', volume_capabilities: [mountCap()], parameters: { tpye: 'ssd' } });
      await expect(bad).rejects.toMatchObject({ details: stringMatching(/unknown key "tpye"/) });
      // The filesystem is the sidecar's csi.storage.k8s.io/fstype, never a key of sinter's own.
      const legacy = { name: 'cv-fstype', volume_capabilities: [mountCap()], parameters: { fsType: 'ext4' } };
      expect(await codeOf(ctl().CreateVolume(legacy))).toBe('INVALID_ARGUMENT');
      await expect(ctl().CreateVolume(legacy)).rejects.toMatchObject({ details: stringMatching(/parameters\.fsType .*csi\.storage\.k8s\.io\/fstype/) });
      expect(await codeOf(ctl().CreateVolume({ name: 'cv-2fs', volume_capabilities: [mountCap('SINGLE_NODE_WRITER', 'ext4'), mountCap('SINGLE_NODE_READER_ONLY', 'xfs')] }))).toBe('INVALID_ARGUMENT');
      expect(await codeOf(ctl().CreateVolume({ name: 'cv-mnmw', volume_capabilities: [mountCap('MULTI_NODE_MULTI_WRITER')] }))).toBe('INVALID_ARGUMENT');
      expect(await codeOf(ctl().CreateVolume({ name: 'cv-mnmw-block', capacity_range: { required_bytes: MiB }, volume_capabilities: [blockCap('MULTI_NODE_MULTI_WRITER')] }))).toBe('OK');
    });

    it('is OUT_OF_RANGE for an unsatisfiable range and RESOURCE_EXHAUSTED when no backend has room', async () => {
      expect(await codeOf(ctl().CreateVolume({ name: 'cv-oor', capacity_range: { required_bytes: 5 * MiB + 1, limit_bytes: 5 * MiB + 2 }, volume_capabilities: [blockCap()] }))).toBe('OUT_OF_RANGE');
      expect(await codeOf(ctl().CreateVolume({ name: 'cv-xfs-small', capacity_range: { limit_bytes: 10 * MiB }, volume_capabilities: [mountCap('SINGLE_NODE_WRITER', 'xfs')] }))).toBe('OUT_OF_RANGE');
      const huge = ctl().CreateVolume({ name: 'cv-huge', capacity_range: { required_bytes: 2 ** 50 }, volume_capabilities: [blockCap()] });
      await expect(huge).rejects.toMatchObject({ code: 8, details: stringMatching(/default: \d+ bytes available/) });
    });

    it('honours requisite topology: a topology no backend reaches is RESOURCE_EXHAUSTED', async () => {
      const ok = await ctl().CreateVolume({ name: 'cv-topo', capacity_range: { required_bytes: MiB }, volume_capabilities: [blockCap()], accessibility_requirements: { requisite: [{ segments: topology }] } });
      expect(ok.volume!.accessible_topology).toEqual([{ segments: topology }]);
      const other = { segments: { 'topology.sinter.csi.io/node': 'elsewhere' } };
      expect(await codeOf(ctl().CreateVolume({ name: 'cv-topo2', volume_capabilities: [blockCap()], accessibility_requirements: { requisite: [other] } }))).toBe('RESOURCE_EXHAUSTED');
    });

    it('selects a backend by type and refuses a type nobody serves', async () => {
      expect(await codeOf(ctl().CreateVolume({ name: 'cv-type', volume_capabilities: [blockCap()], parameters: { type: 'ssd' } }))).toBe('RESOURCE_EXHAUSTED');
    });
  });

  describe.perBackend('DeleteVolume', () => {
    it('requires volume_id and succeeds for unknown or malformed ids', async () => {
      expect(await codeOf(ctl().DeleteVolume({}))).toBe('INVALID_ARGUMENT');
      expect(await codeOf(ctl().DeleteVolume({ volume_id: 'default-00000000-0000-4000-8000-000000000000' }))).toBe('OK');
      expect(await codeOf(ctl().DeleteVolume({ volume_id: '../../etc/passwd' }))).toBe('OK');
    });

    it.perBackend('removes the image, and refuses while the volume is published', async () => {
      const v = (await ctl().CreateVolume({ name: 'dv-pub', capacity_range: { required_bytes: MiB }, volume_capabilities: [blockCap()] })).volume;
      await ctl().ControllerPublishVolume({ volume_id: v!.volume_id, node_id: nodeId, volume_capability: blockCap() });
      expect(await codeOf(ctl().DeleteVolume({ volume_id: v!.volume_id }))).toBe('FAILED_PRECONDITION');
      await ctl().ControllerUnpublishVolume({ volume_id: v!.volume_id, node_id: nodeId });
      await ctl().DeleteVolume({ volume_id: v!.volume_id });
      await ctl().DeleteVolume({ volume_id: v!.volume_id });
      expect(volumeImageSize(s, v!.volume_id!)).toBeUndefined();
      expect(await codeOf(ctl().ControllerGetVolume({ volume_id: v!.volume_id }))).toBe('NOT_FOUND');
    });
  });

  describe('ValidateVolumeCapabilities', () => {
    it('confirms what the volume supports and says why it does not', async () => {
      const v = (await ctl().CreateVolume({ name: 'vvc', volume_capabilities: [mountCap('SINGLE_NODE_WRITER', 'ext4')] })).volume;
      const ok = await ctl().ValidateVolumeCapabilities({ volume_id: v!.volume_id, volume_capabilities: [mountCap()] });
      expect(ok.confirmed!.volume_capabilities).toHaveLength(1);
      const no = await ctl().ValidateVolumeCapabilities({ volume_id: v!.volume_id, volume_capabilities: [mountCap('SINGLE_NODE_WRITER', 'xfs')] });
      expect(no.confirmed).toBeFalsy();
      expect(no.message).toMatch(/ext4/);
      expect(await codeOf(ctl().ValidateVolumeCapabilities({ volume_id: v!.volume_id }))).toBe('INVALID_ARGUMENT');
      expect(await codeOf(ctl().ValidateVolumeCapabilities({ volume_capabilities: [mountCap()] }))).toBe('INVALID_ARGUMENT');
      expect(await codeOf(ctl().ValidateVolumeCapabilities({ volume_id: 'default-00000000-0000-4000-8000-000000000000', volume_capabilities: [mountCap()] }))).toBe('NOT_FOUND');
    });
  });

  describe('ListVolumes', () => {
    it('pages stably while volumes are created and deleted, and aborts on a foreign token', async () => {
      const base = await ctl().ListVolumes({});
      const before = new Set(base.entries.map((e) => e.volume!.volume_id));
      const made: string[] = [];
      for (let i = 0; i < 6; i++) made.push((await ctl().CreateVolume({ name: `lv-${i}`, capacity_range: { required_bytes: MiB }, volume_capabilities: [blockCap()] })).volume!.volume_id!);
      const p1 = await ctl().ListVolumes({ max_entries: 3 });
      expect(p1.entries).toHaveLength(3);
      expect(p1.next_token).not.toBe('');
      // Delete the page's last volume and add one: the next page must still follow on.
      const lastOfPage = p1.entries[2].volume!.volume_id;
      if (made.includes(lastOfPage!)) await ctl().DeleteVolume({ volume_id: lastOfPage });
      await ctl().CreateVolume({ name: 'lv-new', capacity_range: { required_bytes: MiB }, volume_capabilities: [blockCap()] });
      const seen = new Set(p1.entries.map((e) => e.volume!.volume_id));
      let token = p1.next_token;
      while (token) {
        const p = await ctl().ListVolumes({ max_entries: 3, starting_token: token });
        for (const e of p.entries) {
          expect(seen.has(e.volume!.volume_id)).toBe(false);
          seen.add(e.volume!.volume_id);
        }
        token = p.next_token;
      }
      for (const id of [...before, ...made]) if (id !== lastOfPage) expect(seen.has(id)).toBe(true);
      expect(await codeOf(ctl().ListVolumes({ starting_token: 'bogus' }))).toBe('ABORTED');
      expect(await codeOf(ctl().ListVolumes({ max_entries: -1 }))).toBe('INVALID_ARGUMENT');
    });

    it('reports published nodes and volume condition', async () => {
      const v = (await ctl().CreateVolume({ name: 'lv-pub', capacity_range: { required_bytes: MiB }, volume_capabilities: [blockCap()] })).volume;
      await ctl().ControllerPublishVolume({ volume_id: v!.volume_id, node_id: nodeId, volume_capability: blockCap() });
      const all = await ctl().ListVolumes({});
      const e = all.entries.find((x) => x.volume!.volume_id === v!.volume_id);
      expect(e!.status!.published_node_ids).toEqual([nodeId]);
      expect(e!.status!.volume_condition!.abnormal).toBe(false);
      await ctl().ControllerUnpublishVolume({ volume_id: v!.volume_id, node_id: nodeId });
    });
  });

  describe('ControllerGetVolume', () => {
    it('is NOT_FOUND for unknown ids and abnormal when the image is gone', async () => {
      expect(await codeOf(ctl().ControllerGetVolume({ volume_id: 'default-00000000-0000-4000-8000-000000000000' }))).toBe('NOT_FOUND');
      expect(await codeOf(ctl().ControllerGetVolume({}))).toBe('INVALID_ARGUMENT');
      const v = (await ctl().CreateVolume({ name: 'gv', capacity_range: { required_bytes: MiB }, volume_capabilities: [blockCap()] })).volume;
      expect((await ctl().ControllerGetVolume({ volume_id: v!.volume_id })).status!.volume_condition!.abnormal).toBe(false);
      hideVolumeImage(s, v!.volume_id!, true);
      const r = await ctl().ControllerGetVolume({ volume_id: v!.volume_id });
      expect(r.status!.volume_condition).toMatchObject({ abnormal: true, message: stringMatching(/missing/) });
      hideVolumeImage(s, v!.volume_id!, false);
    });
  });

  describe('GetCapacity', () => {
    it('reports room that shrinks as volumes are promised, and none for an unserved type', async () => {
      const a = await ctl().GetCapacity({ volume_capabilities: [mountCap()] });
      expect(a.available_capacity).toBeGreaterThan(0);
      await ctl().CreateVolume({ name: 'cap-1', capacity_range: { required_bytes: 64 * MiB }, volume_capabilities: [blockCap()] });
      const b = await ctl().GetCapacity({});
      expect(a.available_capacity! - b.available_capacity!).toBeGreaterThanOrEqual(64 * MiB);
      expect((await ctl().GetCapacity({ parameters: { type: 'nvme' } })).available_capacity ?? 0).toBe(0);
      expect((await ctl().GetCapacity({ accessible_topology: { segments: { 'topology.sinter.csi.io/node': 'elsewhere' } } })).available_capacity ?? 0).toBe(0);
    });
  });

  describe.perBackend('ControllerExpandVolume', () => {
    it.perBackend('grows the image, never shrinks it, and asks the node to finish', async () => {
      const v = (await ctl().CreateVolume({ name: 'ex', capacity_range: { required_bytes: 8 * MiB }, volume_capabilities: [mountCap()] })).volume;
      const r = await ctl().ControllerExpandVolume({ volume_id: v!.volume_id, capacity_range: { required_bytes: 16 * MiB }, volume_capability: mountCap() });
      expect(r).toMatchObject({ capacity_bytes: 16 * MiB, node_expansion_required: true });
      expect(volumeImageSize(s, v!.volume_id!)).toBe(16 * MiB);
      const again = await ctl().ControllerExpandVolume({ volume_id: v!.volume_id, capacity_range: { required_bytes: 4 * MiB } });
      expect(again.capacity_bytes).toBe(16 * MiB);
      expect(await codeOf(ctl().ControllerExpandVolume({ volume_id: v!.volume_id }))).toBe('INVALID_ARGUMENT');
      expect(await codeOf(ctl().ControllerExpandVolume({ capacity_range: { required_bytes: MiB } }))).toBe('INVALID_ARGUMENT');
      expect(await codeOf(ctl().ControllerExpandVolume({ volume_id: 'default-00000000-0000-4000-8000-000000000000', capacity_range: { required_bytes: MiB } }))).toBe('NOT_FOUND');
    });
  });
});
