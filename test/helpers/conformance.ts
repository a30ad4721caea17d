import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { cephForFile, rbdSinterConfig, type FileCeph } from './ceph-shared.js';
import { startSinter, type SinterProcess, type StartOptions } from './sinter-process.js';
import { freePort, requireIscsiTools, TestTgtd } from './tgtd.js';
import { forceCleanupUserspace } from './userspace-cleanup.js';

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
 * - `rbd-userspace` (host; scripts/test.sh runs it once more): an rbd backend
 *   on a pool of its own on the host run's shared Ceph cluster
 *   (test/helpers/ceph-shared.ts); the node half attaches in user space
 *   (qemu-nbd's rbd driver → nbdfuse → loop), its state under the sinter's
 *   base. The helpers below read and change volumes through `rbd` as
 *   client.admin where the file backend's are image files.
 */
export type ConformanceTransport = 'local' | 'iscsi-kernel' | 'rbd-userspace' | `lvm-${'thin' | 'thick'}-${'tgt' | 'lio' | 'nvmet'}`;
export const CONFORMANCE_TRANSPORT = (process.env.SINTER_CONFORMANCE_TRANSPORT ?? 'local') as ConformanceTransport;
const LVM = /^lvm-(thin|thick)-(tgt|lio|nvmet)$/.exec(CONFORMANCE_TRANSPORT) as [string, 'thin' | 'thick', 'tgt' | 'lio' | 'nvmet'] | null;
const RBD = CONFORMANCE_TRANSPORT === 'rbd-userspace';
/** Whether the backend under test takes group snapshots (CSI GroupController): rbd does (rbd group snap), file and LVM do not. */
export const CONFORMANCE_GROUP_SNAPSHOTS = RBD;
if (!['local', 'iscsi-kernel', 'rbd-userspace'].includes(CONFORMANCE_TRANSPORT) && !LVM)
  throw new Error(`SINTER_CONFORMANCE_TRANSPORT must be local, iscsi-kernel, rbd-userspace or lvm-<thin|thick>-<tgt|lio|nvmet>, not ${CONFORMANCE_TRANSPORT}`);

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
  /** rbd-userspace: this sinter's pool and user on the shared cluster. */
  ceph?: FileCeph;
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
  if (RBD) {
    // What a failed test left attached (s.cleanup scrubbed the mounts and loops under base), then the pool.
    await forceCleanupUserspace(rbdStateDir(base));
    await e?.ceph?.stop();
    return;
  }
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
const rbdStateDir = (base: string) => join(base, 'node-state', 'rbd-userspace');

export async function startConformanceSinter(opts: StartOptions = {}): Promise<SinterProcess> {
  if (CONFORMANCE_TRANSPORT === 'local') return startSinter(opts);
  if (RBD) return startRbdSinter(opts);
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

/** rbd-userspace: `sinter all` on an rbd backend named `default` (volume ids as the file backend's), node and controller state under base. */
async function startRbdSinter(opts: StartOptions): Promise<SinterProcess> {
  requireIscsiTools(); // qemu-nbd, nbdfuse, fusermount3, losetup
  const ownBase = opts.base === undefined;
  const base = opts.base ?? mkdtempSync(join(tmpdir(), 'sinter-conf-rbd-'));
  const config = join(base, 'conformance.yaml');
  if (!exporters.has(base)) {
    const e: Exporter = { portal: '' };
    exporters.set(base, e);
    e.ceph = await cephForFile('conf');
    writeFileSync(config, rbdSinterConfig(e.ceph, { name: 'default', controllerStateDir: join(base, 'controller-state'), nodeStateDir: join(base, 'node-state') }));
  }
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

function cephOf(s: SinterProcess): FileCeph {
  const c = exporters.get(s.base)?.ceph;
  if (!c) throw new Error(`no rbd pool for ${s.base}: start it with startConformanceSinter`);
  return c;
}

/** The publish_context the controller hands out for a volume of this sinter, for the transport in use. */
export function expectedPublishContext(s: SinterProcess, volumeId: string): Record<string, string> {
  if (CONFORMANCE_TRANSPORT === 'local') return { transport: 'local', path: `${s.dataDir}/volumes/${volumeId}.img` };
  if (RBD) {
    const c = cephOf(s);
    return { transport: 'rbd', pool: c.pool, image: volumeId, monitors: c.monitors };
  }
  const e = exporters.get(s.base);
  if (!e) throw new Error(`nothing exports for ${s.base}: start it with startConformanceSinter`);
  if (LVM?.[2] === 'nvmet') return { transport: 'nvmeof', nqn: `${NQN_PREFIX}${volumeId}`, portals: e.portal, nsid: '1' };
  return { transport: 'iscsi', portals: e.portal, iqn: `${IQN_PREFIX}${volumeId}`, lun: '1' };
}

/** `rbd` as client.admin on this sinter's cluster, synchronously (the helpers below answer as the file backend's fs calls do). */
function rbdSync(s: SinterProcess, args: string[], encoding: 'utf8' | 'buffer' = 'utf8'): string | Buffer {
  return execFileSync('rbd', ['-c', cephOf(s).conf, ...args], { encoding: encoding === 'utf8' ? 'utf8' : 'buffer', maxBuffer: 1 << 30, stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
}
const imageSpec = (s: SinterProcess, volumeId: string) => `${cephOf(s).pool}/${volumeId}`;

/** The bytes a volume of this sinter holds: its image file, its LV's device, or its rbd image (rbd export). */
export function volumeBytes(s: SinterProcess, volumeId: string): Buffer {
  if (RBD) return rbdSync(s, ['export', '--no-progress', imageSpec(s, volumeId), '-'], 'buffer') as Buffer;
  const e = exporters.get(s.base);
  if (e?.vg) return readFileSync(`/dev/${e.vg}/v-${volumeId}`);
  return readFileSync(join(s.dataDir, 'volumes', `${volumeId}.img`));
}

/** The size of a volume's image (file size, or the rbd image's size); undefined when there is none. */
export function volumeImageSize(s: SinterProcess, volumeId: string): number | undefined {
  if (RBD) {
    try {
      return (JSON.parse(rbdSync(s, ['info', '--format', 'json', imageSpec(s, volumeId)]) as string) as { size: number }).size;
    } catch (e) {
      if (/No such file|\(2\)/.test(String((e as { stderr?: unknown }).stderr ?? e))) return undefined;
      throw e;
    }
  }
  try {
    return statSync(join(s.dataDir, 'volumes', `${volumeId}.img`)).size;
  } catch {
    return undefined;
  }
}

/** Bytes the volume's image takes on its store: the file's blocks, or what `rbd du` says it uses. */
export function volumeAllocatedBytes(s: SinterProcess, volumeId: string): number {
  if (RBD) return (JSON.parse(rbdSync(s, ['du', '--format', 'json', imageSpec(s, volumeId)]) as string) as { images: { used_size: number }[] }).images.reduce((n, i) => n + i.used_size, 0);
  return statSync(join(s.dataDir, 'volumes', `${volumeId}.img`)).blocks * 512;
}

/** Writes bytes into a volume behind sinter's back (the file, or the rbd image through qemu's rbd driver as client.admin). */
export async function writeVolumeBytes(s: SinterProcess, volumeId: string, offset: number, data: Buffer): Promise<void> {
  if (RBD) {
    const dir = mkdtempSync(join(tmpdir(), 'sinter-conf-bytes-'));
    try {
      // qemu-io's write -s fills its buffer from a file: the bytes, exactly as long as the write.
      const src = join(dir, 'src');
      writeFileSync(src, data);
      const c = cephOf(s);
      await execa('qemu-io', ['-f', 'raw', '-c', `write -s ${src} ${offset} ${data.length}`, `rbd:${c.pool}/${volumeId}:id=admin:conf=${c.conf}`]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    return;
  }
  const { promises: fs } = await import('node:fs');
  const fh = await fs.open(join(s.dataDir, 'volumes', `${volumeId}.img`), 'r+');
  try {
    await fh.write(data, 0, undefined, offset);
  } finally {
    await fh.close();
  }
}

/** Takes a volume's image away from under sinter (renamed aside), or puts it back. */
export function hideVolumeImage(s: SinterProcess, volumeId: string, hide: boolean): void {
  const [from, to] = hide ? [volumeId, `${volumeId}.away`] : [`${volumeId}.away`, volumeId];
  if (RBD) rbdSync(s, ['rename', `${cephOf(s).pool}/${from}`, `${cephOf(s).pool}/${to}`]);
  else renameSync(join(s.dataDir, 'volumes', `${from}.img`), join(s.dataDir, 'volumes', `${to}.img`));
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
  // rbd-userspace: the user-space attachments (qemu-nbd + nbdfuse state dirs) the node half keeps.
  if (RBD) return [...exporters.keys()].flatMap((b) => (existsSync(rbdStateDir(b)) ? readdirSync(rbdStateDir(b)).map((d) => join(rbdStateDir(b), d)) : []));
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
