import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blockCap, codeOf, MiB, startSinter, type SinterProcess } from '../helpers/sinter-process.js';
import { tempDir } from '../helpers/scratch-fs.js';
import type { CreateVolumeResponse__Output } from '../../src/csi/generated/csi/v1/CreateVolumeResponse.js';
import { stringMatching } from '../helpers/matchers.js';

describe('several backends (Cinder enabled_backends) behind one controller', () => {
  let s: SinterProcess;
  const t = tempDir('sinter-sched-');
  beforeAll(async () => {
    const cfg = join(t.dir, 'sinter.yaml');
    writeFileSync(
      cfg,
      [
        'backends:',
        `  - { name: ssd-a, driver: file, dataDir: ${t.dir}/ssd-a, labels: { type: ssd }, capacityBytes: ${100 * MiB} }`,
        `  - { name: ssd-b, driver: file, dataDir: ${t.dir}/ssd-b, labels: { type: ssd }, capacityBytes: ${60 * MiB} }`,
        `  - { name: hdd, driver: file, dataDir: ${t.dir}/hdd, labels: { type: hdd }, capacityBytes: ${50 * MiB}, overSubscriptionRatio: 4, reservedPercent: 10 }`,
        `  - { name: zoned, driver: file, dataDir: ${t.dir}/zoned, labels: { type: zoned }, topology: { topology.sinter.csi.io/zone: z1 }, capacityBytes: ${100 * MiB} }`,
      ].join('\n'),
    );
    mkdirSync(join(t.dir, 'run'));
    s = await startSinter({ role: 'controller', base: join(t.dir, 'run'), args: ['--config', cfg] });
  });
  afterAll(async () => {
    await s?.cleanup();
    rmSync(t.dir, { recursive: true, force: true });
  });

  const create = (name: string, mib: number, parameters: Record<string, string> = {}, extra: object = {}) =>
    s.client.controller.CreateVolume({ name, capacity_range: { required_bytes: mib * MiB }, volume_capabilities: [blockCap()], parameters, ...extra });
  const backendOf = (r: CreateVolumeResponse__Output) => r.volume!.volume_id!.replace(/-[0-9a-f-]{36}$/, '');

  it('filters by type and weighs by free space', async () => {
    // ssd-a (100 MiB) has the most room, so it wins until its free space drops below ssd-b's (60 MiB).
    expect(backendOf(await create('w1', 50, { type: 'ssd' }))).toBe('ssd-a');
    expect(backendOf(await create('w2', 30, { type: 'ssd' }))).toBe('ssd-b');
    expect(backendOf(await create('w3', 10, { type: 'ssd' }))).toBe('ssd-a');
    expect(backendOf(await create('h1', 10, { type: 'hdd' }))).toBe('hdd');
  });

  it('over-subscribes thin backends by their ratio, minus the reserve', async () => {
    // hdd: 50 MiB × 4 = 200 MiB promised at most, minus a 10 % reserve (5 MiB) and the 10 MiB already promised.
    const cap = await s.client.controller.GetCapacity({ parameters: { type: 'hdd' } });
    expect(cap.available_capacity).toBe(200 * MiB - 5 * MiB - 10 * MiB);
    expect(backendOf(await create('h2', 150, { type: 'hdd' }))).toBe('hdd');
    const full = create('h3', 50, { type: 'hdd' });
    await expect(full).rejects.toMatchObject({ code: 8, details: stringMatching(/hdd: \d+ bytes available, 52428800 needed/) });
  });

  it('pins a backend by name, and explains every rejection when nothing fits', async () => {
    expect(backendOf(await create('pin', 1, { backend: 'ssd-b' }))).toBe('ssd-b');
    const r = create('nothing', 500, { type: 'ssd' });
    await expect(r).rejects.toMatchObject({ code: 8, details: stringMatching(/ssd-a: .*needed.*ssd-b: .*needed.*hdd: type is hdd, not ssd/) });
  });

  it('places by topology and reports it', async () => {
    const z = { segments: { 'topology.sinter.csi.io/zone': 'z1' } };
    const r = await create('z', 1, { type: 'zoned' }, { accessibility_requirements: { requisite: [z] } });
    expect(r.volume!.accessible_topology).toEqual([z]);
    expect(await codeOf(create('z2', 1, { type: 'zoned' }, { accessibility_requirements: { requisite: [{ segments: { 'topology.sinter.csi.io/zone': 'z2' } }] } }))).toBe('RESOURCE_EXHAUSTED');
    // A backend with no topology is reachable from anywhere.
    expect(backendOf(await create('any', 1, { type: 'hdd' }, { accessibility_requirements: { requisite: [{ segments: { 'topology.sinter.csi.io/zone': 'z2' } }] } }))).toBe('hdd');
  });

  it("without strict topology (requisite: every node's segment, the selected node's first in preferred) a backend the selected node reaches wins, even one without topology", async () => {
    // csi-provisioner's default for a WaitForFirstConsumer claim: requisite = every node's segment, preferred starts with the selected node's.
    const z1 = { segments: { 'topology.sinter.csi.io/zone': 'z1' } };
    const z9 = { segments: { 'topology.sinter.csi.io/zone': 'z9' } };
    // The pod is on a node in z9: only the backends without topology reach it, though zoned (z1) has the most room.
    const r = await create('pref', 1, {}, { accessibility_requirements: { requisite: [z1, z9], preferred: [z9, z1] } });
    expect(backendOf(r)).not.toBe('zoned');
    expect(r.volume!.accessible_topology).toEqual([]);
    // On a node in z1 the zoned backend is reachable, and has the most room.
    expect(backendOf(await create('pref2', 1, {}, { accessibility_requirements: { requisite: [z1, z9], preferred: [z1, z9] } }))).toBe('zoned');
  });

  it('GetCapacity: the filters of CreateVolume, per segment and parameters; the largest creatable size and the smallest', async () => {
    const z1 = { segments: { 'topology.sinter.csi.io/zone': 'z1' } };
    const cap = (parameters: Record<string, string>, accessible_topology?: object, extra: object = {}) => s.client.controller.GetCapacity({ parameters, accessible_topology, ...extra });
    const zoned = await cap({ type: 'zoned' }, z1);
    expect(zoned.available_capacity).toBeGreaterThan(0);
    expect((await cap({ type: 'zoned' }, { segments: { 'topology.sinter.csi.io/zone': 'z2' } })).available_capacity ?? 0).toBe(0);
    expect((await cap({ type: 'zoned' })).available_capacity).toBe(zoned.available_capacity);
    // The largest size is whole MiB: exactly that is created, one byte more is not.
    const max = Number(zoned.maximum_volume_size!.value);
    expect(max % MiB).toBe(0);
    expect(await codeOf(create('gc-over', 0, { type: 'zoned' }, { capacity_range: { required_bytes: max + 1 }, accessibility_requirements: { requisite: [z1] } }))).toBe('RESOURCE_EXHAUSTED');
    const made = await create('gc-max', 0, { type: 'zoned' }, { capacity_range: { required_bytes: max }, accessibility_requirements: { requisite: [z1] } });
    expect((await cap({ type: 'zoned' }, z1)).available_capacity).toBe(zoned.available_capacity! - max);
    await s.client.controller.DeleteVolume({ volume_id: made.volume!.volume_id });
    // Smallest: 1 MiB, or mkfs's floor when a filesystem is made (from a capability or the class's csi.storage.k8s.io/fstype).
    expect(Number((await cap({})).minimum_volume_size!.value)).toBe(MiB);
    expect(Number((await cap({ 'csi.storage.k8s.io/fstype': 'xfs' })).minimum_volume_size!.value)).toBe(300 * MiB);
    expect(Number((await cap({}, undefined, { volume_capabilities: [{ mount: { fs_type: 'btrfs' }, access_mode: { mode: 'SINGLE_NODE_WRITER' } }] })).minimum_volume_size!.value)).toBe(128 * MiB);
    // Parameters are refused as CreateVolume refuses them.
    expect(await codeOf(cap({ tpye: 'ssd' }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(cap({ 'csi.storage.k8s.io/fstype': 'ntfs' }))).toBe('INVALID_ARGUMENT');
  });

  it('clones stay on their source backend', async () => {
    const src = await create('src', 5, { type: 'ssd' });
    const clone = await create('clone', 5, { type: 'ssd' }, { volume_content_source: { volume: { volume_id: src.volume!.volume_id } } });
    expect(backendOf(clone)).toBe(backendOf(src));
  });

  it('Probe turns not-ready when a backend stops answering, and ready again when it is back', async () => {
    expect((await s.client.identity.Probe({})).ready!.value).toBe(true);
    rmSync(join(t.dir, 'hdd', 'snapshots'), { recursive: true });
    expect((await s.client.identity.Probe({})).ready!.value).toBe(false);
    mkdirSync(join(t.dir, 'hdd', 'snapshots'));
    expect((await s.client.identity.Probe({})).ready!.value).toBe(true);
  });
});
