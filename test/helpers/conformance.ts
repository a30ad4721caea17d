import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { startSinter, type SinterProcess, type StartOptions } from './sinter-process.js';
import { freePort, TestTgtd } from './tgtd.js';

/**
 * Which transport the conformance suite (test/conformance/) drives, from
 * SINTER_CONFORMANCE_TRANSPORT:
 * - `local` (default, the host run): the file backend's loop-device export.
 * - `iscsi-kernel` (the VM stage, set by the `vm` vitest project): the file
 *   backend exports each volume through a tgtd of its own on the guest's
 *   loopback, and the node half logs in with open-iscsi's kernel initiator.
 * - `lvm-<thin|thick>-<tgt|lio|nvmet>` (guest only): an LVM backend (a VG of
 *   its own on a loop device, with a thin pool for thin) exported through
 *   that target helper; the node half uses the kernel initiator (open-iscsi,
 *   or nvme-tcp for nvmet).
 */
export type ConformanceTransport = 'local' | 'iscsi-kernel' | `lvm-${'thin' | 'thick'}-${'tgt' | 'lio' | 'nvmet'}`;
export const CONFORMANCE_TRANSPORT = (process.env.SINTER_CONFORMANCE_TRANSPORT ?? 'local') as ConformanceTransport;
const LVM = /^lvm-(thin|thick)-(tgt|lio|nvmet)$/.exec(CONFORMANCE_TRANSPORT) as [string, 'thin' | 'thick', 'tgt' | 'lio' | 'nvmet'] | null;
if (!['local', 'iscsi-kernel'].includes(CONFORMANCE_TRANSPORT) && !LVM)
  throw new Error(`SINTER_CONFORMANCE_TRANSPORT must be local, iscsi-kernel or lvm-<thin|thick>-<tgt|lio|nvmet>, not ${CONFORMANCE_TRANSPORT}`);

const IQN_PREFIX = 'iqn.2026-11.io.sinter.conformance:';
const NQN_PREFIX = 'nqn.2026-11.io.sinter.conformance:';
const NVMET = '/sys/kernel/config/nvmet';

/** What one conformance sinter (by its base directory) exports through: a tgtd, or LIO / nvmet on a portal; with lvm, its VG. */
interface Exporter {
  tgtd?: TestTgtd;
  portal: string;
  vg?: string;
  loop?: string;
  /** The PV's backing file lives outside the sinter's base, whose checks count the loop devices under it. */
  pvDir?: string;
}
const exporters = new Map<string, Exporter>();

/** iscsid for the node half; one per test file (files run one at a time), started on first use. */
let iscsid: { stop(): Promise<void> } | undefined;
async function ensureIscsid(): Promise<void> {
  if (iscsid) return;
  const { Iscsid } = await import('../vm/guest.js');
  iscsid = await Iscsid.start();
}

/** An LVM volume group of its own on a sparse loop device, with a thin pool for thin, and the kernel modules the helper needs. */
async function makeVg(base: string, type: 'thin' | 'thick'): Promise<{ vg: string; loop: string; pvDir: string }> {
  await execa('sh', ['-c', 'modprobe -a dm_thin_pool dm_snapshot target_core_mod iscsi_target_mod target_core_iblock nvmet nvmet-tcp nvme-tcp loop && (mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config)']);
  const vg = `conf-${createHash('sha256').update(base).digest('hex').slice(0, 8)}`;
  const pvDir = mkdtempSync(join(tmpdir(), 'sinter-conf-pv-'));
  const img = join(pvDir, 'pv.img');
  await execa('truncate', ['-s', '1G', img]);
  const loop = (await execa('losetup', ['-f', '--show', img])).stdout.trim();
  await execa('sh', ['-c', `pvcreate -qy ${loop} && vgcreate -q ${vg} ${loop}` + (type === 'thin' ? ` && lvcreate -qy --type thin-pool -L 512m -n pool ${vg}` : '')]);
  return { vg, loop, pvDir };
}

function configFor(base: string, e: Exporter): string[] {
  if (!LVM)
    return [
      '  - name: default',
      '    driver: file',
      `    dataDir: ${join(base, 'data')}`,
      '    export: iscsi',
      '    iscsi:',
      `      portals: ["${e.portal}"]`,
      `      controlPort: ${e.tgtd!.controlPort}`,
      `      iqnPrefix: "${IQN_PREFIX}"`,
    ];
  const [, type, helper] = LVM;
  const exp =
    helper === 'nvmet'
      ? ['    export: nvmeof', '    nvmeof:', `      portals: ["${e.portal}"]`, `      nqnPrefix: "${NQN_PREFIX}"`]
      : helper === 'lio'
        ? ['    iscsi:', '      helper: lio', `      portals: ["${e.portal}"]`, `      iqnPrefix: "${IQN_PREFIX}"`]
        : ['    iscsi:', `      portals: ["${e.portal}"]`, `      controlPort: ${e.tgtd!.controlPort}`, `      iqnPrefix: "${IQN_PREFIX}"`];
  return [
    '  - name: default',
    '    driver: lvm',
    `    dataDir: ${join(base, 'data')}`,
    `    volumeGroup: ${e.vg}`,
    ...(type === 'thin' ? ['    lvmType: thin', '    thinPool: pool'] : ['    lvmType: thick']),
    ...exp,
  ];
}

/** Takes down what a conformance sinter exported through (sessions, controllers, targets, daemon, VG). Idempotent. */
async function teardown(base: string): Promise<void> {
  const e = exporters.get(base);
  exporters.delete(base);
  for (const line of await kernelSessionsTo(IQN_PREFIX)) {
    const [portal, iqn] = line.split(' ');
    await execa('iscsiadm', ['-m', 'node', '-T', iqn, '-p', portal.replace(/,\d+$/, ''), '--logout'], { reject: false });
    await execa('iscsiadm', ['-m', 'node', '-T', iqn, '-p', portal.replace(/,\d+$/, ''), '-o', 'delete'], { reject: false });
  }
  if (!e) return;
  if (LVM?.[2] === 'nvmet') {
    for (const nqn of new Set(nvmeControllersTo(NQN_PREFIX).map((l) => l.split(' ')[1]))) await execa('nvme', ['disconnect', '-n', nqn], { reject: false });
    await execa('sh', ['-c', `for s in ${NVMET}/subsystems/${NQN_PREFIX}*; do [ -d "$s" ] || continue; n=$(basename "$s"); rm -f ${NVMET}/ports/*/subsystems/$n "$s"/allowed_hosts/*; echo 0 > "$s"/namespaces/1/enable; rmdir "$s"/namespaces/1 "$s"; done; for p in ${NVMET}/ports/*; do [ -z "$(ls "$p"/subsystems 2>/dev/null)" ] && rmdir "$p"; done; rmdir ${NVMET}/hosts/* 2>/dev/null; true`], { reject: false });
  }
  if (LVM?.[2] === 'lio') {
    const { LioTargetHelper } = await import('../../src/backends/targets/lio.js');
    const lio = new LioTargetHelper({ iqnPrefix: IQN_PREFIX, portals: [e.portal] });
    for (const x of await lio.listTargets().catch(() => [])) if (x.volumeId) await lio.removeTarget(x.volumeId).catch(() => undefined);
  }
  await e.tgtd?.stop();
  e.tgtd?.cleanupLogs();
  if (e.vg) await execa('sh', ['-c', `vgremove -qy -f ${e.vg}; pvremove -qy ${e.loop}; losetup -d ${e.loop}`], { reject: false });
  if (e.pvDir) rmSync(e.pvDir, { recursive: true, force: true });
  if (exporters.size === 0) {
    await iscsid?.stop();
    iscsid = undefined;
  }
}

/** startSinter with the conformance transport: the same process, its backend exporting over it. */
export async function startConformanceSinter(opts: StartOptions = {}): Promise<SinterProcess> {
  if (CONFORMANCE_TRANSPORT === 'local') return startSinter(opts);
  if (process.env.SINTER_IN_VM !== '1') throw new Error(`SINTER_CONFORMANCE_TRANSPORT=${CONFORMANCE_TRANSPORT} runs only in the VM guest (node test/vm/run.mjs --vitest)`);
  const ownBase = opts.base === undefined;
  const base = opts.base ?? mkdtempSync(join(tmpdir(), 'sinter-conf-'));
  const config = join(base, 'conformance.yaml');
  if (!exporters.has(base)) {
    const helper = LVM?.[2] ?? 'tgt';
    const e: Exporter = helper === 'tgt' ? await TestTgtd.start().then((tgtd) => ({ tgtd, portal: tgtd.portal })) : { portal: `127.0.0.1:${await freePort()}` };
    exporters.set(base, e);
    if (LVM) Object.assign(e, await makeVg(base, LVM[1]));
    writeFileSync(config, ['backends:', ...configFor(base, e), 'node:', '  initiator: kernel'].join('\n'));
  }
  if ((opts.role ?? 'all') !== 'controller') await ensureIscsid();
  const s = await startSinter({ ...opts, base, args: ['--config', config, ...(opts.args ?? [])] });
  return {
    ...s,
    async cleanup() {
      await s.cleanup();
      await teardown(base);
      if (ownBase) rmSync(base, { recursive: true, force: true });
    },
  };
}

/** The publish_context the controller hands out for a volume of this sinter, for the transport in use. */
export function expectedPublishContext(s: SinterProcess, volumeId: string): Record<string, string> {
  if (CONFORMANCE_TRANSPORT === 'local') return { transport: 'local', path: `${s.dataDir}/volumes/${volumeId}.img` };
  const e = exporters.get(s.base);
  if (!e) throw new Error(`nothing exports for ${s.base}: start it with startConformanceSinter`);
  if (LVM?.[2] === 'nvmet') return { transport: 'nvmeof', nqn: `${NQN_PREFIX}${volumeId}`, portals: e.portal, nsid: '1' };
  return { transport: 'iscsi', portals: e.portal, iqn: `${IQN_PREFIX}${volumeId}`, lun: '1' };
}

/** The bytes a volume of this sinter holds: its image file, or its LV's device. */
export function volumeBytes(s: SinterProcess, volumeId: string): Buffer {
  const e = exporters.get(s.base);
  if (e?.vg) return readFileSync(`/dev/${e.vg}/v-${volumeId}`);
  return readFileSync(join(s.dataDir, 'volumes', `${volumeId}.img`));
}

/** NVMe controllers to subsystems under prefix ("address nqn"). */
function nvmeControllersTo(prefix: string): string[] {
  if (!existsSync('/sys/class/nvme')) return [];
  const cat = (p: string) => readFileSync(p, 'utf8').trim();
  return readdirSync('/sys/class/nvme')
    .map((c) => `${cat(`/sys/class/nvme/${c}/address`)} ${cat(`/sys/class/nvme/${c}/subsysnqn`)}`)
    .filter((l) => l.split(' ')[1]?.startsWith(prefix));
}

/** The node's attachments to this suite's targets: kernel iSCSI sessions ("portal,tpgt iqn") or NVMe controllers ("address nqn"); [] on the local transport. */
export async function kernelSessionsTo(prefix = IQN_PREFIX): Promise<string[]> {
  if (CONFORMANCE_TRANSPORT === 'local') return [];
  const nvme = LVM?.[2] === 'nvmet' ? nvmeControllersTo(NQN_PREFIX) : [];
  const r = await execa('iscsiadm', ['-m', 'session'], { reject: false });
  if (r.exitCode === 21) return nvme;
  return [
    ...r.stdout
      .split('\n')
      .map((l) => l.replace(/^tcp: \[\d+\] /, '').replace(/ \(non-flash\)$/, ''))
      .filter((l) => l.split(' ')[1]?.startsWith(prefix)),
    ...nvme,
  ];
}
