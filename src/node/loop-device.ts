import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { KeyedLock } from '../csi/locks.js';
import type { Executor } from '../exec/run.js';
import { hostCommand, toHostError } from './host-errors.js';

export const LOOP_DEV_RE = /^\/dev\/loop\d+$/;

/**
 * `losetup --find` picks a free device and then claims it: two at once can
 * race for the same one. The local transport, the read-only block views and
 * the user-space iSCSI initiator all make loop devices on one host, so they
 * share this one lock (per process: one node plugin per host).
 */
const HOST_LOCK = new KeyedLock();

/**
 * backing_file paths of loop devices last seen bound: the next scan reads them
 * straight away, without asking first whether they exist. Every device is
 * still read or looked for on every scan (nothing is answered from here); a
 * device detached meanwhile costs one failed read. With hundreds bound, the
 * existence checks were a quarter of a scan.
 */
const SEEN_BOUND = new Set<string>();

export interface AttachOptions {
  readOnly?: boolean;
  directIo?: boolean;
}

/**
 * The loop devices the kernel lists in /proc/partitions: those with a size,
 * so bound (one read, where asking each /sys/block/loopN whether it is bound
 * cost ~10 µs a device: a host keeps every loop device node it ever made,
 * ~300 on a busy one, and a stage asked them all). The kernel lists no disk
 * of size 0, so a loop device over an empty file is not among them: it shows
 * no data, so nothing is lost by not finding it. Undefined when the file
 * cannot be read (the caller scans sysfs).
 */
function sizedLoops(): string[] | undefined {
  let text: string;
  try {
    text = readFileSync('/proc/partitions', 'utf8');
  } catch {
    return undefined;
  }
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const name = line.trim().split(/\s+/)[3];
    if (name !== undefined && /^loop\d+$/.test(name)) out.push(name);
  }
  return out;
}

/** The node's loop devices: the one place that runs losetup. */
export class LoopDevices {
  constructor(
    private readonly exec: Executor,
    private readonly sysBlock = '/sys/block',
  ) {}

  /** Runs fn holding the host's losetup lock: a look-then-attach or look-then-detach is then one step. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return HOST_LOCK.run('losetup', fn);
  }

  /** `losetup --find --show`: a new loop device over `file`. Only inside exclusive(). */
  async attachLocked(file: string, what: string, opts: AttachOptions = {}): Promise<string> {
    const args = ['--find', '--show'];
    if (opts.readOnly) args.push('--read-only');
    if (opts.directIo) args.push('--direct-io=on');
    args.push(file);
    const res = await hostCommand(what, this.exec.run('losetup', args));
    const dev = res.stdout.trim().split('\n').pop() ?? '';
    if (!LOOP_DEV_RE.test(dev)) throw new Error(`losetup --find --show printed ${JSON.stringify(dev)}, not a loop device`);
    return dev;
  }

  /** A new loop device over `file`, under the lock. */
  attach(file: string, what: string, opts: AttachOptions = {}): Promise<string> {
    return this.exclusive(() => this.attachLocked(file, what, opts));
  }

  /** Detaches `device`; false when it was already gone. Only inside exclusive(). */
  async detachLocked(device: string, what: string): Promise<boolean> {
    try {
      await this.exec.run('losetup', ['--detach', device]);
      return true;
    } catch (e) {
      if ((await this.backingFile(device)) === undefined) return false; // detached meanwhile
      throw toHostError(what, e);
    }
  }

  detach(device: string, what: string): Promise<boolean> {
    return this.exclusive(() => this.detachLocked(device, what));
  }

  /** What backs `device` (sysfs), with " (deleted)" when its file was removed; undefined when not attached. */
  async backingFile(device: string): Promise<string | undefined> {
    try {
      return (await readFile(join(this.sysBlock, basename(device), 'loop', 'backing_file'), 'utf8')).trim();
    } catch {
      return undefined;
    }
  }

  /** The loop device backed by exactly `file`, from sysfs (no process started). */
  async backedBy(file: string): Promise<string | undefined> {
    return this.boundFiles().find((l) => l.back === file)?.device;
  }

  /**
   * Every bound loop device and its backing file as the kernel shows it
   * (" (deleted)" kept), from sysfs, in device order. No process is started:
   * with hundreds of loop devices `losetup --list` took ~50 ms a call. The
   * reads are synchronous: sysfs attributes are generated in memory and never
   * wait on a disk, and a thread-pool round trip per file cost more than the
   * read itself. An unbound
   * device (a node losetup or another tool made and left) has no loop/
   * directory: existsSync answers that without an exception, where a failed
   * read built one (with its stack) per device, ~50 µs each: with a few
   * hundred unbound devices on a host that was most of a stage's own time.
   */
  private boundFiles(sizedOnly = false): { device: string; back: string; n: string }[] {
    let names: string[];
    const sized = sizedOnly && this.sysBlock === '/sys/block' ? sizedLoops() : undefined;
    try {
      names = sized ?? readdirSync(this.sysBlock).filter((n) => /^loop\d+$/.test(n));
    } catch {
      return [];
    }
    const out: { device: string; back: string; n: string; i: number }[] = [];
    for (const n of names) {
      const file = join(this.sysBlock, n, 'loop', 'backing_file');
      if (!sized && !SEEN_BOUND.has(file)) {
        if (!existsSync(file)) continue;
        SEEN_BOUND.add(file);
      }
      let back: string;
      try {
        back = readFileSync(file, 'utf8').trim();
      } catch {
        SEEN_BOUND.delete(file);
        continue; // detached meanwhile
      }
      out.push({ device: `/dev/${n}`, back, n, i: Number(n.slice(4)) });
    }
    return out.sort((a, b) => a.i - b.i);
  }

  /** The read-only flag of loopN (sysfs); a device detached meanwhile reads as writable, as losetup would show it a moment ago. */
  private readOnly(n: string): boolean {
    try {
      return readFileSync(join(this.sysBlock, n, 'ro'), 'utf8').trim() === '1';
    } catch {
      return false;
    }
  }

  /**
   * Loop devices over `file`, with their read-only flag: what
   * `losetup --associated` answers, from sysfs. A device matches when the
   * kernel shows exactly this path, or when the path it shows (not a deleted
   * file: a re-created file is a different one) names the same inode and has
   * the same file name (another way to the same image, such as a bind
   * mount). Only such namesakes are stat()ed, never other devices' files.
   * The devices looked at are those with a size (sizedLoops): an image a
   * volume is staged from is never empty.
   */
  async associated(file: string, _what?: string): Promise<{ device: string; readOnly: boolean }[]> {
    const bound = this.boundFiles(true);
    const name = basename(file);
    let want: { dev: number; ino: number } | undefined | null = null;
    const out: { device: string; readOnly: boolean }[] = [];
    for (const l of bound) {
      let match = l.back === file;
      if (!match && !l.back.endsWith(' (deleted)') && basename(l.back) === name) {
        if (want === null) want = await stat(file).then((st) => ({ dev: st.dev, ino: st.ino }), () => undefined);
        const st = want && (await stat(l.back).catch(() => undefined));
        match = st !== undefined && st !== null && want !== undefined && st.dev === want.dev && st.ino === want.ino;
      }
      // Only a match's read-only flag is read: one sysfs file per device fewer.
      if (match) out.push({ device: l.device, readOnly: this.readOnly(l.n) });
    }
    return out;
  }

  /** Every loop device and its backing file (" (deleted)" stripped), from sysfs. */
  list(): Promise<{ device: string; backingFile: string }[]> {
    return Promise.resolve(this.boundFiles().map((l) => ({ device: l.device, backingFile: l.back.replace(/ \(deleted\)$/, '') })));
  }

  /** Makes `device` see its file's new size. */
  async refreshCapacity(device: string, what: string): Promise<void> {
    await hostCommand(what, this.exec.run('losetup', ['--set-capacity', device]));
  }
}
