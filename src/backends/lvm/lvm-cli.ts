import type { Logger } from 'pino';
import { ExecError, type Executor } from '../../exec/run.js';
import { LV_FIELDS, parseLvs, parseVgs, PV_FIELDS, pvsOfVg, VG_FIELDS, type LvInfo, type VgInfo } from './report.js';

/** What an LVM command's failure means, from its stderr (lvm2 2.03.16, test/fixtures/lvm/*.err; all exit 5). */
export type LvmErrorKind = 'vg-not-found' | 'lv-not-found' | 'lv-exists' | 'no-space' | 'pv-missing' | 'bad-argument' | 'other';

/**
 * A physical volume of the VG that the command could not see (test/fixtures/lvm/devices-*-missing-pv.err):
 * either a disk really gone, or one the --devices list does not name. LVM prints it as a warning, also
 * when the command goes on and succeeds.
 */
const PV_MISSING = /Couldn't find device with uuid|VG \S+ is missing PV|Cannot change VG \S+ while PVs are missing/;

export function classifyLvmError(stderr: string, exitCode: number | undefined): LvmErrorKind {
  if (/Volume group "[^"]*" not found/.test(stderr)) return 'vg-not-found';
  if (/Failed to find logical volume/.test(stderr)) return 'lv-not-found';
  if (/already exists in volume group/.test(stderr)) return 'lv-exists';
  if (/insufficient free space|Insufficient free space|Insufficient suitable allocatable extents/.test(stderr)) return 'no-space';
  if (PV_MISSING.test(stderr)) return 'pv-missing';
  if (exitCode === 3 || /Invalid argument for|Error during parsing of command line/.test(stderr)) return 'bad-argument';
  return 'other';
}

export class LvmError extends Error {
  constructor(
    readonly kind: LvmErrorKind,
    message: string,
  ) {
    super(message);
    this.name = 'LvmError';
  }
}

/** Every LVM command the backend runs (a literal union, so the image checks can see them). */
export type LvmCommand = 'lvs' | 'vgs' | 'pvs' | 'lvcreate' | 'lvchange' | 'lvremove' | 'lvextend';

/** Commands that change nothing: one that succeeded with a PV out of sight can simply run again. */
const READS: ReadonlySet<LvmCommand> = new Set(['lvs', 'vgs']);

export interface LvmCliOptions {
  /** The volume group whose physical volumes are the only devices LVM may open. */
  vg: string;
  /** The VG's PVs as configured (backends[].devices): used as given, never scanned for. */
  devices?: readonly string[];
  log?: Logger;
  timeoutMs?: number;
}

/**
 * The LVM commands the backend uses, over the one Executor. Output is read
 * in the C locale as JSON reports in bytes; a failure becomes an LvmError
 * whose kind says what happened, so callers can treat "already gone" and
 * "already there" as the answers of an idempotent retry.
 *
 * Every command is restricted with `--devices` to the VG's physical volumes.
 * Without it LVM opens and reads every block device on the host, and on a
 * storage host that is also a node those include the iSCSI disks logged in
 * from its own targets: while a classic snapshot suspends an LV, a read of the
 * disk in front of it waits on tgtd, which waits on the suspended LV, and LVM's
 * suspend/resume sequence can wait on that scan (the hang Cinder's docs prevent
 * with an lvm.conf global_filter). `--devices` rather than a global_filter given
 * with `--config`: LVM drops a device not on the list before any filter that
 * reads it (lvm2 2.03.16 filter-deviceid.c, first after the type filter), and
 * the list also replaces a devices file, whereas a global_filter is ignored
 * when the host uses one (use_devicesfile=1) and would need each path turned
 * into an anchored regex.
 *
 * The list comes from the configuration, or from one `pvs` at first use (the
 * only command that scans every device; at start nothing of sinter's is
 * suspended). When LVM answers as if the list were stale (the VG not found, a
 * PV of it out of sight: a disk renamed, the VG extended), the list is found
 * again once and the command run once more: LVM refused it before changing
 * anything, or it only read. A configured list is the operator's: it is not
 * replaced, and the answer stands.
 */
export class LvmCli {
  private readonly vgName: string;
  private readonly configured: readonly string[] | undefined;
  private readonly log: Logger | undefined;
  private readonly timeoutMs: number;
  /** The PVs the commands are restricted to; undefined until the first discovery. */
  private pvs: readonly string[] | undefined;
  private discovering: Promise<readonly string[]> | undefined;

  constructor(
    private readonly exec: Executor,
    opts: LvmCliOptions,
  ) {
    this.vgName = opts.vg;
    this.configured = opts.devices && [...opts.devices].sort();
    this.pvs = this.configured;
    this.log = opts.log;
    this.timeoutMs = opts.timeoutMs ?? 120_000;
  }

  /** The devices LVM commands are restricted to now ([] when no PV of the VG was found). */
  async devices(): Promise<readonly string[]> {
    return this.pvs ?? (await this.rediscover(undefined));
  }

  async run(cmd: LvmCommand, args: string[], timeoutMs = this.timeoutMs): Promise<string> {
    // A list found by this very call is as fresh as a second scan would make it.
    const fresh = this.pvs === undefined;
    const used = await this.devices();
    const first = await this.attempt(cmd, used, args, timeoutMs);
    const stale = first.error ? first.error.kind === 'vg-not-found' || first.error.kind === 'pv-missing' : PV_MISSING.test(first.stderr);
    if (!stale || this.configured || fresh) return answer(first);
    const now = await this.rediscover(used);
    if (sameList(now, used)) return answer(first);
    if (!first.error && !READS.has(cmd)) {
      // lvchange and lvremove go on with a PV out of sight (LVM lets them) and write the VG with it
      // flagged MISSING: that stays until the PV has no extents or an operator restores it.
      this.log?.error({ vg: this.vgName, cmd, devices: now, before: used }, `${cmd} wrote volume group ${this.vgName} while one of its physical volumes was not in sinter's device list (found again now); if vgs reports a PV missing, run vgextend --restoremissing ${this.vgName} <that PV>`);
      return first.stdout;
    }
    this.log?.warn({ vg: this.vgName, cmd, devices: now, before: used }, `the physical volumes of volume group ${this.vgName} changed; ${cmd} runs again on the new list`);
    return answer(await this.attempt(cmd, now, args, timeoutMs));
  }

  private async attempt(cmd: LvmCommand, devices: readonly string[], args: string[], timeoutMs: number): Promise<Attempt> {
    // No PV of the VG in sight: LVM would take an empty list for "every device", so it is not asked at all.
    if (devices.length === 0) return { stdout: '', stderr: '', error: new LvmError('vg-not-found', `${cmd}: volume group ${this.vgName} not found (no physical volume of it is visible)`) };
    const restriction = ['--devices', devices.join(',')];
    try {
      const r = await this.exec.run(cmd, [...restriction, ...args], { timeoutMs, env: { LC_ALL: 'C' } });
      return { stdout: r.stdout, stderr: r.stderr };
    } catch (e) {
      if (!(e instanceof ExecError)) throw e;
      // The device list is the host's business, not the message a CO shows.
      const message = e.message.replace(` ${restriction.join(' ')}`, '');
      return { stdout: '', stderr: e.stderr, error: new LvmError(e.timedOut ? 'other' : classifyLvmError(e.stderr, e.exitCode), message) };
    }
  }

  /**
   * Finds the VG's PVs with one unrestricted `pvs` (or keeps the configured list). Concurrent callers share
   * one scan, and a caller whose list was already replaced by another's scan gets that list without a new one.
   */
  private async rediscover(used: readonly string[] | undefined): Promise<readonly string[]> {
    if (this.configured) return this.configured;
    if (this.pvs && used && !sameList(this.pvs, used)) return this.pvs;
    this.discovering ??= this.discover().finally(() => {
      this.discovering = undefined;
    });
    return this.discovering;
  }

  private async discover(): Promise<readonly string[]> {
    let out: string;
    try {
      out = (await this.exec.run('pvs', ['--reportformat', 'json', '-o', PV_FIELDS.join(',')], { timeoutMs: this.timeoutMs, env: { LC_ALL: 'C' } })).stdout;
    } catch (e) {
      if (!(e instanceof ExecError)) throw e;
      throw new LvmError(e.timedOut ? 'other' : classifyLvmError(e.stderr, e.exitCode), e.message);
    }
    const found = pvsOfVg(out, this.vgName);
    if (!this.pvs || !sameList(found, this.pvs)) this.log?.info({ vg: this.vgName, devices: found }, found.length ? 'LVM commands restricted to the volume group\'s physical volumes' : 'no physical volume of the volume group found');
    this.pvs = found;
    return found;
  }

  /** The LVs of `vg` (or just `vg/lv`); a missing LV is an empty list. */
  async lvs(vg: string, lv?: string): Promise<LvInfo[]> {
    try {
      return parseLvs(await this.run('lvs', ['--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', LV_FIELDS.join(','), lv ? `${vg}/${lv}` : vg]));
    } catch (e) {
      if (lv && e instanceof LvmError && e.kind === 'lv-not-found') return [];
      throw e;
    }
  }

  /** The volume group, or undefined when it does not exist. */
  async vg(vg: string): Promise<VgInfo | undefined> {
    try {
      return parseVgs(await this.run('vgs', ['--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', VG_FIELDS.join(','), vg]))[0];
    } catch (e) {
      if (e instanceof LvmError && e.kind === 'vg-not-found') return undefined;
      throw e;
    }
  }

  async lvcreate(args: string[]): Promise<void> {
    await this.run('lvcreate', ['-y', ...args]);
  }

  async lvchange(vg: string, lv: string, args: string[]): Promise<void> {
    await this.run('lvchange', [...args, `${vg}/${lv}`]);
  }

  /** Removes the LV; one that is already gone is success. */
  async lvremove(vg: string, lv: string): Promise<void> {
    try {
      await this.run('lvremove', ['-y', `${vg}/${lv}`]);
    } catch (e) {
      if (e instanceof LvmError && e.kind === 'lv-not-found') return;
      throw e;
    }
  }

  async lvextend(vg: string, lv: string, sizeBytes: number): Promise<void> {
    await this.run('lvextend', ['-L', `${sizeBytes}b`, `${vg}/${lv}`]);
  }
}

function answer(r: Attempt): string {
  if (r.error) throw r.error;
  return r.stdout;
}

interface Attempt {
  stdout: string;
  stderr: string;
  error?: LvmError;
}

const sameList = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((x, i) => x === b[i]);
