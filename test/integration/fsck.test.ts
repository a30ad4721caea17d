import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describe as describeReport, fsckCli, kinds } from '../helpers/fsck.js';
import { MAIN, MiB, mountCap, startSinter, type SinterProcess } from '../helpers/sinter-process.js';

const loopsOf = async (file: string) =>
  (await execa('losetup', ['--list', '--noheadings', '--output', 'NAME', '--associated', file])).stdout.split('\n').filter(Boolean);

describe('sinter fsck', () => {
  let s: SinterProcess;
  let nodeId: string;
  const ids: Record<string, string> = {};
  const vols = () => join(s.dataDir, 'volumes');
  const snaps = () => join(s.dataDir, 'snapshots');
  const rec = (id: string) => JSON.parse(readFileSync(join(vols(), `${id}.json`), 'utf8')) as Record<string, unknown>;
  const put = (id: string, patch: object) => writeFileSync(join(vols(), `${id}.json`), JSON.stringify({ ...rec(id), ...patch }));
  let stageA: Record<string, unknown>;

  beforeAll(async () => {
    s = await startSinter();
    nodeId = (await s.client.node.NodeGetInfo({})).node_id!;
    for (const n of ['a', 'b', 'c']) {
      ids[n] = (await s.client.controller.CreateVolume({ name: `fsck-${n}`, capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [mountCap()] })).volume!.volume_id!;
    }
    await s.client.controller.CreateSnapshot({ name: 'fsck-snap', source_volume_id: ids.a });
    const ctx = (await s.client.controller.ControllerPublishVolume({ volume_id: ids.a, node_id: nodeId, volume_capability: mountCap() })).publish_context;
    const staging = join(s.kubeletRoot, 'staging', ids.a);
    mkdirSync(staging, { recursive: true });
    stageA = { volume_id: ids.a, staging_target_path: staging, volume_capability: mountCap(), publish_context: ctx };
    await s.client.node.NodeStageVolume(stageA);
  });
  afterAll(async () => {
    await s?.cleanup();
    // The restarted sinter was given the first one's base, which cleanup leaves to its owner.
    if (s) rmSync(s.base, { recursive: true, force: true });
  });

  it('is clean on a healthy system, read-only while sinter runs, and refuses --repair then', async () => {
    const r = await fsckCli(s);
    expect(r.report.findings, describeReport(r.report)).toEqual([]);
    expect(r.code).toBe(0);
    expect(r.report.sections.map((x) => x.area)).toEqual(['backend default', 'exports default', 'node']);
    const human = await execa('node', [MAIN, 'fsck', '--data-dir', s.dataDir, '--kubelet-root', s.kubeletRoot], { reject: false });
    expect(human.exitCode).toBe(0);
    expect(human.stdout).toContain('clean: nothing is out of step');
    const repair = await fsckCli(s, ['--repair']).catch((e: Error) => e);
    expect(String((repair as Error).message ?? '')).toContain('exited 2');
  });

  it('exits 2 on a usage error', async () => {
    const r = await execa('node', [MAIN, 'fsck', '--data-dir', s.dataDir, '--no-such-flag'], { reject: false });
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain('--no-such-flag');
    const noBackend = await execa('node', [MAIN, 'fsck', '--kubelet-root', s.kubeletRoot], { reject: false });
    expect(noBackend.exitCode).toBe(2);
    expect(noBackend.stderr).toContain('sinter fsck node');
  });

  it('names every kind of damage with its remedy, and a restart repairs exactly those marked restart', async () => {
    await s.stop();
    // Controller side.
    put(ids.b, { state: 'deleting' });
    const creating = `default-${randomUUID()}`;
    writeFileSync(join(vols(), `${creating}.json`), JSON.stringify({ ...rec(ids.c), id: creating, name: 'fsck-half', state: 'creating' }));
    writeFileSync(join(vols(), `${creating}.img`), 'partial');
    truncateSync(join(vols(), `${ids.c}.img`), 32 * MiB);
    writeFileSync(join(vols(), `.${ids.c}.json.0badf00d.tmp`), '{"half');
    writeFileSync(join(vols(), `default-${randomUUID()}.json`), 'not json');
    const orphan = join(vols(), `default-${randomUUID()}.img`);
    writeFileSync(orphan, '');
    const snapId = `default@${randomUUID()}`;
    writeFileSync(join(snaps(), `${snapId}.json`), JSON.stringify({ id: snapId, name: 'fsck-snap-half', backend: 'default', sourceVolumeId: ids.a, sizeBytes: 16 * MiB, state: 'creating', createdAt: '', updatedAt: '' }));
    // Node side: a staged volume lost its mount; a device from our roots nobody records.
    await execa('umount', [stageA.staging_target_path as string]);
    const cImage = join(vols(), `${ids.c}.img`);
    await execa('losetup', ['--find', '--show', cImage]);

    const before = await fsckCli(s);
    expect(before.code).toBe(1);
    expect(kinds(before.report), describeReport(before.report)).toEqual(
      [
        'interrupted-delete restart',
        'interrupted-create restart',
        'interrupted-create restart',
        'interrupted-expand restart',
        'stray-temp restart',
        'unreadable-record operator',
        'orphan-image operator',
        'staging-mount-missing retry',
        'untracked-device restart',
      ].sort(),
    );
    expect(before.report.counts).toEqual({ restart: 6, retry: 1, operator: 2 });
    const human = await execa('node', [MAIN, 'fsck', '--data-dir', s.dataDir, '--kubelet-root', s.kubeletRoot], { reject: false });
    expect(human.exitCode).toBe(1);
    expect(human.stdout).toMatch(/restart {3}interrupted-delete {2}volume default-/);
    expect(human.stdout).toContain('9 findings: 6 a restart repairs, 1 the CO\'s retry finishes, 2 need an operator');

    s = await startSinter({ base: s.base });
    const after = await fsckCli(s);
    expect(kinds(after.report), describeReport(after.report)).toEqual(['orphan-image operator', 'staging-mount-missing retry', 'unreadable-record operator']);
    expect(await loopsOf(cImage)).toEqual([]);
    const listed = (await s.client.controller.ListVolumes({})).entries.map((e) => [e.volume!.volume_id, Number(e.volume!.capacity_bytes)]);
    expect(listed.sort()).toEqual([[ids.a, 16 * MiB], [ids.c, 32 * MiB]].sort());
    expect(existsSync(join(vols(), `${ids.b}.img`))).toBe(false);
    expect(existsSync(join(vols(), `${creating}.img`))).toBe(false);
    expect(existsSync(orphan)).toBe(true);

    // The CO's retried stage settles the node; what is left needs a person.
    await s.client.node.NodeStageVolume(stageA);
    expect(kinds((await fsckCli(s)).report)).toEqual(['orphan-image operator', 'unreadable-record operator']);
  });

  it('--repair does what a start does while sinter is stopped', async () => {
    await s.stop();
    const temp = join(vols(), `.${ids.a}.json.12345678.tmp`);
    writeFileSync(temp, '{');
    put(ids.c, { state: 'deleting' });
    const r = await fsckCli(s, ['--repair']);
    expect(r.code).toBe(1);
    expect(kinds(r.report)).toEqual(['orphan-image operator', 'unreadable-record operator']);
    expect((r.report as unknown as { repaired: { kind: string }[] }).repaired.map((f) => f.kind).sort()).toEqual(['interrupted-delete', 'stray-temp']);
    expect(existsSync(temp)).toBe(false);
    expect(existsSync(join(vols(), `${ids.c}.img`))).toBe(false);
    expect(statSync(join(vols(), `${ids.a}.img`)).size).toBe(16 * MiB);
  });
});
