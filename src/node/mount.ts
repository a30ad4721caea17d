import { closeSync, constants, open as openFd, readFileSync } from 'node:fs';
import { lstat, readFile, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
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

const NL = 0x0a;
const SP = 0x20;

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
 * Made from mountinfo's bytes, it parses lazily: at() and allAt() find their
 * lines by searching the bytes for the path and decode and parse only those,
 * and the whole table is decoded and parsed on the first look at `entries`.
 * With hundreds of mounts on a node, parsing (or even decoding) every line on
 * every read was most of what an attach cost beyond its host commands, and
 * most reads only ask what is mounted at one path. An entry is one object
 * however it was reached, so at()'s answer can be looked for in `entries`.
 */
export class MountSnapshot {
  private parsed: MountEntry[] | undefined;
  /** Line start (byte offset) → its entry, so a line reached twice is one object. */
  private readonly byOffset = new Map<number, MountEntry | undefined>();

  constructor(
    entries: MountEntry[] | undefined,
    private readonly bytes?: Buffer,
  ) {
    this.parsed = entries;
  }

  static fromText(text: string): MountSnapshot {
    return new MountSnapshot(undefined, Buffer.from(text, 'utf8'));
  }

  /** mountinfo as read (UTF-8 bytes), decoded only where it is asked. */
  static fromBytes(bytes: Buffer): MountSnapshot {
    return new MountSnapshot(undefined, bytes);
  }

  get entries(): MountEntry[] {
    if (this.parsed) return this.parsed;
    const buf = this.bytes ?? Buffer.alloc(0);
    const out: MountEntry[] = [];
    for (let start = 0; start < buf.length; ) {
      let end = buf.indexOf(NL, start);
      if (end < 0) end = buf.length;
      const e = this.lineAt(buf, start, end);
      if (e) out.push(e);
      start = end + 1;
    }
    return (this.parsed = out);
  }

  private lineAt(buf: Buffer, start: number, end: number): MountEntry | undefined {
    if (this.byOffset.has(start)) return this.byOffset.get(start);
    const e = parseMountLine(buf.toString('utf8', start, end));
    this.byOffset.set(start, e);
    return e;
  }

  /** The start and end (byte offsets) of the line holding offset i. */
  private static lineAround(buf: Buffer, i: number): [number, number] {
    const start = i > 0 ? buf.lastIndexOf(NL, i - 1) + 1 : 0;
    let end = buf.indexOf(NL, i);
    if (end < 0) end = buf.length;
    return [start, end];
  }

  /** The entries mounted at path, in table order, found in the bytes without decoding the other lines. */
  private mountedAt(path: string): MountEntry[] {
    const buf = this.bytes;
    if (this.parsed || buf === undefined) return this.entries.filter((e) => e.mountPoint === path);
    const needle = ` ${escapeMountPath(path)} `;
    const out: MountEntry[] = [];
    for (let i = buf.indexOf(needle); i >= 0; ) {
      const [start, end] = MountSnapshot.lineAround(buf, i);
      // The needle may be another field of the line (a bind's root): the parsed mount point decides.
      const e = this.lineAt(buf, start, end);
      if (e && e.mountPoint === path) out.push(e);
      i = buf.indexOf(needle, end);
    }
    return out;
  }

  /**
   * The entries whose line holds one of `values` as a whole field, in table
   * order, parsing only those lines: a superset of the mounts whose majMin,
   * root, mount point or source is one of them, for a filter on those fields.
   */
  withAnyField(values: string[]): MountEntry[] {
    const buf = this.bytes;
    if (this.parsed || buf === undefined) return this.entries;
    const starts = new Map<number, number>();
    for (const v of values) {
      const needle = Buffer.from(` ${escapeMountPath(v)}`, 'utf8');
      for (let i = buf.indexOf(needle); i >= 0; i = buf.indexOf(needle, i + 1)) {
        const after = buf[i + needle.length];
        if (after === undefined || after === SP || after === NL) {
          const [start, end] = MountSnapshot.lineAround(buf, i);
          starts.set(start, end);
        }
      }
    }
    const out: MountEntry[] = [];
    for (const start of [...starts.keys()].sort((a, b) => a - b)) {
      const e = this.lineAt(buf, start, starts.get(start)!);
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

/**
 * Where block device `kernel` is mounted, if anywhere: a filesystem on it
 * (its major:minor, `majMin`), or its device node bind-mounted from devtmpfs
 * (a block volume's publish). The table's lines are found by searching its
 * bytes, so the answer costs no parse of the other mounts: a node with a few
 * hundred volumes has twice as many, and every removal of a device asks.
 * Undefined as well when the table cannot be read.
 */
export async function deviceMountPoint(mountInfoPath: string, kernel: string, majMin: string | undefined): Promise<string | undefined> {
  let table: MountSnapshot;
  try {
    table = MountSnapshot.fromBytes(await readFile(mountInfoPath));
  } catch {
    return undefined;
  }
  const node = `/${kernel}`;
  return table
    .withAnyField(majMin !== undefined ? [majMin, node] : [node])
    .find((e) => (majMin !== undefined && e.majMin === majMin) || (e.root === node && (e.fsType === 'devtmpfs' || e.fsType === 'tmpfs')))?.mountPoint;
}

/** O_PATH (Linux; node's fs.constants lacks it): an fd naming the path without opening what it is, so a device node is never opened. */
const O_PATH = 0o10000000;
const MNT_ID_RE = /^mnt_id:\s*(\d+)$/m;

const openPath = (path: string) =>
  new Promise<number>((resolve, reject) => openFd(path, O_PATH | constants.O_NOFOLLOW, (e, fd) => (e ? reject(e) : resolve(fd))));

/**
 * The id of the mount path lies on (what the kernel's mountinfo calls its
 * first field), from the fdinfo of an O_PATH fd; undefined when that cannot
 * be told. The lookup of path goes through the thread pool; the fdinfo read
 * and the close do not: procfs is generated in memory and never waits on a
 * disk, and closing an O_PATH descriptor releases only the path. Each
 * thread-pool round trip is a wake-up of two threads, which on a busy node
 * costs more than the work (an attach asks this of a path up to six times).
 */
async function mountIdOf(path: string): Promise<number | 'absent' | undefined> {
  let fd: number;
  try {
    fd = await openPath(path);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'absent' : undefined;
  }
  try {
    const m = MNT_ID_RE.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/**
 * Whether something is mounted at path (resolved form): false when path lies
 * on the same mount as its parent directory or does not exist in it, true when on another, undefined
 * when that cannot be told (the path is missing, /proc lacks the field). A
 * bind mount of a directory of the same filesystem is a mount of its own, so
 * it counts, unlike a device-number comparison. Constant cost: reading
 * mountinfo makes the kernel write every mount of the node.
 */
export async function isMountPoint(path: string): Promise<boolean | undefined> {
  const parent = dirname(path);
  if (parent === path) return undefined;
  const [own, up] = await Promise.all([mountIdOf(path), mountIdOf(parent)]);
  if (own === undefined || up === undefined || up === 'absent') return undefined;
  // Nothing is mounted on a name that does not exist in an existing directory (a publish's target before it is
  // made): answered here, not by the whole table, which a publish then read every time.
  return own === 'absent' ? false : own !== up;
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
    // Bytes, not a string: a lookup decodes only the lines it finds (the table is ~100 KiB at 256 volumes).
    return MountSnapshot.fromBytes(await readFile(this.mountInfoPath));
  }

  /**
   * Whether anything is mounted at path (resolved form). Asked of the path
   * itself (its mount id against its parent's) when this process sees the
   * mounts it reads (the default /proc/self/mountinfo); otherwise, or when
   * that cannot be told, from the table. With hundreds of mounts on a node a
   * read of the table costs milliseconds of the kernel's time, and most
   * stages and publishes only ask this of a path where nothing is mounted yet.
   */
  async mounted(path: string): Promise<boolean> {
    return (await this.mountPoint(path)) ?? (await this.snapshot()).at(path) !== undefined;
  }

  /** The mount visible at path (resolved form): the table is read only when something is mounted there (see mounted). */
  async at(path: string): Promise<MountEntry | undefined> {
    if ((await this.mountPoint(path)) === false) return undefined;
    return (await this.snapshot()).at(path);
  }

  /** isMountPoint, where this process sees the mounts it reads; undefined (ask the table) elsewhere or when it cannot tell. */
  async mountPoint(path: string): Promise<boolean | undefined> {
    return this.mountInfoPath === '/proc/self/mountinfo' ? isMountPoint(path) : undefined;
  }

  /**
   * Unmounts everything stacked at path, as umountAll, asking the path itself
   * after each unmount whether a layer is left instead of reading the table;
   * falls back to umountAll when that cannot be told.
   */
  async umountStack(path: string, max = 8): Promise<number> {
    let n = 0;
    for (;;) {
      const here = await this.mountPoint(path);
      if (here === undefined) return n + (await this.umountAll(path, undefined, max - n));
      if (!here) return n;
      if (n >= max) throw new Error(`${path} still has mounts after ${max} unmounts`);
      await this.umount(path);
      n++;
    }
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
   * milliseconds (the kernel writes every line). The layers that snapshot
   * shows are unmounted one by one; then, when path is back on its parent
   * directory's filesystem, nothing showing another filesystem (no volume)
   * is left there and the table is not read again. Only in doubt (a layer
   * still there, a path whose device differs from its parent's for another
   * reason such as a btrfs subvolume) is it read again, and the loop goes on.
   */
  async umountAll(path: string, seen?: MountSnapshot, max = 8): Promise<number> {
    let n = 0;
    let snap = seen ?? (await this.snapshot());
    while (snap.at(path)) {
      for (let layers = snap.allAt(path).length; layers > 0; layers--) {
        if (n >= max) throw new Error(`${path} still has mounts after ${max} unmounts`);
        await this.umount(path);
        n++;
      }
      if (await onParentDevice(path)) return n;
      snap = await this.snapshot();
    }
    return n;
  }
}

/** Whether path lies on the same device as its parent directory: nothing of another filesystem is mounted on it. */
async function onParentDevice(path: string): Promise<boolean> {
  const parent = dirname(path);
  if (parent === path) return false;
  const [a, b] = await Promise.all([lstat(path, { bigint: true }).catch(() => undefined), stat(parent, { bigint: true }).catch(() => undefined)]);
  return a !== undefined && b !== undefined && a.dev === b.dev;
}
