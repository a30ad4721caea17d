import { promises as fs, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { isAtomicTemp, removeFileDurable, SyncDir, writeFileAtomic } from './atomic-file.js';

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

/**
 * One JSON file per record in one directory. Each put is atomic and durable,
 * so the directory is the crash-safe source of truth and memory is a cache.
 */
export class RecordStore<T extends { id: string }> {
  /** The store's directory, held open for fsync (see SyncDir); files beside the records may use it too. */
  readonly syncDir: SyncDir;

  constructor(
    readonly dir: string,
    private readonly suffix = '.json',
  ) {
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

  /** What load() would find, touching nothing: for `sinter fsck`. */
  async scan(valid: (v: unknown) => v is T): Promise<ScanReport<T>> {
    const report: ScanReport<T> = { records: [], corrupt: [], temps: [], others: [] };
    for (const name of (await fs.readdir(this.dir)).sort()) {
      if (isAtomicTemp(name)) {
        report.temps.push(name);
        continue;
      }
      if (!name.endsWith(this.suffix)) {
        report.others.push(name);
        continue;
      }
      try {
        const parsed: unknown = JSON.parse(readFileSync(join(this.dir, name), 'utf8'));
        if (valid(parsed) && `${parsed.id}${this.suffix}` === name) report.records.push(parsed);
        else report.corrupt.push(name);
      } catch {
        report.corrupt.push(name);
      }
    }
    return report;
  }

  async put(rec: T): Promise<void> {
    await writeFileAtomic(this.pathOf(rec.id), `${JSON.stringify(rec)}\n`, this.syncDir);
  }

  /** Lets go of the directory descriptor; a later put or remove reopens it. */
  async close(): Promise<void> {
    await this.syncDir.close();
  }

  async remove(id: string): Promise<void> {
    await removeFileDurable(this.pathOf(id), this.syncDir);
  }
}
