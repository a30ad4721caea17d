import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cephForFile, rbdSinterConfig, type FileCeph } from '../helpers/ceph-shared.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { blockCap, codeOf, MiB, startSinter, type SinterProcess } from '../helpers/sinter-process.js';

// Volume group snapshots (CSI GroupController) against `sinter controller`
// with an rbd backend on a real single-node Ceph (a pool of its own on the run's shared cluster): the
// consistent point is `rbd group snap create` on a temporary rbd group, each
// member becomes an ordinary snapshot image, the group is removed. Data is
// written and read with Ceph's own clients (qemu-io's rbd driver, rbd export),
// as client.admin, never through sinter.

describe('rbd group snapshots over CSI: sinter controller on a real Ceph', () => {
  const t = tempDir('sinter-rbd-group-');
  let c: FileCeph;
  let s: SinterProcess;
  let cfg: string;

  const start = () => startSinter({ role: 'controller', base: join(t.dir, 'sinter'), args: ['--config', cfg] });

  beforeAll(async () => {
    c = await cephForFile('rbd-group');
    cfg = join(t.dir, 'sinter.yaml');
    writeFileSync(cfg, rbdSinterConfig(c, { controllerStateDir: join(t.dir, 'controller-state') }));
    s = await start();
  }, 180_000);

  afterAll(async () => {
    await s?.cleanup();
    await c?.stop();
    t.cleanup();
  });

  /** Writes `pattern` over the first MiB of an image, as client.admin through qemu's rbd driver. */
  const write = (image: string, pattern: number) => execa('qemu-io', ['-f', 'raw', '-c', `write -P 0x${pattern.toString(16)} 0 1M`, `rbd:${c.pool}/${image}:id=admin:conf=${c.conf}`]);
  /** The first MiB of an image, as client.admin. */
  const head = async (image: string) => {
    const r = await execa('rbd', ['-c', c.conf, 'export', '--no-progress', `${c.pool}/${image}`, '-'], { encoding: 'buffer', stripFinalNewline: false });
    return Buffer.from(r.stdout).subarray(0, MiB);
  };
  const filled = (pattern: number) => Buffer.alloc(MiB, pattern);
  const groups = async () => JSON.parse((await c.rbd(['group', 'ls', '--format', 'json', c.pool])) || '[]') as string[];
  const images = async () => (await c.rbd(['ls', c.pool])).split('\n').filter(Boolean);

  const newVolume = async (name: string) =>
    (await s.client.controller.CreateVolume({ name, capacity_range: { required_bytes: 32 * MiB }, volume_capabilities: [blockCap()], parameters: {} })).volume!.volume_id!;

  it('advertises the GroupController and its one capability', async () => {
    const caps = (await s.client.identity.GetPluginCapabilities({})).capabilities.map((x) => x.service?.type).filter(Boolean);
    expect(caps).toContain('GROUP_CONTROLLER_SERVICE');
    const g = await s.client.groupController.GroupControllerGetCapabilities({});
    expect(g.capabilities.map((x) => x.rpc?.type)).toEqual(['CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT']);
  });

  it('cuts three written volumes at one point, restores each member with its bytes, is idempotent by name, refuses member deletes, deletes with the group', async () => {
    const ctl = s.client.controller;
    const gc = s.client.groupController;
    const vols = [await newVolume('pvc-g-1'), await newVolume('pvc-g-2'), await newVolume('pvc-g-3')];
    for (const [i, v] of vols.entries()) await write(v, 0x41 + i);

    const g = (await gc.CreateVolumeGroupSnapshot({ name: 'vgs-1', source_volume_ids: vols })).group_snapshot!;
    expect(g.group_snapshot_id).toMatch(/^ceph\.group\.[0-9a-f-]{36}$/);
    expect(g.ready_to_use).toBe(true);
    expect(g.snapshots.map((x) => x.source_volume_id)).toEqual(vols);
    for (const m of g.snapshots) expect(m).toMatchObject({ group_snapshot_id: g.group_snapshot_id, ready_to_use: true, size_bytes: 32 * MiB });
    const memberIds = g.snapshots.map((x) => x.snapshot_id!);
    // The temporary rbd group is gone: the volumes can join the next group snapshot.
    expect(await groups()).toEqual([]);

    // Written after the cut: must not reach the members.
    for (const v of vols) await write(v, 0x7a);

    // Idempotent by name (any order of the same volumes); other volumes under that name are refused.
    const again = (await gc.CreateVolumeGroupSnapshot({ name: 'vgs-1', source_volume_ids: [...vols].reverse() })).group_snapshot!;
    expect(again.group_snapshot_id).toBe(g.group_snapshot_id);
    expect(again.snapshots.map((x) => x.snapshot_id)).toEqual(memberIds);
    expect(await codeOf(gc.CreateVolumeGroupSnapshot({ name: 'vgs-1', source_volume_ids: vols.slice(0, 2) }))).toBe('ALREADY_EXISTS');

    const got = (await gc.GetVolumeGroupSnapshot({ group_snapshot_id: g.group_snapshot_id, snapshot_ids: memberIds })).group_snapshot!;
    expect(got.snapshots.map((x) => x.snapshot_id)).toEqual(memberIds);
    expect(await codeOf(gc.GetVolumeGroupSnapshot({ group_snapshot_id: g.group_snapshot_id, snapshot_ids: memberIds.slice(1) }))).toBe('INVALID_ARGUMENT');
    // Members are snapshots like any other (GetSnapshot, ListSnapshots), naming their group.
    expect((await ctl.GetSnapshot({ snapshot_id: memberIds[0] })).snapshot).toMatchObject({ group_snapshot_id: g.group_snapshot_id, source_volume_id: vols[0] });
    const listed = (await ctl.ListSnapshots({ source_volume_id: vols[1] })).entries.map((e) => e.snapshot!);
    expect(listed).toEqual([expect.objectContaining({ snapshot_id: memberIds[1], group_snapshot_id: g.group_snapshot_id })]);
    // The spec: a member cannot be deleted alone (INVALID_ARGUMENT), and stays.
    expect(await codeOf(ctl.DeleteSnapshot({ snapshot_id: memberIds[0] }))).toBe('INVALID_ARGUMENT');
    expect((await ctl.GetSnapshot({ snapshot_id: memberIds[0] })).snapshot?.snapshot_id).toBe(memberIds[0]);

    // Each member restores to a new volume holding what its volume held at the cut.
    const restored: string[] = [];
    for (const [i, m] of memberIds.entries()) {
      const r = (await ctl.CreateVolume({ name: `pvc-r-${i}`, capacity_range: { required_bytes: 32 * MiB }, volume_capabilities: [blockCap()], volume_content_source: { snapshot: { snapshot_id: m } } })).volume!;
      expect(r.content_source?.snapshot?.snapshot_id).toBe(m);
      restored.push(r.volume_id!);
      expect((await head(r.volume_id!)).equals(filled(0x41 + i))).toBe(true);
    }
    for (const v of vols) expect((await head(v)).equals(filled(0x7a))).toBe(true);

    // The same volumes join a second group snapshot; it sees the later bytes.
    const g2 = (await gc.CreateVolumeGroupSnapshot({ name: 'vgs-2', source_volume_ids: vols.slice(0, 2) })).group_snapshot!;
    expect(g2.snapshots).toHaveLength(2);
    const r2 = (await ctl.CreateVolume({ name: 'pvc-r2', capacity_range: { required_bytes: 32 * MiB }, volume_capabilities: [blockCap()], volume_content_source: { snapshot: { snapshot_id: g2.snapshots[0].snapshot_id } } })).volume!.volume_id!;
    expect((await head(r2)).equals(filled(0x7a))).toBe(true);

    // Delete: a wrong member list is refused; the right one deletes group and members; again is OK.
    expect(await codeOf(gc.DeleteVolumeGroupSnapshot({ group_snapshot_id: g.group_snapshot_id, snapshot_ids: [memberIds[0]] }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(gc.DeleteVolumeGroupSnapshot({ group_snapshot_id: g.group_snapshot_id, snapshot_ids: memberIds }))).toBe('OK');
    expect(await codeOf(gc.DeleteVolumeGroupSnapshot({ group_snapshot_id: g.group_snapshot_id, snapshot_ids: memberIds }))).toBe('OK');
    expect(await codeOf(gc.GetVolumeGroupSnapshot({ group_snapshot_id: g.group_snapshot_id, snapshot_ids: memberIds }))).toBe('NOT_FOUND');
    for (const m of memberIds) expect(await codeOf(ctl.GetSnapshot({ snapshot_id: m }))).toBe('NOT_FOUND');
    // Volumes restored from the members keep their bytes after the members go (a member in use waits in the trash).
    expect((await head(restored[2])).equals(filled(0x43))).toBe(true);

    // A sinter restart reads the surviving group snapshot back from its members' records.
    await s.stop();
    s = await start();
    const back = (await s.client.groupController.GetVolumeGroupSnapshot({ group_snapshot_id: g2.group_snapshot_id, snapshot_ids: [] })).group_snapshot!;
    expect(back.snapshots.map((x) => x.snapshot_id)).toEqual(g2.snapshots.map((x) => x.snapshot_id));
    expect(await codeOf(s.client.groupController.CreateVolumeGroupSnapshot({ name: 'vgs-2', source_volume_ids: vols.slice(0, 2) }))).toBe('OK');

    for (const v of [...restored, r2]) expect(await codeOf(s.client.controller.DeleteVolume({ volume_id: v }))).toBe('OK');
    expect(await codeOf(s.client.groupController.DeleteVolumeGroupSnapshot({ group_snapshot_id: g2.group_snapshot_id, snapshot_ids: g2.snapshots.map((x) => x.snapshot_id!) }))).toBe('OK');
    for (const v of vols) expect(await codeOf(s.client.controller.DeleteVolume({ volume_id: v }))).toBe('OK');
    expect(await images()).toEqual([]);
    expect(JSON.parse((await c.rbd(['trash', 'ls', '--all', '--format', 'json', c.pool])) || '[]')).toEqual([]);
    expect(s.logs()).not.toContain(c.key);
  }, 240_000);

  it('refuses bad requests with the field named', async () => {
    const gc = s.client.groupController;
    const v = await newVolume('pvc-g-err');
    expect(await codeOf(gc.CreateVolumeGroupSnapshot({ name: '', source_volume_ids: [v] }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(gc.CreateVolumeGroupSnapshot({ name: 'e1', source_volume_ids: [] }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(gc.CreateVolumeGroupSnapshot({ name: 'e2', source_volume_ids: [v, v] }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(gc.CreateVolumeGroupSnapshot({ name: 'e3', source_volume_ids: [v], parameters: { pool: 'x' } }))).toBe('INVALID_ARGUMENT');
    await expect(gc.CreateVolumeGroupSnapshot({ name: 'e4', source_volume_ids: [v, `ceph-${randomUUID()}`] })).rejects.toMatchObject({ code: 5, details: expect.stringMatching(/source_volume_ids\[1\]/) as unknown });
    expect(await codeOf(gc.DeleteVolumeGroupSnapshot({ group_snapshot_id: '' }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(gc.DeleteVolumeGroupSnapshot({ group_snapshot_id: `ceph.group.${randomUUID()}`, snapshot_ids: [] }))).toBe('OK');
    expect(await codeOf(gc.GetVolumeGroupSnapshot({ group_snapshot_id: 'not-a-group' }))).toBe('NOT_FOUND');
    // Nothing was cut by the refusals.
    expect(await groups()).toEqual([]);
    expect((await images()).filter((i) => i.includes('.snap.'))).toEqual([]);
    expect(await codeOf(s.client.controller.DeleteVolume({ volume_id: v }))).toBe('OK');
  });

  it('a start rolls back a group snapshot a crash interrupted (the rbd group still there, one member recorded, one not)', async () => {
    const v1 = await newVolume('pvc-c-1');
    const v2 = await newVolume('pvc-c-2');
    await s.stop();
    // What a crash between the copies leaves: the group with its snapshot, one member image with its record, one without.
    const gid = `ceph.group.${randomUUID()}`;
    const [m1, m2] = [randomUUID(), randomUUID()];
    await c.rbd(['group', 'create', `${c.pool}/${gid}`]);
    for (const v of [v1, v2]) await c.rbd(['group', 'image', 'add', `${c.pool}/${gid}`, `${c.pool}/${v}`]);
    await c.rbd(['group', 'snap', 'create', `${c.pool}/${gid}@sinter`]);
    for (const m of [m1, m2]) await c.rbd(['create', '--size', '32M', `${c.pool}/ceph.snap.${m}`]);
    const t0 = new Date().toISOString();
    const group = { id: gid, name: 'vgs-crash', backend: 'ceph', sourceVolumeIds: [v1, v2], snapshotIds: [`ceph@${m1}`, `ceph@${m2}`], parameters: {}, createdAt: t0 };
    const rec = { id: `ceph@${m1}`, name: `vgs-crash/${v1}`, backend: 'ceph', sourceVolumeId: v1, sizeBytes: 32 * MiB, state: 'available', groupSnapshotId: gid, createdAt: t0, updatedAt: t0, rbd: { cloneDepth: 0, group } };
    await c.rbd(['image-meta', 'set', `${c.pool}/ceph.snap.${m1}`, 'sinter.snapshot', JSON.stringify(rec)]);

    s = await start();
    expect(s.logs()).toMatch(/group snapshot ceph\.group\.[0-9a-f-]+: rolled back an interrupted create/);
    expect(await groups()).toEqual([]);
    expect((await images()).sort()).toEqual([v1, v2].sort());
    expect(await codeOf(s.client.controller.GetSnapshot({ snapshot_id: `ceph@${m1}` }))).toBe('NOT_FOUND');
    expect(await codeOf(s.client.groupController.GetVolumeGroupSnapshot({ group_snapshot_id: gid }))).toBe('NOT_FOUND');
    // The CO's retry cuts it anew.
    const g = (await s.client.groupController.CreateVolumeGroupSnapshot({ name: 'vgs-crash', source_volume_ids: [v1, v2] })).group_snapshot!;
    expect(g.ready_to_use).toBe(true);
    expect(await codeOf(s.client.groupController.DeleteVolumeGroupSnapshot({ group_snapshot_id: g.group_snapshot_id, snapshot_ids: g.snapshots.map((x) => x.snapshot_id!) }))).toBe('OK');
    for (const v of [v1, v2]) expect(await codeOf(s.client.controller.DeleteVolume({ volume_id: v }))).toBe('OK');
    expect(await images()).toEqual([]);
  }, 120_000);
});
