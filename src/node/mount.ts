import { readFile } from 'node:fs/promises';
import { failedPrecondition } from '../errors/domain-error.js';
import { ExecError, type Executor } from '../exec/run.js';
import { hostCommand, toHostError } from './host-errors.js';

/** One line of /proc/<pid>/mountinfo. */
export interface MountEntry {
  id: number;
  parentId: number;
  /** "major:minor" of the mounted filesystem (anonymous for btrfs, tmpfs …). */
  majMin: string;
  /** The directory (or file) of that filesystem that is mounted, "/" for a plain mount. */
  root: string;
  mountPoint: string;
  /** Per-mount options (ro/rw, nosuid …). */
  options: string[];
  fsType: string;
  source: string;
  superOptions: string[];
}

/** mountinfo escapes space, tab, newline and backslash as \ooo. */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export function parseMountInfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' ');
    const right = line.slice(sep + 3).split(' ');
    if (left.length < 6 || right.length < 2) continue;
    out.push({
      id: Number(left[0]),
      parentId: Number(left[1]),
      majMin: left[2]!,
      root: unescape(left[3]!),
      mountPoint: unescape(left[4]!),
      options: left[5]!.split(','),
      fsType: right[0]!,
      source: unescape(right[1]!),
      superOptions: (right[2] ?? '').split(',').filter(Boolean),
    });
  }
  return out;
}

/** A snapshot of the mount table. Paths are compared as the kernel shows them (resolved). */
export class MountSnapshot {
  constructor(readonly entries: MountEntry[]) {}

  /** The mount visible at path: the last one mounted there (stacked mounts hide earlier ones). */
  at(path: string): MountEntry | undefined {
    let found: MountEntry | undefined;
    for (const e of this.entries) if (e.mountPoint === path) found = e;
    return found;
  }

  allAt(path: string): MountEntry[] {
    return this.entries.filter((e) => e.mountPoint === path);
  }

  /** Every mount showing the same filesystem subtree (same device and root) as m. */
  sameSource(m: Pick<MountEntry, 'majMin' | 'root'>): MountEntry[] {
    return this.entries.filter((e) => e.majMin === m.majMin && e.root === m.root);
  }

  withMajMin(majMin: string): MountEntry[] {
    return this.entries.filter((e) => e.majMin === majMin);
  }
}

export function isReadOnly(m: MountEntry): boolean {
  return m.options.includes('ro');
}

/**
 * Mount table reads and mount/umount calls. Reads /proc/self/mountinfo by
 * default; a plugin whose commands run in the host's mount namespace while it
 * sits in its own (nsenter mode) points this at /proc/1/mountinfo.
 */
export class Mounter {
  constructor(
    private readonly exec: Executor,
    private readonly mountInfoPath = '/proc/self/mountinfo',
  ) {}

  async snapshot(): Promise<MountSnapshot> {
    return new MountSnapshot(parseMountInfo(await readFile(this.mountInfoPath, 'utf8')));
  }

  async mount(device: string, target: string, fsType: string, options: string[]): Promise<void> {
    const args = ['-t', fsType];
    if (options.length) args.push('-o', options.join(','));
    await hostCommand(`mounting ${device} (${fsType}) at ${target}`, this.exec.run('mount', [...args, device, target]));
  }

  /** Bind mount, then (if asked) a read-only remount of that bind only: two steps, so old mount(8)s behave too. */
  async bind(source: string, target: string, readonly: boolean): Promise<void> {
    await hostCommand(`bind-mounting ${source} at ${target}`, this.exec.run('mount', ['--bind', source, target]));
    if (!readonly) return;
    try {
      await hostCommand(`making the bind mount at ${target} read-only`, this.exec.run('mount', ['-o', 'remount,bind,ro', target]));
    } catch (e) {
      await this.umount(target).catch(() => undefined);
      throw e;
    }
  }

  async umount(target: string): Promise<void> {
    try {
      await this.exec.run('umount', [target]);
    } catch (e) {
      if (e instanceof ExecError && /target is busy/i.test(e.stderr))
        throw failedPrecondition(`unmounting ${target} failed: it is busy (a process still has files open there); stop it and retry`);
      throw toHostError(`unmounting ${target}`, e);
    }
  }

  /**
   * Unmounts everything stacked at path (resolved form), at most `max` layers.
   * Returns how many mounts were removed. `seen`: a snapshot the caller has
   * just read (under the lock of the volume and the path), used instead of a
   * first read: with hundreds of mounts each read of the table costs
   * milliseconds. After every unmount the table is read again.
   */
  async umountAll(path: string, seen?: MountSnapshot, max = 8): Promise<number> {
    let n = 0;
    let snap = seen ?? (await this.snapshot());
    while (snap.at(path)) {
      if (n >= max) throw new Error(`${path} still has mounts after ${max} unmounts`);
      await this.umount(path);
      n++;
      snap = await this.snapshot();
    }
    return n;
  }
}
