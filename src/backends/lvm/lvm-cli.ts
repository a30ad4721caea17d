import { ExecError, type Executor } from '../../exec/run.js';
import { LV_FIELDS, parseLvs, parseVgs, VG_FIELDS, type LvInfo, type VgInfo } from './report.js';

/** What an LVM command's failure means, from its stderr (lvm2 2.03.16, test/fixtures/lvm/*.err; all exit 5). */
export type LvmErrorKind = 'vg-not-found' | 'lv-not-found' | 'lv-exists' | 'no-space' | 'bad-argument' | 'other';

export function classifyLvmError(stderr: string, exitCode: number | undefined): LvmErrorKind {
  if (/Volume group "[^"]*" not found/.test(stderr)) return 'vg-not-found';
  if (/Failed to find logical volume/.test(stderr)) return 'lv-not-found';
  if (/already exists in volume group/.test(stderr)) return 'lv-exists';
  if (/insufficient free space|Insufficient free space|Insufficient suitable allocatable extents/.test(stderr)) return 'no-space';
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
export type LvmCommand = 'lvs' | 'vgs' | 'lvcreate' | 'lvchange' | 'lvremove' | 'lvextend';

/**
 * The LVM commands the backend uses, over the one Executor. Output is read
 * in the C locale as JSON reports in bytes; a failure becomes an LvmError
 * whose kind says what happened, so callers can treat "already gone" and
 * "already there" as the answers of an idempotent retry.
 */
export class LvmCli {
  constructor(
    private readonly exec: Executor,
    private readonly timeoutMs = 120_000,
  ) {}

  async run(cmd: LvmCommand, args: string[], timeoutMs = this.timeoutMs): Promise<string> {
    try {
      return (await this.exec.run(cmd, args, { timeoutMs, env: { LC_ALL: 'C' } })).stdout;
    } catch (e) {
      if (!(e instanceof ExecError)) throw e;
      throw new LvmError(e.timedOut ? 'other' : classifyLvmError(e.stderr, e.exitCode), e.message);
    }
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
