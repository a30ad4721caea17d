import type { Logger } from 'pino';
import { sameIqn } from '../../../contracts/nodeid.js';
import { chapSecrets, type ChapCredentials } from '../../../contracts/chap.js';
import { DomainError, Code, failedPrecondition, internal, unavailable } from '../../../errors/domain-error.js';
import { KeyedLock } from '../../../csi/locks.js';
import { ExecError, type Executor } from '../../../exec/run.js';
import { Multipath, type MultipathMap } from '../multipath.js';
import { ScsiDisks } from '../scsi.js';
import { KERNEL_NAME_RE, SysfsTree } from '../sysfs.js';
import { poll, realClock, type Clock } from '../../../util/poll.js';
import { ISCSI_ERR, parseSessionTree, type IscsiSessionDevice, type IscsiSessionInfo } from './iscsiadm-parse.js';
import { validateTarget, type IscsiAttached, type IscsiAttachment, type IscsiConnectOptions, type IscsiHealth, type IscsiInitiator, type IscsiPath, type IscsiTarget, type Portal } from './types.js';

/** attached()'s `source` of a kernel LUN, and its inverse. */
const kernelSource = (iqn: string, lun: number) => `${iqn} lun ${lun}`;
const KERNEL_SOURCE_RE = /^(\S+) lun (\d+)$/;
/** An iSCSI name (RFC 3720 iqn., RFC 3980 eui. and naa.): what a session's targetname holds once iscsid has set it. */
const TARGET_NAME_RE = /^(iqn|eui|naa)\./i;

export interface KernelInitiatorConfig {
  /** Where sysfs is (`/sys`; a fake tree in tests). */
  sysfsRoot?: string;
  /** Where device nodes are (`/dev`). Returned device paths use this root. */
  devRoot?: string;
  /** open-iscsi interface (`default` = iscsi_tcp over the routing table). */
  iface?: string;
  /** How long to wait for the LUN's block device after login. */
  deviceTimeoutMs?: number;
  /** First and largest pause between looks for the device (doubling in between). */
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** Re-issue the targeted LUN scan every this many looks. */
  rescanEvery?: number;
  /** With several paths: how long to wait for their common multipath (dm) holder. */
  multipathWaitMs?: number;
  /** How long the kernel may take to remove a deleted SCSI device. */
  deviceRemovalTimeoutMs?: number;
  /** Timeout of one iscsiadm call (a login retries for a while inside iscsid). */
  iscsiadmTimeoutMs?: number;
  /** The rooted sysfs and /dev to use (tests pass a simulated tree); otherwise built from sysfsRoot and devRoot. */
  sysfs?: SysfsTree;
  /** Mount table for the in-use check before a LUN's devices are removed; default /proc/self/mountinfo. */
  mountInfoPath?: string;
  /** Time for the waits (tests pass a fake clock). */
  clock?: Clock;
}

interface LoggedInPath {
  portal: Portal;
  session: IscsiSessionInfo;
  host: number;
  channel?: number;
  id?: number;
  device?: string;
}

/**
 * Kernel iSCSI initiator through open-iscsi's iscsiadm: os-brick's
 * ISCSIConnector algorithm.
 *
 * connect: for every portal, a node record (node.startup=manual,
 * node.session.scan=manual so the kernel does not attach every LUN of the
 * target, CHAP in node.session.auth.*), reuse of an existing session (one
 * sysfs shows, or exit 15 from a racing login), login; then a targeted LUN
 * scan (`echo "C T L" > /sys/class/scsi_host/hostH/scan`) and a wait with
 * backoff for the LUN's block device in sysfs and /dev. Several paths with a
 * common multipath map are returned as that map, never one of its paths.
 * Multipath, the in-use checks, path removal and capacity rescans are the
 * SAN code the FC connector uses (multipath.ts, scsi.ts).
 *
 * disconnect: refuse while the LUN is mounted or held; flush and remove the
 * multipath map, then flush and delete this LUN's SCSI devices; log out of a session only when no other
 * LUN of it still has a block device (tgt targets carry LUN 0, the
 * controller, which never has one), then delete that portal's node record.
 * Idempotent when devices, sessions or records are already gone.
 *
 * The sessions to one target are read from sysfs (targetSessions), not from
 * `iscsiadm -m session -P 3`, which lists every session's devices and costs a
 * process: attaching the Nth volume would grow with N. iscsiadm's listing is
 * still asked where a session sysfs does not show must not be taken as absent
 * (sessionsAt), and for the node-wide listing (attachments).
 *
 * The node's initiator name is the host's (/etc/iscsi/initiatorname.iscsi,
 * which the node id carries); `opts.initiatorName` is not applied here.
 */
/** How often iscsid retries a first login before failing it (open-iscsi's default is 8). */
export const INITIAL_LOGIN_RETRY_MAX = 2;

/** Attempts of a login that iscsiadm fails with a node database error (exit 6): see login(). */
const LOGIN_IDBM_ATTEMPTS = 3;

export class KernelIscsiInitiator implements IscsiInitiator {
  readonly kind = 'kernel' as const;
  private readonly locks = new KeyedLock();
  /**
   * Session name (sessionN) → its target's name, as read from sysfs. A
   * session's target never changes, and the kernel never gives a sid out
   * again before it reboots (iscsi_alloc_session counts up), so a name seen
   * once need not be read again while its directory is there; a node with a
   * session per volume would otherwise read every session's targetname on
   * every stage and unstage.
   */
  private readonly sessionTargets = new Map<string, string>();
  /**
   * Set once a session this initiator logged in to showed up in this
   * process's sysfs, or one iscsiadm listed did: that sysfs is then the view iscsid's sessions are in,
   * and a target with no session there has none. Until then (and for good
   * when iscsid runs where this sysfs does not see, exec.nsenterTarget), a
   * miss is confirmed with `iscsiadm -m session -P 3`, which lists every
   * session on the node: in the guest, 106 ms with 8 sessions and 666 ms
   * with 64, on every stage of a new volume (its target has no session yet).
   */
  private sysfsShowsLogins = false;
  private readonly sysfs: SysfsTree;
  private readonly disks: ScsiDisks;
  private readonly multipath: Multipath;
  private readonly iface: string;
  private readonly clock: Clock;
  private readonly c: Required<Pick<KernelInitiatorConfig, 'deviceTimeoutMs' | 'initialBackoffMs' | 'maxBackoffMs' | 'rescanEvery' | 'multipathWaitMs' | 'deviceRemovalTimeoutMs' | 'iscsiadmTimeoutMs'>>;

  constructor(
    cfg: KernelInitiatorConfig,
    private readonly exec: Executor,
    private readonly log?: Logger,
  ) {
    this.sysfs = cfg.sysfs ?? new SysfsTree(cfg.sysfsRoot ?? '/sys', cfg.devRoot ?? '/dev');
    this.clock = cfg.clock ?? realClock;
    this.disks = new ScsiDisks(this.sysfs, this.clock);
    this.multipath = new Multipath(exec, this.sysfs, this.disks, log, { mountInfoPath: cfg.mountInfoPath });
    this.iface = cfg.iface ?? 'default';
    this.c = {
      deviceTimeoutMs: cfg.deviceTimeoutMs ?? 30_000,
      initialBackoffMs: cfg.initialBackoffMs ?? 100,
      maxBackoffMs: cfg.maxBackoffMs ?? 2_000,
      rescanEvery: cfg.rescanEvery ?? 4,
      multipathWaitMs: cfg.multipathWaitMs ?? 5_000,
      deviceRemovalTimeoutMs: cfg.deviceRemovalTimeoutMs ?? 10_000,
      iscsiadmTimeoutMs: cfg.iscsiadmTimeoutMs ?? 120_000,
    };
  }

  // ---------------------------------------------------------------- connect

  async connect(target: IscsiTarget, opts: IscsiConnectOptions): Promise<IscsiAttachment> {
    const portals = validate(target);
    const chap = opts.chap;
    return this.locks.run(`target\n${target.iqn.toLowerCase()}`, async () => {
      // A session sysfs does not show is not trusted to be absent: login answers "exists" (exit 15) for it.
      let sessions = await this.targetSessions(target.iqn);
      const paths: LoggedInPath[] = [];
      const failures: DomainError[] = [];
      for (const p of portals) {
        try {
          await this.ensureNodeRecord(target.iqn, p, chap);
          let s = findSession(sessions, target.iqn, p);
          if (!s) {
            const existed = await this.login(target.iqn, p, chap);
            sessions = await this.targetSessions(target.iqn);
            s = findSession(sessions, target.iqn, p);
            if (s) this.sysfsShowsLogins = true;
            else {
              // iscsid may run in namespaces whose sysfs this process does not see (exec.nsenterTarget:
              // iscsid); iscsiadm runs beside iscsid, so its listing is the one that knows.
              this.log?.info({ iqn: target.iqn, portal: p.text, existed }, 'iSCSI session not in sysfs after login; asking iscsiadm');
              sessions = (await this.sessions()).filter((x) => sameIqn(x.target, target.iqn));
              s = findSession(sessions, target.iqn, p);
            }
            if (!s) throw internal(`logged in to ${target.iqn} at ${p.text} but neither sysfs nor iscsiadm shows such a session`);
          } else {
            this.log?.debug({ iqn: target.iqn, portal: p.text, sid: s.sid }, 'reusing iSCSI session');
          }
          const hctl = await this.hctl(s.sid, s.hostNumber);
          if (!hctl) throw internal(`iSCSI session ${s.sid} has no SCSI host in sysfs`);
          const path: LoggedInPath = { portal: p, session: s, ...hctl };
          await this.scan(path, target.lun);
          paths.push(path);
        } catch (e) {
          const ce = e instanceof DomainError ? e : internal((e as Error).message);
          failures.push(ce);
          this.log?.warn({ iqn: target.iqn, portal: p.text, err: ce.message }, 'iSCSI portal failed');
        }
      }
      if (paths.length === 0) throw worst(failures) ?? unavailable(`no portal of ${target.iqn} could be logged in to`);

      await this.waitForDevices(paths, target.lun);
      const found = paths.filter((p) => p.device);
      if (found.length === 0) {
        throw unavailable(`LUN ${target.lun} of ${target.iqn} did not appear as a block device within ${this.c.deviceTimeoutMs} ms`);
      }
      const ipaths: IscsiPath[] = found.map((p) => ({
        portal: p.portal.text,
        device: this.sysfs.dev(p.device!),
        sid: p.session.sid,
        hctl: `${p.host}:${p.channel ?? 0}:${p.id ?? 0}:${target.lun}`,
      }));
      const what = describe(target);
      const choice = await this.waitForMap(
        found.map((p) => p.device!),
        what,
      );
      if (choice.kind === 'map') {
        if (!choice.device) throw unavailable(`${what}: multipath map ${choice.map.name} (${choice.map.dm}) has no device node in ${this.sysfs.devRoot} yet; retry`);
        return { initiator: 'kernel', devicePath: choice.device, paths: ipaths, multipathName: choice.map.name };
      }
      if (found.length > 1) this.log?.warn({ iqn: target.iqn, devices: ipaths.map((p) => p.device) }, 'several iSCSI paths but no multipath device over them; using the first path');
      return { initiator: 'kernel', devicePath: ipaths[0]!.device, paths: ipaths };
    });
  }

  /**
   * The shared multipath rules decide how the paths are used (their map, never
   * one of its paths; nothing else may hold them). With several paths,
   * multipathd gets up to multipathWaitMs to build the map.
   */
  private async waitForMap(devices: string[], what: string) {
    const choice = await poll(
      async ({ final }) => {
        const choice = await this.multipath.choose(devices, what);
        return (choice.kind === 'map' && choice.device) || final ? choice : undefined;
      },
      { ...this.backoff(), timeoutMs: devices.length > 1 ? this.c.multipathWaitMs : 0 },
    );
    return choice!;
  }

  private backoff() {
    return { initialMs: this.c.initialBackoffMs, maxMs: this.c.maxBackoffMs, clock: this.clock };
  }

  private async iscsiadm(args: string[], okExitCodes: number[] = [], secrets: string[] = []) {
    return this.exec.run('iscsiadm', args, { okExitCodes, secrets, timeoutMs: this.c.iscsiadmTimeoutMs });
  }

  private nodeArgs(iqn: string, p: Portal): string[] {
    return ['-m', 'node', '-T', iqn, '-p', p.text, '--interface', this.iface];
  }

  /**
   * All sessions, from `iscsiadm -m session -P 3` (exit 21: none). It walks
   * every session's SCSI devices and costs a process: O(sessions on the node)
   * per call. For the sessions to one target, targetSessions() reads the same
   * kernel records directly.
   */
  async sessions(): Promise<IscsiSessionInfo[]> {
    const r = await this.iscsiadm(['-m', 'session', '-P', '3'], [ISCSI_ERR.NO_OBJS_FOUND]);
    return r.exitCode === ISCSI_ERR.NO_OBJS_FOUND ? [] : parseSessionTree(r.stdout);
  }

  /**
   * The sessions to one target, from the kernel's records in sysfs: what
   * iscsiadm's listing prints, read without it (class/iscsi_session/sessionN:
   * targetname, tpgt, state; class/iscsi_connection/connectionN:0: the
   * portals; the session device's parent: its SCSI host). Each call lists
   * the sessions (one readdir) and reads the targetname of only those it has
   * not seen (sessionTargets), then the rest of the wanted target's own.
   * `withDevices` also reads each session's LUNs and disks.
   * iscsiadm's connection state comes from iscsid and is not in sysfs.
   */
  async targetSessions(iqn: string, opts: { withDevices?: boolean } = {}): Promise<IscsiSessionInfo[]> {
    const names = (await this.sysfs.list('class/iscsi_session')).filter((n) => /^session\d+$/.test(n));
    const live = new Set(names);
    for (const n of this.sessionTargets.keys()) if (!live.has(n)) this.sessionTargets.delete(n);
    const unread = names.filter((n) => !this.sessionTargets.has(n));
    const read = await Promise.all(unread.map((n) => this.sysfs.read(`class/iscsi_session/${n}/targetname`)));
    // Only a name is kept: a session just created reads "(null)" until iscsid sets its target, so that is read again.
    const fresh = new Map(unread.map((n, i) => [n, read[i]]));
    for (const [n, t] of fresh) if (t && TARGET_NAME_RE.test(t)) this.sessionTargets.set(n, t);
    const out: IscsiSessionInfo[] = [];
    for (const name of names) {
      const target = this.sessionTargets.get(name) ?? fresh.get(name);
      if (!target || !sameIqn(target, iqn)) continue;
      const sid = Number(name.slice('session'.length));
      const dir = `class/iscsi_session/${name}`;
      const conn = `class/iscsi_connection/connection${sid}:0`;
      const [tpgt, state, persistentAddress, persistentPort, address, port, device] = await Promise.all([
        this.sysfs.read(`${dir}/tpgt`),
        this.sysfs.read(`${dir}/state`),
        this.sysfs.read(`${conn}/persistent_address`),
        this.sysfs.read(`${conn}/persistent_port`),
        // iscsi_tcp answers ENOTCONN here while the connection has no socket (a session in recovery).
        this.sysfs.read(`${conn}/address`),
        this.sysfs.read(`${conn}/port`),
        this.sysfs.realPath(`${dir}/device`),
      ]);
      const s: IscsiSessionInfo = { target, sid, devices: [] };
      if (tpgt !== undefined && /^-?\d+$/.test(tpgt)) s.tpgt = Number(tpgt);
      if (state) s.sessionState = state;
      const persistent = portalText(persistentAddress, persistentPort);
      const current = portalText(address, port);
      if (persistent !== undefined) s.persistentPortal = persistent;
      if (current !== undefined) s.currentPortal = current;
      // What open-iscsi's iscsi_sysfs_get_host_no_from_sid reads: the host the session device hangs under.
      const host = device ? /(?:^|\/)host(\d+)\/session(\d+)$/.exec(device) : null;
      if (host && Number(host[2]) === sid) s.hostNumber = Number(host[1]);
      if (opts.withDevices && s.hostNumber !== undefined) s.devices = (await this.sessionLuns(s.hostNumber, sid)) ?? [];
      out.push(s);
    }
    return out.sort((a, b) => a.sid - b.sid);
  }

  /**
   * The sessions to a target at these portals for a decision that must not
   * miss one (what to remove, what to log out of, what a volume's condition
   * is): sysfs first; when a portal has no session there, iscsiadm's listing,
   * in case iscsid's sysfs is not the one this process sees, until a login
   * of ours has shown that it is (sysfsShowsLogins).
   */
  private async sessionsAt(iqn: string, portals: Portal[]): Promise<IscsiSessionInfo[]> {
    const at = (all: IscsiSessionInfo[]) => all.filter((s) => sameIqn(s.target, iqn) && portals.some((p) => sessionAt(s, p)));
    const seen = at(await this.targetSessions(iqn));
    if (this.sysfsShowsLogins || portals.every((p) => seen.some((s) => sessionAt(s, p)))) return seen;
    const all = await this.sessions();
    // A session iscsiadm lists that this sysfs shows too, same number and target, proves the same as a login of ours
    // seen there: after a restart that only reuses sessions, misses stop costing this listing once one has been made.
    // (targetSessions, just above, has read the target of every session in sysfs.)
    if (all.some((s) => sameIqn(this.sessionTargets.get(`session${s.sid}`) ?? '', s.target))) this.sysfsShowsLogins = true;
    return at(all);
  }

  /**
   * LUNs of a session and their disks, from its target dirs in sysfs;
   * undefined when the session's directory is not there to read.
   */
  private async sessionLuns(host: number, sid: number): Promise<SessionLun[] | undefined> {
    const sessDir = `class/iscsi_host/host${host}/device/session${sid}`;
    if (!(await this.sysfs.exists(sessDir))) return undefined;
    const out: SessionLun[] = [];
    for (const t of await this.sysfs.list(sessDir)) {
      if (!/^target\d+:\d+:\d+$/.test(t)) continue;
      for (const l of await this.sysfs.list(`${sessDir}/${t}`)) {
        // Not filtered by host: an entry skipped here would be a LUN in use that otherLuns does not see.
        const m = /^(\d+):(\d+):(\d+):(\d+)$/.exec(l);
        if (!m) continue;
        const blocks = await this.sysfs.list(`${sessDir}/${t}/${l}/block`);
        const d: SessionLun = { channel: Number(m[2]), id: Number(m[3]), lun: Number(m[4]), hasBlock: blocks.length > 0 };
        const disk = blocks.find((n) => KERNEL_NAME_RE.test(n));
        if (disk) d.disk = disk;
        out.push(d);
      }
    }
    return out.sort((a, b) => a.lun - b.lun);
  }

  private async ensureNodeRecord(iqn: string, p: Portal, chap: ChapCredentials | undefined): Promise<void> {
    await this.locks.run('\0node-db', async () => {
      const show = await this.iscsiadm(this.nodeArgs(iqn, p), [ISCSI_ERR.NO_OBJS_FOUND]).catch((e) => {
        throw this.dbError(e, iqn, p);
      });
      if (show.exitCode === ISCSI_ERR.NO_OBJS_FOUND) {
        await this.iscsiadm([...this.nodeArgs(iqn, p), '--op', 'new']).catch((e) => {
          throw this.dbError(e, iqn, p);
        });
      }
      // One update with every setting (iscsiadm applies each -n/-v pair in turn, and refuses the call if one is
      // not valid): each iscsiadm costs a process and a read of the node database, and a stage made seven.
      const settings: [string, string][] = [
        ['node.startup', 'manual'],
        ['node.session.scan', 'manual'],
        // iscsid retries a first login 8 times by default (about 2 minutes against a target that never
        // answers, as tgt does for an initiator outside its ACL): past the CO's call deadline, with a
        // session left in recovery. Two retries fail the stage in about 45 s; kubelet retries it.
        ['node.session.initial_login_retry_max', String(INITIAL_LOGIN_RETRY_MAX)],
      ];
      const secrets: string[] = [];
      if (chap) {
        settings.push(['node.session.auth.authmethod', 'CHAP'], ['node.session.auth.username', chap.user], ['node.session.auth.password', chap.password]);
        secrets.push(chap.password);
        if (chap.mutualUser !== undefined && chap.mutualPassword !== undefined) {
          settings.push(['node.session.auth.username_in', chap.mutualUser], ['node.session.auth.password_in', chap.mutualPassword]);
          secrets.push(chap.mutualPassword);
        }
      } else {
        settings.push(['node.session.auth.authmethod', 'None']);
      }
      await this.iscsiadm([...this.nodeArgs(iqn, p), '--op', 'update', ...settings.flatMap(([n, v]) => ['-n', n, '-v', v])], [], secrets).catch((e) => {
        throw this.dbError(e, iqn, p, settings.map(([n]) => n).join(', '));
      });
    });
  }

  private dbError(e: unknown, iqn: string, p: Portal, param?: string): DomainError {
    if (e instanceof ExecError) {
      const what = param ? `setting ${param} on` : 'writing';
      if (e.exitCode === ISCSI_ERR.IDBM) return internal(`iSCSI node database error ${what} the record for ${iqn} at ${p.text}: ${lastLine(e.stderr)}`);
      return internal(`iscsiadm failed ${what} the record for ${iqn} at ${p.text} (exit ${e.exitCode ?? 'signal'}): ${lastLine(e.stderr)}`);
    }
    return internal((e as Error).message);
  }

  /**
   * True when iscsiadm answered that the session already exists (exit 15).
   *
   * `iscsiadm -m node -T … --login` first reads every node record of every
   * target (open-iscsi's idbm_for_each_rec), without the lock its writers
   * take: a record another stage is writing or deleting at that moment makes
   * the login fail with exit 6 before anything is sent (seen in the VM with
   * two volumes staged side by side). That answer is retried, holding the
   * node-db lock so that sinter's own writers keep out of the way.
   */
  private async login(iqn: string, p: Portal, chap: ChapCredentials | undefined): Promise<boolean> {
    const run = () => this.iscsiadm([...this.nodeArgs(iqn, p), '--login'], [ISCSI_ERR.SESS_EXISTS], chapSecrets(chap));
    try {
      let r;
      for (let attempt = 1; ; attempt++) {
        try {
          r = attempt === 1 ? await run() : await this.locks.run('\0node-db', run);
          break;
        } catch (e) {
          if (!(e instanceof ExecError) || e.exitCode !== ISCSI_ERR.IDBM || attempt >= LOGIN_IDBM_ATTEMPTS) throw e;
          this.log?.info({ iqn, portal: p.text, attempt }, 'iSCSI login read the node database while another record changed (exit 6); retrying');
          await this.clock.sleep(this.c.initialBackoffMs * attempt);
        }
      }
      if (r.exitCode === ISCSI_ERR.SESS_EXISTS) this.log?.debug({ iqn, portal: p.text }, 'iSCSI session already present (exit 15); reusing it');
      else this.log?.info({ iqn, portal: p.text }, 'iSCSI login');
      return r.exitCode === ISCSI_ERR.SESS_EXISTS;
    } catch (e) {
      if (!(e instanceof ExecError)) throw e;
      const where = `iSCSI login to ${iqn} at ${p.text}`;
      switch (e.exitCode) {
        case ISCSI_ERR.LOGIN_AUTH_FAILED:
          throw new DomainError(Code.PERMISSION_DENIED, `${where} failed: CHAP authentication failed (check the CHAP user name and secret in the node-stage secret)`);
        case ISCSI_ERR.FATAL_LOGIN:
          throw failedPrecondition(`${where} was refused (non-retryable): the target does not exist or does not allow this node's initiator name (is the volume published to this node?)`);
        case ISCSI_ERR.TRANS:
        case ISCSI_ERR.TRANS_TIMEOUT:
        case ISCSI_ERR.PDU_TIMEOUT:
        case ISCSI_ERR.LOGIN:
          throw unavailable(`${where} failed (exit ${e.exitCode}): ${lastLine(e.stderr)}`);
        case ISCSI_ERR.TRANS_NOT_FOUND:
          throw failedPrecondition(`${where} failed: the iscsi_tcp kernel module is not loaded (use the user-space initiator on this host)`);
        case ISCSI_ERR.ISCSID_NOTCONN:
          throw unavailable(`${where} failed: iscsid is not running`);
        default:
          throw internal(`${where} failed (exit ${e.exitCode ?? 'signal'}): ${lastLine(e.stderr)}`);
      }
    }
  }

  /**
   * os-brick's get_hctl: host from the session's sysfs path, channel:target
   * from its target dir (unknown before a scan). The host the session's
   * record names (sysfs, or iscsiadm's listing) is checked first (one look:
   * each session has a host of its own, so walking them all costs
   * O(sessions) per call); the walk is left for a record without a host or
   * one that no longer holds the session.
   */
  private async hctl(sid: number, listedHost: number | undefined): Promise<{ host: number; channel?: number; id?: number } | undefined> {
    let host: number | undefined;
    if (listedHost !== undefined && (await this.sysfs.exists(`class/iscsi_host/host${listedHost}/device/session${sid}`))) host = listedHost;
    else {
      for (const h of await this.sysfs.list('class/iscsi_host')) {
        const m = /^host(\d+)$/.exec(h);
        if (m && (await this.sysfs.exists(`class/iscsi_host/${h}/device/session${sid}`))) {
          host = Number(m[1]);
          break;
        }
      }
    }
    host ??= listedHost;
    if (host === undefined) return undefined;
    for (const t of await this.sysfs.list(`class/iscsi_host/host${host}/device/session${sid}`)) {
      const m = /^target(\d+):(\d+):(\d+)$/.exec(t);
      if (m) return { host, channel: Number(m[2]), id: Number(m[3]) };
    }
    return { host };
  }

  /** Targeted scan of one LUN; `-` for a channel/target the kernel has not shown yet. */
  private async scan(p: LoggedInPath, lun: number): Promise<void> {
    const line = `${p.channel ?? '-'} ${p.id ?? '-'} ${lun}`;
    await this.sysfs.write(`class/scsi_host/host${p.host}/scan`, line);
  }

  /** The block device of (session, LUN) in sysfs, learning channel:target on the way. */
  private async findDevice(p: LoggedInPath, lun: number): Promise<string | undefined> {
    const sessDir = `class/scsi_host/host${p.host}/device/session${p.session.sid}`;
    for (const t of await this.sysfs.list(sessDir)) {
      const m = /^target(\d+):(\d+):(\d+)$/.exec(t);
      if (!m || Number(m[1]) !== p.host) continue;
      if (p.channel !== undefined && Number(m[2]) !== p.channel) continue;
      if (p.id !== undefined && Number(m[3]) !== p.id) continue;
      const names = (await this.sysfs.list(`${sessDir}/${t}/${m[1]}:${m[2]}:${m[3]}:${lun}/block`)).filter((n) => KERNEL_NAME_RE.test(n));
      if (names.length > 0) {
        p.channel = Number(m[2]);
        p.id = Number(m[3]);
        return names[0];
      }
    }
    return undefined;
  }

  private async waitForDevices(paths: LoggedInPath[], lun: number): Promise<void> {
    await poll(
      async () => {
        for (const p of paths) {
          if (p.device) continue;
          const name = await this.findDevice(p, lun);
          if (name && (await this.sysfs.devExists(name))) p.device = name;
        }
        return paths.every((p) => p.device) ? true : undefined;
      },
      {
        ...this.backoff(),
        timeoutMs: this.c.deviceTimeoutMs,
        beforeRetry: async (look) => {
          if (look % this.c.rescanEvery === 0) for (const p of paths) if (!p.device) await this.scan(p, lun);
        },
      },
    );
  }

  // ------------------------------------------------------------- disconnect

  async disconnect(target: IscsiTarget, opts: { keepSessions?: boolean } = {}): Promise<void> {
    const portals = validate(target);
    await this.locks.run(`target\n${target.iqn.toLowerCase()}`, async () => {
      const sessions = await this.sessionsAt(target.iqn, portals);
      const what = describe(target);
      const { maps, paths } = await this.lunDevices(sessions, portals, target.lun, what);
      // The shared SAN rules: refuse while mounted or held, flush and remove the map, then flush and delete each path.
      await this.multipath.removeLun(maps, paths, what, this.c.deviceRemovalTimeoutMs);

      // Log out of sessions no other LUN uses, then forget their node records.
      for (const p of portals) {
        const s = sessions.find((x) => sessionAt(x, p));
        if (s) {
          const others = await this.otherLuns(s, target.lun);
          if (others === undefined) {
            // Its LUNs cannot be seen, so neither can another volume's use of it: logging out could take that volume's disk away.
            this.log?.warn({ iqn: target.iqn, portal: p.text, sid: s.sid }, 'iSCSI session not visible in sysfs; keeping it (log out by hand once no volume uses the target)');
            continue;
          }
          if (others.length > 0 || opts.keepSessions) {
            this.log?.info({ iqn: target.iqn, portal: p.text, sid: s.sid, luns: others }, others.length > 0 ? 'iSCSI session still serves other LUNs; keeping it' : 'iSCSI session kept: a staged volume uses the target');
            continue;
          }
          await this.iscsiadm([...this.nodeArgs(target.iqn, p), '--logout'], [ISCSI_ERR.NO_OBJS_FOUND]).catch((e) => {
            throw internal(`iSCSI logout from ${target.iqn} at ${p.text} failed: ${e instanceof ExecError ? lastLine(e.stderr) : (e as Error).message}`);
          });
          this.log?.info({ iqn: target.iqn, portal: p.text, sid: s.sid }, 'iSCSI logout');
        }
        await this.locks.run('\0node-db', () =>
          this.iscsiadm([...this.nodeArgs(target.iqn, p), '--op', 'delete'], [ISCSI_ERR.NO_OBJS_FOUND]).catch((e) => {
            throw this.dbError(e, target.iqn, p);
          }),
        );
      }
    });
  }

  /**
   * Start-up clean-up of one LUN no stage record explains (node.orphanSessions:
   * clean), named by the device attachments() listed (a path such as /dev/sdc,
   * or the multipath map over the LUN's paths): disconnect() of that LUN
   * through the sessions that carry it. With keepSession no session is logged
   * out (nor its node record deleted), whatever LUNs it has left: a staged
   * volume uses the target. False when the device is no longer that LUN.
   */
  async releaseLun(device: string, iqn: string, lun: number, opts: { keepSession: boolean }): Promise<boolean> {
    const kernel = await this.sysfs.kernelName(device);
    if (!kernel) return false;
    const carries = (x: IscsiSessionInfo) => sameIqn(x.target, iqn) && x.devices.some((d) => d.lun === lun && d.disk);
    let carrying = (await this.targetSessions(iqn, { withDevices: true })).filter(carries);
    // attachments() listed it through iscsiadm: a miss in sysfs is asked again there before the LUN is called not ours.
    if (carrying.length === 0) carrying = (await this.sessions()).filter(carries);
    const disks = new Set(carrying.flatMap((x) => x.devices.filter((d) => d.lun === lun && d.disk).map((d) => d.disk!)));
    const map = await this.multipath.map(kernel);
    const ours = map ? map.slaves.length > 0 && map.slaves.every((s) => disks.has(s)) : disks.has(kernel);
    const portals = [...new Set(carrying.map((x) => x.persistentPortal ?? x.currentPortal).filter((p): p is string => Boolean(p)))];
    if (!ours || portals.length === 0) return false;
    await this.disconnect({ portals, iqn: carrying[0]!.target, lun }, { keepSessions: opts.keepSession });
    return true;
  }

  /**
   * This LUN's disks on the given sessions and the multipath maps over them.
   * A map that also holds a disk of another LUN (or of a session not given) is
   * refused: removing it would take that other disk's I/O down with it. A
   * dm-crypt mapping over a disk (an encrypted volume staged on it) is the
   * disk's user, not a map: the disk is still this LUN's device (find,
   * condition, rescan), and removeLun refuses to take it away while the
   * mapping holds it, as it refuses a mounted one.
   */
  private async lunDevices(sessions: IscsiSessionInfo[], portals: Portal[], lun: number, what: string): Promise<{ maps: MultipathMap[]; paths: string[] }> {
    const paths: string[] = [];
    for (const s of sessions) {
      const hctl = await this.hctl(s.sid, s.hostNumber);
      if (!hctl) continue;
      const dev = await this.findDevice({ portal: portals[0]!, session: s, ...hctl }, lun);
      if (dev) paths.push(dev);
    }
    const maps = new Map<string, MultipathMap>();
    for (const disk of paths) {
      for (const h of await this.disks.holders(disk)) {
        const m = await this.multipath.map(h);
        if (m) maps.set(m.dm, m);
        else if (!(await this.multipath.isCrypt(h)))
          throw failedPrecondition(`${what}: path ${disk} is held by ${h}, which is not a multipath map; sinter will not remove it`);
      }
    }
    for (const m of maps.values())
      for (const s of m.slaves)
        if (!paths.includes(s)) throw failedPrecondition(`${what}: multipath map ${m.name} also holds ${s}, which is not a path of this LUN on these portals; sinter will not remove it`);
    return { maps: [...maps.values()], paths };
  }

  /**
   * The attached LUN's block device, as connect returns it (the multipath map
   * when one holds its paths), without logging in or scanning; undefined when
   * no session has it.
   */
  async find(target: IscsiTarget): Promise<string | undefined> {
    return (await this.inspect(target)).device;
  }

  /** find(), with the sessions to target it read on the way (their states: a volume's condition), from sysfs (iscsiadm only when a portal has no session there). */
  async inspect(target: IscsiTarget): Promise<{ device?: string; sessions: IscsiSessionInfo[] }> {
    const portals = validate(target);
    const sessions = await this.sessionsAt(target.iqn, portals);
    const { maps, paths } = await this.lunDevices(sessions, portals, target.lun, describe(target)).catch(() => ({ maps: [], paths: [] as string[] }));
    if (maps[0]) return { device: await this.multipath.devicePath(maps[0]), sessions };
    return { device: paths[0] ? this.sysfs.dev(paths[0]) : undefined, sessions };
  }

  /**
   * Makes the kernel see the LUN's new size before the filesystem grows: each
   * path re-reads its capacity, then multipathd resizes the map over them (the
   * code the FC connector uses).
   */
  async rescan(target: IscsiTarget): Promise<void> {
    const portals = validate(target);
    await this.locks.run(`target\n${target.iqn.toLowerCase()}`, async () => {
      const sessions = await this.sessionsAt(target.iqn, portals);
      const what = describe(target);
      const { maps, paths } = await this.lunDevices(sessions, portals, target.lun, what);
      if (paths.length === 0) throw failedPrecondition(`${what} has no device on this node to rescan; stage it again`);
      await this.multipath.growLun(maps[0], paths, what);
    });
  }

  /** The kernel initiator grows online (rescan). */
  staleSizeReason(): undefined {
    return undefined;
  }

  async attached(): Promise<IscsiAttached[]> {
    return (await this.attachments()).map((a) => ({ device: a.device, source: kernelSource(a.iqn, a.lun), iqn: a.iqn }));
  }

  /**
   * releaseLun() of an attachment attached() listed: no session is logged out
   * while a volume with a record uses the target.
   */
  async release(device: string, source: string, inUse: IscsiTarget[]): Promise<boolean> {
    const m = KERNEL_SOURCE_RE.exec(source);
    if (!m) return false;
    const iqn = m[1]!;
    return this.releaseLun(device, iqn, Number(m[2]), { keepSession: inUse.some((t) => sameIqn(t.iqn, iqn)) });
  }

  async health(target: IscsiTarget): Promise<IscsiHealth> {
    const seen = await this.inspect(target).catch(() => ({ device: undefined, sessions: [] as IscsiSessionInfo[] }));
    const failed = seen.sessions.filter((s) => s.sessionState !== undefined && s.sessionState !== 'LOGGED_IN');
    // The kernel turns a FAILED session FREE once its replacement_timeout passes (Linux 6.1, recorded): its disks
    // go transport-offline and I/O fails at once instead of waiting.
    const expired = failed.some((s) => s.sessionState === 'FREE');
    const down = failed.map((s) => `session ${s.sid} at ${s.currentPortal ?? s.persistentPortal ?? '?'} is ${s.sessionState}${s.sessionState === 'FREE' ? ', past its replacement_timeout' : ''}`);
    return { device: seen.device, sessions: seen.sessions.length, down, expired };
  }

  /** Every LUN attached through the kernel initiator, as its usable device (the map, not its paths). */
  async attachments(): Promise<{ device: string; iqn: string; lun: number }[]> {
    const out = new Map<string, { iqn: string; lun: number }>();
    for (const s of await this.sessions()) {
      for (const d of s.devices) {
        if (!d.disk || !KERNEL_NAME_RE.test(d.disk)) continue;
        let device = this.sysfs.dev(d.disk);
        for (const h of await this.disks.holders(d.disk)) {
          const m = await this.multipath.map(h);
          if (m) device = (await this.multipath.devicePath(m)) ?? this.sysfs.dev(m.dm);
        }
        if (!out.has(device)) out.set(device, { iqn: s.target, lun: d.lun });
      }
    }
    return [...out].map(([device, at]) => ({ device, ...at }));
  }

  /**
   * LUNs of a session, other than `lun`, that still have a block device (in
   * sysfs, whatever its name); undefined when the session's LUNs cannot be
   * read there (the caller then keeps the session).
   */
  private async otherLuns(s: IscsiSessionInfo, lun: number): Promise<number[] | undefined> {
    const hctl = await this.hctl(s.sid, s.hostNumber);
    if (!hctl) return undefined;
    const luns = await this.sessionLuns(hctl.host, s.sid);
    if (!luns) return undefined;
    return [...new Set(luns.filter((d) => d.lun !== lun && d.hasBlock).map((d) => d.lun))].sort((a, b) => a - b);
  }
}

const describe = (t: IscsiTarget) => `LUN ${t.lun} of ${t.iqn}`;

const validate = validateTarget;


/** A LUN of a session as sysfs shows it; hasBlock also counts a block device whose name is not taken (KERNEL_NAME_RE). */
type SessionLun = IscsiSessionDevice & { hasBlock: boolean };

/**
 * A portal as iscsiadm prints it from the same attributes (open-iscsi's
 * session_info_print_tree: an address with a '.' bare, any other in
 * brackets), so that it compares equal to what parseSessionTree reads.
 */
function portalText(address: string | undefined, port: string | undefined): string | undefined {
  if (!address || port === undefined || !/^\d{1,5}$/.test(port)) return undefined;
  return address.includes('.') ? `${address}:${Number(port)}` : `[${address}]:${Number(port)}`;
}

function sessionAt(s: IscsiSessionInfo, p: Portal): boolean {
  return s.persistentPortal === p.text || s.currentPortal === p.text;
}

function findSession(sessions: IscsiSessionInfo[], iqn: string, p: Portal): IscsiSessionInfo | undefined {
  return sessions.find((s) => sameIqn(s.target, iqn) && sessionAt(s, p));
}

function lastLine(s: string): string {
  return (
    s
      .trim()
      .split('\n')
      .filter((l) => l && !/systemd|Failed to connect to bus/.test(l))
      .pop() ?? ''
  ).slice(0, 300);
}

/** The error to report when every portal failed: the one the user can act on first. */
function worst(errors: DomainError[]): DomainError | undefined {
  const rank = (e: DomainError) => (e.code === Code.PERMISSION_DENIED ? 0 : e.code === Code.FAILED_PRECONDITION ? 1 : e.code === Code.INTERNAL ? 2 : 3);
  return [...errors].sort((a, b) => rank(a) - rank(b))[0];
}
