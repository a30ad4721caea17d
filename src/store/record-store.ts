import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { isAtomicTemp, removeFileDurable, SyncDir, writeFileAtomic } from './atomic-file.js';
import { UNREADABLE, type DirSnapshot } from './dir-snapshot.js';
import { readSmallFileSync } from './read-small.js';

export interface LoadReport<T> {
  records: T[];
  /** Files that could not be parsed: kept on disk for an operator, listed here. */
  corrupt: string[];
  /** Half-written temp files from a crash, removed. */
  tempsRemoved: string[];
}

export interface ScanReport<T> {
  records: T[];
  corrupt: string[];
  /** Half-written temp files (load() removes them). */
  temps: string[];
  /** Every other file name in the directory (image files, strays). */
  others: string[];
}

export interface ListReport<T> {
  records: T[];
  /** Files that could not be parsed, with the parser's reason; left in place. */
  corrupt: { name: string; why: string }[];
  /** Half-written temp files (not removed). */
  temps: string[];
}

export interface RecordStoreOptions<T> {
  /** File name extension of the records (default `.json`). */
  suffix?: string;
  /** The key a record is filed under (default its `id`). */
  keyOf?: (rec: T) => string;
  /** The file's content (default compact JSON and a newline). */
  format?: (rec: T) => string;
}

/**
 * One JSON file per record in one directory. Each put is atomic and durable
 * (temp file, fsync, rename, directory fsync: atomic-file.ts), so the
 * directory is the crash-safe source of truth and memory is a cache. The
 * controller's file backend, CHAP and static-volume records and the node's
 * stage records all live in one.
 */
export class RecordStore<T> {
  /** The store's directory, held open for fsync (see SyncDir); files beside the records may use it too. */
  readonly syncDir: SyncDir;
  private readonly suffix: string;
  private readonly keyOf: (rec: T) => string;
  private readonly format: (rec: T) => string;

  constructor(
    readonly dir: string,
    opts: string | RecordStoreOptions<T> = {},
  ) {
    const o = typeof opts === 'string' ? { suffix: opts } : opts;
    this.suffix = o.suffix ?? '.json';
    this.keyOf = o.keyOf ?? ((r) => (r as { id: string }).id);
    this.format = o.format ?? ((r) => `${JSON.stringify(r)}\n`);
    this.syncDir = new SyncDir(dir);
  }

  pathOf(id: string): string {
    return join(this.dir, `${id}${this.suffix}`);
  }

  async init(): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
  }

  /**
   * Reads every record. Meant for start-up, before the plugin serves: the
   * records are read synchronously, since nothing else waits on the event
   * loop yet and one thread-pool round trip per open/fstat/read/close made
   * start-up at 10,000 volumes take seconds.
   */
  async load(valid: (v: unknown) => v is T): Promise<LoadReport<T>> {
    const scan = await this.scan(valid);
    for (const name of scan.temps) await fs.rm(join(this.dir, name), { force: true });
    return { records: scan.records, corrupt: scan.corrupt, tempsRemoved: scan.temps };
  }

  /**
   * What load() would find, touching nothing: for `sinter fsck`, and for
   * start-up, which may pass what a worker read ahead (dir-snapshot.ts) so
   * that only the check of each parsed record is left here.
   */
  async scan(valid: (v: unknown) => v is T, pre?: DirSnapshot): Promise<ScanReport<T>> {
    const report: ScanReport<T> = { records: [], corrupt: [], temps: [], others: [] };
    const names = pre ? pre.names : (await fs.readdir(this.dir)).sort();
    for (let i = 0; i < names.length; i++) {
      const name = names[i]!;
      if (isAtomicTemp(name)) {
        report.temps.push(name);
        continue;
      }
      if (!name.endsWith(this.suffix)) {
        report.others.push(name);
        continue;
      }
      try {
        // Read ahead, the worker's text was parsed as it arrived; UNREADABLE where that failed.
        const parsed: unknown = pre ? pre.values[i] : JSON.parse(readSmallFileSync(`${this.dir}/${name}`));
        if (parsed === UNREADABLE) throw new Error('unreadable');
        if (valid(parsed) && this.isNameOf(parsed, name)) report.records.push(parsed);
        else report.corrupt.push(name);
      } catch {
        report.corrupt.push(name);
      }
    }
    return report;
  }

  /** Whether `name` (a name with the suffix) is the file `rec` is filed under; without building the name, as the start-up scan asks it 10,000 times. */
  private isNameOf(rec: T, name: string): boolean {
    const key = this.keyOf(rec);
    return typeof key === 'string' && name.length === key.length + this.suffix.length && name.startsWith(key);
  }

  /**
   * Reads every record asynchronously, for callers that run while the plugin
   * serves. `parse` gets the file's text and the key its name carries, and
   * throws (with a reason) on a record it cannot accept. A missing directory
   * holds no records.
   */
  async list(parse: (text: string, key: string) => T): Promise<ListReport<T>> {
    const report: ListReport<T> = { records: [], corrupt: [], temps: [] };
    let names: string[];
    try {
      names = await fs.readdir(this.dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return report;
      throw e;
    }
    for (const name of names.sort()) {
      if (isAtomicTemp(name)) {
        report.temps.push(name);
        continue;
      }
      if (!name.endsWith(this.suffix)) continue;
      try {
        report.records.push(parse(await fs.readFile(join(this.dir, name), 'utf8'), name.slice(0, -this.suffix.length)));
      } catch (e) {
        report.corrupt.push({ name, why: (e as Error).message });
      }
    }
    return report;
  }

  /** One record, or undefined when there is none; `parse` as for list(). */
  async get(key: string, parse: (text: string, key: string) => T): Promise<T | undefined> {
    let text: string;
    try {
      text = await fs.readFile(this.pathOf(key), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    return parse(text, key);
  }

  async put(rec: T): Promise<void> {
    await writeFileAtomic(this.pathOf(this.keyOf(rec)), this.format(rec), this.syncDir);
  }

  /** Lets go of the directory descriptor; a later put or remove reopens it. */
  async close(): Promise<void> {
    await this.syncDir.close();
  }

  async remove(id: string): Promise<void> {
    await removeFileDurable(this.pathOf(id), this.syncDir);
  }
}
