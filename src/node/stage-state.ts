import { unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { RecordStore } from '../store/record-store.js';
import * as v from 'valibot';
import { checkRecord } from '../store/check.js';
import { VOLUME_ID_RE } from './volume-id.js';

export interface PublishRecord {
  targetPath: string;
  readonly: boolean;
  /** What sinter created at target_path, so unpublish removes only that. */
  created: 'dir' | 'file' | null;
  /** Block access published read-only: the read-only loop device bound at the target. */
  roDevice?: string;
}

/**
 * What the node knows about one staged (or half-staged) volume. Written before
 * every step that changes the host, so a restarted plugin can finish or undo it.
 */
export interface StageRecord {
  version: 1;
  volumeId: string;
  stagingPath: string;
  createdStagingDir: boolean;
  access: 'mount' | 'block';
  fsType?: string;
  mountFlags: string[];
  accessMode: string;
  /** The decoded connection (publish_context); never secrets. */
  publishContext: Record<string, string>;
  device?: string;
  /**
   * Encrypted volumes (volume_context encrypted: "true"): the dm-crypt
   * mapping's name, recorded before it is opened; the filesystem or block
   * volume is /dev/mapper/<mapper>, over `device`.
   */
  mapper?: string;
  /** staging: in progress; staged: done; unstaging: being torn down; error: last attempt failed (see lastError). */
  phase: 'staging' | 'staged' | 'unstaging' | 'error';
  lastError?: string;
  publishes: PublishRecord[];
  updatedAt: string;
}

export interface CorruptRecord {
  file: string;
  why: string;
}

/**
 * Per-volume JSON records in <stateDir>/volumes/<volume_id>.json, kept in a
 * RecordStore: a crash leaves either the old or the new record, never half of one.
 *
 * The files are the truth; get() always reads the file. Which volumes name
 * which staging path is also kept in memory (volumesAt), read from the files
 * once and then changed by this object's own put and remove, so a stage does
 * not read every record of the node: the node plugin is the only writer of
 * its state directory while it runs (fsck only reads it).
 */
export class StageState {
  readonly dir: string;
  private readonly store: RecordStore<StageRecord>;
  /** volume id → the staging path its record names; undefined until first needed. */
  private paths?: Map<string, string>;
  private loading?: Promise<Map<string, string>>;

  constructor(stateDir: string) {
    this.dir = join(stateDir, 'volumes');
    this.store = new RecordStore<StageRecord>(this.dir, { keyOf: (r) => checked(r.volumeId), format: (r) => JSON.stringify(r, null, 2) + '\n' });
  }

  async init(): Promise<void> {
    await this.store.init();
  }

  async get(volumeId: string): Promise<StageRecord | undefined> {
    return this.store.get(checked(volumeId), parseRecord);
  }

  async put(rec: StageRecord): Promise<void> {
    checked(rec.volumeId);
    const stamped = { ...rec, updatedAt: new Date().toISOString() };
    try {
      await this.store.put(stamped);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      // The directory is made at start and on the first write after it went away (removed by hand), not before
      // every write: a mkdir per write was a thread-pool round trip in every stage, publish and unpublish. The
      // descriptor held for its fsyncs is reopened, so they reach the new directory.
      await this.store.close();
      await this.init();
      await this.store.put(stamped);
    }
    // After a load in progress, so what it read (old or new) is overwritten by the newest.
    if (this.loading) (await this.loading).set(rec.volumeId, rec.stagingPath);
  }

  async remove(volumeId: string): Promise<void> {
    await this.store.remove(checked(volumeId));
    if (this.loading) (await this.loading).delete(volumeId);
  }

  /**
   * Volumes whose record names stagingPath, from memory (the first call
   * reads every record). Records that cannot be read are not counted, as
   * with list().
   */
  async volumesAt(stagingPath: string): Promise<string[]> {
    const paths = this.paths ?? (await this.index());
    const out: string[] = [];
    for (const [id, p] of paths) if (p === stagingPath) out.push(id);
    return out;
  }

  /** Every volume's recorded staging path (volume id → path as sent), from memory; see volumesAt. */
  async stagingPaths(): Promise<ReadonlyMap<string, string>> {
    return this.paths ?? (await this.index());
  }

  /** Start-up, before serving: the index from the records start-up has just read, so the first stage reads none. */
  seed(records: readonly StageRecord[]): void {
    if (this.loading) return;
    this.paths = new Map(records.map((r) => [r.volumeId, r.stagingPath]));
    this.loading = Promise.resolve(this.paths);
  }

  /** Reads every record into the in-memory index (once). */
  async index(): Promise<Map<string, string>> {
    this.loading ??= this.store.list(parseRecord).then(
      (l) => (this.paths = new Map(l.records.map((r) => [r.volumeId, r.stagingPath]))),
      (e: unknown) => {
        this.loading = undefined;
        throw e;
      },
    );
    return this.loading;
  }

  /** All readable records, plus the files that could not be read (left in place for a person to look at). */
  async list(): Promise<{ records: StageRecord[]; corrupt: CorruptRecord[]; strayTemps: string[] }> {
    const l = await this.store.list(parseRecord);
    return {
      records: l.records,
      corrupt: l.corrupt.map((c) => ({ file: join(this.dir, c.name), why: c.why })),
      strayTemps: l.temps.map((t) => join(this.dir, t)),
    };
  }

  /** Temp files are leftovers of a write that crashed before its rename; the old record still stands. */
  async removeStrayTemps(files: string[]): Promise<void> {
    for (const f of files) await unlink(f).catch(() => undefined);
  }
}

/** A file name is never built from a malformed id. */
function checked(volumeId: string): string {
  if (!VOLUME_ID_RE.test(volumeId)) throw new Error(`refusing a state file for malformed volume id ${JSON.stringify(volumeId)}`);
  return volumeId;
}

// Loose: a field another version wrote (or one since dropped) does not make a record corrupt.
const stageRecordSchema = v.looseObject({
  version: v.literal(1, 'not a version 1 stage record'),
  volumeId: v.string(),
  stagingPath: v.string('record lacks stagingPath or access'),
  access: v.picklist(['mount', 'block'], 'record lacks stagingPath or access'),
  mountFlags: v.optional(v.array(v.string()), []),
  publishes: v.optional(v.array(v.looseObject({ targetPath: v.string() })), []),
  publishContext: v.optional(v.record(v.string(), v.string()), {}),
}, (issue) => (issue.expected === '"version"' ? 'not a version 1 stage record' : issue.expected === '"stagingPath"' || issue.expected === '"access"' ? 'record lacks stagingPath or access' : 'is missing'));

/** A stage record file's text → the record, or an Error saying why it is corrupt (list() reports it, get() throws it). */
export function parseRecord(text: string, volumeId: string): StageRecord {
  const raw: unknown = JSON.parse(text);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error('not a version 1 stage record');
  const r = checkRecord(stageRecordSchema, raw);
  if (!r.ok) throw new Error(r.why);
  if (r.value.volumeId !== volumeId) throw new Error(`record names volume ${JSON.stringify(r.value.volumeId)}, file is for ${JSON.stringify(volumeId)}`);
  // The fields start-up and unstage read are checked above; the rest are only ever written by put().
  return r.value as unknown as StageRecord;
}
