import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, it } from 'vitest';
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
 *   or nvme-tcp for nvmet). By hand, the whole suite for one combination; in
 *   the VM stage, test/vm/lvm-conformance-{thin,thick}.vm.test.ts runs the perBackend tests
 *   (below, conformance()) for all six, one shared sinter per combination.
 *
 * A conformance file calls conformance() once at its top: what it returns is bound to the transport
 * current when the file is evaluated (SINTER_CONFORMANCE_TRANSPORT's, or a matrix combination's
 * bound by bindConformance before the matrix imports the file), so one worker can run the files for
 * several transports (the vm project loads modules once per guest: isolate false).
 * - `rbd-userspace` (host; scripts/test.sh runs it once more): an rbd backend
 *   on a pool of its own on the host run's shared Ceph cluster
 *   (test/helpers/ceph-shared.ts); the node half attaches in user space
 *   (qemu-nbd's rbd driver → nbdfuse → loop), its state under the sinter's
 *   base. The helpers below read and change volumes through `rbd` as
 *   client.admin where the file backend's are image files.
 */
export type LvmTransport = `lvm-${'thin' | 'thick'}-${'tgt' | 'lio' | 'nvmet'}`;
export type ConformanceTransport = 'local' | 'iscsi-kernel' | 'rbd-userspace' | LvmTransport;
const lvmOf = (t: ConformanceTransport) => /^lvm-(thin|thick)-(tgt|lio|nvmet)$/.exec(t) as [string, 'thin' | 'thick', 'tgt' | 'lio' | 'nvmet'] | null;
const ENV_TRANSPORT = (process.env.SINTER_CONFORMANCE_TRANSPORT ?? 'local') as ConformanceTransport;
if (!['local', 'iscsi-kernel', 'rbd-userspace'].includes(ENV_TRANSPORT) && !lvmOf(ENV_TRANSPORT))
  throw new Error(`SINTER_CONFORMANCE_TRANSPORT must be local, iscsi-kernel, rbd-userspace or lvm-<thin|thick>-<tgt|lio|nvmet>, not ${ENV_TRANSPORT}`);

/**
 * One combination of the LVM matrix (test/vm/lvm-conformance-{thin,thick}.vm.test.ts): every conformance suite
 * imported for it shares ONE `sinter all` (started by the first suite's startSinter, replaced by a
 * restart, stopped by end()) on the matrix's volume group, so a combination pays one start, not one
 * per suite. Only the tests marked perBackend register (the rest check the services' own arguments
 * and do not depend on the backend or the export).
 */
export interface MatrixCombo {
  readonly transport: LvmTransport;
  /** Whether the perBackendType tests (the LVM backend's own work, which no target helper touches) run in this combination: one per LVM type. */
  readonly backendType: boolean;
  base?: string;
  proc?: SinterProcess;
  /** Stops the shared sinter and removes what the combination left: sessions, exports, its LVs. */
  end(): Promise<void>;
}

/** What the conformance files imported next bind to (their suites read it once, when their module is evaluated). */
let current: { transport: ConformanceTransport; combo?: MatrixCombo } = { transport: ENV_TRANSPORT };

const IQN_PREFIX = 'iqn.2026-11.io.sinter.conformance:';
const NQN_PREFIX = 'nqn.2026-11.io.sinter.conformance:';
const NVMET = '/sys/kernel/config/nvmet';

/** What one conformance sinter (by its base directory) exports through: a tgtd, or LIO / nvmet on a portal; with lvm, its VG. */
interface Exporter {
  transport: ConformanceTransport;
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

const LVM_MODULES = 'modprobe -a dm_thin_pool dm_snapshot target_core_mod iscsi_target_mod target_core_iblock nvmet nvmet-tcp nvme-tcp loop && (mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config)';

/** An LVM volume group on a sparse 1 GiB loop device (its backing file outside any sinter's base), with a 512 MiB thin pool `pool` when asked. */
async function makeVg(name: string, thinPool: boolean): Promise<{ vg: string; loop: string; pvDir: string }> {
  await execa('sh', ['-c', LVM_MODULES]);
  const vg = `conf-${createHash('sha256').update(name).digest('hex').slice(0, 8)}`;
  const pvDir = mkdtempSync(join(tmpdir(), 'sinter-conf-pv-'));
  const img = join(pvDir, 'pv.img');
  await execa('truncate', ['-s', '1G', img]);
  const loop = (await execa('losetup', ['-f', '--show', img])).stdout.trim();
  await execa('sh', ['-c', `pvcreate -qy ${loop} && vgcreate -q ${vg} ${loop}` + (thinPool ? ` && lvcreate -qy --type thin-pool -L 512m -n pool ${vg}` : '')]);
  return { vg, loop, pvDir };
}

async function removeVg(v: { vg: string; loop: string; pvDir: string }): Promise<void> {
  await execa('sh', ['-c', `vgremove -qy -f ${v.vg}; pvremove -qy ${v.loop}; losetup -d ${v.loop}`], { reject: false });
  rmSync(v.pvDir, { recursive: true, force: true });
}

function configFor(base: string, e: Exporter): string[] {
  const lvm = lvmOf(e.transport);
  if (!lvm)
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
  const [, type, helper] = lvm;
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

/** Takes down what a conformance sinter exported through (sessions, controllers, targets, daemon, its own VG). Idempotent. */
async function teardown(base: string): Promise<void> {
  const e = exporters.get(base);
  exporters.delete(base);
  if (e?.transport === 'rbd-userspace') {
    // What a failed test left attached (s.cleanup scrubbed the mounts and loops under base), then the pool.
    await forceCleanupUserspace(rbdStateDir(base));
    await e.ceph?.stop();
    return;
  }
  for (const line of await iscsiSessionsTo(IQN_PREFIX)) {
    const [portal, iqn] = line.split(' ');
    await execa('iscsiadm', ['-m', 'node', '-T', iqn, '-p', portal.replace(/,\d+$/, ''), '--logout'], { reject: false });
    await execa('iscsiadm', ['-m', 'node', '-T', iqn, '-p', portal.replace(/,\d+$/, ''), '-o', 'delete'], { reject: false });
  }
  if (!e) return;
  const helper = lvmOf(e.transport)?.[2];
  if (helper === 'nvmet') {
    for (const nqn of new Set(nvmeControllersTo(NQN_PREFIX).map((l) => l.split(' ')[1]))) await execa('nvme', ['disconnect', '-n', nqn], { reject: false });
    await execa('sh', ['-c', `for s in ${NVMET}/subsystems/${NQN_PREFIX}*; do [ -d "$s" ] || continue; n=$(basename "$s"); rm -f ${NVMET}/ports/*/subsystems/$n "$s"/allowed_hosts/*; echo 0 > "$s"/namespaces/1/enable; rmdir "$s"/namespaces/1 "$s"; done; for p in ${NVMET}/ports/*; do [ -z "$(ls "$p"/subsystems 2>/dev/null)" ] && rmdir "$p"; done; rmdir ${NVMET}/hosts/* 2>/dev/null; true`], { reject: false });
  }
  if (helper === 'lio') {
    const { LioTargetHelper } = await import('../../src/backends/targets/lio.js');
    const lio = new LioTargetHelper({ iqnPrefix: IQN_PREFIX, portals: [e.portal] });
    for (const x of await lio.listTargets().catch(() => [])) if (x.volumeId) await lio.removeTarget(x.volumeId).catch(() => undefined);
  }
  await e.tgtd?.stop();
  // A matrix combination's VG is the matrix's (endMatrix removes it); only a VG made for this sinter goes here.
  if (e.vg && e.loop && e.pvDir) await removeVg({ vg: e.vg, loop: e.loop, pvDir: e.pvDir });
  if (exporters.size === 0 && !matrix) {
    await iscsid?.stop();
    iscsid = undefined;
  }
}

const rbdStateDir = (base: string) => join(base, 'node-state', 'rbd-userspace');

/** Makes the exporter of a new conformance sinter on base (a tgtd of its own for tgt, a free portal for LIO / nvmet) and writes its config. */
async function newExporter(base: string, transport: ConformanceTransport, vg?: { vg: string; loop?: string; pvDir?: string }): Promise<string> {
  const config = join(base, 'conformance.yaml');
  const helper = lvmOf(transport)?.[2] ?? 'tgt';
  const e: Exporter = helper === 'tgt' ? await TestTgtd.start().then((tgtd) => ({ transport, tgtd, portal: tgtd.portal })) : { transport, portal: `127.0.0.1:${await freePort()}` };
  exporters.set(base, e);
  const lvm = lvmOf(transport);
  if (lvm) Object.assign(e, vg ?? (await makeVg(base, lvm[1] === 'thin')));
  writeFileSync(config, ['backends:', ...configFor(base, e), 'node:', '  initiator: kernel'].join('\n'));
  return config;
}

/** startSinter with the conformance transport: the same process, its backend exporting over it. */
async function startConformanceSinter(opts: StartOptions, bound: { transport: ConformanceTransport; combo?: MatrixCombo }): Promise<SinterProcess> {
  const { transport, combo } = bound;
  if (transport === 'local') return startSinter(opts);
  if (transport === 'rbd-userspace') return startRbdSinter(opts);
  if (process.env.SINTER_IN_VM !== '1') throw new Error(`SINTER_CONFORMANCE_TRANSPORT=${transport} runs only in the VM guest (node test/vm/run.mjs --vitest)`);
  if (combo) return startMatrixSinter(opts, combo);
  const ownBase = opts.base === undefined;
  const base = opts.base ?? mkdtempSync(join(tmpdir(), 'sinter-conf-'));
  const config = exporters.has(base) ? join(base, 'conformance.yaml') : await newExporter(base, transport);
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

/**
 * The matrix's shared state, made once for all six combinations: its VG (a thin pool `pool`, thick
 * LVs beside it), iscsid, and one `sinter node` (kernel initiators: open-iscsi and nvme-tcp; the node
 * half does not depend on the backend).
 */
let matrix: { vg: string; loop: string; pvDir: string; node?: SinterProcess; nodeBase?: string } | undefined;

/**
 * A combination's sinter, shared by its suites: a `sinter controller` of its own (a controller in
 * `all` mode knows only its own node, and the publish suite publishes to made-up ones) joined with
 * the matrix's `sinter node` into one SinterProcess (the node's base and kubelet root, so the node
 * suite's checks look where the node works). The first call starts the controller; a call with the
 * view's base (controller-publish's restart case, after it stopped the controller) starts it again on
 * the same records. Suites' cleanup() leaves it running; the combination's end() stops it.
 */
async function startMatrixSinter(opts: StartOptions, combo: MatrixCombo): Promise<SinterProcess> {
  const m = matrix;
  if (!m?.node || !m.nodeBase) throw new Error('the LVM matrix is not started: call startMatrix() in beforeAll');
  if (opts.args?.length) throw new Error(`the LVM matrix shares one sinter per combination; a suite with its own flags (${opts.args.join(' ')}) is not perBackend`);
  const restart = opts.base !== undefined;
  if (restart && opts.base !== m.nodeBase) throw new Error(`the LVM matrix restarts only its own controller (base ${m.nodeBase}), not ${opts.base}`);
  if (!combo.base) {
    combo.base = mkdtempSync(join(tmpdir(), 'sinter-conf-'));
    await newExporter(combo.base, combo.transport, { vg: m.vg });
    // The helpers that read volumes (volumeBytes …) find the exporter by the view's base.
    exporters.set(m.nodeBase, exporters.get(combo.base)!);
  }
  const p = combo.proc;
  const alive = p && p.proc.exitCode === null && p.proc.signalCode === null;
  if (!alive || restart) {
    if (alive) await p.stop();
    p?.client.close();
    combo.proc = await startSinter({ role: 'controller', base: combo.base, args: ['--config', join(combo.base, 'conformance.yaml')] });
  }
  const ctl = combo.proc!;
  const node = m.node;
  return {
    ...ctl,
    base: node.base,
    kubeletRoot: node.kubeletRoot,
    client: { identity: ctl.client.identity, controller: ctl.client.controller, groupController: ctl.client.groupController, node: node.client.node, close: () => ctl.client.close() },
    cleanup: async () => undefined,
  };
}

/** The matrix's set-up (test/vm/lvm-conformance.ts, in a file's beforeAll): kernel modules, one VG (with a thin pool when a combination is thin), iscsid, `sinter node`. */
export async function startMatrix(transports: readonly LvmTransport[]): Promise<void> {
  if (process.env.SINTER_IN_VM !== '1') throw new Error('the LVM matrix runs only in the VM guest');
  matrix = await makeVg(`matrix-${transports.join()}`, transports.some((t) => lvmOf(t)?.[1] === 'thin'));
  await ensureIscsid();
  const nodeBase = mkdtempSync(join(tmpdir(), 'sinter-conf-node-'));
  matrix.nodeBase = nodeBase;
  const config = join(nodeBase, 'node.yaml');
  writeFileSync(config, ['node:', '  initiator: kernel', `  stateDir: ${join(nodeBase, 'state')}`].join('\n'));
  matrix.node = await startSinter({ role: 'node', base: nodeBase, args: ['--config', config] });
}

/** The matrix's tear-down: `sinter node`, its VG, iscsid. Idempotent, also after a half-finished start. */
export async function endMatrix(): Promise<void> {
  const m = matrix;
  matrix = undefined;
  if (m?.node) await m.node.cleanup();
  if (m?.nodeBase) {
    exporters.delete(m.nodeBase);
    await teardown(m.nodeBase);
    rmSync(m.nodeBase, { recursive: true, force: true });
  }
  if (m) await removeVg(m);
  await iscsid?.stop();
  iscsid = undefined;
}

/** A combination of the matrix; bindConformance(combo) before importing the conformance files for it. */
export function matrixCombo(transport: LvmTransport, backendType = true): MatrixCombo {
  const combo: MatrixCombo = {
    transport,
    backendType,
    async end() {
      const base = combo.base;
      if (!base) return;
      await combo.proc?.cleanup();
      combo.proc = undefined;
      if (matrix?.nodeBase) exporters.delete(matrix.nodeBase);
      await teardown(base);
      // Its LVs (volumes, snapshots, clones), so the next combination's sinter starts on an empty VG: one lvremove.
      if (matrix) {
        const lvs = (await execa('lvs', ['--noheadings', '-o', 'lv_name', matrix.vg])).stdout.split('\n').map((l) => l.trim()).filter((l) => l && l !== 'pool');
        if (lvs.length) await execa('lvremove', ['-qy', '-f', ...lvs.map((l) => `${matrix!.vg}/${l}`)]);
      }
      rmSync(base, { recursive: true, force: true });
      combo.base = undefined;
    },
  };
  return combo;
}

/**
 * What the conformance files imported next are for: a matrix combination, or (undefined) the
 * transport of SINTER_CONFORMANCE_TRANSPORT again. The files read it once, when evaluated.
 */
export function bindConformance(combo: MatrixCombo | undefined): void {
  current = combo ? { transport: combo.transport, combo } : { transport: ENV_TRANSPORT };
}

type It = typeof it;
type Describe = typeof describe;

/**
 * The conformance API for the file being evaluated, bound to its transport: call it once at the
 * top of a conformance file. `it` / `describe` register a test or suite of the file's own run
 * only; `it.perBackend` / `describe.perBackend` also in every LVM matrix combination: mark so the
 * tests that exercise the export (publish, stage through the helper and the initiator), not those
 * that check the services' own validation of requests; `it.perBackendType` in one combination per
 * LVM type: the backend's own work, which the helper takes no part in (create, delete, snapshot,
 * clone, expand, records across a restart).
 */
export function conformance() {
  const bound = current;
  const inMatrix = bound.combo !== undefined;
  // Left out of a matrix combination, a test or suite registers nothing (a skip would count as a failure).
  // A fresh function each time: `it` and `describe` each get their own properties assigned.
  const skip = () => () => undefined;
  const own = <T extends It | Describe>(fn: T): T & { perBackend: T; perBackendType: T } =>
    Object.assign(inMatrix ? skip() : (...a: unknown[]) => (fn as (...a: unknown[]) => unknown)(...a), {
      perBackend: fn,
      // The backend's own work (create, delete, snapshot, clone, expand, records across a restart): the target
      // helper does not take part, so one combination per LVM type runs it (VM time: ~35 s a combination).
      perBackendType: inMatrix && !bound.combo!.backendType ? skip() : fn,
    }) as unknown as T & { perBackend: T; perBackendType: T };
  return {
    transport: bound.transport,
    it: own(it),
    describe: own(describe),
    startSinter: (opts: StartOptions = {}) => startConformanceSinter(opts, bound),
    /** Whether the backend under test takes group snapshots (CSI GroupController): rbd does (rbd group snap), file and LVM do not. */
    groupSnapshots: bound.transport === 'rbd-userspace',
    /** The node's attachments to this suite's targets: kernel iSCSI sessions ("portal,tpgt iqn") or NVMe controllers ("address nqn"); [] on the local transport. */
    kernelSessionsTo: async (prefix = IQN_PREFIX): Promise<string[]> => {
      if (bound.transport === 'local') return [];
      // rbd-userspace: the user-space attachments (qemu-nbd + nbdfuse state dirs) the node half keeps.
      if (bound.transport === 'rbd-userspace')
        return [...exporters.keys()].flatMap((b) => (existsSync(rbdStateDir(b)) ? readdirSync(rbdStateDir(b)).map((d) => join(rbdStateDir(b), d)) : []));
      return [...(await iscsiSessionsTo(prefix)), ...nvmeControllersTo(NQN_PREFIX)];
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
    const e: Exporter = { transport: 'rbd-userspace', portal: '' };
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
  const e = exporters.get(s.base);
  // No exporter: the local transport (startSinter itself).
  if (!e) return { transport: 'local', path: `${s.dataDir}/volumes/${volumeId}.img` };
  if (e.transport === 'rbd-userspace') {
    const c = cephOf(s);
    return { transport: 'rbd', pool: c.pool, image: volumeId, monitors: c.monitors };
  }
  if (lvmOf(e.transport)?.[2] === 'nvmet') return { transport: 'nvmeof', nqn: `${NQN_PREFIX}${volumeId}`, portals: e.portal, nsid: '1' };
  return { transport: 'iscsi', portals: e.portal, iqn: `${IQN_PREFIX}${volumeId}`, lun: '1' };
}

/** `rbd` as client.admin on this sinter's cluster, synchronously (the helpers below answer as the file backend's fs calls do). */
function rbdSync(s: SinterProcess, args: string[], encoding: 'utf8' | 'buffer' = 'utf8'): string | Buffer {
  return execFileSync('rbd', ['-c', cephOf(s).conf, ...args], { encoding: encoding === 'utf8' ? 'utf8' : 'buffer', maxBuffer: 1 << 30, stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
}
const imageSpec = (s: SinterProcess, volumeId: string) => `${cephOf(s).pool}/${volumeId}`;

const isRbd = (s: SinterProcess) => exporters.get(s.base)?.transport === 'rbd-userspace';

/** A volume's LV device when the sinter runs an LVM backend (activated first: a thin snapshot made into a volume may be inactive until used). */
function lvDevice(s: SinterProcess, volumeId: string): string | undefined {
  const vg = exporters.get(s.base)?.vg;
  if (!vg) return undefined;
  const dev = `/dev/${vg}/v-${volumeId}`;
  if (!existsSync(dev)) execFileSync('lvchange', ['-qy', '-ay', '-K', `${vg}/v-${volumeId}`], { stdio: 'ignore', timeout: 120_000 });
  return dev;
}

/** An LV's size in bytes, undefined when there is no such LV. */
function lvSize(vg: string, lv: string): number | undefined {
  try {
    return Number(execFileSync('lvs', ['--noheadings', '--nosuffix', '--units', 'b', '-o', 'lv_size', `${vg}/${lv}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 }).trim());
  } catch (e) {
    if (/not found|Failed to find/i.test(String((e as { stderr?: unknown }).stderr ?? e))) return undefined;
    throw e;
  }
}

/** The bytes a volume of this sinter holds: its image file, its LV's device, or its rbd image (rbd export). */
export function volumeBytes(s: SinterProcess, volumeId: string): Buffer {
  if (isRbd(s)) return rbdSync(s, ['export', '--no-progress', imageSpec(s, volumeId), '-'], 'buffer') as Buffer;
  const dev = lvDevice(s, volumeId);
  if (dev) return readFileSync(dev);
  return readFileSync(join(s.dataDir, 'volumes', `${volumeId}.img`));
}

/** The size of a volume's image (file size, LV size, or the rbd image's size); undefined when there is none. */
export function volumeImageSize(s: SinterProcess, volumeId: string): number | undefined {
  const vg = exporters.get(s.base)?.vg;
  if (vg) return lvSize(vg, `v-${volumeId}`);
  if (isRbd(s)) {
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
  if (isRbd(s)) return (JSON.parse(rbdSync(s, ['du', '--format', 'json', imageSpec(s, volumeId)]) as string) as { images: { used_size: number }[] }).images.reduce((n, i) => n + i.used_size, 0);
  return statSync(join(s.dataDir, 'volumes', `${volumeId}.img`)).blocks * 512;
}

/** Writes bytes into a volume behind sinter's back (the file, or the rbd image through qemu's rbd driver as client.admin). */
export async function writeVolumeBytes(s: SinterProcess, volumeId: string, offset: number, data: Buffer): Promise<void> {
  if (isRbd(s)) {
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
  const fh = await fs.open(lvDevice(s, volumeId) ?? join(s.dataDir, 'volumes', `${volumeId}.img`), 'r+');
  try {
    await fh.write(data, 0, undefined, offset);
  } finally {
    await fh.close();
  }
}

/** Takes a volume's image away from under sinter (renamed aside), or puts it back. */
export function hideVolumeImage(s: SinterProcess, volumeId: string, hide: boolean): void {
  const [from, to] = hide ? [volumeId, `${volumeId}.away`] : [`${volumeId}.away`, volumeId];
  if (isRbd(s)) rbdSync(s, ['rename', `${cephOf(s).pool}/${from}`, `${cephOf(s).pool}/${to}`]);
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

/** The kernel's iSCSI sessions to targets under prefix ("portal,tpgt iqn"). */
async function iscsiSessionsTo(prefix: string): Promise<string[]> {
  const r = await execa('iscsiadm', ['-m', 'session'], { reject: false });
  if (r.exitCode === 21) return [];
  return r.stdout
    .split('\n')
    .map((l) => l.replace(/^tcp: \[\d+\] /, '').replace(/ \(non-flash\)$/, ''))
    .filter((l) => l.split(' ')[1]?.startsWith(prefix));
}
