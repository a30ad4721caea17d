import { promises as fs } from 'node:fs';
import { isAbsolute, join, normalize, relative, sep } from 'node:path';
import { failedPrecondition, internal, unavailable } from '../../errors/domain-error.js';

/** Where the kernel's target core (target_core_mod) shows its configfs tree. */
export const LIO_CONFIGFS_ROOT = '/sys/kernel/config/target';

/**
 * The one door to LIO's configfs: every directory made or removed, every
 * attribute read or written and every link goes through here, with paths
 * relative to the root (`core/…`, `iscsi/…`), so nothing outside the target
 * tree can be touched and tests can point it elsewhere.
 *
 * configfs is a filesystem whose writes are kernel calls: each attribute is
 * written in ONE write() without a trailing newline (the kernel parses the
 * buffer as given), `mkdir` creates objects (and their default children),
 * `rmdir` destroys them (only when the user-made children are gone), and a
 * symlink binds one object to another (a LUN to its backstore).
 */
export class LioConfigfs {
  constructor(readonly root: string = LIO_CONFIGFS_ROOT) {
    if (!isAbsolute(root)) throw new Error(`LIO configfs root "${root}" must be absolute`);
  }

  /** Absolute path of a tree-relative path; refuses anything that climbs out of the root. */
  abs(rel: string): string {
    const n = normalize(rel);
    if (isAbsolute(n) || n === '..' || n.startsWith(`..${sep}`)) throw internal(`configfs path "${rel}" is outside the target tree`);
    return join(this.root, n);
  }

  /** Tree-relative form of an absolute path under the root (a link's target), or undefined. */
  rel(absPath: string): string | undefined {
    const r = relative(this.root, absPath);
    return r.startsWith('..') || isAbsolute(r) ? undefined : r;
  }

  /** Whether the kernel's target core is there (module loaded, configfs mounted). */
  async available(): Promise<boolean> {
    return (await this.exists('core')) && (await this.exists('.'));
  }

  async exists(rel: string): Promise<boolean> {
    try {
      await fs.lstat(this.abs(rel));
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw this.fail('stat', rel, e);
    }
  }

  /** Sub-directories (configfs objects), sorted; [] when the directory is not there. */
  async dirs(rel: string): Promise<string[]> {
    try {
      const ents = await fs.readdir(this.abs(rel), { withFileTypes: true });
      return ents.filter((d) => d.isDirectory()).map((d) => d.name).sort();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw this.fail('list', rel, e);
    }
  }

  /** Symbolic links in a directory (name → tree-relative target); {} when it is not there. */
  async links(rel: string): Promise<Record<string, string | undefined>> {
    let ents;
    try {
      ents = await fs.readdir(this.abs(rel), { withFileTypes: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
      throw this.fail('list', rel, e);
    }
    const out: Record<string, string | undefined> = {};
    for (const d of ents.filter((x) => x.isSymbolicLink())) {
      const to = await fs.readlink(join(this.abs(rel), d.name)).catch(() => undefined);
      out[d.name] = to === undefined ? undefined : this.rel(isAbsolute(to) ? to : join(this.abs(rel), to));
    }
    return out;
  }

  /** An attribute's text without its trailing newline; undefined when the attribute is not there. */
  async read(rel: string): Promise<string | undefined> {
    try {
      return (await fs.readFile(this.abs(rel), 'utf8')).replace(/\n$/, '');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw this.fail('read', rel, e);
    }
  }

  /** Writes an attribute in one write(); `secret` keeps the value out of any error. */
  async write(rel: string, value: string, opts: { secret?: boolean } = {}): Promise<void> {
    try {
      await fs.writeFile(this.abs(rel), value);
    } catch (e) {
      throw this.fail(opts.secret ? 'write' : `write "${value}" to`, rel, e);
    }
  }

  /** mkdir that treats "already there" as done. */
  async mkdir(rel: string): Promise<void> {
    try {
      await fs.mkdir(this.abs(rel));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return;
      throw this.fail('create', rel, e);
    }
  }

  /** rmdir that treats "already gone" as done. */
  async rmdir(rel: string): Promise<void> {
    try {
      await fs.rmdir(this.abs(rel));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw this.fail('remove', rel, e);
    }
  }

  /** Links `linkRel` to `targetRel` (both tree-relative); an existing link of that name is left. */
  async symlink(targetRel: string, linkRel: string): Promise<void> {
    try {
      await fs.symlink(this.abs(targetRel), this.abs(linkRel));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return;
      throw this.fail('link', linkRel, e);
    }
  }

  async unlink(rel: string): Promise<void> {
    try {
      await fs.unlink(this.abs(rel));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw this.fail('unlink', rel, e);
    }
  }

  /** Size and kind of a backing file or device (outside configfs: the image the backstore serves). */
  async backing(path: string): Promise<{ kind: 'file' | 'block'; bytes: number } | undefined> {
    try {
      const st = await fs.stat(path);
      if (st.isBlockDevice()) return { kind: 'block', bytes: 0 };
      if (st.isFile()) return { kind: 'file', bytes: st.size };
      return undefined;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
  }

  private fail(what: string, rel: string, e: unknown) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    const msg = `LIO configfs: cannot ${what} ${rel}: ${code}`;
    // The kernel answers EBUSY for an object still in use (a backstore a LUN links to),
    // ENODEV/EINVAL for a backstore or fabric module that is not loaded.
    if (code === 'EBUSY') return unavailable(`${msg} (still in use; retry)`);
    if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') return failedPrecondition(`${msg}: the controller needs CAP_SYS_ADMIN and /sys/kernel/config mounted read-write`);
    return internal(msg);
  }
}
