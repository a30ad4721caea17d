import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blockCap, codeOf, MiB, startSinter, type SinterProcess } from '../helpers/sinter-process.js';
import { tempDir } from '../helpers/scratch-fs.js';

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
  const backendOf = (r: { volume: { volume_id: string } }) => r.volume.volume_id.replace(/-[0-9a-f-]{36}$/, '');

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
    await expect(full).rejects.toMatchObject({ code: 8, details: expect.stringMatching(/hdd: \d+ bytes available, 52428800 needed/) });
  });

  it('pins a backend by name, and explains every rejection when nothing fits', async () => {
    expect(backendOf(await create('pin', 1, { backend: 'ssd-b' }))).toBe('ssd-b');
    const r = create('nothing', 500, { type: 'ssd' });
    await expect(r).rejects.toMatchObject({ code: 8, details: expect.stringMatching(/ssd-a: .*needed.*ssd-b: .*needed.*hdd: type is hdd, not ssd/) });
  });

  it('places by topology and reports it', async () => {
    const z = { segments: { 'topology.sinter.csi.io/zone': 'z1' } };
    const r = await create('z', 1, { type: 'zoned' }, { accessibility_requirements: { requisite: [z] } });
    expect(r.volume.accessible_topology).toEqual([z]);
    expect(await codeOf(create('z2', 1, { type: 'zoned' }, { accessibility_requirements: { requisite: [{ segments: { 'topology.sinter.csi.io/zone': 'z2' } }] } }))).toBe('RESOURCE_EXHAUSTED');
    // A backend with no topology is reachable from anywhere.
    expect(backendOf(await create('any', 1, { type: 'hdd' }, { accessibility_requirements: { requisite: [{ segments: { 'topology.sinter.csi.io/zone': 'z2' } }] } }))).toBe('hdd');
  });

  it('clones stay on their source backend', async () => {
    const src = await create('src', 5, { type: 'ssd' });
    const clone = await create('clone', 5, { type: 'ssd' }, { volume_content_source: { volume: { volume_id: src.volume.volume_id } } });
    expect(backendOf(clone)).toBe(backendOf(src));
  });

  it('Probe turns not-ready when a backend stops answering, and ready again when it is back', async () => {
    expect((await s.client.identity.Probe({})).ready.value).toBe(true);
    rmSync(join(t.dir, 'hdd', 'snapshots'), { recursive: true });
    expect((await s.client.identity.Probe({})).ready.value).toBe(false);
    mkdirSync(join(t.dir, 'hdd', 'snapshots'));
    expect((await s.client.identity.Probe({})).ready.value).toBe(true);
  });
});
