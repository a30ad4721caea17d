import { lstatSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { KIND } from './dir-digest.js';
import { isAtomicTemp } from './temp-name.js';

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

/** What a digest of the last clean shutdown held (dir-digest.ts), once the worker found it still holds: its owner's line and its values, parsed. */
export interface DigestRead {
  extra: unknown;
  values: unknown[];
}

/** The read-ahead of some groups of directories: each directory's snapshot, each group digest's content. */
export interface ReadAhead {
  dirs: Map<string, Promise<DirSnapshot | undefined>>;
  digests: Map<string, Promise<DigestRead | undefined>>;
}

/** Directories read on the worker, and the digest (dir-digest.ts) that may stand in for reading them. */
export interface SnapshotGroup {
  dirs: string[];
  digest?: string;
}

/** A record file that could not be read or parsed: the scan reports it as corrupt. */
export const UNREADABLE: unique symbol = Symbol('unreadable record');

/** Record texts per message from the worker: small enough that parsing one chunk here overlaps with reading the next. */
export const SNAPSHOT_CHUNK = 1024;

/**
 * The names as one string, '/' between them (no file name holds one): an
 * array of 20,000 strings cost the main thread ~15 ms to receive, one string
 * and a split ~1 ms.
 */
export const joinNames = (names: readonly string[]) => names.join('/');
const splitNames = (joined: string) => (joined === '' ? [] : joined.split('/'));

/**
 * What the worker posts. Per group with a digest, first: digest (when its
 * stamps hold), values chunks, then checked. Then, unless checked said it
 * holds, per directory: names (or failed), texts chunks, stats.
 */
export type SnapshotMessage =
  | { dir: string; t: 'failed' }
  /** `dir` is the digest's path; `extra` its owner's line, as text. */
  | { dir: string; t: 'digest'; values: number; extra: string }
  /** Values from the digest, from the `from`th on: a JSON array's text. */
  | { dir: string; t: 'values'; from: number; text: string }
  /** Whether the directories list exactly the digest's names: if so, the worker reads none of them. */
  | { dir: string; t: 'checked'; held: boolean }
  | { dir: string; t: 'names'; names: string }
  | { dir: string; t: 'texts'; from: number; texts: (string | null)[] }
  | { dir: string; t: 'stats'; kinds: Uint8Array; sizes: Float64Array };

export { KIND };

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

/** Where the last lookup found its name, per snapshot: inspect asks in sorted order, each image a name or two after the last. */
const lastFound = new WeakMap<DirSnapshot, number>();

/** The name's place among the sorted names (the default sort: UTF-16 code units, as < compares); -1 when absent. */
function indexOfName(snap: DirSnapshot, name: string): number {
  const near = lastFound.get(snap) ?? 0;
  for (let j = near; j < near + 4 && j < snap.names.length; j++) {
    if (snap.names[j] === name) {
      lastFound.set(snap, j);
      return j;
    }
  }
  const i = binarySearch(snap, name);
  if (i >= 0) lastFound.set(snap, i);
  return i;
}

function binarySearch(snap: DirSnapshot, name: string): number {
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
 * Starts reading each group's directories on one worker thread. Each
 * directory's promise settles with its snapshot, or undefined when the
 * directory could not be listed, the group's digest stood in for it, or the
 * worker failed (the caller then scans it itself, as before, so a missing
 * directory is reported exactly as without read-ahead). Each digest's promise
 * settles with its content when it still holds for its group, else
 * undefined; it settles before its group's directories do. Never rejects.
 * `version` is this sinter's: a digest another version wrote is not used.
 */
export function startDirSnapshots(groups: SnapshotGroup[], suffix: string, version = ''): ReadAhead {
  const out: ReadAhead = { dirs: new Map(), digests: new Map() };
  const settle = new Map<string, (s: DirSnapshot | undefined) => void>();
  const settleDigest = new Map<string, (d: DigestRead | undefined) => void>();
  const groupOf = new Map<string, string[]>();
  for (const g of groups) {
    for (const d of g.dirs) out.dirs.set(d, new Promise((resolve) => settle.set(d, resolve)));
    if (g.digest) {
      out.digests.set(g.digest, new Promise((resolve) => settleDigest.set(g.digest!, resolve)));
      groupOf.set(g.digest, g.dirs);
    }
  }
  const giveUp = () => {
    for (const r of settleDigest.values()) r(undefined);
    settleDigest.clear();
    for (const r of settle.values()) r(undefined);
    settle.clear();
  };
  let worker: Worker;
  try {
    worker = new Worker(new URL('./dir-snapshot-worker.js', import.meta.url), { workerData: { groups, suffix, version } });
  } catch {
    giveUp();
    return out;
  }
  const building = new Map<string, DirSnapshot>();
  // Per digest that still holds: its content, the values filled in as the chunks arrive.
  const digests = new Map<string, { read: DigestRead; got: number; bad: boolean }>();
  worker.on('message', (m: SnapshotMessage) => {
    if (m.t === 'digest') {
      const d = { read: { extra: undefined as unknown, values: new Array<unknown>(m.values) }, got: 0, bad: false };
      try {
        d.read.extra = JSON.parse(m.extra);
      } catch {
        d.bad = true;
      }
      digests.set(m.dir, d);
      return;
    }
    if (m.t === 'values') {
      const d = digests.get(m.dir);
      if (!d || d.bad) return;
      try {
        const chunk = JSON.parse(m.text) as unknown;
        if (!Array.isArray(chunk) || m.from + chunk.length > d.read.values.length) throw new Error('does not fit');
        for (let j = 0; j < chunk.length; j++) d.read.values[m.from + j] = chunk[j];
        d.got += chunk.length;
      } catch {
        d.bad = true;
      }
      return;
    }
    if (m.t === 'checked') {
      const d = digests.get(m.dir);
      digests.delete(m.dir);
      const whole = m.held && d && !d.bad && d.got === d.read.values.length;
      settleDigest.get(m.dir)?.(whole ? d.read : undefined);
      settleDigest.delete(m.dir);
      // The worker reads the directories only when the digest did not hold; with a digest found whole, nothing more comes for them.
      if (m.held)
        for (const dir of groupOf.get(m.dir) ?? []) {
          settle.get(dir)?.(undefined);
          settle.delete(dir);
        }
      return;
    }
    if (m.t === 'names') {
      const names = splitNames(m.names);
      building.set(m.dir, { dir: m.dir, names, values: new Array<unknown>(names.length).fill(UNREADABLE), kinds: new Uint8Array(0), sizes: new Float64Array(0) });
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

/** A snapshot of what a clean shutdown read (dir-digest.ts readDigestPart), for the inspection it writes into the digest. */
export function snapshotOfPart(part: { dir: string; names: string[]; kinds: number[]; sizes: number[]; values: unknown[] }, suffix: string): DirSnapshot {
  const values = new Array<unknown>(part.names.length).fill(UNREADABLE);
  let k = 0;
  for (let j = 0; j < part.names.length; j++) {
    const n = part.names[j]!;
    if (n.endsWith(suffix) && !isAtomicTemp(n)) values[j] = part.values[k++] ?? UNREADABLE;
  }
  return { dir: part.dir, names: part.names, values, kinds: Uint8Array.from(part.kinds), sizes: Float64Array.from(part.sizes) };
}
