import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { ExecError, type ExecOptions, type ExecResult, type Executor } from '../../src/exec/run.js';
import { SysfsTree } from '../../src/node/connectors/sysfs.js';
import { parseSessionTree } from '../../src/node/connectors/iscsi/iscsiadm-parse.js';

const FIX = join(import.meta.dirname, '..', 'fixtures', 'iscsiadm');

/** A recorded iscsiadm answer from test/fixtures/iscsiadm (see its README). */
export function fixture(name: string): ExecResult {
  const code = readFileSync(join(FIX, 'exit-codes.txt'), 'utf8')
    .split('\n')
    .map((l) => l.split(' '))
    .find((p) => p[0] === name);
  if (!code) throw new Error(`no fixture ${name}`);
  return { stdout: readFileSync(join(FIX, `${name}.out`), 'utf8'), stderr: readFileSync(join(FIX, `${name}.err`), 'utf8'), exitCode: Number(code[1]) };
}

export interface Call {
  cmd: string;
  args: string[];
  opts?: ExecOptions;
  /** The command line as the real Executor would log it (secrets masked). */
  shown: string;
}

/**
 * A fake Executor: records every command and answers with the result the
 * test's handler returns, applying Executor's rule that an exit code other
 * than 0 and not in okExitCodes is thrown as ExecError.
 */
export class FakeExecutor implements Executor {
  readonly calls: Call[] = [];
  constructor(private readonly handler: (cmd: string, args: string[]) => ExecResult | Promise<ExecResult>) {}

  async run(cmd: string, args: string[], opts?: ExecOptions): Promise<ExecResult> {
    let shown = [cmd, ...args].join(' ');
    for (const s of opts?.secrets ?? []) if (s) shown = shown.split(s).join('***');
    this.calls.push({ cmd, args, opts, shown });
    const r = await this.handler(cmd, args);
    if (r.exitCode !== 0 && !(opts?.okExitCodes ?? []).includes(r.exitCode)) throw new ExecError(shown, r.exitCode, r.stderr || r.stdout, false);
    return r;
  }

  /** Command lines, iscsiadm's shortened to what follows `iscsiadm`. */
  get lines(): string[] {
    return this.calls.map((c) => c.shown);
  }
}

/**
 * What the kernel keeps of an iSCSI session in sysfs (Linux 6.1,
 * drivers/scsi/scsi_transport_iscsi.c): class/iscsi_session/sessionN
 * (targetname, tpgt, state) and class/iscsi_connection/connectionN:0
 * (persistent_address/persistent_port, set by iscsid from the node record;
 * address/port, the connection's peer, printed by libiscsi with %pI4 / %pI6,
 * so IPv6 in full, uncompressed form). Addresses without brackets.
 */
export interface SessionAttrs {
  target: string;
  tpgt?: number;
  /** LOGGED_IN, FAILED or FREE (iscsi_session_state_name). */
  state?: string;
  persistentAddress: string;
  persistentPort: number;
  /** Absent: the attribute cannot be read (iscsi_tcp answers ENOTCONN while the connection has no socket). */
  address?: string;
  port?: number;
}

/** A session the tests did not describe: another target, so that no connector mistakes it for theirs. */
const otherSession = (sid: number): SessionAttrs => ({ target: `iqn.2025-01.io.example:unrelated-${sid}`, tpgt: 1, state: 'LOGGED_IN', persistentAddress: '192.0.2.9', persistentPort: 3260, address: '192.0.2.9', port: 3260 });

function splitPortal(text: string): { address: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text);
  if (!m) throw new Error(`not a portal: ${text}`);
  return { address: m[1] ?? m[2], port: Number(m[3]) };
}

/**
 * A fake sysfs + /dev laid out like the real one (class entries are symlinks
 * into devices/platform), with hooks so writes to `scan` and `delete` act as
 * the kernel would.
 */
export class FakeSysfs {
  readonly root = mkdtempSync(join(tmpdir(), 'sinter-fake-sysfs-'));
  readonly sys = join(this.root, 'sys');
  readonly dev = join(this.root, 'dev');
  readonly writes: { path: string; data: string }[] = [];
  /** An empty mount table: nothing of the fake tree is mounted. */
  readonly mountInfo = join(this.root, 'mountinfo');
  /** What a scan of (host, lun) makes appear: disk name, or nothing. */
  readonly onScan = new Map<string, { sid: number; disk: string; channel?: number; id?: number }>();

  constructor() {
    mkdirSync(this.sys, { recursive: true });
    mkdirSync(this.dev, { recursive: true });
    writeFileSync(this.mountInfo, '');
  }

  cleanup(): void {
    rmSync(this.root, { recursive: true, force: true });
  }

  private link(from: string, to: string): void {
    mkdirSync(dirname(from), { recursive: true });
    if (!existsSync(from)) symlinkSync(relative(dirname(from), to), from);
  }

  /** Sessions' attributes by sid, for sessions made without them (asListed). */
  private readonly described = new Map<number, SessionAttrs>();

  /**
   * Describes the sessions an iscsiadm listing shows as the kernel holds them,
   * so that a session made by sid (addSession, addDisk) carries the target,
   * portals and state the fake iscsiadm reports for it; sessions already made are updated.
   */
  asListed(listing: string): this {
    for (const s of parseSessionTree(listing)) {
      const persistent = splitPortal(s.persistentPortal ?? s.currentPortal!);
      const current = s.currentPortal ? splitPortal(s.currentPortal) : undefined;
      const attrs: SessionAttrs = { target: s.target, tpgt: s.tpgt, state: s.sessionState, persistentAddress: persistent.address, persistentPort: persistent.port, address: current?.address, port: current?.port };
      this.described.set(s.sid, attrs);
      const hostDir = this.hostOf(s.sid);
      if (hostDir) this.writeSessionAttrs(hostDir, s.sid, attrs);
    }
    return this;
  }

  private hostOf(sid: number): string | undefined {
    const link = join(this.sys, 'class', 'iscsi_session', `session${sid}`);
    return existsSync(link) ? dirname(dirname(dirname(realpathSync(link)))) : undefined;
  }

  private writeSessionAttrs(hostDir: string, sid: number, a: SessionAttrs): void {
    const sess = join(hostDir, `session${sid}`, 'iscsi_session', `session${sid}`);
    const conn = join(hostDir, `session${sid}`, `connection${sid}:0`, 'iscsi_connection', `connection${sid}:0`);
    writeFileSync(join(sess, 'targetname'), `${a.target}\n`);
    writeFileSync(join(sess, 'tpgt'), `${a.tpgt ?? 1}\n`);
    writeFileSync(join(sess, 'state'), `${a.state ?? 'LOGGED_IN'}\n`);
    writeFileSync(join(conn, 'persistent_address'), `${a.persistentAddress}\n`);
    writeFileSync(join(conn, 'persistent_port'), `${a.persistentPort}\n`);
    for (const [name, v] of [['address', a.address], ['port', a.port]] as const) {
      if (v === undefined) rmSync(join(conn, name), { force: true });
      else writeFileSync(join(conn, name), `${v}\n`);
    }
  }

  /**
   * An iSCSI host with one session (as after login, before any scan), in
   * class/iscsi_session and class/iscsi_connection as the kernel shows it:
   * `attrs`, else what asListed said of this sid, else another target's.
   * `inClass: false` leaves the class entries out (a sysfs that does not show
   * the session there, as iscsid's may not be ours).
   */
  addSession(host: number, sid: number, attrs?: SessionAttrs, opts: { inClass?: boolean } = {}): void {
    const hostDir = join(this.sys, 'devices', 'platform', `host${host}`);
    const sessDir = join(hostDir, `session${sid}`);
    const connDir = join(sessDir, `connection${sid}:0`);
    // A session made before (addDisk's, or one left out of the class entries) keeps what it has.
    if (opts.inClass !== false && (attrs || !existsSync(sessDir))) {
      mkdirSync(join(sessDir, 'iscsi_session', `session${sid}`), { recursive: true });
      mkdirSync(join(connDir, 'iscsi_connection', `connection${sid}:0`), { recursive: true });
      this.link(join(this.sys, 'class', 'iscsi_session', `session${sid}`), join(sessDir, 'iscsi_session', `session${sid}`));
      this.link(join(sessDir, 'iscsi_session', `session${sid}`, 'device'), sessDir);
      this.link(join(this.sys, 'class', 'iscsi_connection', `connection${sid}:0`), join(connDir, 'iscsi_connection', `connection${sid}:0`));
      this.link(join(connDir, 'iscsi_connection', `connection${sid}:0`, 'device'), connDir);
      this.writeSessionAttrs(hostDir, sid, attrs ?? this.described.get(sid) ?? otherSession(sid));
    }
    mkdirSync(sessDir, { recursive: true });
    mkdirSync(join(hostDir, 'iscsi_host', `host${host}`), { recursive: true });
    mkdirSync(join(hostDir, 'scsi_host', `host${host}`), { recursive: true });
    writeFileSync(join(hostDir, 'scsi_host', `host${host}`, 'scan'), '');
    this.link(join(this.sys, 'class', 'iscsi_host', `host${host}`), join(hostDir, 'iscsi_host', `host${host}`));
    this.link(join(hostDir, 'iscsi_host', `host${host}`, 'device'), hostDir);
    this.link(join(this.sys, 'class', 'scsi_host', `host${host}`), join(hostDir, 'scsi_host', `host${host}`));
    this.link(join(hostDir, 'scsi_host', `host${host}`, 'device'), hostDir);
  }

  /** A LUN of a session with a disk, as the kernel makes it after a scan. */
  addDisk(host: number, sid: number, lun: number, disk: string, channel = 0, id = 0, wwid = `naa.60014050000000000000000000000${lun.toString(16).padStart(3, '0')}`): void {
    this.addSession(host, sid);
    const sdev = join(this.sys, 'devices', 'platform', `host${host}`, `session${sid}`, `target${host}:${channel}:${id}`, `${host}:${channel}:${id}:${lun}`);
    mkdirSync(join(sdev, 'block', disk, 'holders'), { recursive: true });
    writeFileSync(join(sdev, 'delete'), '');
    writeFileSync(join(sdev, 'rescan'), '');
    writeFileSync(join(sdev, 'wwid'), `${wwid}\n`);
    writeFileSync(join(sdev, 'state'), 'running\n');
    this.link(join(sdev, 'block', disk, 'device'), sdev);
    this.link(join(this.sys, 'block', disk), join(sdev, 'block', disk));
    writeFileSync(join(this.dev, disk), '');
  }

  /** A LUN the kernel knows without a disk (tgt's controller LUN 0). */
  addNonDisk(host: number, sid: number, lun: number, channel = 0, id = 0): void {
    this.addSession(host, sid);
    mkdirSync(join(this.sys, 'devices', 'platform', `host${host}`, `session${sid}`, `target${host}:${channel}:${id}`, `${host}:${channel}:${id}:${lun}`), { recursive: true });
  }

  /** A device-mapper multipath map over `slaves` (dm/uuid mpath-<WWID of the first slave>, as multipathd names it). */
  addMultipath(dm: string, name: string, slaves: string[]): void {
    const d = join(this.sys, 'devices', 'virtual', 'block', dm);
    mkdirSync(join(d, 'dm'), { recursive: true });
    mkdirSync(join(d, 'slaves'), { recursive: true });
    writeFileSync(join(d, 'dm', 'name'), `${name}\n`);
    const wwid = readFileSync(join(this.sys, 'block', slaves[0], 'device', 'wwid'), 'utf8').trim().replace(/^naa\./, '3');
    writeFileSync(join(d, 'dm', 'uuid'), `mpath-${wwid}\n`);
    this.link(join(this.sys, 'block', dm), d);
    for (const s of slaves) {
      this.link(join(this.sys, 'block', s, 'holders', dm), d);
      this.link(join(d, 'slaves', s), realpathSync(join(this.sys, 'block', s)));
    }
    writeFileSync(join(this.dev, dm), '');
  }

  /** What a logout leaves: the session, its connection and its LUNs gone (the host stays). */
  removeSession(sid: number): void {
    const hostDir = this.hostOf(sid);
    rmSync(join(this.sys, 'class', 'iscsi_session', `session${sid}`), { force: true });
    rmSync(join(this.sys, 'class', 'iscsi_connection', `connection${sid}:0`), { force: true });
    if (hostDir) rmSync(join(hostDir, `session${sid}`), { recursive: true, force: true });
  }

  /** Sids of the sessions sysfs shows to `target` at `portal` (persistent), as iscsiadm -T … -p … would pick them. */
  sessionsTo(target: string, portal: string): number[] {
    const dir = join(this.sys, 'class', 'iscsi_session');
    if (!existsSync(dir)) return [];
    const want = splitPortal(portal);
    return readdirSync(dir)
      .map((n) => Number(n.slice('session'.length)))
      .filter((sid) => {
        const conn = join(this.sys, 'class', 'iscsi_connection', `connection${sid}:0`);
        const read = (p: string) => (existsSync(p) ? readFileSync(p, 'utf8').trim() : undefined);
        return (
          read(join(dir, `session${sid}`, 'targetname'))?.toLowerCase() === target.toLowerCase() &&
          read(join(conn, 'persistent_address')) === want.address &&
          read(join(conn, 'persistent_port')) === String(want.port)
        );
      });
  }

  removeDisk(disk: string): void {
    const link = join(this.sys, 'block', disk);
    if (!existsSync(link)) return;
    rmSync(realpathSync(link), { recursive: true, force: true });
    rmSync(link, { force: true });
    rmSync(join(this.dev, disk), { force: true });
  }

  /** The tree as the connectors see it, acting on writes as the kernel would. */
  readonly tree = new SysfsTree(this.sys, this.dev, (path, data) => {
    this.writes.push({ path: relative(this.sys, path), data });
    const scan = /class\/scsi_host\/host(\d+)\/scan$/.exec(path);
    if (scan) {
      const host = Number(scan[1]);
      const lun = Number(data.trim().split(/\s+/)[2]);
      const what = this.onScan.get(`${host}:${lun}`);
      if (what) this.addDisk(host, what.sid, lun, what.disk, what.channel, what.id);
      return;
    }
    const del = /block\/([a-z0-9]+)\/device\/delete$/.exec(path);
    if (del && data.trim() === '1') this.removeDisk(del[1]);
  });
}
