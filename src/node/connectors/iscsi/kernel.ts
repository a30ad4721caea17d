import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { chapSecrets, type ChapCredentials } from '../../../contracts/chap.js';
import { isValidIqn } from '../../../contracts/nodeid.js';
import { CsiError, Code, failedPrecondition, internal, invalidArgument, unavailable } from '../../../csi/errors.js';
import { KeyedLock } from '../../../csi/locks.js';
import { ExecError, type Executor } from '../../../exec/run.js';
import { ISCSI_ERR, parseSessionTree, type IscsiSessionInfo } from './iscsiadm-parse.js';
import { parsePortal, type IscsiAttachment, type IscsiConnectOptions, type IscsiInitiator, type IscsiPath, type IscsiTarget, type Portal } from './types.js';

/** The few file operations the connector does on sysfs and /dev; replaceable in tests. */
export interface HostFs {
  readdir(path: string): Promise<string[]>;
  readFile(path: string): Promise<string>;
  writeFile(path: string, data: string): Promise<void>;
  exists(path: string): Promise<boolean>;
}

export const nodeHostFs: HostFs = {
  readdir: (p) => fs.readdir(p),
  readFile: (p) => fs.readFile(p, 'utf8'),
  writeFile: (p, d) => fs.writeFile(p, d),
  exists: (p) =>
    fs.access(p).then(
      () => true,
      () => false,
    ),
};

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
  fs?: HostFs;
  sleep?: (ms: number) => Promise<void>;
  now?: () => number;
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
 * target, CHAP in node.session.auth.*), reuse of an existing session (a
 * listed one, or exit 15 from a racing login), login; then a targeted LUN
 * scan (`echo "C T L" > /sys/class/scsi_host/hostH/scan`) and a wait with
 * backoff for the LUN's block device in sysfs and /dev. Several paths with a
 * common device-mapper holder are returned as that multipath device.
 *
 * disconnect: flush and delete this LUN's SCSI devices (after flushing the
 * multipath map over them, if any); log out of a session only when no other
 * LUN of it still has a block device (tgt targets carry LUN 0, the
 * controller, which never has one), then delete that portal's node record.
 * Idempotent when devices, sessions or records are already gone.
 *
 * The node's initiator name is the host's (/etc/iscsi/initiatorname.iscsi,
 * which the node id carries); `opts.initiatorName` is not applied here.
 */
export class KernelIscsiInitiator implements IscsiInitiator {
  readonly kind = 'kernel' as const;
  private readonly locks = new KeyedLock();
  private readonly sys: string;
  private readonly dev: string;
  private readonly iface: string;
  private readonly fs: HostFs;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly now: () => number;
  private readonly c: Required<Pick<KernelInitiatorConfig, 'deviceTimeoutMs' | 'initialBackoffMs' | 'maxBackoffMs' | 'rescanEvery' | 'multipathWaitMs' | 'deviceRemovalTimeoutMs' | 'iscsiadmTimeoutMs'>>;

  constructor(
    cfg: KernelInitiatorConfig,
    private readonly exec: Executor,
    private readonly log?: Logger,
  ) {
    this.sys = cfg.sysfsRoot ?? '/sys';
    this.dev = cfg.devRoot ?? '/dev';
    this.iface = cfg.iface ?? 'default';
    this.fs = cfg.fs ?? nodeHostFs;
    this.sleep = cfg.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
    this.now = cfg.now ?? Date.now;
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
      let sessions = await this.sessions();
      const paths: LoggedInPath[] = [];
      const failures: CsiError[] = [];
      for (const p of portals) {
        try {
          await this.ensureNodeRecord(target.iqn, p, chap);
          let s = findSession(sessions, target.iqn, p);
          if (!s) {
            await this.login(target.iqn, p, chap);
            sessions = await this.sessions();
            s = findSession(sessions, target.iqn, p);
            if (!s) throw internal(`logged in to ${target.iqn} at ${p.text} but iscsiadm lists no such session`);
          } else {
            this.log?.debug({ iqn: target.iqn, portal: p.text, sid: s.sid }, 'reusing iSCSI session');
          }
          const hctl = await this.hctl(s.sid, s.hostNumber);
          if (!hctl) throw internal(`iSCSI session ${s.sid} has no SCSI host in sysfs`);
          const path: LoggedInPath = { portal: p, session: s, ...hctl };
          await this.scan(path, target.lun);
          paths.push(path);
        } catch (e) {
          const ce = e instanceof CsiError ? e : internal((e as Error).message);
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
        device: join(this.dev, p.device!),
        sid: p.session.sid,
        hctl: `${p.host}:${p.channel ?? 0}:${p.id ?? 0}:${target.lun}`,
      }));
      const dm = await this.multipathHolder(found.map((p) => p.device!), found.length > 1);
      if (dm) {
        const name = (await this.readOr(join(this.sys, 'block', dm, 'dm', 'name'))).trim();
        return { initiator: 'kernel', devicePath: join(this.dev, dm), paths: ipaths, ...(name ? { multipathName: name } : {}) };
      }
      if (found.length > 1) this.log?.warn({ iqn: target.iqn, devices: ipaths.map((p) => p.device) }, 'several iSCSI paths but no multipath device over them; using the first path');
      return { initiator: 'kernel', devicePath: ipaths[0]!.device, paths: ipaths };
    });
  }

  private async iscsiadm(args: string[], okExitCodes: number[] = [], secrets: string[] = []) {
    return this.exec.run('iscsiadm', args, { okExitCodes, secrets, timeoutMs: this.c.iscsiadmTimeoutMs });
  }

  private nodeArgs(iqn: string, p: Portal): string[] {
    return ['-m', 'node', '-T', iqn, '-p', p.text, '--interface', this.iface];
  }

  /** All sessions, from `iscsiadm -m session -P 3` (exit 21: none). */
  async sessions(): Promise<IscsiSessionInfo[]> {
    const r = await this.iscsiadm(['-m', 'session', '-P', '3'], [ISCSI_ERR.NO_OBJS_FOUND]);
    return r.exitCode === ISCSI_ERR.NO_OBJS_FOUND ? [] : parseSessionTree(r.stdout);
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
      const set = async (name: string, value: string, secret = false) => {
        await this.iscsiadm([...this.nodeArgs(iqn, p), '--op', 'update', '-n', name, '-v', value], [], secret ? [value] : []).catch((e) => {
          throw this.dbError(e, iqn, p, secret ? undefined : name);
        });
      };
      await set('node.startup', 'manual');
      await set('node.session.scan', 'manual');
      if (chap) {
        await set('node.session.auth.authmethod', 'CHAP');
        await set('node.session.auth.username', chap.user);
        await set('node.session.auth.password', chap.password, true);
        if (chap.mutualUser !== undefined && chap.mutualPassword !== undefined) {
          await set('node.session.auth.username_in', chap.mutualUser);
          await set('node.session.auth.password_in', chap.mutualPassword, true);
        }
      } else {
        await set('node.session.auth.authmethod', 'None');
      }
    });
  }

  private dbError(e: unknown, iqn: string, p: Portal, param?: string): CsiError {
    if (e instanceof ExecError) {
      const what = param ? `setting ${param} on` : 'writing';
      if (e.exitCode === ISCSI_ERR.IDBM) return internal(`iSCSI node database error ${what} the record for ${iqn} at ${p.text}: ${lastLine(e.stderr)}`);
      return internal(`iscsiadm failed ${what} the record for ${iqn} at ${p.text} (exit ${e.exitCode ?? 'signal'}): ${lastLine(e.stderr)}`);
    }
    return internal((e as Error).message);
  }

  private async login(iqn: string, p: Portal, chap: ChapCredentials | undefined): Promise<void> {
    try {
      const r = await this.iscsiadm([...this.nodeArgs(iqn, p), '--login'], [ISCSI_ERR.SESS_EXISTS], chapSecrets(chap));
      if (r.exitCode === ISCSI_ERR.SESS_EXISTS) this.log?.debug({ iqn, portal: p.text }, 'iSCSI session already present (exit 15); reusing it');
      else this.log?.info({ iqn, portal: p.text }, 'iSCSI login');
    } catch (e) {
      if (!(e instanceof ExecError)) throw e;
      const where = `iSCSI login to ${iqn} at ${p.text}`;
      switch (e.exitCode) {
        case ISCSI_ERR.LOGIN_AUTH_FAILED:
          throw new CsiError(Code.PERMISSION_DENIED, `${where} failed: CHAP authentication failed (check the CHAP user name and secret in the node-stage secret)`);
        case ISCSI_ERR.FATAL_LOGIN:
          throw failedPrecondition(`${where} was refused (non-retryable): the target does not exist or does not allow this node's initiator name (is the volume published to this node?)`);
        case ISCSI_ERR.TRANS:
        case ISCSI_ERR.TRANS_TIMEOUT:
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

  /** os-brick's get_hctl: host from the session's sysfs path, channel:target from its target dir (unknown before a scan). */
  private async hctl(sid: number, listedHost: number | undefined): Promise<{ host: number; channel?: number; id?: number } | undefined> {
    const hostsDir = join(this.sys, 'class', 'iscsi_host');
    let host: number | undefined;
    for (const h of await this.readdirOr(hostsDir)) {
      const m = /^host(\d+)$/.exec(h);
      if (m && (await this.fs.exists(join(hostsDir, h, 'device', `session${sid}`)))) {
        host = Number(m[1]);
        break;
      }
    }
    host ??= listedHost;
    if (host === undefined) return undefined;
    for (const t of await this.readdirOr(join(hostsDir, `host${host}`, 'device', `session${sid}`))) {
      const m = /^target(\d+):(\d+):(\d+)$/.exec(t);
      if (m) return { host, channel: Number(m[2]), id: Number(m[3]) };
    }
    return { host };
  }

  /** Targeted scan of one LUN; `-` for a channel/target the kernel has not shown yet. */
  private async scan(p: LoggedInPath, lun: number): Promise<void> {
    const line = `${p.channel ?? '-'} ${p.id ?? '-'} ${lun}`;
    await this.fs.writeFile(join(this.sys, 'class', 'scsi_host', `host${p.host}`, 'scan'), line);
  }

  /** The block device of (session, LUN) in sysfs, learning channel:target on the way. */
  private async findDevice(p: LoggedInPath, lun: number): Promise<string | undefined> {
    const sessDir = join(this.sys, 'class', 'scsi_host', `host${p.host}`, 'device', `session${p.session.sid}`);
    for (const t of await this.readdirOr(sessDir)) {
      const m = /^target(\d+):(\d+):(\d+)$/.exec(t);
      if (!m || Number(m[1]) !== p.host) continue;
      if (p.channel !== undefined && Number(m[2]) !== p.channel) continue;
      if (p.id !== undefined && Number(m[3]) !== p.id) continue;
      const lunDir = join(sessDir, t, `${m[1]}:${m[2]}:${m[3]}:${lun}`, 'block');
      const names = (await this.readdirOr(lunDir)).filter((n) => /^[a-z][a-z0-9]*$/.test(n));
      if (names.length > 0) {
        p.channel = Number(m[2]);
        p.id = Number(m[3]);
        return names[0];
      }
    }
    return undefined;
  }

  private async waitForDevices(paths: LoggedInPath[], lun: number): Promise<void> {
    const deadline = this.now() + this.c.deviceTimeoutMs;
    let delay = this.c.initialBackoffMs;
    for (let look = 1; ; look++) {
      for (const p of paths) {
        if (p.device) continue;
        const name = await this.findDevice(p, lun);
        if (name && (await this.fs.exists(join(this.dev, name)))) p.device = name;
      }
      if (paths.every((p) => p.device)) return;
      if (this.now() >= deadline) return;
      if (look % this.c.rescanEvery === 0) for (const p of paths) if (!p.device) await this.scan(p, lun);
      await this.sleep(Math.min(delay, Math.max(0, deadline - this.now())));
      delay = Math.min(delay * 2, this.c.maxBackoffMs);
    }
  }

  /** A device-mapper device holding every path device (multipath), waited for when `wait`. */
  private async multipathHolder(devices: string[], wait: boolean): Promise<string | undefined> {
    const deadline = this.now() + (wait ? this.c.multipathWaitMs : 0);
    let delay = this.c.initialBackoffMs;
    for (;;) {
      let common: string[] | undefined;
      for (const d of devices) {
        const hs = (await this.readdirOr(join(this.sys, 'block', d, 'holders'))).filter((h) => /^dm-\d+$/.test(h));
        common = common === undefined ? hs : common.filter((h) => hs.includes(h));
      }
      if (common && common.length > 0) return common[0];
      if (this.now() >= deadline) return undefined;
      await this.sleep(Math.min(delay, Math.max(0, deadline - this.now())));
      delay = Math.min(delay * 2, this.c.maxBackoffMs);
    }
  }

  // ------------------------------------------------------------- disconnect

  async disconnect(target: IscsiTarget, opts: { keepSessions?: boolean } = {}): Promise<void> {
    const portals = validate(target);
    await this.locks.run(`target\n${target.iqn.toLowerCase()}`, async () => {
      const sessions = (await this.sessions()).filter((s) => sameIqn(s.target, target.iqn) && portals.some((p) => sessionAt(s, p)));
      // This LUN's devices on every session of the target.
      const mine: { s: IscsiSessionInfo; host: number; device: string }[] = [];
      for (const s of sessions) {
        const hctl = await this.hctl(s.sid, s.hostNumber);
        if (!hctl) continue;
        const p: LoggedInPath = { portal: portals[0]!, session: s, ...hctl };
        const dev = await this.findDevice(p, target.lun);
        if (dev) mine.push({ s, host: hctl.host, device: dev });
      }
      // A multipath map over them goes first: flush it and remove it.
      const dm = mine.length > 0 ? await this.multipathHolder(mine.map((m) => m.device), false) : undefined;
      if (dm) {
        const name = (await this.readOr(join(this.sys, 'block', dm, 'dm', 'name'))).trim() || dm;
        await this.exec.run('blockdev', ['--flushbufs', join(this.dev, dm)]);
        await this.exec.run('multipath', ['-f', name]).catch((e) => {
          throw failedPrecondition(`multipath device ${name} over LUN ${target.lun} of ${target.iqn} could not be removed (in use?): ${(e as Error).message}`);
        });
      }
      for (const m of mine) {
        await this.exec.run('blockdev', ['--flushbufs', join(this.dev, m.device)]).catch((e) => {
          // A device whose path already failed cannot be flushed; deleting it is still right.
          this.log?.warn({ device: m.device, err: (e as Error).message }, 'flush before SCSI device removal failed');
        });
        const del = join(this.sys, 'block', m.device, 'device', 'delete');
        if (await this.fs.exists(del)) await this.fs.writeFile(del, '1');
      }
      await this.waitGone(mine.map((m) => m.device));

      // Log out of sessions no other LUN uses, then forget their node records.
      for (const p of portals) {
        const s = sessions.find((x) => sessionAt(x, p));
        if (s) {
          const others = await this.otherLuns(s, target.lun);
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
   * clean), named by its block device (`sdc`): disconnect() of that LUN through
   * the one session that carries the device. With keepSession the session is
   * never logged out (nor its node record deleted), whatever LUNs it has left:
   * a staged volume uses the target. False when no session of iqn has disk as
   * that LUN (any more).
   */
  async releaseLun(disk: string, iqn: string, lun: number, opts: { keepSession: boolean }): Promise<boolean> {
    const s = (await this.sessions()).find((x) => sameIqn(x.target, iqn) && x.devices.some((d) => d.lun === lun && d.disk === disk));
    const portal = s?.persistentPortal ?? s?.currentPortal;
    if (!s || !portal) return false;
    await this.disconnect({ portals: [portal], iqn: s.target, lun }, { keepSessions: opts.keepSession });
    return true;
  }

  private async waitGone(devices: string[]): Promise<void> {
    const deadline = this.now() + this.c.deviceRemovalTimeoutMs;
    let delay = this.c.initialBackoffMs;
    for (;;) {
      const left: string[] = [];
      for (const d of devices) if (await this.fs.exists(join(this.sys, 'block', d))) left.push(d);
      if (left.length === 0) return;
      if (this.now() >= deadline) throw unavailable(`SCSI device(s) ${left.join(', ')} still present ${this.c.deviceRemovalTimeoutMs} ms after removal`);
      await this.sleep(Math.min(delay, Math.max(0, deadline - this.now())));
      delay = Math.min(delay * 2, this.c.maxBackoffMs);
    }
  }

  /** LUNs of a session, other than `lun`, that still have a block device (in sysfs). */
  private async otherLuns(s: IscsiSessionInfo, lun: number): Promise<number[]> {
    const hctl = await this.hctl(s.sid, s.hostNumber);
    if (!hctl) return [];
    const sessDir = join(this.sys, 'class', 'iscsi_host', `host${hctl.host}`, 'device', `session${s.sid}`);
    const out: number[] = [];
    for (const t of await this.readdirOr(sessDir)) {
      if (!/^target\d+:\d+:\d+$/.test(t)) continue;
      for (const l of await this.readdirOr(join(sessDir, t))) {
        const m = /^\d+:\d+:\d+:(\d+)$/.exec(l);
        if (!m || Number(m[1]) === lun) continue;
        if ((await this.readdirOr(join(sessDir, t, l, 'block'))).length > 0) out.push(Number(m[1]));
      }
    }
    return out.sort((a, b) => a - b);
  }

  private async readdirOr(p: string): Promise<string[]> {
    try {
      return await this.fs.readdir(p);
    } catch {
      return [];
    }
  }

  private async readOr(p: string): Promise<string> {
    try {
      return await this.fs.readFile(p);
    } catch {
      return '';
    }
  }
}

function validate(target: IscsiTarget): Portal[] {
  if (!isValidIqn(target.iqn)) throw invalidArgument(`target name "${target.iqn}" is not a valid iSCSI name`);
  if (!Number.isInteger(target.lun) || target.lun < 0 || target.lun > 16383) throw invalidArgument(`LUN ${target.lun} is out of range`);
  if (target.portals.length === 0) throw invalidArgument('no iSCSI portal given');
  try {
    return target.portals.map(parsePortal);
  } catch (e) {
    throw invalidArgument((e as Error).message);
  }
}

const sameIqn = (a: string, b: string) => a.toLowerCase() === b.toLowerCase();

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
function worst(errors: CsiError[]): CsiError | undefined {
  const rank = (e: CsiError) => (e.code === Code.PERMISSION_DENIED ? 0 : e.code === Code.FAILED_PRECONDITION ? 1 : e.code === Code.INTERNAL ? 2 : 3);
  return [...errors].sort((a, b) => rank(a) - rank(b))[0];
}
