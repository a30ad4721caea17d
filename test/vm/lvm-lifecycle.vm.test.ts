import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseTgtTargets } from '../../src/backends/targets/tgt-parse.js';
import type { VolumeCapability } from '../../src/csi/messages.js';
import { blockCap, MiB, mountCap } from '../helpers/sinter-process.js';
import { exportYaml, Lab, NVMET, sh } from './fixtures/lab.js';
import { kernelSessions, requireGuest, scratchDisks } from './guest.js';

const IQN_PREFIX = 'iqn.2026-12.io.sinter.lvmlife:';
const NQN_PREFIX = 'nqn.2026-12.io.sinter.lvmlife:';
const NVME_PORTAL = '127.0.0.1:4420';
const OTHER_NQN = 'nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000c3';
/** A second node the shared clone is also published to: after this node's unpublish its export stays, so a refusal is the fence's. */
const OTHER_NODE = `vm-other;iqn.2005-03.org.open-iscsi:vm-other;;${OTHER_NQN}`;
type Helper = 'tgt' | 'lio' | 'nvmet';
type Type = 'thin' | 'thick';
/**
 * What each combination runs. Every combination runs create, publish (the target serves the LV's own device),
 * stage, write, unstage, unpublish (the export is gone) and delete. On top, each helper runs both of:
 * - `grow`: stage with ext4, write a file, grow online (lvextend, the target's new size, the node's rescan and
 *   resize2fs), the file still there;
 * - `clone`: stage as a block device, write, snapshot, clone from it (thin: a thin snapshot; thick: a classic
 *   snapshot and a block copy), the clone published to two nodes and staged here as a block device with the bytes
 *   written before the snapshot, then the fence (after this node's unpublish its reconnect is refused while the
 *   other node's export stays);
 * once on a thin LV and once on a thick one, so each LVM type also runs both (thin grows through tgt and nvmet and
 * is cloned through LIO; thick grows through LIO and is cloned through tgt and nvmet). What the two shapes leave
 * out for a combination is a code path another combination runs: the helpers never look at the LV type (they
 * export /dev/<vg>/<lv>), and the LVM backend never looks at the helper.
 */
const ALL: { type: Type; helper: Helper; shape: 'grow' | 'clone' }[] = [
  { type: 'thin', helper: 'tgt', shape: 'grow' },
  { type: 'thick', helper: 'tgt', shape: 'clone' },
  { type: 'thin', helper: 'lio', shape: 'clone' },
  { type: 'thick', helper: 'lio', shape: 'grow' },
  { type: 'thin', helper: 'nvmet', shape: 'grow' },
  { type: 'thick', helper: 'nvmet', shape: 'clone' },
];
/** SINTER_LVM_COMBOS=thin-tgt,thick-nvmet … runs those only; an unknown name is an error. */
const ONLY = process.env.SINTER_LVM_COMBOS?.split(',').filter(Boolean);
for (const n of ONLY ?? []) if (!ALL.some((c) => `${c.type}-${c.helper}` === n)) throw new Error(`SINTER_LVM_COMBOS: no combination ${n} (${ALL.map((c) => `${c.type}-${c.helper}`).join(', ')})`);
const COMBOS = ALL.filter((c) => !ONLY || ONLY.includes(`${c.type}-${c.helper}`)).map((c) => ({ ...c, backend: `${c.type}-${c.helper}`, vg: `sl-${c.type}-${c.helper}` }));

const t00 = Date.now();
/** Elapsed time per step in the guest's output. */
const stepper = (who: string) => {
  let t0 = Date.now();
  return (what: string) => {
    console.log(`[lvm-lifecycle.vm] ${who} +${((Date.now() - t0) / 1000).toFixed(1)} s (at ${((Date.now() - t00) / 1000).toFixed(0)} s) ${what}`);
    t0 = Date.now();
  };
};
const ls = (p: string) => (existsSync(p) ? readdirSync(p).sort() : []);
const cat = (p: string) => readFileSync(p, 'utf8').trim();

/**
 * The lifecycle of an LVM volume on a real kernel for each combination of LVM type (thin, thick) and target helper
 * (tgt, LIO, nvmet), with the kernel initiators (open-iscsi, nvme-tcp): one `sinter controller` with six backends
 * (each its own VG on a loop device over one scratch disk: two backends never share a VG), one `sinter node`, one
 * tgtd, LIO and nvmet in the guest's configfs (test/vm/fixtures/lab.ts). The combinations run one after another:
 * run at once (describe.concurrent) each step took 4-10x longer, since under TCG the time goes to CPU (LVM commands,
 * node), not to waiting.
 */
describe('LVM thin/thick through tgt, LIO and nvmet (kernel initiators): lifecycle per combination', () => {
  requireGuest();
  const lab = new Lab({
    name: 'lvm-lifecycle',
    iqnPrefix: IQN_PREFIX,
    nqnPrefix: NQN_PREFIX,
    modules: true,
    iscsid: true,
    tgtd: true,
    lioPortal: true,
    readyTimeoutMs: 240_000,
    // Six 160 MiB loop devices over the last scratch disk (lvm.vm.test.ts uses the first three); a 96 MiB thin pool on each thin VG.
    loops: { disk: scratchDisks().at(-1) ?? 'no scratch disk', count: COMBOS.length, sizeMiB: 160 },
    vgs: COMBOS.map((c, i) => ({ vg: c.vg, pv: i, poolMiB: c.type === 'thin' ? 96 : undefined })),
    controllerYaml: (l) => [
      'backends:',
      ...COMBOS.flatMap((c) => [
        `  - name: ${c.backend}`,
        '    driver: lvm',
        `    dataDir: ${join(l.dir, c.backend)}`,
        `    volumeGroup: ${c.vg}`,
        ...(c.type === 'thin' ? ['    lvmType: thin', '    thinPool: pool'] : ['    lvmType: thick', '    thickSnapshotPercent: 50']),
        ...exportYaml(c.helper, {
          portal: c.helper === 'nvmet' ? NVME_PORTAL : c.helper === 'lio' ? l.lioPortal : l.tgtd!.portal,
          prefix: c.helper === 'nvmet' ? NQN_PREFIX : IQN_PREFIX,
          controlPort: l.tgtd?.controlPort,
        }),
      ]),
    ],
  });

  beforeAll(async () => {
    expect(scratchDisks().length).toBeGreaterThanOrEqual(4);
    const step = stepper('setup');
    await lab.start();
    step(`VGs ${(lab.timings.vgs / 1000).toFixed(1)} s, daemons ${(lab.timings.daemons / 1000).toFixed(1)} s, controller and node ${(lab.timings.sinter / 1000).toFixed(1)} s`);
  });

  afterAll(async () => {
    await lab.stop();
  });

  const create = async (name: string, backend: string, mib: number, cap: VolumeCapability, snapshotId?: string) =>
    (
      await lab.ctl.client.controller.CreateVolume({
        name,
        parameters: { backend },
        capacity_range: { required_bytes: mib * MiB },
        volume_capabilities: [cap],
        ...(snapshotId ? { volume_content_source: { snapshot: { snapshot_id: snapshotId } } } : {}),
      })
    ).volume?.volume_id ?? '';
  const paths = (id: string) => {
    const staging = join(lab.node.kubeletRoot, 'staging', id);
    const target = join(lab.node.kubeletRoot, 'pods', id, 'vol');
    mkdirSync(staging, { recursive: true });
    mkdirSync(join(target, '..'), { recursive: true });
    return { staging, target };
  };
  const publish = async (id: string, cap: VolumeCapability, to = lab.nodeId) =>
    (await lab.ctl.client.controller.ControllerPublishVolume({ volume_id: id, node_id: to, volume_capability: cap })).publish_context as Record<string, string>;
  const unpublish = (id: string, from = lab.nodeId) => lab.ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: from });
  const stage = async (id: string, cap: VolumeCapability, ctx: Record<string, string>) => {
    const { staging, target } = paths(id);
    await lab.node.client.node.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: cap, publish_context: ctx });
    await lab.node.client.node.NodePublishVolume({ volume_id: id, staging_target_path: staging, target_path: target, volume_capability: cap, publish_context: ctx });
  };
  const unstage = async (id: string) => {
    const { staging, target } = paths(id);
    await lab.node.client.node.NodeUnpublishVolume({ volume_id: id, target_path: target });
    await lab.node.client.node.NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
  };

  /** What the target serves for `id` now, read from the target itself (tgtadm, LIO's or nvmet's configfs): the device and who may connect. */
  const served = async (helper: Helper, id: string): Promise<{ device?: string; allowed: string[] } | undefined> => {
    if (helper === 'nvmet') {
      const sub = join(NVMET, 'subsystems', NQN_PREFIX + id);
      return existsSync(sub) ? { device: cat(join(sub, 'namespaces/1/device_path')), allowed: ls(join(sub, 'allowed_hosts')) } : undefined;
    }
    const targets =
      helper === 'lio' ? await lab.lio!.listTargets() : parseTgtTargets((await execa('tgtadm', ['-C', String(lab.tgtd!.controlPort), '--lld', 'iscsi', '--op', 'show', '--mode', 'target'])).stdout);
    const x = targets.find((tg) => tg.iqn === IQN_PREFIX + id);
    return x && { device: x.luns.find((l) => l.lun === 1)?.backingPath, allowed: [...x.acls].sort() };
  };
  /** This node's attachments to the volume's export: kernel iSCSI sessions or NVMe controllers. */
  const attachedTo = async (ctx: Record<string, string>) =>
    ctx.transport === 'nvmeof'
      ? ls('/sys/class/nvme').filter((c) => cat(`/sys/class/nvme/${c}/subsysnqn`) === ctx.nqn)
      : (await kernelSessions()).filter((l) => l.split(' ')[1] === ctx.iqn);
  /** This node connecting by hand to the volume's export, as a fenced node's retry would: the initiator's exit code. */
  const handConnect = async (ctx: Record<string, string>): Promise<number | undefined> => {
    if (ctx.transport === 'nvmeof') {
      const [a, s] = NVME_PORTAL.split(':') as [string, string];
      const r = await execa('nvme', ['connect', '-t', 'tcp', '-a', a, '-s', s, '-n', ctx.nqn, '--hostnqn', lab.hostNqn], { reject: false });
      if (r.exitCode === 0) await execa('nvme', ['disconnect', '-n', ctx.nqn], { reject: false });
      return r.exitCode;
    }
    const rec = ['-m', 'node', '-T', ctx.iqn, '-p', ctx.portals];
    await execa('iscsiadm', [...rec, '-o', 'new']);
    // One attempt with a short login timeout: tgt does not answer a login outside its ACL, LIO rejects it at once.
    for (const [k, v] of [['node.session.initial_login_retry_max', '1'], ['node.conn[0].timeo.login_timeout', '3']] as const) await execa('iscsiadm', [...rec, '-o', 'update', '-n', k, '-v', v]);
    const r = await execa('iscsiadm', [...rec, '--login'], { reject: false });
    if (r.exitCode === 0) await execa('iscsiadm', [...rec, '--logout'], { reject: false });
    await execa('iscsiadm', [...rec, '-o', 'delete'], { reject: false });
    return r.exitCode;
  };
  const lvNames = async (vg: string) => (await sh(`lvs --noheadings -o lv_name ${vg}`)).stdout.split('\n').map((s) => s.trim()).filter(Boolean).sort();
  const mountedDevice = (staging: string) => readFileSync('/proc/self/mounts', 'utf8').split('\n').find((l) => l.split(' ')[1] === staging)?.split(' ')[0] ?? 'no mount';
  const size = async (dev: string) => Number((await execa('blockdev', ['--getsize64', dev])).stdout);
  /** `marker` at 1 MiB into a block device, in one 4 KiB O_DIRECT write (no page cache between it and the LV). */
  const writeMarker = (dev: string, marker: string) =>
    sh(`{ printf '%s' '${marker}'; head -c ${4096 - marker.length} /dev/zero; } | dd of=${dev} bs=4096 seek=256 count=1 iflag=fullblock oflag=direct conv=notrunc,fsync status=none`);
  const readMarker = async (dev: string, len: number) =>
    Buffer.from((await execa('dd', [`if=${dev}`, 'bs=4096', 'skip=256', 'count=1', 'iflag=direct', 'status=none'], { encoding: 'buffer' })).stdout).subarray(0, len).toString('latin1');

  it.each(COMBOS.filter((c) => c.shape === 'grow'))(
    '$type LVM through $helper: create, publish (the LV itself served), stage ext4, write, grow online (the node sees the new size, the file stays), unstage, unpublish (export gone), delete',
    async ({ type, helper, backend, vg }) => {
      const step = stepper(backend);
      const cap = mountCap('SINGLE_NODE_WRITER', 'ext4');
      const id = await create(`${backend}-vol`, backend, 16, cap);
      expect((await sh(`lvs --noheadings -o segtype ${vg}/v-${id}`)).stdout.trim()).toBe(type === 'thin' ? 'thin' : 'linear');
      const ctx = await publish(id, cap);
      expect(ctx).toMatchObject(helper === 'nvmet' ? { transport: 'nvmeof', nqn: NQN_PREFIX + id, nsid: '1' } : { transport: 'iscsi', iqn: IQN_PREFIX + id, lun: '1' });
      // The target serves the LV's device itself (a block backing store for tgt, an iblock backstore for LIO, a block namespace for nvmet).
      expect((await served(helper, id))?.device).toBe(`/dev/${vg}/v-${id}`);
      await stage(id, cap, ctx);
      const { staging, target } = paths(id);
      const marker = `written through ${helper} onto a ${type} LV ${id}`;
      writeFileSync(join(target, 'data.txt'), marker);
      await sh(`sync -f ${target}/data.txt`);
      step('created, published, staged (ext4), written');

      const grown = await lab.ctl.client.controller.ControllerExpandVolume({ volume_id: id, capacity_range: { required_bytes: 32 * MiB }, volume_capability: cap });
      expect(grown).toMatchObject({ capacity_bytes: 32 * MiB, node_expansion_required: true });
      await lab.node.client.node.NodeExpandVolume({ volume_id: id, volume_path: target, staging_target_path: staging, capacity_range: { required_bytes: 32 * MiB }, volume_capability: cap });
      expect(await size(mountedDevice(staging))).toBe(32 * MiB);
      expect(Number((await execa('df', ['--output=size', '-B1', target])).stdout.split('\n')[1])).toBeGreaterThan(24 * MiB);
      expect(readFileSync(join(target, 'data.txt'), 'utf8')).toBe(marker);
      step('grown online');

      await unstage(id);
      expect(await attachedTo(ctx)).toEqual([]);
      await unpublish(id);
      expect(await served(helper, id)).toBeUndefined();
      await lab.ctl.client.controller.DeleteVolume({ volume_id: id });
      expect(await lvNames(vg)).toEqual(type === 'thin' ? ['pool'] : []);
      step('unstaged, unpublished, deleted');
    },
  );

  it.each(COMBOS.filter((c) => c.shape === 'clone'))(
    '$type LVM through $helper: create, publish (the LV itself served), stage as a block device, write, snapshot, clone from it published to two nodes and staged here (the bytes are there), the fence, unpublish (export gone), delete',
    async ({ type, helper, backend, vg }) => {
      const step = stepper(backend);
      const cap = blockCap();
      const id = await create(`${backend}-vol`, backend, 16, cap);
      expect((await sh(`lvs --noheadings -o segtype ${vg}/v-${id}`)).stdout.trim()).toBe(type === 'thin' ? 'thin' : 'linear');
      const ctx = await publish(id, cap);
      expect(ctx).toMatchObject(helper === 'nvmet' ? { transport: 'nvmeof', nqn: NQN_PREFIX + id, nsid: '1' } : { transport: 'iscsi', iqn: IQN_PREFIX + id, lun: '1' });
      expect((await served(helper, id))?.device).toBe(`/dev/${vg}/v-${id}`);
      await stage(id, cap, ctx);
      const marker = `${type}-${helper}-marker`;
      await writeMarker(paths(id).target, marker);
      step('created, published, staged (block), written');

      const snap = (await lab.ctl.client.controller.CreateSnapshot({ name: `${backend}-snap`, source_volume_id: id })).snapshot?.snapshot_id ?? '';
      const snapLv = `${vg}/s-${snap.replace('@', '-')}`;
      // thin: a thin snapshot of the volume's LV; thick: a classic snapshot with copy-on-write space half the volume (thickSnapshotPercent 50).
      const [attr, origin, lvSize] = (await sh(`lvs --noheadings --units b --nosuffix -o lv_attr,origin,lv_size ${snapLv}`)).stdout.trim().split(/\s+/);
      expect({ kind: attr?.[0], origin, lvSize: Number(lvSize) }).toEqual(type === 'thin' ? { kind: 'V', origin: `v-${id}`, lvSize: 16 * MiB } : { kind: 's', origin: `v-${id}`, lvSize: 8 * MiB });
      const shared = blockCap('MULTI_NODE_MULTI_WRITER');
      const clone = await create(`${backend}-clone`, backend, 16, shared, snap);
      await unstage(id);
      expect(await attachedTo(ctx)).toEqual([]);
      await unpublish(id);
      expect(await served(helper, id)).toBeUndefined();
      step('snapshot, clone; volume unstaged, unpublished');

      // The clone, published to another node and this one, staged here as a block device: the bytes written before the snapshot are there.
      await publish(clone, shared, OTHER_NODE);
      const cctx = await publish(clone, shared);
      await stage(clone, shared, cctx);
      expect(await size(paths(clone).target)).toBe(16 * MiB);
      expect(await readMarker(paths(clone).target, marker.length)).toBe(marker);
      await unstage(clone);
      step('clone staged as a block device, read');

      // The fence: after this node's unpublish only the other node is let in, and this node's reconnect is refused.
      await unpublish(clone);
      expect((await served(helper, clone))?.allowed).toEqual([helper === 'nvmet' ? OTHER_NQN : 'iqn.2005-03.org.open-iscsi:vm-other']);
      expect(await handConnect(cctx)).not.toBe(0);
      expect(await attachedTo(cctx)).toEqual([]);
      await unpublish(clone, OTHER_NODE);
      expect(await served(helper, clone)).toBeUndefined();
      step('fence');

      // A thick volume's classic snapshot lives in it: the snapshot goes first.
      await lab.ctl.client.controller.DeleteVolume({ volume_id: clone });
      await lab.ctl.client.controller.DeleteSnapshot({ snapshot_id: snap });
      await lab.ctl.client.controller.DeleteVolume({ volume_id: id });
      expect(await lvNames(vg)).toEqual(type === 'thin' ? ['pool'] : []);
      step('deleted');
    },
  );
});
