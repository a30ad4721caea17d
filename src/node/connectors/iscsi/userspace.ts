import { createHash } from 'node:crypto';
import { NbdFuseChain } from '../nbd-chain.js';
import { maskSecrets } from '../../../exec/mask.js';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { chapSecrets } from '../../../contracts/chap.js';
import { isValidIqn, sameIqn } from '../../../contracts/nodeid.js';
import { DomainError, Code, failedPrecondition, internal, invalidArgument } from '../../../errors/domain-error.js';
import { KeyedLock } from '../../../csi/locks.js';
import type { DaemonSpawner, Executor } from '../../../exec/run.js';
import { writeFileAtomic } from '../../../store/atomic-file.js';
import { livePid, readTail, stopPid, waitReady } from './daemon-process.js';
import { classifyLoginFailure } from './login-errors.js';
import { parsePortal, validateTarget, type IscsiAttached, type IscsiAttachment, type IscsiConnectOptions, type IscsiHealth, type IscsiInitiator, type IscsiTarget, type Portal } from './types.js';

export { classifyLoginFailure } from './login-errors.js';

/** attached()'s `source` of a user-space attachment. */
const userspaceSource = (a: Pick<UserspaceAttachmentInfo, 'iqn' | 'lun' | 'portal'>) => `${a.iqn} lun ${a.lun} via ${a.portal}`;

/**
 * User-space iSCSI initiator, for hosts without the iscsi_tcp kernel module:
 *
 *   qemu-nbd (libiscsi, one iSCSI session)  ──unix socket──►  nbdfuse (FUSE file)
 *       ──►  losetup (a real /dev/loopN)
 *
 * Why this chain: the kernel NBD client (nbd.ko) is what `qemu-nbd -c` needs
 * and is not available on every host (it is not here); FUSE and loop are.
 * nbdfuse (libnbd-bin) turns the NBD export into one regular file that the
 * loop driver can back a block device with. Secrets: the initiator name and
 * CHAP user go in `--image-opts`, the CHAP secret in a `--object secret,file=`
 * file (0600, in a 0700 directory, removed as soon as qemu-nbd has logged in),
 * so nothing secret appears in `ps`.
 *
 * Limits: libiscsi as used by qemu's iSCSI driver does one-way CHAP only (it
 * never checks the target), so mutual CHAP is refused rather than silently
 * downgraded; one portal is used (the first that accepts the login), no
 * multipath.
 *
 * Each attachment lives in `<stateDir>/<key>/`, key = hash(portal, iqn, lun):
 * qemu-nbd.pid, nbdfuse.pid, nbd.sock, mnt/disk, logs and attachment.json.
 * connect and disconnect re-inspect what really runs (pids, mount, the loop
 * device whose backing file is mnt/disk), so both are idempotent and survive
 * a restart of the node plugin: the daemons are detached and outlive it.
 */
export interface UserspaceInitiatorConfig {
  /** Private state directory (created 0700), e.g. /run/sinter/iscsi-userspace. */
  stateDir: string;
  /** How long qemu-nbd may take to log in, and nbdfuse to mount. */
  loginTimeoutMs?: number;
  /** Grace before SIGKILL when stopping a daemon. */
  stopTimeoutMs?: number;
  /** Where /proc and /sys are (tests, or a host root). */
  procRoot?: string;
  sysfsRoot?: string;
  /** Open the FUSE file with O_DIRECT in the loop driver (no second page cache). Default true. */
  directIo?: boolean;
}

export interface UserspaceAttachmentInfo {
  portal: string;
  iqn: string;
  lun: number;
  initiatorName: string;
  dir: string;
  devicePath?: string;
  qemuNbdPid?: number;
  nbdfusePid?: number;
  mounted: boolean;
}

interface AttachmentRecord {
  portal: string;
  iqn: string;
  lun: number;
  initiatorName: string;
  createdAt: string;
}

export class UserspaceIscsiInitiator implements IscsiInitiator {
  readonly kind = 'userspace' as const;
  private readonly locks = new KeyedLock();
  private readonly loginTimeoutMs: number;
  private readonly stopTimeoutMs: number;
  private readonly procRoot: string;
  private readonly sysfsRoot: string;
  private readonly chain: NbdFuseChain;
  private readonly directIo: boolean;

  constructor(
    private readonly cfg: UserspaceInitiatorConfig,
    private readonly exec: Executor & DaemonSpawner,
    private readonly log?: Logger,
  ) {
    this.loginTimeoutMs = cfg.loginTimeoutMs ?? 30_000;
    this.stopTimeoutMs = cfg.stopTimeoutMs ?? 10_000;
    this.procRoot = cfg.procRoot ?? '/proc';
    this.sysfsRoot = cfg.sysfsRoot ?? '/sys';
    this.directIo = cfg.directIo ?? true;
    this.chain = new NbdFuseChain(
      exec,
      { procRoot: this.procRoot, sysfsRoot: this.sysfsRoot, loginTimeoutMs: this.loginTimeoutMs, stopTimeoutMs: this.stopTimeoutMs, directIo: this.directIo, what: 'the iSCSI volume' },
      log,
    );
  }

  /** The attachment directory for (portal, iqn, lun). */
  dirFor(portal: Portal, iqn: string, lun: number): string {
    const key = createHash('sha256').update(`${portal.text}\n${iqn.toLowerCase()}\n${lun}`).digest('hex').slice(0, 20);
    return join(this.cfg.stateDir, key);
  }

  async connect(target: IscsiTarget, opts: IscsiConnectOptions): Promise<IscsiAttachment> {
    const portals = this.validate(target);
    if (!isValidIqn(opts.initiatorName)) throw invalidArgument(`initiator name "${opts.initiatorName}" is not a valid iSCSI name`);
    if (opts.chap && (opts.chap.mutualUser !== undefined || opts.chap.mutualPassword !== undefined)) {
      throw failedPrecondition('mutual CHAP is not supported by the user-space iSCSI initiator (qemu\'s libiscsi driver authenticates the initiator only); use the kernel initiator or remove the *_in secrets');
    }
    return this.locks.run(lockKey(target), async () => {
      await fs.mkdir(this.cfg.stateDir, { recursive: true, mode: 0o700 });
      // Already attached through any of the portals?
      for (const p of portals) {
        const dir = this.dirFor(p, target.iqn, target.lun);
        const st = await this.inspect(dir);
        if (!st) continue;
        if (st.qemuNbdPid && st.nbdfusePid && st.mounted && st.devicePath) {
          this.log?.debug({ iqn: target.iqn, lun: target.lun, device: st.devicePath }, 'user-space iSCSI attachment reused');
          return { initiator: 'userspace', devicePath: st.devicePath, paths: [{ portal: p.text, device: st.devicePath }] };
        }
        this.log?.warn({ dir, st }, 'incomplete user-space iSCSI attachment found; tearing it down before attaching again');
        await this.teardown(dir);
      }
      let last: unknown;
      for (const p of portals) {
        try {
          return await this.attach(p, target, opts);
        } catch (e) {
          last = e;
          // A CHAP or ACL refusal will not get better on another portal of the same target.
          if (e instanceof DomainError && (e.code === Code.PERMISSION_DENIED || e.code === Code.FAILED_PRECONDITION)) throw e;
          this.log?.warn({ portal: p.text, iqn: target.iqn, err: (e as Error).message }, 'user-space iSCSI login through this portal failed');
        }
      }
      throw last instanceof Error ? last : internal('user-space iSCSI attach failed');
    });
  }

  async disconnect(target: IscsiTarget): Promise<void> {
    const portals = this.validate(target);
    await this.locks.run(lockKey(target), async () => {
      for (const p of portals) await this.teardown(this.dirFor(p, target.iqn, target.lun));
    });
  }

  /**
   * The attachment's loop device when its FUSE file is mounted. Looked up in
   * the target's own directories (one per portal, as connect and disconnect
   * name them), not found among every attachment's record: find() runs on
   * every stage and unstage, and reading each record made the 32nd unstage
   * cost 1.8× the first in main-thread CPU (bench 7b).
   */
  async find(target: IscsiTarget): Promise<string | undefined> {
    let portals: Portal[];
    try {
      portals = this.validate(target);
    } catch {
      return undefined;
    }
    for (const p of portals) {
      const dir = this.dirFor(p, target.iqn, target.lun);
      const rec = await readRecord(dir);
      if (!rec || rec.iqn !== target.iqn || rec.lun !== target.lun) continue;
      const st = await this.inspect(dir);
      if (st?.mounted && st.devicePath) return st.devicePath;
    }
    return undefined;
  }

  /** Nothing to do: see staleSizeReason. */
  async rescan(_target: IscsiTarget): Promise<void> {}

  staleSizeReason(): string {
    // qemu-nbd reads the LUN's capacity once, at login, and NBD has no way to
    // announce a new size; nbdfuse's file and the loop device over it keep theirs.
    return (
      'the user-space iSCSI initiator cannot see an attached LUN grow (qemu-nbd and nbdfuse fix its size at login); ' +
      'the filesystem grows at the next stage: unstage and stage the volume again (e.g. restart the pod), then expand; or use the kernel initiator (node.initiator: kernel)'
    );
  }

  async attached(): Promise<IscsiAttached[]> {
    return (await this.list()).filter((a) => a.devicePath).map((a) => ({ device: a.devicePath!, source: userspaceSource(a), iqn: a.iqn }));
  }

  /**
   * The whole chain (loop device, FUSE mount, nbdfuse, qemu-nbd: its own
   * session) of an attachment attached() listed, unless a volume with a record
   * uses that target and LUN (then it is that volume's, whatever its record says).
   */
  async release(device: string, source: string, inUse: IscsiTarget[]): Promise<boolean> {
    const a = (await this.list()).find((x) => x.devicePath === device && userspaceSource(x) === source);
    if (!a) return false;
    if (inUse.some((c) => sameIqn(c.iqn, a.iqn) && c.lun === a.lun)) return false;
    // disconnect() finds the attachment again by (portal, iqn, lun): make sure that is this directory.
    if (this.dirFor(parsePortal(a.portal), a.iqn, a.lun) !== a.dir) return false;
    await this.disconnect({ portals: [a.portal], iqn: a.iqn, lun: a.lun });
    return true;
  }

  /** A dead daemon leaves the loop device and the FUSE mount in place, so find() still sees the device; the pids tell. */
  async health(target: IscsiTarget): Promise<IscsiHealth> {
    // The daemons are read after the device lookup: one caught mid-exit by find() is then seen dead and named, not a vanished session.
    const device = await this.find(target).catch(() => undefined);
    let chain = await this.chainHealth(target).catch(() => undefined);
    // The device gone while both daemons still look alive: one is exiting (its /proc entry outlives its FUSE mount briefly). Look once more.
    if (!device && chain?.qemuNbd && chain.nbdfuse) {
      await new Promise((r) => setTimeout(r, 200));
      chain = await this.chainHealth(target).catch(() => undefined);
    }
    const restage = 'I/O to the volume fails until it is staged again: delete the pod using it so kubelet unstages and restages the volume';
    const at = `${target.iqn} LUN ${target.lun}`;
    if (chain && !chain.qemuNbd)
      return { broken: `the user-space iSCSI session to ${at} at ${chain.portal} is down (its qemu-nbd process exited; see qemu-nbd.log in the node's iSCSI state directory); ${restage}`, sessions: 0, down: [] };
    if (chain && !chain.nbdfuse)
      return { broken: `the user-space iSCSI attachment of ${at} is broken (its nbdfuse process exited, the FUSE file behind the loop device is gone); ${restage}`, sessions: 0, down: [] };
    return { device, sessions: 0, down: [] };
  }

  /**
   * Whether the daemons of target's chain still run, read from pid files and
   * /proc only (no command): NodeGetVolumeStats asks every minute per volume.
   * Undefined when this initiator has no state for target on any portal.
   */
  async chainHealth(target: IscsiTarget): Promise<{ portal: string; qemuNbd: boolean; nbdfuse: boolean } | undefined> {
    for (const p of this.validate(target)) {
      const dir = this.dirFor(p, target.iqn, target.lun);
      if (!(await fs.access(join(dir, 'attachment.json')).then(() => true, () => false))) continue;
      const [qemuNbd, nbdfuse] = await Promise.all([livePid(this.procRoot, join(dir, 'qemu-nbd.pid'), dir), livePid(this.procRoot, join(dir, 'nbdfuse.pid'), dir)]);
      return { portal: p.text, qemuNbd: qemuNbd !== undefined, nbdfuse: nbdfuse !== undefined };
    }
    return undefined;
  }

  /**
   * Every attachment this initiator has state for, healthy or not (orphan
   * reporting, release): each record, and its chain inspected (a `mountpoint`
   * process each).
   */
  async list(): Promise<UserspaceAttachmentInfo[]> {
    let names: string[];
    try {
      names = await fs.readdir(this.cfg.stateDir);
    } catch {
      return [];
    }
    const out: UserspaceAttachmentInfo[] = [];
    for (const n of names) {
      const dir = join(this.cfg.stateDir, n);
      const rec = await readRecord(dir);
      if (!rec) continue;
      const st = await this.inspect(dir);
      if (!st) continue;
      out.push({ ...rec, dir, ...st });
    }
    return out;
  }

  // ------------------------------------------------------------------ attach

  private validate(target: IscsiTarget): Portal[] {
    return validateTarget(target);
  }

  private async attach(p: Portal, target: IscsiTarget, opts: IscsiConnectOptions): Promise<IscsiAttachment> {
    const dir = this.dirFor(p, target.iqn, target.lun);
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    await fs.chmod(dir, 0o700);
    await fs.mkdir(join(dir, 'mnt'), { recursive: true, mode: 0o700 });
    const rec: AttachmentRecord = { portal: p.text, iqn: target.iqn, lun: target.lun, initiatorName: opts.initiatorName, createdAt: new Date().toISOString() };
    await writeFileAtomic(join(dir, 'attachment.json'), JSON.stringify(rec, null, 2));
    const secrets = chapSecrets(opts.chap);
    try {
      await this.startQemuNbd(dir, p, target, opts, secrets);
      await this.startNbdfuse(dir, target);
      const dev = await this.attachLoop(dir);
      this.log?.info({ iqn: target.iqn, lun: target.lun, portal: p.text, device: dev }, 'user-space iSCSI attached');
      return { initiator: 'userspace', devicePath: dev, paths: [{ portal: p.text, device: dev }] };
    } catch (e) {
      await this.teardown(dir).catch((te) => this.log?.error({ dir, err: (te as Error).message }, 'cleanup after a failed attach failed'));
      throw e;
    } finally {
      await fs.rm(join(dir, 'chap.secret'), { force: true });
    }
  }

  private async startQemuNbd(dir: string, p: Portal, target: IscsiTarget, opts: IscsiConnectOptions, secrets: string[]): Promise<void> {
    const pidFile = join(dir, 'qemu-nbd.pid');
    const sock = join(dir, 'nbd.sock');
    await fs.rm(pidFile, { force: true });
    await fs.rm(sock, { force: true });
    const image = [
      'driver=iscsi',
      'transport=tcp',
      `portal=${qemuOpt(p.text)}`,
      `target=${qemuOpt(target.iqn)}`,
      `lun=${target.lun}`,
      `initiator-name=${qemuOpt(opts.initiatorName)}`,
    ];
    const args: string[] = [];
    if (opts.chap) {
      const secretFile = join(dir, 'chap.secret');
      await fs.rm(secretFile, { force: true });
      const fh = await fs.open(secretFile, 'wx', 0o600);
      try {
        await fh.writeFile(opts.chap.password);
      } finally {
        await fh.close();
      }
      args.push('--object', `secret,id=sinter-chap,format=raw,file=${qemuOpt(secretFile)}`);
      image.push(`user=${qemuOpt(opts.chap.user)}`, 'password-secret=sinter-chap');
    }
    // --persistent: keep serving when nbdfuse reconnects; --pid-file: written once the image is open (logged in) and the socket listens.
    args.push('--image-opts', image.join(','), '--socket', sock, '--persistent', '--pid-file', pidFile);
    const log = join(dir, 'qemu-nbd.log');
    await fs.rm(log, { force: true });
    const d = await this.exec.spawnDaemon('qemu-nbd', args, { logFile: log, secrets });
    const ok = await waitReady(pidFile, d.exited, this.loginTimeoutMs);
    if (ok !== 'ready') {
      const text = mask(await readTail(log), secrets);
      if (ok === 'timeout') await stopPid(this.procRoot, d.pid, dir, this.stopTimeoutMs);
      throw classifyLoginFailure(text, target, p, opts.initiatorName, ok === 'timeout');
    }
  }

  private startNbdfuse(dir: string, target: IscsiTarget): Promise<void> {
    return this.chain.startNbdfuse(dir, `${target.iqn} LUN ${target.lun}`);
  }

  private attachLoop(dir: string): Promise<string> {
    return this.chain.attachLoop(dir, "the iSCSI LUN");
  }

  /** What of an attachment really exists; undefined when its directory does not. */
  private inspect(dir: string): Promise<Omit<UserspaceAttachmentInfo, 'portal' | 'iqn' | 'lun' | 'initiatorName' | 'dir'> | undefined> {
    return this.chain.inspect(dir);
  }

  private loopFor(file: string): Promise<string | undefined> {
    return this.chain.loopFor(file);
  }

  /** loop → FUSE → nbdfuse → qemu-nbd → directory (the shared user-space chain). */
  private teardown(dir: string): Promise<void> {
    return this.chain.teardown(dir);
  }


}

const lockKey = (t: IscsiTarget) => `${t.iqn.toLowerCase()}\n${t.lun}`;

/** qemu option values: a comma is written as two. */
function qemuOpt(v: string): string {
  return v.replace(/,/g, ',,');
}

const mask = maskSecrets;

async function readRecord(dir: string): Promise<AttachmentRecord | undefined> {
  try {
    return JSON.parse(await fs.readFile(join(dir, 'attachment.json'), 'utf8')) as AttachmentRecord;
  } catch {
    return undefined;
  }
}

