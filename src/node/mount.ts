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
  // Most fields hold no escape: skip the regex (three fields a line, hundreds of lines a read).
  return s.includes('\\') ? s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))) : s;
}

/** A path as mountinfo writes it (the inverse of unescape). */
function escapeMountPath(s: string): string {
  return s.replace(/[ \t\n\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`);
}

/** One line of mountinfo; undefined for a line that is not one. */
function parseMountLine(line: string): MountEntry | undefined {
  const sep = line.indexOf(' - ');
  if (sep < 0) return undefined;
  const left = line.slice(0, sep).split(' ');
  const right = line.slice(sep + 3).split(' ');
  if (left.length < 6 || right.length < 2) return undefined;
  return {
    id: Number(left[0]),
    parentId: Number(left[1]),
    majMin: left[2]!,
    root: unescape(left[3]!),
    mountPoint: unescape(left[4]!),
    options: left[5]!.split(','),
    fsType: right[0]!,
    source: unescape(right[1]!),
    superOptions: right[2] ? right[2].split(',').filter(Boolean) : [],
  };
}

export function parseMountInfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const e = parseMountLine(line);
    if (e) out.push(e);
  }
  return out;
}

/**
 * A snapshot of the mount table. Paths are compared as the kernel shows them (resolved).
 *
 * Made from mountinfo's text, it parses lazily: at() and allAt() find their
 * lines by searching the text for the path and parse only those, and the
 * whole table is parsed on the first look at `entries`. With hundreds of
 * mounts on a node, parsing every line on every read was most of what an
 * attach cost beyond its host commands, and most reads only ask what is
 * mounted at one path. An entry is one object however it was reached, so
 * at()'s answer can be looked for in `entries`.
 */
export class MountSnapshot {
  private parsed: MountEntry[] | undefined;
  private readonly byOffset = new Map<number, MountEntry | undefined>();

  constructor(
    entries: MountEntry[] | undefined,
    private readonly text?: string,
  ) {
    this.parsed = entries;
  }

  static fromText(text: string): MountSnapshot {
    return new MountSnapshot(undefined, text);
  }

  get entries(): MountEntry[] {
    if (this.parsed) return this.parsed;
    const text = this.text ?? '';
    const out: MountEntry[] = [];
    for (let start = 0; start < text.length; ) {
      let end = text.indexOf('\n', start);
      if (end < 0) end = text.length;
      const e = this.lineAt(text, start, end);
      if (e) out.push(e);
      start = end + 1;
    }
    return (this.parsed = out);
  }

  private lineAt(text: string, start: number, end: number): MountEntry | undefined {
    if (this.byOffset.has(start)) return this.byOffset.get(start);
    const e = parseMountLine(text.slice(start, end));
    this.byOffset.set(start, e);
    return e;
  }

  /** The entries mounted at path, in table order, found in the text without parsing the other lines. */
  private mountedAt(path: string): MountEntry[] {
    const text = this.text;
    if (this.parsed || text === undefined) return this.entries.filter((e) => e.mountPoint === path);
    const needle = ` ${escapeMountPath(path)} `;
    const out: MountEntry[] = [];
    for (let i = text.indexOf(needle); i >= 0; ) {
      const start = text.lastIndexOf('\n', i) + 1;
      let end = text.indexOf('\n', i);
      if (end < 0) end = text.length;
      // The needle may be another field of the line (a bind's root): the parsed mount point decides.
      const e = this.lineAt(text, start, end);
      if (e && e.mountPoint === path) out.push(e);
      i = text.indexOf(needle, end);
    }
    return out;
  }

  /**
   * The entries whose line holds one of `values` as a whole field, in table
   * order, parsing only those lines: a superset of the mounts whose majMin,
   * root, mount point or source is one of them, for a filter on those fields.
   */
  withAnyField(values: string[]): MountEntry[] {
    const text = this.text;
    if (this.parsed || text === undefined) return this.entries;
    const starts = new Set<number>();
    for (const v of values) {
      const needle = ` ${escapeMountPath(v)}`;
      for (let i = text.indexOf(needle); i >= 0; i = text.indexOf(needle, i + 1)) {
        const after = text[i + needle.length];
        if (after === undefined || after === ' ' || after === '\n') starts.add(text.lastIndexOf('\n', i) + 1);
      }
    }
    const out: MountEntry[] = [];
    for (const start of [...starts].sort((a, b) => a - b)) {
      let end = text.indexOf('\n', start);
      if (end < 0) end = text.length;
      const e = this.lineAt(text, start, end);
      if (e) out.push(e);
    }
    return out;
  }

  /** The mount visible at path: the last one mounted there (stacked mounts hide earlier ones). */
  at(path: string): MountEntry | undefined {
    return this.mountedAt(path).at(-1);
  }

  allAt(path: string): MountEntry[] {
    return this.mountedAt(path);
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
    return MountSnapshot.fromText(await readFile(this.mountInfoPath, 'utf8'));
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
