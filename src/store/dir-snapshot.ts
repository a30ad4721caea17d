import { lstatSync } from 'node:fs';
import { Worker } from 'node:worker_threads';

/**
 * What a record directory held when it was read ahead of start-up: every
 * name, each record file's content, and each other file's lstat. Read on a
 * worker thread (dir-snapshot-worker.ts) while the main thread loads the
 * driver's modules, so reading 10,000 records (open, read, close each) and
 * lstat-ing their images overlaps with that instead of following it; the
 * worker sends the texts in chunks and this thread parses each chunk as it
 * arrives, so the JSON parse overlaps with the worker's reads too. Only
 * start-up uses one, before the plugin serves (nothing else writes the
 * directory then); what it holds is what a synchronous scan at that moment
 * would have read and parsed.
 */
export interface DirSnapshot {
  dir: string;
  /** Every name in the directory, sorted as RecordStore.scan sorts them. */
  names: string[];
  /**
   * Per name: a record file's JSON.parse result, or UNREADABLE where the file
   * could not be read or parsed (or the name is not a record's). Only parsed,
   * not checked: RecordStore.scan validates it as it does a text it reads.
   */
  values: unknown[];
  /** Per name that is neither a record nor a temp file: 0 lstat failed (read it again live), 1 regular file, 2 anything else, 3 gone (ENOENT). */
  kinds: Uint8Array;
  sizes: Float64Array;
}

/** A record file that could not be read or parsed: the scan reports it as corrupt. */
export const UNREADABLE: unique symbol = Symbol('unreadable record');

/** Record texts per message from the worker: small enough that parsing one chunk here overlaps with reading the next. */
export const SNAPSHOT_CHUNK = 1024;

/** What the worker posts, per directory, in this order: names (or failed), texts chunks, stats. */
export type SnapshotMessage =
  | { dir: string; t: 'failed' }
  | { dir: string; t: 'names'; names: string[] }
  | { dir: string; t: 'texts'; from: number; texts: (string | null)[] }
  | { dir: string; t: 'stats'; kinds: Uint8Array; sizes: Float64Array };

export const KIND = { retry: 0, file: 1, other: 2, gone: 3 } as const;

/** The lstat of `name` as the snapshot saw it (undefined: it did not exist), or a live lstat where the snapshot has none. */
export function snapshotStat(snap: DirSnapshot | undefined, dir: string, name: string): { isFile(): boolean; size: number } | undefined {
  if (snap) {
    const i = indexOfName(snap, name);
    if (i < 0) return undefined;
    const k = snap.kinds[i];
    if (k === KIND.gone) return undefined;
    if (k === KIND.file || k === KIND.other) {
      const size = snap.sizes[i]!;
      const isFile = k === KIND.file;
      return { isFile: () => isFile, size };
    }
  }
  return lstatSync(`${dir}/${name}`, { throwIfNoEntry: false });
}

/** Binary search in the sorted names (the default sort: UTF-16 code units, as < compares). */
function indexOfName(snap: DirSnapshot, name: string): number {
  let lo = 0;
  let hi = snap.names.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const m = snap.names[mid]!;
    if (m === name) return mid;
    if (m < name) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

/**
 * Starts reading `dirs` on one worker thread; each promise settles with the
 * directory's snapshot, or undefined when the directory could not be listed
 * or the worker failed (the caller then scans it itself, as before, so a
 * missing directory is reported exactly as without read-ahead). Never rejects.
 */
export function startDirSnapshots(dirs: string[], suffix: string): Map<string, Promise<DirSnapshot | undefined>> {
  const out = new Map<string, Promise<DirSnapshot | undefined>>();
  const settle = new Map<string, (s: DirSnapshot | undefined) => void>();
  for (const d of dirs) out.set(d, new Promise((resolve) => settle.set(d, resolve)));
  const giveUp = () => {
    for (const r of settle.values()) r(undefined);
    settle.clear();
  };
  let worker: Worker;
  try {
    worker = new Worker(new URL('./dir-snapshot-worker.js', import.meta.url), { workerData: { dirs, suffix } });
  } catch {
    giveUp();
    return out;
  }
  const building = new Map<string, DirSnapshot>();
  worker.on('message', (m: SnapshotMessage) => {
    if (m.t === 'names') {
      building.set(m.dir, { dir: m.dir, names: m.names, values: new Array<unknown>(m.names.length).fill(UNREADABLE), kinds: new Uint8Array(0), sizes: new Float64Array(0) });
      return;
    }
    const snap = building.get(m.dir);
    if (m.t === 'texts' && snap) {
      for (let j = 0; j < m.texts.length; j++) {
        const text = m.texts[j];
        if (text == null) continue;
        try {
          snap.values[m.from + j] = JSON.parse(text);
        } catch {
          /* stays UNREADABLE */
        }
      }
      return;
    }
    if (m.t === 'stats' && snap) {
      snap.kinds = m.kinds;
      snap.sizes = m.sizes;
    }
    building.delete(m.dir);
    settle.get(m.dir)?.(m.t === 'stats' ? snap : undefined);
    settle.delete(m.dir);
  });
  worker.on('error', giveUp);
  // Not unref'd: start-up awaits these promises with nothing else keeping the
  // event loop alive, so an unref'd worker let the process exit mid-start.
  // The worker ends by itself once it has posted every directory.
  worker.on('exit', giveUp);
  return out;
}
