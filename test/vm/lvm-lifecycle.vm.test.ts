import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { LioTargetHelper } from '../../src/backends/targets/lio.js';
import { hbaIndex } from '../../src/backends/targets/lio-plan.js';
import { parseTgtTargets } from '../../src/backends/targets/tgt-parse.js';
import type { VolumeCapability } from '../../src/csi/messages.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { blockCap, MiB, mountCap, startSinter, type SinterProcess } from '../helpers/sinter-process.js';
import { freePort, TestTgtd } from '../helpers/tgtd.js';
import { Iscsid, kernelSessions, requireGuest, scratchDisks } from './guest.js';

const IQN_PREFIX = 'iqn.2026-12.io.sinter.lvmlife:';
const NQN_PREFIX = 'nqn.2026-12.io.sinter.lvmlife:';
const NVME_PORTAL = '127.0.0.1:4420';
const NVMET = '/sys/kernel/config/nvmet';
const OTHER_NQN = 'nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000c3';
/** A second node the shared clone is also published to: after this node's unpublish its export stays, so a refusal is the fence's. */
const OTHER_NODE = `vm-other;iqn.2005-03.org.open-iscsi:vm-other;;${OTHER_NQN}`;
const TYPES = ['thin', 'thick'] as const;
const HELPERS = ['tgt', 'lio', 'nvmet'] as const;
type Helper = (typeof HELPERS)[number];
const ALL = TYPES.flatMap((type) => HELPERS.map((helper) => ({ type, helper, backend: `${type}-${helper}`, vg: `sl-${type}-${helper}` })));
/** SINTER_LVM_COMBOS=thin-tgt,thick-nvmet … runs those only (one guest run of all six takes ~13 min under TCG); an unknown name is an error. */
const ONLY = process.env.SINTER_LVM_COMBOS?.split(',').filter(Boolean);
for (const n of ONLY ?? []) if (!ALL.some((c) => c.backend === n)) throw new Error(`SINTER_LVM_COMBOS: no combination ${n} (${ALL.map((c) => c.backend).join(', ')})`);
const COMBOS = ONLY ? ALL.filter((c) => ONLY.includes(c.backend)) : ALL;

let t0 = Date.now();
/** Elapsed time per step in the guest's output (the file's budget is 120 s in the guest). */
const step = (what: string) => {
  console.log(`[lvm-lifecycle.vm] +${((Date.now() - t0) / 1000).toFixed(1)} s ${what}`);
  t0 = Date.now();
};
const sh = (cmd: string) => execa('sh', ['-c', cmd]);
const ls = (p: string) => (existsSync(p) ? readdirSync(p).sort() : []);
const cat = (p: string) => readFileSync(p, 'utf8').trim();

/**
 * The full lifecycle of an LVM volume on a real kernel, once per combination
 * of LVM type (thin, thick) and target helper (tgt, LIO, nvmet), with the
 * kernel initiators (open-iscsi, nvme-tcp): one `sinter controller` with six
 * backends (each its own VG: two backends never share one, on six loop
 * devices over one scratch disk), one `sinter node`, one tgtd, LIO and nvmet
 * in the guest's configfs. Per combination: create, publish, stage (ext4),
 * write, grow online (the node sees the new size), snapshot, clone (shared,
 * staged as a block device: the written bytes are there), the fence (after
 * this node's unpublish its reconnect is refused while the other node's
 * export stays), unstage, unpublish, delete.
 */
describe('LVM thin/thick through tgt, LIO and nvmet (kernel initiators): full lifecycle per combination', () => {
  requireGuest();
  const t = tempDir('sinter-vm-lvmlife-');
  let iscsid: Iscsid;
  let tgtd: TestTgtd;
  let ctl: SinterProcess;
  let node: SinterProcess;
  let nodeId: string;
  let hostNqn: string;
  let lioPortal: string;
  let lio: LioTargetHelper;
  const loops: string[] = [];
  const ctlYaml = join(t.dir, 'controller.yaml');
  const nodeYaml = join(t.dir, 'node.yaml');

  beforeAll(async () => {
    t0 = Date.now();
    const disks = scratchDisks();
    expect(disks.length).toBeGreaterThanOrEqual(3); // lvm.vm.test.ts uses the first two
    const disk = disks.at(-1)!;
    await sh(
      'modprobe -a dm_thin_pool dm_snapshot target_core_mod iscsi_target_mod target_core_iblock nvmet nvmet-tcp nvme-tcp loop && (mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config)',
    );
    hostNqn = cat('/etc/nvme/hostnqn');
    // Six 320 MiB loop devices over the disk, from 1 MiB on (so no PV label sits where LVM scans the disk itself).
    for (let i = 0; i < COMBOS.length; i++) loops.push((await execa('losetup', ['-f', '--show', '-o', String((1 + i * 320) * MiB), '--sizelimit', String(320 * MiB), disk])).stdout.trim());
    await sh(
      COMBOS.map((c, i) => `pvcreate -qy ${loops[i]} && vgcreate -q ${c.vg} ${loops[i]}` + (c.type === 'thin' ? ` && lvcreate -qy --type thin-pool -L 160m -n pool ${c.vg}` : '')).join(' && '),
    );
    step('VGs made');
    lioPortal = `127.0.0.1:${await freePort()}`;
    lio = new LioTargetHelper({ iqnPrefix: IQN_PREFIX, portals: [lioPortal] }, pino({ level: 'silent' }));
    [iscsid, tgtd] = await Promise.all([Iscsid.start(), TestTgtd.start()]);
    const exportOf = (h: Helper) =>
      h === 'nvmet'
        ? ['    export: nvmeof', '    nvmeof:', `      portals: ["${NVME_PORTAL}"]`, `      nqnPrefix: "${NQN_PREFIX}"`]
        : h === 'lio'
          ? ['    iscsi:', '      helper: lio', `      portals: ["${lioPortal}"]`, `      iqnPrefix: "${IQN_PREFIX}"`]
          : ['    iscsi:', `      portals: ["${tgtd.portal}"]`, `      controlPort: ${tgtd.controlPort}`, `      iqnPrefix: "${IQN_PREFIX}"`];
    writeFileSync(
      ctlYaml,
      [
        'backends:',
        ...COMBOS.flatMap((c) => [
          `  - name: ${c.backend}`,
          '    driver: lvm',
          `    dataDir: ${join(t.dir, c.backend)}`,
          `    volumeGroup: ${c.vg}`,
          ...(c.type === 'thin' ? ['    lvmType: thin', '    thinPool: pool'] : ['    lvmType: thick', '    thickSnapshotPercent: 50']),
          ...exportOf(c.helper),
        ]),
      ].join('\n'),
    );
    writeFileSync(
      nodeYaml,
      ['node:', '  initiator: kernel', `  stateDir: ${join(t.dir, 'node', 'state')}`, `  orphanTargetPrefixes: ["${IQN_PREFIX}"]`, `  orphanNqnPrefixes: ["${NQN_PREFIX}"]`].join('\n'),
    );
    mkdirSync(join(t.dir, 'ctl'));
    mkdirSync(join(t.dir, 'node'));
    [ctl, node] = await Promise.all([
      startSinter({ role: 'controller', base: join(t.dir, 'ctl'), args: ['--config', ctlYaml], readyTimeoutMs: 240_000 }),
      startSinter({ role: 'node', base: join(t.dir, 'node'), nodeName: 'vm-node', args: ['--config', nodeYaml], readyTimeoutMs: 240_000 }),
    ]);
    nodeId = (await node.client.node.NodeGetInfo({})).node_id ?? '';
    step('controller and node started');
  });

  afterAll(async () => {
    mkdirSync('.tmp', { recursive: true });
    if (ctl) writeFileSync('.tmp/lvm-lifecycle-vm-controller.log', ctl.logs());
    if (node) writeFileSync('.tmp/lvm-lifecycle-vm-node.log', node.logs());
    await node?.cleanup();
    await ctl?.cleanup();
    await execa('iscsiadm', ['-m', 'node', '--logoutall=all'], { reject: false });
    await execa('iscsiadm', ['-m', 'node', '-o', 'delete'], { reject: false });
    for (const nqn of new Set(ls('/sys/class/nvme').map((c) => cat(`/sys/class/nvme/${c}/subsysnqn`)).filter((n) => n.startsWith(NQN_PREFIX))))
      await execa('nvme', ['disconnect', '-n', nqn], { reject: false });
    await iscsid?.stop();
    await tgtd?.stop();
    if (lio) for (const x of await lio.listTargets().catch(() => [])) if (x.volumeId) await lio.removeTarget(x.volumeId).catch(() => undefined);
    await execa('rmdir', [`/sys/kernel/config/target/core/iblock_${hbaIndex(IQN_PREFIX)}`], { reject: false });
    tgtd?.cleanupLogs();
    // Whatever a failed case left in LIO or nvmet goes with the file (sinter removes its own on every success).
    await sh(
      `for s in ${NVMET}/subsystems/${NQN_PREFIX}*; do [ -d "$s" ] || continue; n=$(basename "$s"); rm -f ${NVMET}/ports/*/subsystems/$n "$s"/allowed_hosts/*; echo 0 > "$s"/namespaces/1/enable; rmdir "$s"/namespaces/1 "$s"; done; ` +
        `for p in ${NVMET}/ports/*; do [ -z "$(ls "$p"/subsystems 2>/dev/null)" ] && rmdir "$p"; done; rmdir ${NVMET}/hosts/* 2>/dev/null; true`,
    ).catch(() => undefined);
    await sh(`vgremove -qy -f ${COMBOS.map((c) => c.vg).join(' ')}; pvremove -qy ${loops.join(' ')}; for l in ${loops.join(' ')}; do losetup -d $l; done; true`).catch(() => undefined);
    t.cleanup();
  });

  const create = async (name: string, backend: string, mib: number, cap: VolumeCapability, snapshotId?: string) =>
    (
      await ctl.client.controller.CreateVolume({
        name,
        parameters: { backend },
        capacity_range: { required_bytes: mib * MiB },
        volume_capabilities: [cap],
        ...(snapshotId ? { volume_content_source: { snapshot: { snapshot_id: snapshotId } } } : {}),
      })
    ).volume?.volume_id ?? '';
  const paths = (id: string) => {
    const staging = join(node.kubeletRoot, 'staging', id);
    const target = join(node.kubeletRoot, 'pods', id, 'vol');
    mkdirSync(staging, { recursive: true });
    mkdirSync(join(target, '..'), { recursive: true });
    return { staging, target };
  };
  const publish = async (id: string, cap: VolumeCapability, to = nodeId) =>
    (await ctl.client.controller.ControllerPublishVolume({ volume_id: id, node_id: to, volume_capability: cap })).publish_context as Record<string, string>;
  const stage = async (id: string, cap: VolumeCapability, ctx: Record<string, string>) => {
    const { staging, target } = paths(id);
    await node.client.node.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: cap, publish_context: ctx });
    await node.client.node.NodePublishVolume({ volume_id: id, staging_target_path: staging, target_path: target, volume_capability: cap, publish_context: ctx });
  };
  const unstage = async (id: string) => {
    const { staging, target } = paths(id);
    await node.client.node.NodeUnpublishVolume({ volume_id: id, target_path: target });
    await node.client.node.NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
  };

  /** What the target serves for `id` now, read from the target itself (tgtadm, LIO's or nvmet's configfs): the device and who may connect. */
  const served = async (helper: Helper, id: string): Promise<{ device?: string; allowed: string[] } | undefined> => {
    if (helper === 'nvmet') {
      const sub = join(NVMET, 'subsystems', NQN_PREFIX + id);
      return existsSync(sub) ? { device: cat(join(sub, 'namespaces/1/device_path')), allowed: ls(join(sub, 'allowed_hosts')) } : undefined;
    }
    const targets = helper === 'lio' ? await lio.listTargets() : parseTgtTargets((await execa('tgtadm', ['-C', String(tgtd.controlPort), '--lld', 'iscsi', '--op', 'show', '--mode', 'target'])).stdout);
    const x = targets.find((tg) => tg.iqn === IQN_PREFIX + id);
    return x && { device: x.luns.find((l) => l.lun === 1)?.backingPath, allowed: [...x.acls].sort() };
  };
  /** This node connecting by hand to the volume's export, as a fenced node's retry would: the initiator's exit code. */
  const handConnect = async (ctx: Record<string, string>): Promise<number | undefined> => {
    if (ctx.transport === 'nvmeof') {
      const [a, s] = NVME_PORTAL.split(':') as [string, string];
      const r = await execa('nvme', ['connect', '-t', 'tcp', '-a', a, '-s', s, '-n', ctx.nqn, '--hostnqn', hostNqn], { reject: false });
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

  it.each(COMBOS)('$type LVM through $helper: create, publish, stage ext4, write, grow online, snapshot, shared clone staged as a block device, fence, unstage, unpublish, delete', async ({ type, helper, backend, vg }) => {
    t0 = Date.now();
    const cap = mountCap('SINGLE_NODE_WRITER', 'ext4');
    const id = await create(`${backend}-vol`, backend, 32, cap);
    const lv = `/dev/${vg}/v-${id}`;
    expect((await sh(`lvs --noheadings -o segtype ${vg}/v-${id}`)).stdout.trim()).toBe(type === 'thin' ? 'thin' : 'linear');
    const ctx = await publish(id, cap);
    expect(ctx).toMatchObject(helper === 'nvmet' ? { transport: 'nvmeof', nqn: NQN_PREFIX + id, nsid: '1' } : { transport: 'iscsi', iqn: IQN_PREFIX + id, lun: '1' });
    // The target serves the LV's device itself (an iblock backstore for LIO, a block namespace for nvmet).
    expect((await served(helper, id))?.device).toBe(lv);
    await stage(id, cap, ctx);
    const { staging, target } = paths(id);
    const marker = `written through ${helper} onto a ${type} LV ${id}`;
    writeFileSync(join(target, 'data.txt'), marker);
    await sh(`sync -f ${target}/data.txt`);
    step(`${backend}: created, published, staged, written`);

    // Grow online: lvextend, the export shows the new size, the node rescans and grows ext4.
    const grown = await ctl.client.controller.ControllerExpandVolume({ volume_id: id, capacity_range: { required_bytes: 48 * MiB }, volume_capability: cap });
    expect(grown).toMatchObject({ capacity_bytes: 48 * MiB, node_expansion_required: true });
    await node.client.node.NodeExpandVolume({ volume_id: id, volume_path: target, staging_target_path: staging, capacity_range: { required_bytes: 48 * MiB }, volume_capability: cap });
    expect(Number((await execa('blockdev', ['--getsize64', mountedDevice(staging)])).stdout)).toBe(48 * MiB);
    expect(readFileSync(join(target, 'data.txt'), 'utf8')).toBe(marker);
    step(`${backend}: grown online`);

    const snap = (await ctl.client.controller.CreateSnapshot({ name: `${backend}-snap`, source_volume_id: id })).snapshot?.snapshot_id ?? '';
    const shared = blockCap('MULTI_NODE_MULTI_WRITER');
    const clone = await create(`${backend}-clone`, backend, 48, shared, snap);
    await unstage(id);
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    expect(await served(helper, id)).toBeUndefined();
    step(`${backend}: snapshot, clone, volume unstaged and unpublished`);

    // The clone, published to another node and this one, staged here as a block device: the bytes written before the snapshot are there.
    await publish(clone, shared, OTHER_NODE);
    const cctx = await publish(clone, shared);
    await stage(clone, shared, cctx);
    const dev = paths(clone).target;
    expect(Number((await execa('blockdev', ['--getsize64', dev])).stdout)).toBe(48 * MiB);
    expect((await execa('grep', ['-c', '-a', '-F', marker, dev], { reject: false })).stdout.trim()).not.toBe('0');
    await unstage(clone);
    step(`${backend}: clone staged as a block device, read`);

    // The fence: after this node's unpublish only the other node is let in, and this node's reconnect is refused.
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: clone, node_id: nodeId });
    expect((await served(helper, clone))?.allowed).toEqual([helper === 'nvmet' ? OTHER_NQN : 'iqn.2005-03.org.open-iscsi:vm-other']);
    expect(await handConnect(cctx)).not.toBe(0);
    expect(await kernelSessions()).toEqual([]);
    expect(ls('/sys/class/nvme').filter((c) => cat(`/sys/class/nvme/${c}/subsysnqn`).startsWith(NQN_PREFIX))).toEqual([]);
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: clone, node_id: OTHER_NODE });
    expect(await served(helper, clone)).toBeUndefined();
    step(`${backend}: fence`);

    // A thick volume's classic snapshot lives in it: the snapshot goes first.
    await ctl.client.controller.DeleteVolume({ volume_id: clone });
    await ctl.client.controller.DeleteSnapshot({ snapshot_id: snap });
    await ctl.client.controller.DeleteVolume({ volume_id: id });
    expect(await lvNames(vg)).toEqual(type === 'thin' ? ['pool'] : []);
    step(`${backend}: deleted`);
  });
});
