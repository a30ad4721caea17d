import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blockCap, codeOf, MiB, mountCap, type SinterProcess } from '../helpers/sinter-process.js';
import type { TestTgtd } from '../helpers/tgtd.js';
import { exportYaml, Lab, NVMET, sh } from './fixtures/lab.js';
import { stringMatching } from '../helpers/matchers.js';
import type { VolumeCapability } from '../../src/csi/messages.js';
import { kernelSessions, requireGuest, scratchDisks } from './guest.js';

const PREFIX = 'iqn.2026-11.io.sinter.lvm:';
const THIN_VG = 'sinter-thin';
const THICK_VG = 'sinter-thick';
/** A thick backend with volumeClear: none, to show what volume_clear protects: a deleted LV's bytes left on the disk. */
const RAW_VG = 'sinter-raw';
const NQN_PREFIX = 'nqn.2026-11.io.sinter.lvm:';
const NVME_PORTAL = '127.0.0.1:4420';
/**
 * Online growth of a staged volume, seen by the node, through the two other target helpers: thick through LIO, thin
 * through nvmet, each a backend of its own (a VG on a 160 MiB loop device over the last scratch disk; a 96 MiB thin
 * pool on the thin one). Every type × helper's publish and stage (mount and block, bytes read back) run in the
 * conformance matrix (lvm-conformance-{thin,thick}.vm), and each type's create, snapshot, clone and expand once there
 * (the helper exports whatever LV it is given); thin and thick through tgt are the first cases below. The helpers never look at the LV type (they export /dev/<vg>/<lv>), the LVM backend never looks at the helper.
 * The fence per helper (a revoked node's reconnect refused) does not depend on what backs the export and is proven
 * where each helper is tested: iscsi-kernel.vm (tgt), lio.vm (LIO), nvme.vm (nvmet).
 */
const COMBOS = (
  [
    { type: 'thick', helper: 'lio', shape: 'grow' },
    { type: 'thin', helper: 'nvmet', shape: 'grow' },
  ] as const
).map((c) => ({ ...c, backend: `${c.type}-${c.helper}`, vg: `sinter-${c.type}-${c.helper}` }));
type Helper = 'tgt' | 'lio' | 'nvmet';
const ls = (p: string) => (existsSync(p) ? readdirSync(p).sort() : []);
const cat = (p: string) => readFileSync(p, 'utf8').trim();
const t00 = Date.now();
/** Elapsed time per step in the guest's output. */
const stepper = (who: string) => {
  let t0 = Date.now();
  return (what: string) => {
    console.log(`[lvm.vm] ${who} +${((Date.now() - t0) / 1000).toFixed(1)} s (at ${((Date.now() - t00) / 1000).toFixed(0)} s) ${what}`);
    t0 = Date.now();
  };
};

/**
 * The LVM backend on a real kernel (dm-thin, dm-snapshot, lvm2 2.03.16):
 * `sinter controller` with a thin backend (a VG with a 160 MiB thin pool on
 * /dev/vdb), a thick one (a VG on /dev/vdc) and a thick one without
 * volume_clear (a VG on /dev/vdd), exported through tgt on the guest's loopback, and `sinter node` logging in with the kernel initiator;
 * and in the same controller two more backends, thick through LIO and thin through nvmet (COMBOS), for what the
 * conformance matrix (lvm-conformance-{thin,thick}.vm) does not do: growth of a staged volume seen by the node
 * through LIO and nvmet.
 */
describe('LVM backend in the VM: sinter controller (lvm thin + thick through tgt, LIO and nvmet) + sinter node (kernel iSCSI, nvme-tcp)', () => {
  requireGuest();
  const disks = scratchDisks();
  const [thinDisk, thickDisk, rawDisk] = disks as [string, string, string];
  const lab = new Lab({
    name: 'lvm',
    iqnPrefix: PREFIX,
    nqnPrefix: NQN_PREFIX,
    modules: true,
    iscsid: true,
    tgtd: true,
    lioPortal: true,
    readyTimeoutMs: 240_000,
    loops: { disk: disks[3] ?? 'no fourth scratch disk', count: COMBOS.length, sizeMiB: 160 },
    vgs: [
      { vg: THIN_VG, pv: thinDisk, poolMiB: 160 },
      { vg: THICK_VG, pv: thickDisk },
      { vg: RAW_VG, pv: rawDisk },
      ...COMBOS.map((c, i) => ({ vg: c.vg, pv: i, poolMiB: c.type === 'thin' ? 96 : undefined })),
    ],
    controllerYaml: (l) => {
      const iscsi = exportYaml('tgt', { portal: l.tgtd!.portal, controlPort: l.tgtd!.controlPort, prefix: PREFIX, reconcileSeconds: 2 });
      return [
        'backends:',
        '  - name: thin',
        '    driver: lvm',
        `    dataDir: ${join(l.dir, 'thin')}`,
        `    volumeGroup: ${THIN_VG}`,
        '    thinPool: pool',
        ...iscsi,
        '  - name: thick',
        '    driver: lvm',
        `    dataDir: ${join(l.dir, 'thick')}`,
        `    volumeGroup: ${THICK_VG}`,
        '    lvmType: thick',
        '    thickSnapshotPercent: 50',
        ...iscsi,
        '  - name: raw',
        '    driver: lvm',
        `    dataDir: ${join(l.dir, 'raw')}`,
        `    volumeGroup: ${RAW_VG}`,
        '    lvmType: thick',
        '    volumeClear: none',
        ...iscsi,
        ...COMBOS.flatMap((c) => [
          `  - name: ${c.backend}`,
          '    driver: lvm',
          `    dataDir: ${join(l.dir, c.backend)}`,
          `    volumeGroup: ${c.vg}`,
          ...(c.type === 'thin' ? ['    lvmType: thin', '    thinPool: pool'] : ['    lvmType: thick', '    thickSnapshotPercent: 50']),
          ...exportYaml(c.helper, { portal: c.helper === 'nvmet' ? NVME_PORTAL : l.lioPortal, prefix: c.helper === 'nvmet' ? NQN_PREFIX : PREFIX }),
        ]),
      ];
    },
  });
  let ctl: SinterProcess;
  let node: SinterProcess;
  let nodeId: string;
  let tgtd: TestTgtd;

  const lvNames = async (vg: string) => (await sh(`lvs --noheadings -o lv_name ${vg}`)).stdout.split('\n').map((s) => s.trim()).filter(Boolean).sort();

  beforeAll(async () => {
    expect(disks.length).toBeGreaterThanOrEqual(4);
    const step = stepper('setup');
    await lab.start();
    step(`VGs ${(lab.timings.vgs / 1000).toFixed(1)} s, daemons ${(lab.timings.daemons / 1000).toFixed(1)} s, controller and node ${(lab.timings.sinter / 1000).toFixed(1)} s`);
    ({ ctl, node, nodeId } = lab);
    tgtd = lab.tgtd!;
  });

  afterAll(async () => {
    await lab.stop();
  });

  const create = async (name: string, backend: string, mib: number, cap: VolumeCapability, source?: { snapshot: { snapshot_id: string } }) => {
    const v = (await ctl.client.controller.CreateVolume({ name, parameters: { backend }, capacity_range: { required_bytes: mib * MiB }, volume_capabilities: [cap], volume_content_source: source })).volume;
    return { volume_id: v?.volume_id ?? '', capacity_bytes: Number(v?.capacity_bytes ?? 0) };
  };
  const paths = (id: string) => {
    const staging = join(node.kubeletRoot, 'staging', id);
    const target = join(node.kubeletRoot, 'pods', id, 'vol');
    mkdirSync(staging, { recursive: true });
    mkdirSync(join(target, '..'), { recursive: true });
    return { staging, target };
  };
  /** ControllerPublish, NodeStage, NodePublish: the volume as a pod would have it. */
  const attach = async (id: string, cap: VolumeCapability) => {
    const ctx = (await ctl.client.controller.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: cap })).publish_context as Record<string, string>;
    const { staging, target } = paths(id);
    await node.client.node.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: cap, publish_context: ctx });
    await node.client.node.NodePublishVolume({ volume_id: id, staging_target_path: staging, target_path: target, volume_capability: cap, publish_context: ctx });
    return ctx;
  };
  const detach = async (id: string) => {
    const { staging, target } = paths(id);
    await node.client.node.NodeUnpublishVolume({ volume_id: id, target_path: target });
    await node.client.node.NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
  };
  const snapshot = async (name: string, source: string) => (await ctl.client.controller.CreateSnapshot({ name, source_volume_id: source })).snapshot?.snapshot_id ?? '';
  const lvOf = (id: string) => `v-${id}`;
  const snapLvOf = (id: string) => `s-${id.replace('@', '-')}`;

  it('thin: create, publish over tgt, stage (ext4), write, snapshot (inactive until read), clone from it (read back, grown), grow online, teardown, delete the volume before its snapshot', async () => {
    const cap = mountCap('SINGLE_NODE_WRITER', 'ext4');
    const vol = await create('lvm-thin-1', 'thin', 64, cap);
    const id = vol.volume_id;
    expect((await sh(`lvs --noheadings -o segtype,pool_lv ${THIN_VG}/${lvOf(id)}`)).stdout.trim()).toMatch(/^thin\s+pool$/);
    const ctx = await attach(id, cap);
    expect(ctx).toMatchObject({ transport: 'iscsi', iqn: `${PREFIX}${id}`, lun: '1' });
    // tgt serves the LV's device itself.
    expect((await execa('tgtadm', ['-C', String(tgtd.controlPort), '--lld', 'iscsi', '--op', 'show', '--mode', 'target'])).stdout).toContain(`Backing store path: /dev/${THIN_VG}/${lvOf(id)}`);
    const { staging, target } = paths(id);
    writeFileSync(join(target, 'data.txt'), 'written through tgt onto a thin LV');
    await sh(`sync -f ${target}/data.txt`);

    const snap = await snapshot('lvm-thin-snap', id);
    const snapLv = (await sh(`lvs --noheadings -o lv_attr,origin ${THIN_VG}/${snapLvOf(snap)}`)).stdout.trim();
    expect(snapLv).toMatch(/^Vwi---tz-k\s+v-/); // a thin snapshot, inactive, activation skipped

    const clone = await create('lvm-thin-clone', 'thin', 96, cap, { snapshot: { snapshot_id: snap } });
    expect(Number(clone.capacity_bytes)).toBe(96 * MiB);
    const cloneDev = `/dev/${THIN_VG}/${lvOf(clone.volume_id)}`;
    expect(Number((await execa('blockdev', ['--getsize64', cloneDev])).stdout)).toBe(96 * MiB);
    const ro = join(lab.dir, 'ro');
    mkdirSync(ro, { recursive: true });
    await execa('mount', ['-o', 'ro,noload', cloneDev, ro]);
    try {
      expect(readFileSync(join(ro, 'data.txt'), 'utf8')).toBe('written through tgt onto a thin LV');
    } finally {
      await execa('umount', [ro]);
    }

    // Online growth: lvextend, tgt reopens the LUN, the node rescans and grows ext4.
    const grown = await ctl.client.controller.ControllerExpandVolume({ volume_id: id, capacity_range: { required_bytes: 128 * MiB }, volume_capability: cap });
    expect(grown).toMatchObject({ capacity_bytes: 128 * MiB, node_expansion_required: true });
    await node.client.node.NodeExpandVolume({ volume_id: id, volume_path: target, staging_target_path: staging, capacity_range: { required_bytes: 128 * MiB }, volume_capability: cap });
    const dev = readFileSync('/proc/self/mounts', 'utf8').split('\n').find((l) => l.split(' ')[1] === staging)?.split(' ')[0] ?? 'no mount';
    expect(Number((await execa('blockdev', ['--getsize64', dev])).stdout)).toBe(128 * MiB);
    expect(readFileSync(join(target, 'data.txt'), 'utf8')).toBe('written through tgt onto a thin LV');
    const health = await ctl.client.controller.ControllerGetVolume({ volume_id: id });
    expect(health.status?.volume_condition).toMatchObject({ abnormal: false });

    await detach(id);
    expect(await kernelSessions()).toEqual([]);
    // Thin snapshots are LVs of their own: the volume goes, its snapshot stays.
    await ctl.client.controller.DeleteVolume({ volume_id: id });
    expect(await lvNames(THIN_VG)).toEqual(['pool', lvOf(clone.volume_id), snapLvOf(snap)].sort());
    await ctl.client.controller.DeleteSnapshot({ snapshot_id: snap });
    await ctl.client.controller.DeleteVolume({ volume_id: clone.volume_id });
    expect(await lvNames(THIN_VG)).toEqual(['pool']);
  });

  /** `marker` (16 bytes) at 1 MiB into a block device, in one 4 KiB O_DIRECT write. */
  const writeMarker = (dev: string, marker: string) =>
    sh(`{ printf '%s' '${marker}'; head -c ${4096 - marker.length} /dev/zero; } | dd of=${dev} bs=4096 seek=256 count=1 iflag=fullblock oflag=direct conv=notrunc,fsync status=none`);
  /**
   * Reads, straight from the PV, the 16 bytes at 1 MiB into the LV `vg/lv` — where the LV's
   * first segment lies now (lvs seg_pe_ranges, the VG's extent size, the PV's pe_start), so the
   * read still finds those extents after lvremove gave them back. O_DIRECT: device-mapper's
   * writes reach the disk beneath the PV's page cache, which may hold what an LVM scan read there.
   */
  const freedExtentsReader = async (vg: string, lv: string, pv: string) => {
    const range = (await sh(`lvs --noheadings -o seg_pe_ranges ${vg}/${lv}`)).stdout.trim().split(/\s+/)[0];
    const m = /^(\/dev\/\S+):(\d+)-\d+$/.exec(range);
    expect(m?.[1]).toBe(pv);
    const extent = Number((await sh(`vgs --noheadings --units b --nosuffix -o vg_extent_size ${vg}`)).stdout.trim());
    const peStart = Number((await sh(`pvs --noheadings --units b --nosuffix -o pe_start ${pv}`)).stdout.trim());
    const offset = peStart + Number(m![2]) * extent + MiB;
    return async () =>
      Buffer.from((await execa('dd', [`if=${pv}`, 'bs=4096', `skip=${offset / 4096}`, 'count=1', 'iflag=direct', 'status=none'], { encoding: 'buffer' })).stdout)
        .subarray(0, 16)
        .toString('latin1');
  };

  it('volume_clear: none leaves a deleted thick volume\'s bytes on the freed extents (what zero protects against; and the read below finds them); an inactive LV is activated by ControllerPublish', async () => {
    const id = (await create('lvm-raw-1', 'raw', 8, blockCap())).volume_id;
    await writeMarker(`/dev/${RAW_VG}/${lvOf(id)}`, 'raw-lvm-leftover');
    const readFreed = await freedExtentsReader(RAW_VG, lvOf(id), disks[2]);
    expect(await readFreed()).toBe('raw-lvm-leftover');
    // An LV left inactive (a reboot without autoactivation) has no device node: ControllerPublish activates it
    // before the target opens it (publish asks LVM only when the node is missing).
    await sh(`lvchange -an ${RAW_VG}/${lvOf(id)}`);
    expect(existsSync(`/dev/${RAW_VG}/${lvOf(id)}`)).toBe(false);
    await ctl.client.controller.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: blockCap() });
    expect((await sh(`lvs --noheadings -o lv_active ${RAW_VG}/${lvOf(id)}`)).stdout.trim()).toBe('active');
    expect((await execa('tgtadm', ['-C', String(tgtd.controlPort), '--lld', 'iscsi', '--op', 'show', '--mode', 'target'])).stdout).toContain(`Backing store path: /dev/${RAW_VG}/${lvOf(id)}`);
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    await ctl.client.controller.DeleteVolume({ volume_id: id });
    expect(await lvNames(RAW_VG)).toEqual([]);
    expect(await readFreed()).toBe('raw-lvm-leftover');
    expect(ctl.logs()).not.toMatch(new RegExp(`"volume_clear ${id}`));
  });

  it('thick: block volume written over tgt, classic snapshot (COW 50%), block-copy clone (progress in the log), growth refused while the snapshot lives (FAILED_PRECONDITION), as is delete; grown once it is gone; volume_clear zeroes the freed extents', async () => {
    const cap = blockCap();
    const vol = await create('lvm-thick-1', 'thick', 32, cap);
    const id = vol.volume_id;
    const lv = `${THICK_VG}/${lvOf(id)}`;
    expect((await sh(`lvs --noheadings -o segtype ${lv}`)).stdout.trim()).toBe('linear');
    await attach(id, cap);
    const { target } = paths(id);
    await writeMarker(target, 'thick-lvm-marker');

    const snap = await snapshot('lvm-thick-snap', id);
    // thickSnapshotPercent 50: copy-on-write space half the volume.
    expect(Number((await sh(`lvs --noheadings --units b --nosuffix -o lv_size ${THICK_VG}/${snapLvOf(snap)}`)).stdout.trim())).toBe(16 * MiB);
    const clone = await create('lvm-thick-clone', 'thick', 32, cap, { snapshot: { snapshot_id: snap } });
    const cloneBytes = (await execa('dd', [`if=/dev/${THICK_VG}/${lvOf(clone.volume_id)}`, 'bs=1M', 'skip=1', 'count=1', 'iflag=direct', 'status=none'], { encoding: 'buffer' })).stdout;
    expect(Buffer.from(cloneBytes).subarray(0, 16).toString()).toBe('thick-lvm-marker');
    expect(ctl.logs()).toMatch(/"clone [^"]+ → [^"]+: 32 of 32 MiB"/);

    // LVM grows a classic snapshot's origin only while it is inactive (lvm2 2.03.16: "Snapshot origin
    // volumes can be resized only while inactive"): refused, saying what to do, until the snapshot goes.
    const grow = () => ctl.client.controller.ControllerExpandVolume({ volume_id: id, capacity_range: { required_bytes: 48 * MiB }, volume_capability: cap });
    expect(await codeOf(grow())).toBe('FAILED_PRECONDITION');
    expect(Number((await sh(`lvs --noheadings --units b --nosuffix -o lv_size ${lv}`)).stdout.trim())).toBe(32 * MiB);
    await detach(id);

    // A classic snapshot lives in its origin: deleting the volume would take it along.
    expect(await codeOf(ctl.client.controller.DeleteVolume({ volume_id: id }))).toBe('FAILED_PRECONDITION');
    await ctl.client.controller.DeleteSnapshot({ snapshot_id: snap });
    await grow();
    expect(Number((await sh(`lvs --noheadings --units b --nosuffix -o lv_size ${lv}`)).stdout.trim())).toBe(48 * MiB);
    // The same read that found the bytes after a delete without volume_clear (the case above) finds zeros after this one.
    const readFreed = await freedExtentsReader(THICK_VG, lvOf(id), disks[1]);
    expect(await readFreed()).toBe('thick-lvm-marker');
    await ctl.client.controller.DeleteVolume({ volume_id: id });
    expect(await readFreed()).toBe('\0'.repeat(16));
    expect(ctl.logs()).toMatch(/"volume_clear [^"]+: 48 of 48 MiB"/);
    await ctl.client.controller.DeleteVolume({ volume_id: clone.volume_id });
    expect(await lvNames(THICK_VG)).toEqual([]);
  });

  it('a thin pool past its high-water mark (90%) refuses new volumes with RESOURCE_EXHAUSTED naming the pool; GetCapacity says 0', async () => {
    // Someone else's thin LV fills the pool (dm-thin allocates on any write, zeros too): sinter only reads it.
    await sh(`lvcreate -y --type thin -V 200m --thinpool pool -n admin-fill ${THIN_VG} && dd if=/dev/zero of=/dev/${THIN_VG}/admin-fill bs=1M count=150 oflag=direct status=none`);
    try {
      const err = await ctl.client.controller.CreateVolume({ name: 'lvm-too-much', parameters: { backend: 'thin' }, capacity_range: { required_bytes: 8 * MiB }, volume_capabilities: [blockCap()] }).then(
        () => undefined,
        (e: { code: number; details: string }) => e,
      );
      expect(err).toMatchObject({ code: 8, details: stringMatching(new RegExp(`thin pool ${THIN_VG}/pool is past its high-water mark \\(data 9\\d\\.\\d\\d% used, thinPoolHighWaterPercent 90\\)`)) });
      const c = await ctl.client.controller.GetCapacity({ parameters: { backend: 'thin' }, volume_capabilities: [blockCap()] });
      expect(Number(c.available_capacity)).toBe(0);
    } finally {
      await sh(`lvremove -y ${THIN_VG}/admin-fill`);
    }
    const c = await ctl.client.controller.GetCapacity({ parameters: { backend: 'thin' }, volume_capabilities: [blockCap()] });
    expect(Number(c.available_capacity)).toBeGreaterThan(1000 * MiB); // 160 MiB × 20, over-subscribed
  });

  it('an LV removed behind sinter\'s back shows as an abnormal volume condition (ControllerGetVolume, ListVolumes)', async () => {
    const id = (await create('lvm-vanishing', 'thin', 8, blockCap())).volume_id;
    await sh(`lvremove -y ${THIN_VG}/${lvOf(id)}`);
    const got = await ctl.client.controller.ControllerGetVolume({ volume_id: id });
    expect(got.status?.volume_condition).toMatchObject({ abnormal: true, message: stringMatching(new RegExp(`LV ${THIN_VG}/${lvOf(id)} is missing .* removed outside sinter`)) });
    const listed = (await ctl.client.controller.ListVolumes({})).entries.find((e) => e.volume?.volume_id === id);
    expect(listed?.status?.volume_condition?.abnormal).toBe(true);
    await ctl.client.controller.DeleteVolume({ volume_id: id });
    expect(await lvNames(THIN_VG)).toEqual(['pool']);
  });
  /** What the target serves for `id` now, read from the target itself (tgtadm, LIO's or nvmet's configfs): the device. */
  const served = async (helper: Helper, id: string): Promise<{ device?: string } | undefined> => {
    if (helper === 'nvmet') {
      const sub = join(NVMET, 'subsystems', NQN_PREFIX + id);
      return existsSync(sub) ? { device: cat(join(sub, 'namespaces/1/device_path')) } : undefined;
    }
    const x = (await lab.lio!.listTargets()).find((tg) => tg.iqn === PREFIX + id);
    return x && { device: x.luns.find((l) => l.lun === 1)?.backingPath };
  };
  /** This node's attachments to the volume's export: kernel iSCSI sessions or NVMe controllers. */
  const attachedTo = async (ctx: Record<string, string>) =>
    ctx.transport === 'nvmeof'
      ? ls('/sys/class/nvme').filter((c) => cat(`/sys/class/nvme/${c}/subsysnqn`) === ctx.nqn)
      : (await kernelSessions()).filter((l) => l.split(' ')[1] === ctx.iqn);
  const mountedDevice = (staging: string) => readFileSync('/proc/self/mounts', 'utf8').split('\n').find((l) => l.split(' ')[1] === staging)?.split(' ')[0] ?? 'no mount';
  const sizeOf = async (dev: string) => Number((await execa('blockdev', ['--getsize64', dev])).stdout);
  /** Create, publish (the target serves the LV itself), stage: the volume as a pod would have it, and its publish_context. */
  const attachCombo = async (c: (typeof COMBOS)[number], name: string, cap: VolumeCapability, source?: { snapshot: { snapshot_id: string } }) => {
    const id = (await create(name, c.backend, 16, cap, source)).volume_id;
    expect((await sh(`lvs --noheadings -o segtype ${c.vg}/${lvOf(id)}`)).stdout.trim()).toBe(c.type === 'thin' ? 'thin' : 'linear');
    const ctx = await attach(id, cap);
    expect(ctx).toMatchObject(c.helper === 'nvmet' ? { transport: 'nvmeof', nqn: NQN_PREFIX + id, nsid: '1' } : { transport: 'iscsi', iqn: PREFIX + id, lun: '1' });
    // A block backstore for LIO (iblock), a block namespace for nvmet: the LV's device itself.
    expect((await served(c.helper, id))?.device).toBe(`/dev/${c.vg}/${lvOf(id)}`);
    return { id, ctx };
  };
  /** Unstage and unpublish: no session or controller left, the export gone. */
  const detachCombo = async (c: (typeof COMBOS)[number], id: string, ctx: Record<string, string>) => {
    await detach(id);
    expect(await attachedTo(ctx)).toEqual([]);
    expect(await served(c.helper, id)).toBeUndefined();
  };

  it.each(COMBOS.filter((c) => c.shape === 'grow'))(
    '$type LVM through $helper: create, publish (the LV itself served), stage ext4, write, grow online (the node sees the new size, the file stays), unstage, unpublish (export gone), delete',
    async (c) => {
      const step = stepper(c.backend);
      const cap = mountCap('SINGLE_NODE_WRITER', 'ext4');
      const { id, ctx } = await attachCombo(c, `${c.backend}-vol`, cap);
      const { staging, target } = paths(id);
      const marker = `written through ${c.helper} onto a ${c.type} LV ${id}`;
      writeFileSync(join(target, 'data.txt'), marker);
      await sh(`sync -f ${target}/data.txt`);
      step('created, published, staged (ext4), written');

      const grown = await ctl.client.controller.ControllerExpandVolume({ volume_id: id, capacity_range: { required_bytes: 32 * MiB }, volume_capability: cap });
      expect(grown).toMatchObject({ capacity_bytes: 32 * MiB, node_expansion_required: true });
      await node.client.node.NodeExpandVolume({ volume_id: id, volume_path: target, staging_target_path: staging, capacity_range: { required_bytes: 32 * MiB }, volume_capability: cap });
      expect(await sizeOf(mountedDevice(staging))).toBe(32 * MiB);
      expect(Number((await execa('df', ['--output=size', '-B1', target])).stdout.split('\n')[1])).toBeGreaterThan(24 * MiB);
      expect(readFileSync(join(target, 'data.txt'), 'utf8')).toBe(marker);
      step('grown online');

      await detachCombo(c, id, ctx);
      await ctl.client.controller.DeleteVolume({ volume_id: id });
      expect(await lvNames(c.vg)).toEqual(c.type === 'thin' ? ['pool'] : []);
      step('unstaged, unpublished, deleted');
    },
  );
});
