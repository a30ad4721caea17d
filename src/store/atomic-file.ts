import { close as closeFd, fsync as fsyncFd, ftruncate as ftruncateFd, open as openFd, promises as fs, rename as renameFile, write as writeFd } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';

/**
 * A directory held open so that making a rename or unlink in it durable is
 * one fsync(2) on this descriptor, not open + fsync + close each time (three
 * thread-pool round trips, the most expensive part of a record write after
 * the fsyncs themselves). For a directory its owner created and never
 * replaces, such as a record store's; a plain descriptor, so an owner that is
 * dropped without close() leaks one fd rather than warning on GC.
 */
export class SyncDir {
  private fd: Promise<number> | undefined;

  constructor(readonly path: string) {}

  private open(): Promise<number> {
    const fd = new Promise<number>((resolve, reject) => openFd(this.path, 'r', (e, n) => (e ? reject(e) : resolve(n))));
    // A failed open is not cached: the next sync() tries again.
    fd.catch(() => {
      if (this.fd === fd) this.fd = undefined;
    });
    return fd;
  }

  async sync(): Promise<void> {
    const fd = await (this.fd ??= this.open());
    await new Promise<void>((resolve, reject) => fsyncFd(fd, (e) => (e ? reject(e) : resolve())));
  }

  async close(): Promise<void> {
    const fd = this.fd;
    this.fd = undefined;
    const n = await fd?.catch(() => undefined);
    if (n !== undefined) await new Promise<void>((resolve) => closeFd(n, () => resolve()));
  }
}

async function syncDirOf(path: string, dir: SyncDir | undefined): Promise<void> {
  const parent = dirname(path);
  if (dir) {
    if (dir.path !== parent) throw new Error(`${path} is not in ${dir.path}`);
    await dir.sync();
  } else {
    await fsyncDir(parent);
  }
}

/**
 * Temp names: unique to this process (a random prefix drawn once: two
 * processes may share a directory and even a pid, each pid 1 in its own
 * container) and to the write (a counter). randomBytes per write cost ~70 µs
 * of CPU each on a loaded 2-core machine, 8% of a CreateVolume's.
 */
const TEMP_PREFIX = randomBytes(6).toString('hex');
let tempSeq = 0;

/**
 * Replaces `path` with `data` so that a crash at any instant leaves either the
 * old content or the new, never a torn file: write a temp file beside it,
 * fsync it, rename over the target, fsync the directory so the rename itself
 * survives power loss.
 */
export async function writeFileAtomic(path: string, data: string | Buffer, dir?: SyncDir): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${TEMP_PREFIX}${(++tempSeq).toString(36)}.tmp`);
  await writeDurable(tmp, 'w', typeof data === 'string' ? Buffer.from(data) : data);
  try {
    await new Promise<void>((resolve, reject) => renameFile(tmp, path, (e) => (e ? reject(e) : resolve())));
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
  await syncDirOf(path, dir);
}

/**
 * open, write, (ftruncate,) fsync, close as one chain of callbacks: the same
 * system calls as FileHandle.writeFile + sync + close, in one promise instead
 * of a dozen (each await of fs.promises allocates several, and with the
 * call-context store active every promise also runs async-hook callbacks; a
 * CreateVolume writes two records and an image this way).
 */
function writeDurable(path: string, flags: string, data: Buffer, truncateTo?: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    openFd(path, flags, 0o600, (oe, fd) => {
      if (oe) return reject(oe);
      let failed: Error | undefined;
      const finish = (e?: Error | null) => {
        failed ??= e ?? undefined;
        closeFd(fd, (ce) => {
          const err = failed ?? ce;
          if (err) reject(err);
          else resolve();
        });
      };
      const sync = () => fsyncFd(fd, finish);
      const truncate = () => (truncateTo === undefined ? sync() : ftruncateFd(fd, truncateTo, (te) => (te ? finish(te) : sync())));
      const write = (off: number) => {
        if (off >= data.length) return truncate();
        writeFd(fd, data, off, data.length - off, null, (we, n) => (we ? finish(we) : write(off + n)));
      };
      write(0);
    });
  });
}

/**
 * A new, empty file of `size` bytes (sparse), created exclusively (O_EXCL: an
 * existing file is EEXIST, never reused) and fsynced before this resolves.
 */
export function createSparseFile(path: string, size: number): Promise<void> {
  return writeDurable(path, 'wx', Buffer.alloc(0), size);
}

export async function fsyncDir(dir: string): Promise<void> {
  const dh = await fs.open(dir, 'r');
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

/** Removes a file and makes the removal durable; a missing file is not an error. */
export async function removeFileDurable(path: string, dir?: SyncDir): Promise<boolean> {
  try {
    await fs.unlink(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
  await syncDirOf(path, dir);
  return true;
}

export { isAtomicTemp } from './temp-name.js';
