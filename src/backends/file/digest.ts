import { promises as fs, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { isAtomicTemp, removeFileDurable, writeFileAtomic } from '../../store/atomic-file.js';
import type { Finding } from '../../contracts/finding.js';
import { digestText, readDigestPart, type DigestPart } from '../../store/dir-digest.js';
import { snapshotOfPart, type DigestRead } from '../../store/dir-snapshot.js';
import type { SnapshotRecord, VolumeRecord } from '../backend.js';
import { inspectFileBackend, type FileBackendLayout, type FileInspection } from './inspect.js';
import { isSnapshotRecord, isVolumeRecord } from './records.js';
import { VERSION } from '../../version.js';
import { fileBackendDirs } from './layout.js';
import { READ_AHEAD_MIN_DIR_BYTES } from './read-ahead.js';

/**
 * What the digest's owner line holds: the inspection of the records at the
 * clean shutdown, less the records it serves (the digest's values: volumes,
 * then snapshots). Written only with an empty repair plan, so that a start
 * from it never repairs (removes) anything on the digest's word.
 */
interface DigestedInspection {
  backend: string;
  summary: string;
  findings: Finding[];
  foreign: string[];
  /** How many of the values are volumes (the rest are snapshots). */
  volumes: number;
}

/**
 * At a clean shutdown: the digest of both record directories, with what
 * inspect made of them, for the next start to use instead of reading every
 * record file and inspecting them again (store/dir-digest.ts has why it can
 * be trusted). Only where the next start reads ahead at all (a small
 * directory is read as fast as its digest), and only when inspect plans no
 * repair. Never throws: without a digest the next start reads the files, as
 * after a crash.
 */
export async function writeRecordDigest(layout: FileBackendLayout, log: Logger, minDirBytes = READ_AHEAD_MIN_DIR_BYTES): Promise<void> {
  const d = fileBackendDirs(layout.dataDir);
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
    const ins = await inspectFileBackend({ ...layout, pre: { volumes: snapshotOfPart(parts[0]!, '.json'), snapshots: snapshotOfPart(parts[1]!, '.json') } });
    if (ins.plan.length) {
      log.info({ repairs: ins.plan.length }, 'no record digest: the next start has repairs to make, and makes them from the files');
      return;
    }
    const extra: DigestedInspection = { backend: layout.name, summary: ins.summary, findings: ins.findings, foreign: ins.foreign, volumes: ins.serve.volumes.length };
    await writeFileAtomic(d.digest, digestText(VERSION, parts, extra, [...ins.serve.volumes, ...ins.serve.snapshots]));
    log.info({ volumes: ins.serve.volumes.length, snapshots: ins.serve.snapshots.length, ms: Math.round(performance.now() - t0) }, 'wrote the record digest for the next start');
  } catch (e) {
    log.warn({ err: (e as Error).message }, 'could not write the record digest; the next start reads every record');
  }
}

/**
 * The inspection a start takes from a digest the read-ahead found still
 * holding, checked as a start checks each record file (shape, backend); undefined
 * when anything in it is not what writeRecordDigest writes, and the start
 * then reads the files.
 */
export function inspectionFromDigest(read: DigestRead, backend: string): FileInspection | undefined {
  const x = read.extra as Partial<DigestedInspection> | null;
  if (!x || x.backend !== backend || typeof x.summary !== 'string' || !Array.isArray(x.findings) || !Array.isArray(x.foreign) || !Number.isSafeInteger(x.volumes)) return undefined;
  const n = x.volumes!;
  if (n < 0 || n > read.values.length) return undefined;
  const volumes: VolumeRecord[] = [];
  const snapshots: SnapshotRecord[] = [];
  for (let i = 0; i < read.values.length; i++) {
    const v = read.values[i];
    if (i < n) {
      if (!isVolumeRecord(v) || v.backend !== backend) return undefined;
      volumes.push(v);
    } else {
      if (!isSnapshotRecord(v)) return undefined;
      snapshots.push(v);
    }
  }
  return { summary: x.summary, findings: x.findings, volumes, plan: [], serve: { volumes, snapshots }, foreign: x.foreign };
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
