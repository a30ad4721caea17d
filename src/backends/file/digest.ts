import { promises as fs, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { isAtomicTemp, removeFileDurable, writeFileAtomic } from '../../store/atomic-file.js';
import { digestText, readDigestPart, type DigestPart } from '../../store/dir-digest.js';
import { VERSION } from '../../version.js';
import { fileBackendDirs } from './layout.js';
import { READ_AHEAD_MIN_DIR_BYTES } from './read-ahead.js';

/**
 * At a clean shutdown: the digest of both record directories for the next
 * start to read instead of every record file (store/dir-digest.ts has why it
 * can be trusted). Only where the next start reads ahead at all; a small
 * directory is read as fast as its digest. Never throws: without a digest
 * the next start reads the files, as after a crash.
 */
export async function writeRecordDigest(dataDir: string, log: Logger, minDirBytes = READ_AHEAD_MIN_DIR_BYTES): Promise<void> {
  const d = fileBackendDirs(dataDir);
  try {
    if ((statSync(d.volumes, { throwIfNoEntry: false })?.size ?? 0) < minDirBytes) return;
    const t0 = performance.now();
    const parts: DigestPart[] = [];
    for (const dir of [d.volumes, d.snapshots]) {
      const part = await readDigestPart(dir, '.json', sleep);
      if (!part) {
        log.warn({ dir }, 'record directory changed while its digest was read (something else writes it?); the next start reads every record');
        return;
      }
      parts.push(part);
    }
    await writeFileAtomic(d.digest, digestText(VERSION, parts));
    log.info({ records: parts.reduce((n, p) => n + p.names.length, 0), ms: Math.round(performance.now() - t0) }, 'wrote the record digest for the next start');
  } catch (e) {
    log.warn({ err: (e as Error).message }, 'could not write the record digest; the next start reads every record');
  }
}

/**
 * At start, before the first change to the records: removes the digest (and
 * any temp file of one a crash cut short), so that a crash from here on
 * leaves none and the next start reads the files.
 */
export async function clearRecordDigest(dataDir: string): Promise<void> {
  const path = fileBackendDirs(dataDir).digest;
  await removeFileDurable(path);
  const prefix = `.${basename(path)}.`;
  for (const name of await fs.readdir(dirname(path))) if (name.startsWith(prefix) && isAtomicTemp(name)) await fs.rm(join(dirname(path), name), { force: true });
}
