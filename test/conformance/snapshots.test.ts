import { afterAll, beforeAll, expect } from 'vitest';
import { blockCap, codeOf, MiB, type SinterProcess } from '../helpers/sinter-process.js';
import { conformance, volumeBytes, writeVolumeBytes } from '../helpers/conformance.js';

// perBackend: also run for each LVM backend x target helper (test/vm/lvm-conformance.vm.test.ts).
const { describe, it, startSinter } = conformance();

describe.perBackendType('Snapshots and clones (sinter all)', () => {
  let s: SinterProcess;
  const ctl = () => s.client.controller;
  let volId: string;
  beforeAll(async () => {
    s = await startSinter();
    volId = (await ctl().CreateVolume({ name: 'snap-src', capacity_range: { required_bytes: 4 * MiB }, volume_capabilities: [blockCap()] })).volume!.volume_id!;
    await writeVolumeBytes(s, volId, MiB, Buffer.from('hello from the source volume'));
  });
  afterAll(async () => s?.cleanup());

  it('requires name and source_volume_id; NOT_FOUND for an unknown source', async () => {
    expect(await codeOf(ctl().CreateSnapshot({ source_volume_id: volId }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(ctl().CreateSnapshot({ name: 'x' }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(ctl().CreateSnapshot({ name: 'x', source_volume_id: 'default-00000000-0000-4000-8000-000000000000' }))).toBe('NOT_FOUND');
    expect(await codeOf(ctl().CreateSnapshot({ name: 'x', source_volume_id: volId, parameters: { color: 'red' } }))).toBe('INVALID_ARGUMENT');
  });

  it('is idempotent by name and ALREADY_EXISTS for the same name on another volume', async () => {
    const a = await ctl().CreateSnapshot({ name: 'snap-1', source_volume_id: volId });
    expect(a.snapshot).toMatchObject({ source_volume_id: volId, size_bytes: 4 * MiB, ready_to_use: true });
    expect(a.snapshot!.creation_time!.seconds).toBeGreaterThan(1_700_000_000);
    const b = await ctl().CreateSnapshot({ name: 'snap-1', source_volume_id: volId });
    expect(b.snapshot!.snapshot_id).toBe(a.snapshot!.snapshot_id);
    const other = (await ctl().CreateVolume({ name: 'snap-other', capacity_range: { required_bytes: MiB }, volume_capabilities: [blockCap()] })).volume!.volume_id;
    expect(await codeOf(ctl().CreateSnapshot({ name: 'snap-1', source_volume_id: other }))).toBe('ALREADY_EXISTS');
  });

  it.perBackend('restores a snapshot into a new volume with the same bytes, at least the snapshot size', async () => {
    const snap = (await ctl().CreateSnapshot({ name: 'snap-restore', source_volume_id: volId })).snapshot;
    const small = ctl().CreateVolume({ name: 'restore-small', capacity_range: { required_bytes: MiB, limit_bytes: 2 * MiB }, volume_capabilities: [blockCap()], volume_content_source: { snapshot: { snapshot_id: snap!.snapshot_id } } });
    expect(await codeOf(small)).toBe('OUT_OF_RANGE');
    const v = (await ctl().CreateVolume({ name: 'restore', volume_capabilities: [blockCap()], volume_content_source: { snapshot: { snapshot_id: snap!.snapshot_id } } })).volume;
    expect(v!.capacity_bytes).toBe(4 * MiB);
    expect(v!.content_source!.snapshot!.snapshot_id).toBe(snap!.snapshot_id);
    const data = volumeBytes(s, v!.volume_id!);
    expect(data.subarray(MiB, MiB + 28).toString()).toBe('hello from the source volume');
    expect(await codeOf(ctl().CreateVolume({ name: 'restore-nf', volume_capabilities: [blockCap()], volume_content_source: { snapshot: { snapshot_id: 'default@00000000-0000-4000-8000-000000000000' } } }))).toBe('NOT_FOUND');
  });

  it.perBackend('clones a volume', async () => {
    const v = (await ctl().CreateVolume({ name: 'clone', capacity_range: { required_bytes: 8 * MiB }, volume_capabilities: [blockCap()], volume_content_source: { volume: { volume_id: volId } } })).volume;
    expect(v!.capacity_bytes).toBe(8 * MiB);
    const data = volumeBytes(s, v!.volume_id!);
    expect(data.subarray(MiB, MiB + 28).toString()).toBe('hello from the source volume');
    expect(await codeOf(ctl().CreateVolume({ name: 'clone-nf', volume_capabilities: [blockCap()], volume_content_source: { volume: { volume_id: 'default-00000000-0000-4000-8000-000000000000' } } }))).toBe('NOT_FOUND');
  });

  it('lists with filters and pagination; a bad token is ABORTED', async () => {
    for (let i = 0; i < 4; i++) await ctl().CreateSnapshot({ name: `ls-${i}`, source_volume_id: volId });
    const all = await ctl().ListSnapshots({});
    const ids: string[] = all.entries.map((e) => e.snapshot!.snapshot_id!);
    expect(ids.length).toBeGreaterThanOrEqual(6);
    const one = await ctl().ListSnapshots({ snapshot_id: ids[0] });
    expect(one.entries).toHaveLength(1);
    expect((await ctl().ListSnapshots({ snapshot_id: 'default@00000000-0000-4000-8000-000000000000' })).entries).toHaveLength(0);
    const bySource = await ctl().ListSnapshots({ source_volume_id: volId });
    expect(bySource.entries.every((e) => e.snapshot!.source_volume_id === volId)).toBe(true);
    const paged: string[] = [];
    let token = '';
    do {
      const p = await ctl().ListSnapshots({ max_entries: 2, starting_token: token });
      paged.push(...p.entries.map((e) => e.snapshot!.snapshot_id!));
      token = p.next_token ?? '';
    } while (token);
    expect(paged).toEqual(ids);
    expect(await codeOf(ctl().ListSnapshots({ starting_token: 'nope' }))).toBe('ABORTED');
  });

  it('deletes idempotently; GetSnapshot is NOT_FOUND afterwards; the source can be deleted while snapshots remain', async () => {
    const snap = (await ctl().CreateSnapshot({ name: 'del', source_volume_id: volId })).snapshot;
    expect((await ctl().GetSnapshot({ snapshot_id: snap!.snapshot_id })).snapshot!.snapshot_id).toBe(snap!.snapshot_id);
    await ctl().DeleteSnapshot({ snapshot_id: snap!.snapshot_id });
    await ctl().DeleteSnapshot({ snapshot_id: snap!.snapshot_id });
    expect(await codeOf(ctl().DeleteSnapshot({}))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(ctl().GetSnapshot({ snapshot_id: snap!.snapshot_id }))).toBe('NOT_FOUND');
    const v2 = (await ctl().CreateVolume({ name: 'src2', capacity_range: { required_bytes: MiB }, volume_capabilities: [blockCap()] })).volume!.volume_id;
    const keep = (await ctl().CreateSnapshot({ name: 'keep', source_volume_id: v2 })).snapshot;
    await ctl().DeleteVolume({ volume_id: v2 });
    expect((await ctl().GetSnapshot({ snapshot_id: keep!.snapshot_id })).snapshot!.ready_to_use).toBe(true);
  });
});
