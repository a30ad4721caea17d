// A digest of record directories: their listings (with each image's lstat),
// the records parsed, and what their owner made of them (the file backend:
// its inspection), read at a clean shutdown, so that the next start reads one
// file instead of 10,000 records and 10,000 images and inspects nothing.
//
// Why it can be trusted, and when it is not:
// - It exists only between a clean shutdown and the next start: written after
//   every RPC finished and every background loop stopped (app.ts), and
//   removed (durably) by the start before its first change. Every change
//   sinter makes, and every crash, happens while there is none.
// - It is read from the files themselves, not from memory, and written only
//   if the directory did not change while it was read. The file backend
//   writes one only when its inspection plans no repair, so a start from a
//   digest never removes anything on the digest's word.
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
import { closeSync, fsyncSync, lstatSync, openSync, readdirSync, readFileSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { readSmallFileSync } from './read-small.js';
import { isAtomicTemp } from './temp-name.js';

export const DIGEST_FORMAT = 'sinter-dir-digest/3';

/** A directory's stamp: changes with every create, rename and unlink in it. Undefined when it cannot be read. */
function dirStamp(dir: string): string | undefined {
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

interface DigestHeader {
  format: string;
  version: string;
  dirs: { dir: string; stamp: string }[];
  values: number;
}

/** A directory's listing as the digest holds it. */
export interface DigestListing {
  names: string[];
  kinds: number[];
  sizes: number[];
}

/**
 * The digest's text, in the order the start-up worker needs it:
 * 1. a short header: format, writer's version, each directory's stamp, the
 *    number of values; the worker checks it first;
 * 2. each directory's listing (names, kinds, sizes), which the worker
 *    compares with the directory's own;
 * 3. `extra`: what the owner (the file backend) made of the records, for the
 *    main thread;
 * 4. `values`, one JSON text per line, which the worker passes on in chunks
 *    for the main thread to parse while it lists the directories.
 * All ASCII (JSON escapes for the rest), so every piece is a one-byte string,
 * which passes between threads as a plain copy.
 */
export function digestText(version: string, listings: readonly (DigestListing & { dir: string; stamp: string })[], extra: unknown, values: readonly unknown[]): string {
  const header: DigestHeader = { format: DIGEST_FORMAT, version, dirs: listings.map((p) => ({ dir: p.dir, stamp: p.stamp })), values: values.length };
  const lines = listings.map((p) => ({ names: p.names, kinds: p.kinds, sizes: p.sizes }));
  // JSON.stringify escapes every newline inside a value, so each value is one line.
  return ascii(`${JSON.stringify(header)}\n${JSON.stringify(lines)}\n${JSON.stringify(extra)}\n${values.map((v) => `${JSON.stringify(v)}\n`).join('')}`);
}

const ascii = (json: string) => json.replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);

/** What a name other than a record's is, per lstat: 0 lstat failed or not taken (read it again live), 1 regular file, 2 anything else, 3 gone (ENOENT). */
export const KIND = { retry: 0, file: 1, other: 2, gone: 3 } as const;

/** A name's KIND and size per lstat; a failed lstat (other than ENOENT) is KIND.retry, for the start to look again live. */
export function kindOf(path: string): { kind: number; size: number } {
  try {
    const st = lstatSync(path, { throwIfNoEntry: false });
    if (!st) return { kind: KIND.gone, size: 0 };
    return { kind: st.isFile() ? KIND.file : KIND.other, size: st.size };
  } catch {
    return { kind: KIND.retry, size: 0 };
  }
}

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
      ({ kind, size } = kindOf(`${dir}/${name}`));
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

/** A digest file read by the start-up worker: its text, its header, where its lines begin. */
export interface OpenedDigest {
  text: string;
  dirs: DigestHeader['dirs'];
  values: number;
  listingsAt: number;
  extraAt: number;
  valuesAt: number;
}

/** For the start-up worker: the digest at `path` if it exists, is whole enough to read, and this version wrote it. */
export function openDigest(path: string, version: string): OpenedDigest | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'latin1');
  } catch {
    return undefined;
  }
  const nl1 = text.indexOf('\n');
  const nl2 = nl1 < 0 ? -1 : text.indexOf('\n', nl1 + 1);
  const nl3 = nl2 < 0 ? -1 : text.indexOf('\n', nl2 + 1);
  if (nl3 < 0) return undefined;
  let header: DigestHeader;
  try {
    header = JSON.parse(text.slice(0, nl1)) as DigestHeader;
  } catch {
    return undefined;
  }
  if (header?.format !== DIGEST_FORMAT || header.version !== version || !Array.isArray(header.dirs) || !Number.isSafeInteger(header.values) || header.values < 0) return undefined;
  if (!header.dirs.every((d) => typeof d?.dir === 'string' && typeof d.stamp === 'string')) return undefined;
  return { text, dirs: header.dirs, values: header.values, listingsAt: nl1 + 1, extraAt: nl2 + 1, valuesAt: nl3 + 1 };
}

/**
 * For the start-up worker, once it has read the digest: removes it and makes
 * that durable, off the main thread, so the start's own removal (before its
 * first change) finds it gone. A digest is good for one start only.
 */
export function dropDigest(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    return;
  }
  const fd = openSync(dirname(path), 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Whether the digest is of exactly these directories, in this order, each with its stamp unchanged. */
export const holdsFor = (d: OpenedDigest, dirs: readonly string[]) => d.dirs.length === dirs.length && d.dirs.every((x, i) => x.dir === dirs[i] && dirStamp(x.dir) === x.stamp);

/** The directories' listings, in the header's order; undefined when the line is damaged. */
export function digestListings(d: OpenedDigest): DigestListing[] | undefined {
  try {
    const l = JSON.parse(d.text.slice(d.listingsAt, d.extraAt - 1)) as DigestListing[];
    const sound = (x: DigestListing) => Array.isArray(x?.names) && Array.isArray(x.kinds) && Array.isArray(x.sizes) && x.kinds.length === x.names.length && x.sizes.length === x.names.length;
    return Array.isArray(l) && l.length === d.dirs.length && l.every(sound) ? l : undefined;
  } catch {
    return undefined;
  }
}

/** The owner's line, as text (the main thread parses it). */
export const digestExtra = (d: OpenedDigest) => d.text.slice(d.extraAt, d.valuesAt - 1);

/**
 * The values as JSON array texts of up to `size` values each, with the first
 * one's index; found by line, not parsed. Stops at a truncated line: the
 * main thread then misses values and does without the digest.
 */
export function* digestValueChunks(d: OpenedDigest, size: number): Generator<{ from: number; text: string }> {
  let pos = d.valuesAt;
  for (let from = 0; from < d.values; from += size) {
    const start = pos;
    const k = Math.min(size, d.values - from);
    for (let j = 0; j < k; j++) {
      const end = d.text.indexOf('\n', pos);
      if (end < 0) return;
      pos = end + 1;
    }
    yield { from, text: `[${d.text.slice(start, pos - 1).replaceAll('\n', ',')}]` };
  }
}

/** Whether a directory's sorted listing is exactly the names a digest lists. */
export const sameNames = (listing: readonly string[], names: readonly string[]) => listing.length === names.length && listing.every((n, j) => n === names[j]);
