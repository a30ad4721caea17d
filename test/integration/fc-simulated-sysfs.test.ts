// The FC connector against a SIMULATED SYSFS: no FC hardware exists here, so
// the HBAs, remote ports, SCSI disks, by-path links and multipath maps are a
// fake sysfs + /dev tree (test/helpers/simulated-sysfs.ts) whose block device
// nodes are REAL loop devices. Staging formats and mounts for real; discovery,
// scan writes, multipath choice and deletion are checked against the tree.
import { readFile, realpath, statfs, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Code } from '../../src/errors/domain-error.js';
import { FcConnector, onlineInitiatorWwpns } from '../../src/node/connectors/fc.js';
import { parseMountInfo } from '../../src/node/mount.js';
import { csiError, MiB, mountCap, NodeEnv } from '../helpers/node-env.js';
import { SimExecutor, SimulatedSan, type Lun } from '../helpers/simulated-sysfs.js';

const HBA1 = '10000000c9a1b2c3';
const HBA2 = '10000000c9a1b2c4';
const TGT_A = '500601603ba02c1f'; // the array's port on fabric A
const TGT_B = '500601683ba02c1f'; // … and on fabric B
const WWID3 = 'naa.600601601234560000000000000000a3';
const WWID4 = 'naa.600601601234560000000000000000a4';

let env: NodeEnv;
let san: SimulatedSan;

beforeEach(async () => {
  env = await NodeEnv.create();
  san = await SimulatedSan.create(join(env.dir, 'san'));
  env.deps = { exec: new SimExecutor(san), fc: { sysfs: san.sysfs, scanTimeoutMs: 5000, removeTimeoutMs: 5000, initialBackoffMs: 20, maxBackoffMs: 200 } };
  env.restart();
  await env.svc.start();
});

afterEach(async () => {
  // Unmounts and detaches everything under env.dir (the SAN's loop devices
  // included), then the SAN drops whatever is left of its own.
  await env?.cleanup();
  await san?.cleanup();
});

/** One fabric: HBA host1 sees target port A as SCSI target 0. */
async function oneFabric(): Promise<void> {
  await san.addHba(1, HBA1);
  await san.addRemotePort(1, 0, 0, 0, TGT_A);
}

/** Two fabrics: host1 sees port A, host2 sees port B, each as its SCSI target 0. */
async function twoFabrics(): Promise<void> {
  await san.addHba(1, HBA1);
  await san.addHba(2, HBA2);
  await san.addRemotePort(1, 0, 0, 0, TGT_A);
  await san.addRemotePort(2, 0, 0, 0, TGT_B);
}

function fcReq(vol: string, lun: number, wwns = [TGT_A], fs = 'ext4') {
  return {
    volume_id: vol,
    publish_context: { transport: 'fc', wwns: wwns.join(','), lun: String(lun) },
    staging_target_path: join(env.kubelet, 'staging', vol),
    volume_capability: mountCap(fs),
    secrets: {},
    volume_context: {},
  };
}

async function mountAt(path: string) {
  return parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8')).find((m) => m.mountPoint === path);
}

/** The device node a mount shows, resolved (mount(8) canonicalizes /dev/mapper links to the dm node). */
async function mountedDevice(path: string): Promise<string | undefined> {
  const m = await mountAt(path);
  return m && realpath(m.source);
}

const mapperOf = (name: string) => realpath(join(san.dev, 'mapper', name));

async function stateOf(vol: string) {
  return JSON.parse(await readFile(join(env.stateDir, 'volumes', `${vol}.json`), 'utf8')) as { phase: string; device?: string; lastError?: string };
}

/** Stage, publish, write a file through the pod's view, unpublish: the volume really works. */
async function useVolume(vol: string, req: ReturnType<typeof fcReq>): Promise<void> {
  const target = env.target(vol);
  await env.h.NodePublishVolume({ volume_id: vol, staging_target_path: req.staging_target_path, target_path: target, volume_capability: req.volume_capability });
  await writeFile(join(target, 'hello'), vol);
  expect(await readFile(join(req.staging_target_path, 'hello'), 'utf8')).toBe(vol);
  await env.h.NodeUnpublishVolume({ volume_id: vol, target_path: target });
}

const twoPaths = (lun: Lun, l: number, first = 'sdb', second = 'sdc') => [
  { disk: first, host: 1, channel: 0, target: 0, lun: l, wwn: TGT_A, image: lun },
  { disk: second, host: 2, channel: 0, target: 0, lun: l, wwn: TGT_B, image: lun },
];

describe('FC connector on a simulated sysfs (real loop devices, real mkfs and mount)', () => {
  it('NodeGetInfo material: only online HBA ports count', async () => {
    await san.addHba(1, HBA1);
    await san.addHba(2, HBA2, 'Linkdown');
    expect(onlineInitiatorWwpns(san.sys)).toEqual([HBA1]);
    expect(onlineInitiatorWwpns(join(env.dir, 'no-such-sysfs'))).toEqual([]);
  });

  it('single path: scans exactly C T L on the HBA that sees the target, stages through the disk, and removes it on unstage', async () => {
    await oneFabric();
    const lun = await san.lun('l3', 64 * MiB, WWID3);
    san.presentOnScan({ disk: 'sdb', host: 1, channel: 0, target: 0, lun: 3, wwn: TGT_A, image: lun });
    const req = fcReq('fc-single', 3);
    await env.h.NodeStageVolume(req);

    expect(san.scansOf(1)).toEqual(['0 0 3']);
    const staged = await mountAt(req.staging_target_path);
    expect(staged?.source).toBe(join(san.dev, 'sdb'));
    expect(staged?.fsType).toBe('ext4');
    expect((await stateOf('fc-single')).device).toBe(join(san.dev, 'sdb'));
    await useVolume('fc-single', req);

    // Staging again finds the attachment: no new scan.
    await env.h.NodeStageVolume(req);
    expect(san.scansOf(1)).toHaveLength(1);

    await env.h.NodeUnstageVolume({ volume_id: 'fc-single', staging_target_path: req.staging_target_path });
    expect(san.writtenTo('delete')).toEqual(['sdb']);
    expect(await san.pathExists('sdb')).toBe(false);
    expect(await mountAt(req.staging_target_path)).toBeUndefined();
    expect(san.commands).toEqual([]); // no multipath map was involved
    // Idempotent: nothing left to remove, nothing written.
    await env.h.NodeUnstageVolume({ volume_id: 'fc-single', staging_target_path: req.staging_target_path });
    expect(san.writtenTo('delete')).toEqual(['sdb']);
  });

  it('resolves an already-present LUN by its /dev/disk/by-path link without scanning', async () => {
    await oneFabric();
    const lun = await san.lun('l7', 32 * MiB, WWID3);
    await san.addDisk({ disk: 'sdf', host: 1, channel: 0, target: 0, lun: 7, wwn: TGT_A, image: lun });
    expect(Object.keys(await san.byPathLinks())).toEqual([`pci-0000:05:00.1-fc-0x${TGT_A}-lun-7`]);
    const fc = new FcConnector(new SimExecutor(san), { sysfs: san.sysfs, scanTimeoutMs: 1000, removeTimeoutMs: 1000 });
    const ctx = { transport: 'fc' as const, wwns: [TGT_A], lun: 7 };
    expect(await fc.find(ctx)).toBe(join(san.dev, 'sdf'));
    expect(await fc.connect(ctx, {})).toBe(join(san.dev, 'sdf'));
    expect(san.scansOf(1)).toEqual([]);
    expect(await fc.condition(ctx, join(san.dev, 'sdf'))).toMatchObject({ abnormal: false, attached: true });
    // Another LUN number is not this disk.
    expect(await fc.find({ ...ctx, lun: 8 })).toBeUndefined();
    await fc.disconnect(ctx, join(san.dev, 'sdf'));
    expect(await san.pathExists('sdf')).toBe(false);
  });

  it('two paths + multipath: stages the dm map, never a path; unstage flushes the map and deletes both paths', async () => {
    await twoFabrics();
    san.multipathd = true;
    const lun = await san.lun('l3', 64 * MiB, WWID3);
    for (const p of twoPaths(lun, 3)) san.presentOnScan(p);
    const req = fcReq('fc-mp', 3, [TGT_A, TGT_B]);
    await env.h.NodeStageVolume(req);

    expect(san.scansOf(1)).toEqual(['0 0 3']);
    expect(san.scansOf(2)).toEqual(['0 0 3']);
    expect(await mountedDevice(req.staging_target_path)).toBe(await mapperOf('mpatha'));
    expect(await mapperOf('mpatha')).toBe(join(san.dev, 'dm-0'));
    expect((await stateOf('fc-mp')).device).toBe(join(san.dev, 'mapper', 'mpatha'));
    // Neither path is mounted anywhere.
    const table = parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'));
    for (const d of ['sdb', 'sdc']) expect(table.some((m) => m.source === join(san.dev, d))).toBe(false);
    await useVolume('fc-mp', req);

    await env.h.NodeUnstageVolume({ volume_id: 'fc-mp', staging_target_path: req.staging_target_path });
    expect(san.commands).toEqual(['multipath -f mpatha']);
    expect(san.writtenTo('delete').sort()).toEqual(['sdb', 'sdc']);
    for (const d of ['sdb', 'sdc', 'dm-0']) expect(await san.pathExists(d)).toBe(false);
    expect(san.maps.size).toBe(0);
  });

  it('waits for multipathd when two paths are there but no map yet, and says so when it never comes', async () => {
    await twoFabrics();
    const lun = await san.lun('l3', 32 * MiB, WWID3);
    for (const p of twoPaths(lun, 3)) await san.addDisk(p);
    env.deps.fc = { ...env.deps.fc, scanTimeoutMs: 600 };
    env.restart();
    const req = fcReq('fc-nomap', 3, [TGT_A, TGT_B]);
    const err = await csiError(env.h.NodeStageVolume(req));
    expect(err.code).toBe(Code.DEADLINE_EXCEEDED);
    expect(err.message).toContain('2 paths (sdb, sdc)');
    expect(err.message).toContain('multipathd');
    expect(await mountAt(req.staging_target_path)).toBeUndefined();
    // Once the map exists, the same request goes through it.
    await san.addMap('mpathz', lun, ['sdb', 'sdc']);
    await env.h.NodeStageVolume(req);
    expect(await mountedDevice(req.staging_target_path)).toBe(await mapperOf('mpathz'));
  });

  it('the LUN appears only after the second scan: the connector scans again with backoff', async () => {
    await oneFabric();
    const lun = await san.lun('l5', 64 * MiB, WWID3);
    san.presentOnScan({ disk: 'sdd', host: 1, channel: 0, target: 0, lun: 5, wwn: TGT_A, image: lun }, 2);
    const req = fcReq('fc-late', 5);
    await env.h.NodeStageVolume(req);
    expect(san.scansOf(1)).toEqual(['0 0 5', '0 0 5']);
    expect((await mountAt(req.staging_target_path))?.source).toBe(join(san.dev, 'sdd'));
  });

  it('the LUN never appears: a clear timeout naming the WWNs and the LUN, the record in error, nothing mounted', async () => {
    await twoFabrics();
    env.deps.fc = { ...env.deps.fc, scanTimeoutMs: 700 };
    env.restart();
    const req = fcReq('fc-never', 9, [TGT_A, TGT_B]);
    const started = Date.now();
    const err = await csiError(env.h.NodeStageVolume(req));
    expect(Date.now() - started).toBeGreaterThanOrEqual(650);
    expect(err.code).toBe(Code.DEADLINE_EXCEEDED);
    expect(err.message).toContain('FC LUN 9');
    expect(err.message).toContain(TGT_A);
    expect(err.message).toContain(TGT_B);
    expect(err.message).toContain('zoning');
    expect(err.message).toContain(HBA1); // this node's WWPNs, for the SAN admin
    // It kept scanning both HBAs for exactly that LUN.
    expect(san.scansOf(1).length).toBeGreaterThanOrEqual(2);
    expect(new Set([...san.scansOf(1), ...san.scansOf(2)])).toEqual(new Set(['0 0 9']));
    const rec = await stateOf('fc-never');
    expect(rec.phase).toBe('error');
    expect(rec.lastError).toContain('FC LUN 9');
    expect(await mountAt(req.staging_target_path)).toBeUndefined();
  });

  it('no remote port with the WWN is logged in: the timeout says to check zoning, and nothing is scanned', async () => {
    await oneFabric();
    env.deps.fc = { ...env.deps.fc, scanTimeoutMs: 300 };
    env.restart();
    const err = await csiError(env.h.NodeStageVolume(fcReq('fc-unzoned', 1, ['5006016000000001'])));
    expect(err.code).toBe(Code.DEADLINE_EXCEEDED);
    expect(err.message).toContain('5006016000000001');
    expect(err.message).toContain('no online remote port');
    expect(san.scansOf(1)).toEqual([]);
  });

  it('a node without an online HBA refuses at once', async () => {
    await san.addHba(1, HBA1, 'Linkdown');
    const err = await csiError(env.h.NodeStageVolume(fcReq('fc-nohba', 1)));
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    expect(err.message).toContain('no online FC HBA port');
  });

  it('disconnect leaves another volume\'s paths and map untouched', async () => {
    await twoFabrics();
    san.multipathd = true;
    const l3 = await san.lun('l3', 64 * MiB, WWID3);
    const l4 = await san.lun('l4', 64 * MiB, WWID4);
    for (const p of [...twoPaths(l3, 3, 'sdb', 'sdc'), ...twoPaths(l4, 4, 'sdd', 'sde')]) san.presentOnScan(p);
    const a = fcReq('fc-a', 3, [TGT_A, TGT_B]);
    const b = fcReq('fc-b', 4, [TGT_A, TGT_B]);
    await env.h.NodeStageVolume(a);
    await env.h.NodeStageVolume(b);
    expect(await mountedDevice(a.staging_target_path)).toBe(await mapperOf('mpatha'));
    expect(await mountedDevice(b.staging_target_path)).toBe(await mapperOf('mpathb'));
    await writeFile(join(b.staging_target_path, 'keep'), 'b');

    await env.h.NodeUnstageVolume({ volume_id: 'fc-a', staging_target_path: a.staging_target_path });
    expect(san.commands).toEqual(['multipath -f mpatha']);
    expect(san.writtenTo('delete').sort()).toEqual(['sdb', 'sdc']);
    for (const d of ['sdd', 'sde']) expect(await san.pathExists(d)).toBe(true);
    expect(san.maps.get('mpathb')?.slaves).toEqual(['sdd', 'sde']);
    expect(await mountedDevice(b.staging_target_path)).toBe(await mapperOf('mpathb'));
    expect(await readFile(join(b.staging_target_path, 'keep'), 'utf8')).toBe('b');

    await env.h.NodeUnstageVolume({ volume_id: 'fc-b', staging_target_path: b.staging_target_path });
    expect(san.writtenTo('delete').sort()).toEqual(['sdb', 'sdc', 'sdd', 'sde']);
  });

  it('refuses to remove a LUN that is still mounted, and touches nothing', async () => {
    await oneFabric();
    const lun = await san.lun('l2', 32 * MiB, WWID3);
    san.presentOnScan({ disk: 'sdb', host: 1, channel: 0, target: 0, lun: 2, wwn: TGT_A, image: lun });
    const req = fcReq('fc-busy', 2);
    await env.h.NodeStageVolume(req);
    const fc = new FcConnector(new SimExecutor(san), { sysfs: san.sysfs, scanTimeoutMs: 1000, removeTimeoutMs: 1000 });
    const err = await csiError(fc.disconnect({ transport: 'fc', wwns: [TGT_A], lun: 2 }, join(san.dev, 'sdb')));
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    expect(err.message).toContain('still in use');
    expect(san.writtenTo('delete')).toEqual([]);
    expect(await mountAt(req.staging_target_path)).toBeDefined();
  });

  it('refuses paths that disagree about the WWID, and a path held by something that is not multipath', async () => {
    await twoFabrics();
    const l3 = await san.lun('l3', 32 * MiB, WWID3);
    const other = await san.lun('lx', 32 * MiB, WWID4);
    const [p1, p2] = twoPaths(l3, 3);
    await san.addDisk(p1);
    await san.addDisk({ ...p2, image: other });
    const fc = new FcConnector(new SimExecutor(san), { sysfs: san.sysfs, scanTimeoutMs: 300, removeTimeoutMs: 300 });
    const err = await csiError(fc.connect({ transport: 'fc', wwns: [TGT_A, TGT_B], lun: 3 }, {}));
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    expect(err.message).toContain('different WWIDs');

    await san.addDisk({ disk: 'sdg', host: 1, channel: 0, target: 0, lun: 6, wwn: TGT_A, image: other });
    await san.addForeignHolder('dm-7', 'sdg');
    const held = await csiError(fc.connect({ transport: 'fc', wwns: [TGT_A], lun: 6 }, {}));
    expect(held.code).toBe(Code.FAILED_PRECONDITION);
    expect(held.message).toContain('not a multipath map');
    const del = await csiError(fc.disconnect({ transport: 'fc', wwns: [TGT_A], lun: 6 }));
    expect(del.code).toBe(Code.FAILED_PRECONDITION);
    expect(san.writtenTo('delete')).toEqual([]);
  });

  it('reports a degraded multipath device through the volume condition', async () => {
    await twoFabrics();
    san.multipathd = true;
    const lun = await san.lun('l3', 32 * MiB, WWID3);
    for (const p of twoPaths(lun, 3)) san.presentOnScan(p);
    const fc = new FcConnector(new SimExecutor(san), { sysfs: san.sysfs, scanTimeoutMs: 2000, removeTimeoutMs: 1000, initialBackoffMs: 20 });
    const ctx = { transport: 'fc' as const, wwns: [TGT_A, TGT_B], lun: 3 };
    const dev = await fc.connect(ctx, {});
    expect(await fc.condition(ctx, dev)).toMatchObject({ abnormal: false, attached: true });
    await san.setPathState('sdc', 'offline');
    const c = await fc.condition(ctx, dev);
    expect(c).toMatchObject({ abnormal: true, attached: true });
    expect(c.message).toContain('1 of 2 paths');
    expect(c.message).toContain('sdc: offline');
    // Another LUN's context does not own this map.
    expect((await fc.condition({ ...ctx, lun: 4 }, dev)).attached).toBe(false);
    await fc.disconnect(ctx, dev);
    expect(san.maps.size).toBe(0);
  });

  it('NodeExpandVolume rescans each path and resizes the multipath map before growing the filesystem', async () => {
    await twoFabrics();
    san.multipathd = true;
    const lun = await san.lun('l3', 320 * MiB, WWID3);
    for (const p of twoPaths(lun, 3)) san.presentOnScan(p);
    const req = fcReq('fc-grow', 3, [TGT_A, TGT_B], 'xfs');
    await env.h.NodeStageVolume(req);
    const target = env.target('fc-grow');
    await env.h.NodePublishVolume({ volume_id: 'fc-grow', staging_target_path: req.staging_target_path, target_path: target, volume_capability: req.volume_capability });
    const before = (await statfs(target)).blocks * (await statfs(target)).bsize;

    // Too early: the array has not grown the LUN.
    const early = await csiError(env.h.NodeExpandVolume({ volume_id: 'fc-grow', volume_path: target, capacity_range: { required_bytes: 512 * MiB } }));
    expect(early.code).toBe(Code.FAILED_PRECONDITION);
    san.writes.length = 0;
    san.commands.length = 0;

    await san.grow(lun, 512 * MiB);
    const res = (await env.h.NodeExpandVolume({ volume_id: 'fc-grow', volume_path: target, capacity_range: { required_bytes: 512 * MiB } })) as { capacity_bytes: number };
    expect(san.writtenTo('rescan').sort()).toEqual(['sdb', 'sdc']);
    expect(san.commands).toEqual(['multipathd resize map mpatha']);
    expect(res.capacity_bytes).toBe(512 * MiB);
    const s = await statfs(target);
    expect(s.blocks * s.bsize - before).toBeGreaterThan(150 * MiB);
  });
});
