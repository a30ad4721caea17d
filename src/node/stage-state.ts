import { mkdir, readdir, readFile, unlink } from 'node:fs/promises';
import { isAtomicTemp, removeFileDurable, SyncDir, writeFileAtomic } from '../store/atomic-file.js';
import { join } from 'node:path';
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
 * Per-volume JSON records in <stateDir>/volumes/<volume_id>.json, replaced
 * atomically: write a temp file, fsync it, rename over, fsync the directory.
 * A crash leaves either the old or the new record, never half of one.
 */
export class StageState {
  readonly dir: string;
  /** The records' directory, held open for the fsync after each rename/unlink (see SyncDir). */
  private readonly syncDir: SyncDir;

  constructor(stateDir: string) {
    this.dir = join(stateDir, 'volumes');
    this.syncDir = new SyncDir(this.dir);
  }

  private file(volumeId: string): string {
    if (!VOLUME_ID_RE.test(volumeId)) throw new Error(`refusing a state file for malformed volume id ${JSON.stringify(volumeId)}`);
    return join(this.dir, `${volumeId}.json`);
  }

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
  }

  async get(volumeId: string): Promise<StageRecord | undefined> {
    let text: string;
    try {
      text = await readFile(this.file(volumeId), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    return parseRecord(text, volumeId);
  }

  async put(rec: StageRecord): Promise<void> {
    await this.init();
    await writeFileAtomic(this.file(rec.volumeId), JSON.stringify({ ...rec, updatedAt: new Date().toISOString() }, null, 2) + '\n', this.syncDir);
  }

  async remove(volumeId: string): Promise<void> {
    await removeFileDurable(this.file(volumeId), this.syncDir);
  }

  /** All readable records, plus the files that could not be read (left in place for a person to look at). */
  async list(): Promise<{ records: StageRecord[]; corrupt: CorruptRecord[]; strayTemps: string[] }> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { records: [], corrupt: [], strayTemps: [] };
      throw e;
    }
    const records: StageRecord[] = [];
    const corrupt: CorruptRecord[] = [];
    const strayTemps: string[] = [];
    for (const name of names.sort()) {
      if (isAtomicTemp(name)) {
        strayTemps.push(join(this.dir, name));
        continue;
      }
      if (!name.endsWith('.json')) continue;
      const id = name.slice(0, -'.json'.length);
      try {
        const rec = parseRecord(await readFile(join(this.dir, name), 'utf8'), id);
        records.push(rec);
      } catch (e) {
        corrupt.push({ file: join(this.dir, name), why: (e as Error).message });
      }
    }
    return { records, corrupt, strayTemps };
  }

  /** Temp files are leftovers of a write that crashed before its rename; the old record still stands. */
  async removeStrayTemps(files: string[]): Promise<void> {
    for (const f of files) await unlink(f).catch(() => undefined);
  }
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
