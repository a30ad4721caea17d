// A record directory's digest: its listing, each record file's parsed
// content and each image's lstat, read at a clean shutdown, so that the next
// start reads one file instead of 10,000 records and 10,000 images.
//
// Why it can be trusted, and when it is not:
// - It exists only between a clean shutdown and the next start: written after
//   every RPC finished and every background loop stopped (app.ts), and
//   removed (durably) by the start before its first change. Every change
//   sinter makes, and every crash, happens while there is none.
// - It is read from the files themselves, not from memory, and written only
//   if the directory did not change while it was read.
// - Record files change only by rename (atomic-file.ts); a rename, create or
//   unlink in a directory changes its mtime and ctime. The digest carries the
//   directory's stamp (device, inode, mtime and ctime in nanoseconds, size),
//   and a start uses it only while the stamp is unchanged and the directory
//   lists exactly the names it lists. So a record or image added, removed,
//   replaced or renamed by anyone while sinter was stopped sends the start
//   back to the files.
// - The stamp is taken once the directory's mtime is older than the kernel's
//   coarse clock tick, so a later change cannot carry the same timestamp.
// Not seen through a digest: a file rewritten or resized in place (no rename)
// by someone else while sinter was stopped. Sinter never does that; a volume
// whose image shrank shows as abnormal in its health check, and `sinter fsck`
// never uses a digest.
//
// Kept to node:fs: the start-up worker loads this module.
import { lstatSync, readdirSync, readFileSync } from 'node:fs';
import { readSmallFileSync } from './read-small.js';
import { isAtomicTemp } from './temp-name.js';

export const DIGEST_FORMAT = 'sinter-dir-digest/1';

/** A directory's stamp: changes with every create, rename and unlink in it. Undefined when it cannot be read. */
export function dirStamp(dir: string): string | undefined {
  try {
    const st = lstatSync(dir, { bigint: true, throwIfNoEntry: false });
    if (!st?.isDirectory()) return undefined;
    return `${st.dev}:${st.ino}:${st.mtimeNs}:${st.ctimeNs}:${st.size}`;
  } catch {
    return undefined;
  }
}

/**
 * One directory as a clean shutdown read it: every name (sorted as
 * RecordStore.scan sorts them), each other file's kind and size as
 * dir-snapshot.ts codes them (KIND), and each record file's JSON.parse
 * result (null where that failed), in the order of the record names.
 */
export interface DigestPart {
  dir: string;
  stamp: string;
  names: string[];
  kinds: number[];
  sizes: number[];
  values: unknown[];
}

type HeaderPart = Omit<DigestPart, 'values'>;

interface DigestHeader {
  format: string;
  version: string;
  dirs: HeaderPart[];
}

/**
 * The digest's text: a header line (format, writer's version, each
 * directory's stamp, names, kinds and sizes), which the start-up worker
 * checks and uses without parsing the rest, then a line with each
 * directory's record values, in the header's order, for the main thread to
 * parse. All ASCII (JSON escapes for the rest), so both lines are one-byte
 * strings, which pass between threads as a plain copy.
 */
export function digestText(version: string, parts: DigestPart[]): string {
  const header: DigestHeader = { format: DIGEST_FORMAT, version, dirs: parts.map(({ values: _, ...h }) => h) };
  return `${asciiJson(header)}\n${asciiJson(parts.map((p) => p.values))}\n`;
}

const asciiJson = (v: unknown) => JSON.stringify(v).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);

/** What a name other than a record's is, per lstat: 0 lstat failed or not taken (read it again live), 1 regular file, 2 anything else, 3 gone (ENOENT). */
export const KIND = { retry: 0, file: 1, other: 2, gone: 3 } as const;

/**
 * Reads every name of `dir`, each record file's content and each other
 * file's lstat (synchronously: nothing else runs at a clean shutdown), and
 * returns the part with the stamp it holds for, or undefined when the
 * directory changed meanwhile or cannot be read.
 */
export async function readDigestPart(dir: string, suffix: string, sleep: (ms: number) => Promise<void>): Promise<DigestPart | undefined> {
  if (!(await settled(dir, sleep))) return undefined;
  const before = dirStamp(dir);
  if (!before) return undefined;
  const names = readdirSync(dir).sort();
  const kinds: number[] = [];
  const sizes: number[] = [];
  const values: unknown[] = [];
  for (const name of names) {
    let kind: number = KIND.retry;
    let size = 0;
    if (isAtomicTemp(name)) {
      /* a temp: the scan tells it by its name */
    } else if (name.endsWith(suffix)) {
      let v: unknown = null;
      try {
        v = JSON.parse(readSmallFileSync(`${dir}/${name}`));
      } catch {
        /* unreadable: the start reports it, as a scan would */
      }
      values.push(v);
    } else {
      const st = lstatSync(`${dir}/${name}`, { throwIfNoEntry: false });
      kind = !st ? KIND.gone : st.isFile() ? KIND.file : KIND.other;
      size = st?.size ?? 0;
    }
    kinds.push(kind);
    sizes.push(size);
  }
  return dirStamp(dir) === before ? { dir, stamp: before, names, kinds, sizes, values } : undefined;
}

/**
 * Linux stamps files from a coarse clock (one tick: 1–10 ms), so a change in
 * the same tick as the stamp would leave it as it was. Once the last change
 * is 20 ms old, any later one carries a later time. False when the directory
 * did not hold still that long in five tries: something else is writing it.
 */
const COARSE_TICK_MS = 20;

async function settled(dir: string, sleep: (ms: number) => Promise<void>): Promise<boolean> {
  for (let i = 0; i < 5; i++) {
    const st = lstatSync(dir, { throwIfNoEntry: false });
    if (!st) return false;
    const age = Date.now() - Math.max(st.mtimeMs, st.ctimeMs);
    if (age >= COARSE_TICK_MS) return true;
    await sleep(COARSE_TICK_MS - Math.max(age, 0));
  }
  return false;
}

/**
 * For the start-up worker: the parts of the digest at `path` whose
 * directory's stamp is unchanged (written by this same version), each with
 * its place in the body, and the body's text for the main thread to parse
 * (its objects must live there). Undefined when there is no digest or no
 * part holds. The worker still compares each part's names with a listing.
 */
export function checkDigest(path: string, version: string, dirs: readonly string[]): { body: string; parts: Map<string, HeaderPart & { i: number }> } | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'latin1');
  } catch {
    return undefined;
  }
  const nl = text.indexOf('\n');
  if (nl < 0) return undefined;
  let header: DigestHeader;
  try {
    header = JSON.parse(text.slice(0, nl)) as DigestHeader;
  } catch {
    return undefined;
  }
  if (header?.format !== DIGEST_FORMAT || header.version !== version || !Array.isArray(header.dirs)) return undefined;
  const parts = new Map<string, HeaderPart & { i: number }>();
  header.dirs.forEach((d, i) => {
    if (!dirs.includes(d?.dir) || typeof d.stamp !== 'string' || dirStamp(d.dir) !== d.stamp) return;
    const n = Array.isArray(d.names) ? d.names.length : -1;
    if (n >= 0 && Array.isArray(d.kinds) && d.kinds.length === n && Array.isArray(d.sizes) && d.sizes.length === n) parts.set(d.dir, { ...d, i });
  });
  return parts.size ? { body: text.slice(nl + 1), parts } : undefined;
}

/** Whether a directory's sorted listing is exactly the names a digest part lists. */
export const sameNames = (listing: readonly string[], names: readonly string[]) => listing.length === names.length && listing.every((n, j) => n === names[j]);

/** The parsed body's values for the directory at place `i`, if there are `count` of them. */
export function valuesOf(body: unknown, i: number, count: number): unknown[] | undefined {
  const v = Array.isArray(body) ? (body[i] as unknown) : undefined;
  return Array.isArray(v) && v.length === count ? v : undefined;
}
