import { createHash } from 'node:crypto';
import { isAbsolute } from 'node:path';
import type { Logger } from 'pino';
import { ChapError, validateChap, type ChapCredentials } from '../../contracts/chap.js';
import { isValidIqn, sameIqn } from '../../contracts/nodeid.js';
import { DomainError, Code, failedPrecondition, internal, invalidArgument, notFound, unavailable } from '../../errors/domain-error.js';
import { KeyedLock } from '../../csi/locks.js';
import { ExecError, type Executor } from '../../exec/run.js';
import { poll } from '../../util/poll.js';
import { backingSize } from '../../util/backing-size.js';
import type { EnsureTargetOptions, LunInfo, LunRefresh, TargetHelper, TargetInfo, TargetRef } from './target-helper.js';
import { TgtdShowSocket } from './tgt-ipc.js';
import { classifyTgtError, parseTgtPortals, parseTgtTargets, tgtShownMB, type TgtErrorKind } from './tgt-parse.js';
import { closedPortals, tgtPortalGate, type TgtPortalGate } from './tgt-portals.js';

export interface TgtConfig {
  /** tgtd's management port (`tgtd -C N`, `tgtadm -C N`; names the unix socket /var/run/tgtd/socket.N), 0..32767; 0 is the daemon's default. */
  controlPort: number;
  /** Target names are this prefix + the IQN-safe volume id, e.g. `iqn.2025-01.io.sinter:`. */
  iqnPrefix: string;
  /**
   * The LUN's write cache as the initiator sees it (SCSI caching mode page,
   * WCE bit). `true` (tgt's default, and ours): writes land in the storage
   * host's page cache and reach the disk on the initiator's SYNCHRONIZE CACHE
   * (which filesystems send on fsync and journal commits) — fast and safe for
   * anything that flushes. `false`: the initiator is told there is no write
   * cache and tgt fdatasyncs after every write — slow, for users who do not
   * trust their guests to flush. Applied when the LUN is created.
   */
  writeCache?: boolean;
  /**
   * Logical block size the LUN reports (`--blocksize`). 512 (default) works
   * with every initiator and filesystem; 4096 matches 4Kn disks and saves
   * read-modify-write in initiators that honour it. Applied when the LUN is created.
   */
  blockSize?: 512 | 1024 | 2048 | 4096;
  /**
   * tgt backing store: `rdwr` (pread/pwrite, default), `aio` (Linux native AIO), or `rbd`
   * (Debian's tgt-rbd module: librbd inside tgtd; the "image path" is `POOL/IMAGE`).
   */
  backingStoreType?: 'rdwr' | 'aio' | 'rbd';
  /**
   * `--bsopts` of every LUN. For `rbd`, tgt 1.0.85's usr/bs_rbd.c (Debian 12's tgt-rbd) reads
   * `conf=`, `id=`, `cluster=`, `virsecretuuid=`, `cephx_key=` separated by ';' (bs_rbd_init);
   * it logs them all, so a key belongs in the conf file (`keyfile =`), never in bsopts.
   */
  bsopts?: string;
  /** Open flags for the image: `direct` bypasses the storage host's page cache, `sync` writes through. */
  bsoflags?: 'sync' | 'direct' | 'sync:direct';
  /** Timeout for one tgtadm call. */
  timeoutMs?: number;
  /** How long revokeInitiator waits for the fenced sessions to disappear. */
  fenceTimeoutMs?: number;
  /** How long a LUN reopen waits for the initiators whose sessions it ended to log in again. */
  reloginWaitMs?: number;
  /**
   * Portals (`IP:port`) sinter opens on tgtd itself, each time it finds them
   * closed, once every export is restored (`iscsi.openPortals`; see
   * tgt-portals.ts). Empty (default): tgtd's own portals, left alone.
   */
  listenPortals?: string[];
}

/** tgt's caching mode page (page 8) with WCE set (0x14, tgt's default) or cleared (0x10); as tgt-admin writes it. */
const CACHING_PAGE_ON = '8:0:18:0x14:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0';
const CACHING_PAGE_OFF = '8:0:18:0x10:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0';

const VOLUME_CHARS = /^[a-z0-9][a-z0-9.@-]*$/;
const UUID_RE = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const MAX_IQN = 223;

/**
 * IQN-safe form of a sinter id. iSCSI names allow a-z 0-9 `.` `-` `:` and are
 * compared case-insensitively; volume ids are already lower-case
 * `<backend>-<uuid>`, snapshot ids `<backend>@<uuid>` get `@` → `:` (a
 * character no sinter id contains), so the mapping is one-to-one and reversible.
 */
export function iqnSuffixForId(id: string): string {
  if (!VOLUME_CHARS.test(id)) throw invalidArgument(`volume id "${id}" cannot be an iSCSI name (lower-case letters, digits, '.', '-', '@' only)`);
  return id.replace(/@/g, ':');
}

export function idFromIqnSuffix(suffix: string): string | undefined {
  if (!/^[a-z0-9][a-z0-9.:-]*$/.test(suffix)) return undefined;
  return suffix.replace(/:/g, '@');
}

/** The target name of a volume under a prefix (tgt and LIO name targets alike). */
export function targetIqn(prefix: string, volumeId: string): string {
  const iqn = prefix + iqnSuffixForId(volumeId);
  if (iqn.length > MAX_IQN) throw invalidArgument(`target name for "${volumeId}" would be ${iqn.length} bytes; iSCSI allows ${MAX_IQN}`);
  return iqn;
}

/** The volume id a target name stands for, or undefined when the name is not under prefix. */
export function volumeIdOfIqn(prefix: string, iqn: string): string | undefined {
  const lower = iqn.toLowerCase();
  if (!lower.startsWith(prefix)) return undefined;
  return idFromIqnSuffix(lower.slice(prefix.length));
}

export function validateIqnPrefix(prefix: string): void {
  if (prefix !== prefix.toLowerCase() || !isValidIqn(`${prefix}x`) || !/[:.]$/.test(prefix)) {
    throw new Error(`iSCSI target prefix "${prefix}" must be a lower-case IQN ending in ':' or '.', e.g. iqn.2025-01.io.sinter:`);
  }
}

/** A value inside tgtadm's comma-separated `--params`: tgt has no quoting, so a comma cannot be passed. */
function paramValue(v: string): string {
  if (v.includes(',')) throw failedPrecondition(`"${v}" contains a comma, which tgtadm --params cannot carry; choose a data directory without one`);
  return v;
}

const hash = (s: string) => createHash('sha256').update(s).digest('hex');

/**
 * TargetHelper for the Linux SCSI target framework (tgt): every change is a
 * `tgtadm` call against a running tgtd, every read parses what `tgtadm --op
 * show` prints — read from tgtd's control socket without the tgtadm process
 * where this process can open it, once that socket answered as tgtadm does
 * (tgt-ipc.ts). Unpublish reads before it deletes, so that read is no longer a
 * process of its own.
 * tgtd keeps nothing across its own restart, so every method re-reads the
 * daemon and converges; the controller's reconcile calls ensureTarget and
 * allowInitiator again to restore a restarted daemon.
 *
 * CHAP secrets reach tgtadm only as argv (tgtadm has no other way in); they
 * are passed in Executor's `secrets` so every logged or reported command line
 * and error shows `***` instead. tgtd's accounts are daemon-wide, keyed by
 * user name, so volumes whose StorageClass shares a CHAP user share one
 * account; an account is deleted only when no target uses it any more.
 */
export class TgtTargetHelper implements TargetHelper {
  readonly kind = 'tgt';
  private readonly locks = new KeyedLock();
  /** sha256 of the password this process last gave each account (tgtd cannot be asked). */
  private readonly accountPasswords = new Map<string, string>();
  /**
   * The target id the next new target most likely gets (one above the highest
   * this helper last read or made); undefined until a listing. Only a hint:
   * tgtd refuses a taken id and a taken name alike, and a refusal sends the
   * create back to reading the daemon.
   */
  private tidHint: number | undefined;
  /**
   * Names (lower-case) of the targets tgtd had at this helper's last listing,
   * plus those it made since, minus those it removed: a target named here is
   * read before anything is made (a republish, reconcile), one not named is
   * created first (a first publish). Also only a hint.
   */
  private readonly knownTargets = new Set<string>();
  private readonly cfg: Required<Omit<TgtConfig, 'bsoflags' | 'bsopts'>> & Pick<TgtConfig, 'bsoflags' | 'bsopts'>;
  /** tgtd's control socket for reads, when the executor says this process can open host paths. */
  private readonly showSocket: TgtdShowSocket | undefined;
  /** With listenPortals: the gate this helper shares with every other one driving the same tgtd. */
  private readonly portalGate: TgtPortalGate | undefined;

  constructor(
    cfg: TgtConfig,
    private readonly exec: Executor,
    private readonly log?: Logger,
  ) {
    validateIqnPrefix(cfg.iqnPrefix);
    if (!Number.isInteger(cfg.controlPort) || cfg.controlPort < 0 || cfg.controlPort > 32767) throw new Error(`tgt control port ${cfg.controlPort} is not in 0..32767 (tgtd's range)`);
    this.cfg = {
      writeCache: true,
      blockSize: 512,
      backingStoreType: 'rdwr',
      timeoutMs: 30_000,
      fenceTimeoutMs: 10_000,
      // open-iscsi retries a failed connection after 3 s (usr/initiator.c ISCSI_CONN_ERR_REOPEN_DELAY), slower under load.
      reloginWaitMs: 30_000,
      listenPortals: [],
      ...cfg,
    };
    if (this.cfg.listenPortals.length > 0) {
      this.portalGate = tgtPortalGate(this.cfg.controlPort);
      this.portalGate.join(this);
    }
    // tgtd names its socket "%s.%d" of /var/run/tgtd/socket and the control port (usr/mgmt.c ipc_init), 0 included.
    const socketPath = this.exec.hostPath?.(`/var/run/tgtd/socket.${this.cfg.controlPort}`);
    this.showSocket =
      socketPath === undefined
        ? undefined
        : new TgtdShowSocket(socketPath, this.cfg.timeoutMs, (what, detail) =>
            what === 'mismatch'
              ? this.log?.warn(detail, "tgtd's control socket answered a show differently from tgtadm; reading with tgtadm")
              : this.log?.debug(detail, what === 'trusted' ? "tgtd's control socket answers as tgtadm does; reads go there" : "tgtd's control socket did not answer; reading with tgtadm"),
          );
  }

  iqnFor(volumeId: string): string {
    return targetIqn(this.cfg.iqnPrefix, volumeId);
  }

  /** A file or device path for the file stores; `POOL/IMAGE` for rbd. */
  private checkImagePath(volumeId: string, imagePath: string): void {
    if (this.cfg.backingStoreType === 'rbd') {
      if (!/^[A-Za-z0-9_.-]+\/[A-Za-z0-9_.@-]+$/.test(imagePath)) throw invalidArgument(`rbd image for ${volumeId} must be POOL/IMAGE`);
    } else if (!isAbsolute(imagePath)) throw invalidArgument(`image path for ${volumeId} must be absolute`);
  }

  /** The volume id a target name stands for, or undefined when the name is not one of ours. */
  volumeIdOf(iqn: string): string | undefined {
    return volumeIdOfIqn(this.cfg.iqnPrefix, iqn);
  }

  // ---------------------------------------------------------------- tgtadm

  private async tgtadm(args: string[], opts: { secrets?: string[]; tolerate?: TgtErrorKind[] } = {}): Promise<{ stdout: string; tolerated?: TgtErrorKind }> {
    const argv = ['-C', String(this.cfg.controlPort), '--lld', 'iscsi', ...args];
    try {
      const r = await this.exec.run('tgtadm', argv, { timeoutMs: this.cfg.timeoutMs, secrets: opts.secrets });
      return { stdout: r.stdout };
    } catch (e) {
      if (!(e instanceof ExecError)) throw e;
      const kind = e.timedOut ? 'other' : classifyTgtError(e.stderr, e.exitCode);
      if (opts.tolerate?.includes(kind)) return { stdout: '', tolerated: kind };
      if (kind === 'daemon-unreachable') throw unavailable(`tgtd is not reachable on control port ${this.cfg.controlPort}: ${e.stderr.trim().split('\n').pop() ?? ''}`);
      // e.message is already masked by the Executor.
      throw new TgtError(kind, e.message);
    }
  }

  /** `tgtadm --op show --mode target`'s text: over tgtd's socket once it is trusted, else from tgtadm. */
  private async showTargets(): Promise<string> {
    const viaTgtadm = async () => (await this.tgtadm(['--op', 'show', '--mode', 'target'])).stdout;
    if (!this.showSocket) return viaTgtadm();
    const started = performance.now();
    try {
      const r = await this.showSocket.show(viaTgtadm);
      if (r.via === 'socket') this.log?.debug({ socket: this.showSocket.path, ms: Math.round(performance.now() - started) }, 'tgtd show (socket)');
      return r.text;
    } catch (e) {
      if (e instanceof DomainError) throw e;
      // The socket's own timeout, as a timed-out tgtadm would report it.
      throw new TgtError('other', (e as Error).message);
    }
  }

  async listTargets(): Promise<TargetInfo[]> {
    const stdout = await this.showTargets();
    const targets = parseTgtTargets(stdout);
    this.tidHint = targets.reduce((m, t) => Math.max(m, t.tid), 0) + 1;
    this.knownTargets.clear();
    for (const t of targets) this.knownTargets.add(t.iqn.toLowerCase());
    return targets.map((t) => {
      const volumeId = this.volumeIdOf(t.iqn);
      return volumeId === undefined ? t : { ...t, volumeId };
    });
  }

  // ---------------------------------------------------------------- portals

  /**
   * Runs a restore of every export (`fn`), then opens the listen portals if
   * tgtd had none of them open when it began and every other helper on this
   * tgtd has done the same: see tgt-portals.ts for why.
   */
  async restoring<T>(fn: () => Promise<T>, exported: () => string[] = () => []): Promise<T> {
    const gate = this.portalGate;
    if (!gate) return fn();
    const closedBefore = (await this.closedListenPortals()).length > 0;
    const result = await fn();
    await gate.serialized(async () => {
      const closed = await this.closedListenPortals();
      if (closed.length === 0) return gate.reset();
      // Closed now but open before: tgtd restarted during this pass, so what it
      // restored may have gone with the old daemon. The next pass counts.
      if (!closedBefore) return;
      if (!gate.markRestored(this, exported())) {
        this.log?.info({ portals: closed, waitingFor: gate.waitingFor() }, "tgtd's portals stay closed until every backend on it has restored its exports");
        return;
      }
      const present = new Set((await this.listTargets()).map((t) => t.iqn.toLowerCase()));
      if (gate.dropStale((iqn) => present.has(iqn.toLowerCase())) > 0) {
        this.log?.warn({ portals: closed, waitingFor: gate.waitingFor() }, "tgtd's portals stay closed: it restarted again since another backend restored its exports, which that backend's next pass restores");
        return;
      }
      for (const p of closed) await this.tgtadm(['--op', 'new', '--mode', 'portal', '--param', `portal=${p}`]);
      gate.reset();
      this.log?.warn({ portals: closed, controlPort: this.cfg.controlPort }, 'tgtd had its portals closed (it started or restarted): opened them now that every export is restored');
    });
    return result;
  }

  private async closedListenPortals(): Promise<string[]> {
    const shown = parseTgtPortals((await this.tgtadm(['--op', 'show', '--mode', 'portal'])).stdout);
    return closedPortals(this.cfg.listenPortals, shown);
  }

  private async findTarget(iqn: string): Promise<TargetInfo | undefined> {
    return (await this.listTargets()).find((t) => sameIqn(t.iqn, iqn));
  }

  // ---------------------------------------------------------------- targets

  async ensureTarget(volumeId: string, imagePath: string, opts: EnsureTargetOptions = {}): Promise<TargetRef> {
    const iqn = this.iqnFor(volumeId);
    this.checkImagePath(volumeId, imagePath);
    const readonly = opts.readonly ?? false;
    return this.locks.run(volumeId, async () => {
      // A target this call creates is known without reading it back: no LUN, ACL, account or session yet.
      // Creating first is the idempotency check too: tgtd refuses a second target of the same name.
      let t = await this.createByHint(iqn);
      if (!t) {
        const all = await this.listTargets();
        t = all.find((x) => sameIqn(x.iqn, iqn)) ?? (await this.createTarget(iqn, all));
      }
      const tid = t.tid;
      if (t.state === 'offline') {
        // Only a LUN reopen takes a target offline, and it always puts it back:
        // this one was left by a crash or a failed tgtadm mid-reopen.
        this.log?.warn({ iqn }, 'target was left offline; setting it ready');
        await this.setTargetState(tid, 'ready');
      }
      let lun1 = t.luns.find((l) => l.lun === 1);
      if (lun1 && lun1.type === 'disk' && lun1.backingPath === undefined && lun1.backingStoreType === 'rdwr') {
        // A refresh that could not reopen the image left LUN 1 offline without
        // its file (see reopenLun): give it the file back, sessions and identity intact.
        this.log?.warn({ iqn, want: imagePath }, 'LUN 1 has no backing store; attaching the image again');
        await this.updateLun(tid, [`path=${paramValue(imagePath)}`]);
        lun1 = { ...lun1, backingPath: imagePath };
      }
      if (lun1 && lun1.backingPath !== imagePath) {
        if (t.sessions.length > 0) {
          throw failedPrecondition(`target ${iqn} serves ${lun1.backingPath ?? 'nothing'} as LUN 1 with ${t.sessions.length} session(s) logged in; not replacing it with ${imagePath}`);
        }
        this.log?.warn({ iqn, had: lun1.backingPath, want: imagePath }, 'replacing LUN 1 backing store');
        await this.deleteLun(tid);
      }
      if (!lun1 || lun1.backingPath !== imagePath) {
        await this.createLun(tid, volumeId, imagePath, readonly);
      } else if ((lun1.readonly ?? false) !== readonly) {
        await this.updateLun(tid, [`readonly=${readonly ? 1 : 0}`]);
      }
      return { iqn, lun: 1, tid, seen: t };
    });
  }

  /**
   * Creates the target at the hinted id without reading the daemon first.
   * undefined: no hint yet, or tgtd refused (the name exists, or the id is
   * taken), and the caller reads the daemon and goes the careful way.
   */
  private async createByHint(iqn: string): Promise<TargetInfo | undefined> {
    if (this.tidHint === undefined || this.knownTargets.has(iqn.toLowerCase())) return undefined;
    return this.locks.run('\0tid', async () => {
      const tid = this.tidHint;
      if (tid === undefined) return undefined;
      const r = await this.tgtadm(['--op', 'new', '--mode', 'target', '--tid', String(tid), '--targetname', iqn], { tolerate: ['target-exists'] });
      if (r.tolerated) {
        this.tidHint = undefined;
        return undefined;
      }
      return this.created(iqn, tid);
    });
  }

  private created(iqn: string, tid: number): TargetInfo {
    this.tidHint = tid + 1;
    this.knownTargets.add(iqn.toLowerCase());
    this.log?.info({ iqn, tid }, 'target created');
    const volumeId = this.volumeIdOf(iqn);
    return { tid, iqn, ...(volumeId === undefined ? {} : { volumeId }), luns: [], acls: [], accounts: [], sessions: [] };
  }

  /**
   * Creates the target, or returns it when it turns out to exist. `seen` is
   * the caller's fresh listing, used for the first attempt; a target id taken
   * meanwhile (by another volume's create here, or another client) makes
   * tgtadm refuse, and the next attempt reads the daemon again.
   */
  private async createTarget(iqn: string, seen: TargetInfo[]): Promise<TargetInfo> {
    // Target ids are daemon-wide: pick the next free one under one lock, and
    // retry if another client took it between the read and the create.
    return this.locks.run('\0tid', async () => {
      let all = seen;
      for (let attempt = 0; attempt < 8; attempt++) {
        if (attempt > 0) all = await this.listTargets();
        const there = all.find((t) => sameIqn(t.iqn, iqn));
        if (there) return there;
        const tid = all.reduce((m, t) => Math.max(m, t.tid), 0) + 1;
        const r = await this.tgtadm(['--op', 'new', '--mode', 'target', '--tid', String(tid), '--targetname', iqn], { tolerate: ['target-exists'] });
        if (!r.tolerated) return this.created(iqn, tid);
      }
      throw unavailable(`could not find a free target id for ${iqn} after 8 attempts`);
    });
  }

  private async createLun(tid: number, volumeId: string, imagePath: string, readonly: boolean): Promise<void> {
    const args = ['--op', 'new', '--mode', 'logicalunit', '--tid', String(tid), '--lun', '1', '--backing-store', imagePath, '--bstype', this.cfg.backingStoreType, '--blocksize', String(this.cfg.blockSize)];
    if (this.cfg.bsoflags) args.push('--bsoflags', this.cfg.bsoflags);
    if (this.cfg.bsopts) args.push('--bsopts', this.cfg.bsopts);
    const r = await this.tgtadm(args, { tolerate: ['lun-exists'] });
    if (r.tolerated) return;
    const serial = UUID_RE.exec(volumeId)?.[0] ?? hash(volumeId).slice(0, 32);
    await this.updateLun(tid, ['vendor_id=SINTER', 'product_id=volume', `scsi_sn=${serial}`]);
    await this.updateLun(tid, [`mode_page=${this.cfg.writeCache ? CACHING_PAGE_ON : CACHING_PAGE_OFF}`]);
    if (readonly) await this.updateLun(tid, ['readonly=1']);
  }

  lunShowsSize(lun: LunInfo, bytes: number): boolean {
    return lun.sizeMB === tgtShownMB(bytes);
  }

  /**
   * tgt reads a LUN's size only when it opens the backing store. Re-adding the
   * LUN (delete + new) under a live session fails the initiator's I/O in
   * between (LOGICAL UNIT NOT SUPPORTED: a mounted ext4 aborts its journal)
   * and raises a REPORTED LUNS DATA HAS CHANGED unit attention; so the rdwr
   * store is reopened in place instead: `--op update --params
   * online=0,path=<image>` (usr/spc.c lu_config → tgt_device_path_update:
   * close, open, fstat the size, online again), one request that tgtd's
   * single event loop finishes before it reads the next SCSI command. The LUN
   * object stays, so serial, device id, mode pages, read-only flag and
   * reservations stay too.
   */
  async refreshLunSize(volumeId: string, imagePath: string, opts: { force?: boolean } = {}): Promise<LunRefresh> {
    const iqn = this.iqnFor(volumeId);
    this.checkImagePath(volumeId, imagePath);
    return this.locks.run(volumeId, async () => {
      const t = await this.findTarget(iqn);
      const lun = t?.luns.find((l) => l.lun === 1);
      if (!t || !lun) return 'absent';
      if (lun.backingPath !== undefined && lun.backingPath !== imagePath)
        throw failedPrecondition(`target ${iqn} serves ${lun.backingPath} as LUN 1, not ${imagePath}; not refreshing its size`);
      // A block device (an LV) stats as 0 bytes: its capacity comes from sysfs.
      const bytes = (await backingSize(imagePath)) ?? 0;
      if (!opts.force && lun.backingPath === imagePath && lun.online !== false && this.lunShowsSize(lun, bytes)) return 'current';
      if ((lun.backingStoreType ?? this.cfg.backingStoreType) === 'rdwr') {
        await this.quiesced(t, () => this.reopenLun(t, imagePath));
      } else {
        // tgt's aio store opens a new AIO context on reopen without closing the
        // old one, stranding commands in flight on it: only re-add the LUN, and
        // only while no initiator is logged in.
        if (t.sessions.length > 0)
          throw failedPrecondition(
            `target ${iqn} uses tgt's ${lun.backingStoreType ?? this.cfg.backingStoreType} backing store, which cannot reopen a LUN with ${t.sessions.length} session(s) logged in; use backingStoreType rdwr, or unpublish the volume so the next publish adds the LUN at its new size`,
          );
        await this.deleteLun(t.tid);
        await this.createLun(t.tid, volumeId, imagePath, lun.readonly ?? false);
      }
      const after = (await this.findTarget(iqn))?.luns.find((l) => l.lun === 1);
      if (!after || after.backingPath !== imagePath || after.online === false || (after.sizeMB ?? 0) < tgtShownMB(bytes))
        throw internal(`tgt's LUN 1 of ${iqn} shows ${after?.sizeMB ?? 'no'} MB${after?.online === false ? ' (offline)' : ''} after reopening ${imagePath} (${bytes} bytes)`);
      this.log?.info({ iqn, bytes, sessions: t.sessions.length }, 'LUN 1 reopened at the image size');
      return 'refreshed';
    });
  }

  /**
   * Runs `fn` with no initiator logged in to `t`, and none able to log in:
   * the target offline, every session ended and gone. tgt's `path=` update
   * closes the image under bs_rdwr's worker threads (usr/target.c,
   * tgt_device_path_update, tgt 1.0.85), so a command in flight across a
   * reopen fails as a medium error, which initiators report as EIO (measured:
   * EBADF from fdatasync in tgtd's log, EIO from fsync on the node). A dropped
   * connection is what initiators recover from: the kernel and libiscsi log
   * in again and resend what was in flight. Offline, tgt answers a login with
   * a target error, which both retry (open-iscsi usr/login.c: CNX_LOGIN_RETRY),
   * and drops commands, whose connection is about to end. tgt destroys a
   * session only once its commands have completed (usr/iscsi/conn.c
   * conn_close keeps tasks in SCSI), so "no session listed" means drained.
   */
  private async quiesced<T>(t: TargetInfo, fn: () => Promise<T>): Promise<T> {
    await this.setTargetState(t.tid, 'offline');
    let ended: string[] = [];
    let result: T;
    try {
      // Read once offline: the sessions to end, and whose to wait for afterwards.
      const now = await this.findTarget(t.iqn);
      ended = now?.sessions.map((s) => s.initiator) ?? [];
      await this.endSessions(t.iqn, () => true, 'logged in', now);
      result = await fn();
    } finally {
      await this.setTargetState(t.tid, 'ready').catch((e: Error) =>
        this.log?.error({ iqn: t.iqn, err: e.message }, 'target left offline: the next publish or reconcile sets it ready'),
      );
    }
    await this.awaitRelogin(t.iqn, ended);
    return result;
  }

  /**
   * Waits (bounded) until every initiator whose session a reopen ended is
   * logged in again. The CO calls NodeExpandVolume as soon as the expand
   * returns, and a rescan on a session still in recovery reads the old size.
   * Not an error when one stays away: its node may be going down, and a
   * NodeExpandVolume before it is back says to retry.
   */
  private async awaitRelogin(iqn: string, initiators: string[]): Promise<void> {
    if (initiators.length === 0) return;
    const back = await poll(
      async () => {
        const now = (await this.findTarget(iqn))?.sessions ?? [];
        return initiators.every((i) => now.some((s) => sameIqn(s.initiator, i))) ? true : undefined;
      },
      { initialMs: 100, maxMs: 500, timeoutMs: this.cfg.reloginWaitMs },
    );
    if (!back) this.log?.warn({ iqn, initiators, waitedMs: this.cfg.reloginWaitMs }, 'not every initiator logged in again after the LUN reopen');
  }

  private async setTargetState(tid: number, state: 'offline' | 'ready'): Promise<void> {
    await this.tgtadm(['--op', 'update', '--mode', 'target', '--tid', String(tid), '--name', 'state', '--value', state]);
  }

  /**
   * Ends the sessions of `iqn` that `which` picks, and waits until tgtd lists
   * none of them (the caller has already stopped new logins: ACL or offline).
   */
  private async endSessions(iqn: string, which: (s: TargetInfo['sessions'][number]) => boolean, what: string, seen?: TargetInfo): Promise<void> {
    await poll(
      async ({ attempt, final }) => {
        const target = attempt === 1 && seen ? seen : await this.findTarget(iqn);
        if (!target) return true;
        const tid = target.tid;
        const mine = target.sessions.filter(which);
        if (mine.length === 0) return true;
        if (final) throw unavailable(`${mine.length} session(s) ${what} on ${iqn} did not end within ${this.cfg.fenceTimeoutMs} ms`);
        for (const s of mine) {
          const cids = s.connections.length > 0 ? s.connections.map((c) => c.cid) : [0];
          for (const cid of cids) {
            await this.tgtadm(['--op', 'delete', '--mode', 'conn', '--tid', String(tid), '--sid', String(s.sid), '--cid', String(cid)], { tolerate: ['session-not-found'] });
          }
          this.log?.info({ iqn, initiator: s.initiator, sid: s.sid }, `session ended (${what})`);
        }
        return undefined;
      },
      { initialMs: 100, maxMs: 100, factor: 1, timeoutMs: this.cfg.fenceTimeoutMs },
    );
  }

  private async reopenLun(t: TargetInfo, imagePath: string): Promise<void> {
    try {
      await this.updateLun(t.tid, ['online=0', `path=${paramValue(imagePath)}`]);
    } catch (e) {
      // tgt stops at nothing: when the open failed after the close, the LUN is
      // offline without a file. Offline, `path=` alone is allowed: put it back.
      const now = (await this.findTarget(t.iqn).catch(() => undefined))?.luns.find((l) => l.lun === 1);
      if (now && (now.online === false || now.backingPath === undefined)) {
        await this.updateLun(t.tid, [`path=${paramValue(imagePath)}`]).catch((re: Error) =>
          this.log?.error({ iqn: t.iqn, err: re.message }, 'LUN 1 is left offline: reattaching its image failed'),
        );
      }
      if (now?.preventRemoval)
        throw failedPrecondition(`tgt will not take LUN 1 of ${t.iqn} offline to reopen it: an initiator set PREVENT MEDIUM REMOVAL`);
      throw e;
    }
  }

  /** Deletes LUN 1; tgt refuses while commands are in flight on it (TGTADM_LUN_ACTIVE), so that is retried briefly. */
  private async deleteLun(tid: number): Promise<void> {
    const deleted = await poll(
      async () => {
        const r = await this.tgtadm(['--op', 'delete', '--mode', 'logicalunit', '--tid', String(tid), '--lun', '1'], { tolerate: ['lun-not-found', 'lun-active'] });
        return r.tolerated !== 'lun-active' ? true : undefined;
      },
      { initialMs: 50, maxMs: 50, factor: 1, timeoutMs: 5_000 },
    );
    if (!deleted) throw unavailable(`tgt kept LUN 1 of target ${tid} busy (commands in flight) for 5 s; retry`);
  }

  private async updateLun(tid: number, params: string[]): Promise<void> {
    await this.tgtadm(['--op', 'update', '--mode', 'logicalunit', '--tid', String(tid), '--lun', '1', '--params', params.join(',')]);
  }

  async removeTarget(volumeId: string): Promise<void> {
    const iqn = this.iqnFor(volumeId);
    await this.locks.run(volumeId, async () => {
      const t = await this.findTarget(iqn);
      if (!t) return;
      // --force ends the target's sessions instead of refusing while they exist. A session just
      // ended (the fence) can still hold its LUN for a moment: tgt then answers "still active".
      const deleted = await poll(
        async () => {
          const r = await this.tgtadm(['--op', 'delete', '--mode', 'target', '--tid', String(t.tid), '--force'], { tolerate: ['target-not-found', 'lun-active'] });
          return r.tolerated !== 'lun-active' ? true : undefined;
        },
        { initialMs: 50, maxMs: 500, factor: 2, timeoutMs: 10_000 },
      );
      if (!deleted) throw unavailable(`tgt kept the LUN of target ${iqn} active for 10 s after its sessions were ended; retry`);
      this.knownTargets.delete(iqn.toLowerCase());
      this.log?.info({ iqn, tid: t.tid }, 'target removed');
      if (t.accounts.length > 0) {
        await this.locks.run('\0accounts', async () => {
          const still = new Set((await this.listTargets()).flatMap((x) => x.accounts.map((a) => a.user)));
          for (const a of t.accounts) {
            if (still.has(a.user)) continue;
            await this.tgtadm(['--op', 'delete', '--mode', 'account', '--user', a.user], { tolerate: ['account-not-found'] });
            this.accountPasswords.delete(a.user);
          }
        });
      }
    });
  }

  // ---------------------------------------------------------------- access

  async allowInitiator(volumeId: string, initiatorIqn: string, chap?: ChapCredentials, seen?: TargetInfo): Promise<void> {
    const iqn = this.iqnFor(volumeId);
    if (!isValidIqn(initiatorIqn)) throw invalidArgument(`initiator name "${initiatorIqn}" is not a valid iSCSI name`);
    if (chap) {
      try {
        validateChap(chap);
      } catch (e) {
        if (e instanceof ChapError) throw invalidArgument(e.message);
        throw e;
      }
      if (chap.mutualUser !== undefined && chap.mutualUser === chap.user) throw invalidArgument('the mutual CHAP user must differ from the CHAP user (tgt keeps one password per account name)');
    }
    await this.locks.run(volumeId, async () => {
      const t = seen && sameIqn(seen.iqn, iqn) ? seen : await this.findTarget(iqn);
      if (!t) throw notFound(`iSCSI target for volume ${volumeId} does not exist`);
      if (!t.acls.some((a) => sameIqn(a, initiatorIqn))) {
        await this.tgtadm(['--op', 'bind', '--mode', 'target', '--tid', String(t.tid), '--initiator-name', initiatorIqn], { tolerate: ['acl-exists'] });
        this.log?.info({ iqn, initiator: initiatorIqn }, 'initiator allowed');
      }
      if (chap) await this.locks.run('\0accounts', () => this.applyChap(t, chap));
    });
  }

  /** Makes the target's incoming (and outgoing) account exactly the given credentials. */
  private async applyChap(t: TargetInfo, chap: ChapCredentials): Promise<void> {
    const tid = String(t.tid);
    const recreated = await this.ensureAccount(chap.user, chap.password);
    for (const a of t.accounts.filter((a) => !a.outgoing && a.user !== chap.user)) {
      await this.tgtadm(['--op', 'unbind', '--mode', 'account', '--tid', tid, '--user', a.user], { tolerate: ['account-not-found'] });
    }
    // Re-creating an account unbinds it everywhere (ensureAccount binds it back): then re-read.
    // An account that was new or unchanged leaves t's bindings as read.
    const now = recreated ? ((await this.findTarget(t.iqn)) ?? t) : t;
    if (!now.accounts.some((a) => !a.outgoing && a.user === chap.user)) {
      await this.tgtadm(['--op', 'bind', '--mode', 'account', '--tid', tid, '--user', chap.user], { tolerate: ['account-exists'] });
    }
    const out = now.accounts.find((a) => a.outgoing);
    const mutualUser = chap.mutualUser;
    if (mutualUser !== undefined && chap.mutualPassword !== undefined) {
      await this.ensureAccount(mutualUser, chap.mutualPassword);
      const again = (await this.findTarget(t.iqn)) ?? now;
      const cur = again.accounts.find((a) => a.outgoing);
      if (cur && cur.user !== mutualUser) {
        await this.tgtadm(['--op', 'unbind', '--mode', 'account', '--tid', tid, '--user', cur.user, '--outgoing'], { tolerate: ['account-not-found'] });
      }
      if (!cur || cur.user !== mutualUser) {
        await this.tgtadm(['--op', 'bind', '--mode', 'account', '--tid', tid, '--user', mutualUser, '--outgoing']);
      }
    } else if (out) {
      // One-way CHAP asked for: the target must not keep authenticating itself with an old account.
      await this.tgtadm(['--op', 'unbind', '--mode', 'account', '--tid', tid, '--user', out.user, '--outgoing'], { tolerate: ['account-not-found'] });
    }
  }

  /**
   * An account with exactly this password. tgtd cannot report an account's
   * password, so an account this process did not create (or created with
   * another password) is deleted and re-created, then bound again to every
   * target that had it. Returns whether an existing account was re-created.
   */
  private async ensureAccount(user: string, password: string): Promise<boolean> {
    const want = hash(password);
    // Creating is the existence check (tgtd refuses a second account of a name): no listing first.
    const made = await this.tgtadm(['--op', 'new', '--mode', 'account', '--user', user, '--password', password], { secrets: [password], tolerate: ['account-exists'] });
    if (!made.tolerated) {
      this.accountPasswords.set(user, want);
      return false;
    }
    if (this.accountPasswords.get(user) === want) return false;
    const rebind = (await this.listTargets()).flatMap((t) => t.accounts.filter((a) => a.user === user).map((a) => ({ tid: t.tid, outgoing: a.outgoing })));
    await this.tgtadm(['--op', 'delete', '--mode', 'account', '--user', user], { tolerate: ['account-not-found'] });
    await this.tgtadm(['--op', 'new', '--mode', 'account', '--user', user, '--password', password], { secrets: [password] });
    this.accountPasswords.set(user, want);
    for (const b of rebind) {
      const args = ['--op', 'bind', '--mode', 'account', '--tid', String(b.tid), '--user', user];
      if (b.outgoing) args.push('--outgoing');
      await this.tgtadm(args, { tolerate: ['account-exists', 'target-not-found', 'outgoing-account-exists'] });
    }
    return true;
  }

  async revokeInitiator(volumeId: string, initiatorIqn: string): Promise<void> {
    const iqn = this.iqnFor(volumeId);
    await this.locks.run(volumeId, async () => {
      const t = await this.findTarget(iqn);
      if (!t) return;
      // ACL first, so the initiator cannot log straight back in; then its sessions.
      for (const a of t.acls.filter((a) => sameIqn(a, initiatorIqn))) {
        await this.tgtadm(['--op', 'unbind', '--mode', 'target', '--tid', String(t.tid), '--initiator-name', a], { tolerate: ['acl-not-found'] });
        this.log?.info({ iqn, initiator: initiatorIqn }, 'initiator ACL removed');
      }
      await this.endSessions(iqn, (s) => sameIqn(s.initiator, initiatorIqn), `of initiator ${initiatorIqn} (fence)`, t);
    });
  }
}

/** A tgtadm failure that is not one of the idempotent "already done" answers. */
export class TgtError extends DomainError {
  constructor(
    readonly kind: TgtErrorKind,
    message: string,
  ) {
    super(kind === 'target-not-found' ? Code.NOT_FOUND : Code.INTERNAL, message);
    this.name = 'TgtError';
  }
}
