import { lstatSync } from 'node:fs';
import { join } from 'node:path';
import type { Finding } from '../../contracts/finding.js';
import { snapshotStat, type DirSnapshot } from '../../store/dir-snapshot.js';
import type { RecordStore, ScanReport } from '../../store/record-store.js';
import type { Inspection, SnapshotRecord, VolumeRecord } from '../backend.js';
import { isSnapshotRecord, isVolumeRecord } from './records.js';

export interface FileBackendLayout {
  name: string;
  dataDir: string;
  volumes: RecordStore<VolumeRecord>;
  snapshots: RecordStore<SnapshotRecord>;
  /** The two record directories as read ahead at start-up (dir-snapshot.ts); where absent, they are read here. */
  pre?: { volumes?: DirSnapshot; snapshots?: DirSnapshot };
}

/**
 * A repair start-up makes for one `restart` finding: the crash rules, once.
 * inspect computes them; FileBackend.start() applies them; fsck shows them.
 */
export type Repair =
  | { do: 'remove-temp'; path: string }
  | { do: 'roll-back-create' | 'finish-delete'; what: 'volume' | 'snapshot'; id: string; name: string }
  | { do: 'record-size'; id: string; sizeBytes: number };

export interface FileInspection extends Inspection {
  /** What a start does, in order. */
  plan: Repair[];
  /** The records a start serves (after the plan): this backend's, neither interrupted nor unreadable. */
  serve: { volumes: VolumeRecord[]; snapshots: SnapshotRecord[] };
  /** Records of another backend found among ours (paths): a start ignores them. */
  foreign: string[];
}

// A template, not path.join: ids are checked names and dir is the store's own; join cost ~10 ms per 10,000 calls at start-up.
const imageOf = (dir: string, id: string) => `${dir}/${id}.img`;

// Synchronous like the record reads (RecordStore.scan): inspect runs in start-up
// before the plugin serves, or in fsck's own process; a thread-pool round trip
// per image made start-up at 10,000 volumes slow.
function statOf(path: string) {
  try {
    return lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

async function scanOrMissing<T extends { id: string }>(store: RecordStore<T>, valid: (v: unknown) => v is T, out: Finding[], what: string, pre?: DirSnapshot) {
  try {
    return await store.scan(valid, pre);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    out.push({ kind: 'missing-directory', subject: store.dir, detail: `the ${what} directory does not exist; a start creates it empty`, remedy: 'restart' });
    return undefined;
  }
}

function commonFindings<T>(scan: ScanReport<T>, dir: string, out: Finding[], plan: Repair[]): void {
  for (const t of scan.temps) plan.push({ do: 'remove-temp', path: join(dir, t) });
  for (const t of scan.temps)
    out.push({ kind: 'stray-temp', subject: join(dir, t), detail: 'temp file of a record write a crash interrupted; a start removes it (the record it was replacing still stands)', remedy: 'restart' });
  for (const c of scan.corrupt)
    out.push({ kind: 'unreadable-record', subject: join(dir, c), detail: 'record file cannot be parsed or does not match its name; left in place, the object it describes is invisible to the CO', remedy: 'operator' });
}

/**
 * The file backend's consistency check, read-only: the same rules start()
 * applies (FileBackend.start), stated as findings, plus what start() leaves for
 * a person, with the plan start() carries out. Safe while sinter runs, though a
 * record written meanwhile may show as interrupted.
 */
export async function inspectFileBackend(b: FileBackendLayout): Promise<FileInspection> {
  const out: Finding[] = [];
  const plan: Repair[] = [];
  const serve: FileInspection['serve'] = { volumes: [], snapshots: [] };
  const foreign: string[] = [];
  const volDir = b.volumes.dir;
  const snapDir = b.snapshots.dir;
  if (!statOf(b.dataDir)) {
    // Not repaired by a start: it would serve an empty backend where a disk may simply not be mounted.
    out.push({ kind: 'missing-directory', subject: b.dataDir, detail: 'the data directory does not exist: a disk not mounted, or a backend never started (a start creates it empty)', remedy: 'operator' });
    return { summary: `no data directory at ${b.dataDir}`, findings: out, volumes: [], plan, serve, foreign };
  }

  const vs = await scanOrMissing(b.volumes, isVolumeRecord, out, 'volumes', b.pre?.volumes);
  const known = new Set<string>();
  if (vs) {
    commonFindings(vs, volDir, out, plan);
    for (const rec of vs.records) {
      // Per record only what the checks need: at 10,000 records each string made here showed in start-up.
      if (rec.state === 'available' || rec.state === 'in-use') {
        if (rec.backend === b.name && (rec.state === 'in-use') === rec.attachments.length > 0) {
          const st = snapshotStat(b.pre?.volumes, volDir, `${rec.id}.img`);
          if (st?.isFile() && st.size === rec.sizeBytes) {
            known.add(rec.id);
            serve.volumes.push(rec);
            continue;
          }
        }
      }
      const img = imageOf(volDir, rec.id);
      const subject = `volume ${rec.id}`;
      const named = () => `(${JSON.stringify(rec.name)})`; // only for a finding
      if (rec.backend !== b.name) {
        out.push({ kind: 'foreign-record', subject, detail: `record ${named()} names backend "${rec.backend}", not "${b.name}"; a start ignores it`, remedy: 'operator' });
        foreign.push(`${b.volumes.pathOf(rec.id)} (belongs to backend "${rec.backend}")`);
        continue;
      }
      if (rec.state === 'creating') {
        out.push({ kind: 'interrupted-create', subject, detail: `create ${named()} was interrupted before the CO heard of it; a start rolls it back (removes the record and any partial image)`, remedy: 'restart' });
        plan.push({ do: 'roll-back-create', what: 'volume', id: rec.id, name: rec.name });
        continue;
      }
      if (rec.state === 'deleting') {
        out.push({ kind: 'interrupted-delete', subject, detail: `delete ${named()} was interrupted; a start finishes it (removes the image and the record)`, remedy: 'restart' });
        plan.push({ do: 'finish-delete', what: 'volume', id: rec.id, name: rec.name });
        continue;
      }
      known.add(rec.id);
      serve.volumes.push(rec);
      if (rec.state === 'error') {
        out.push({ kind: 'failed-create', subject, detail: `create ${named()} failed: ${rec.error ?? 'no reason recorded'}; the CO's CreateVolume retry (or a DeleteVolume) clears it`, remedy: 'retry' });
        continue;
      }
      if (rec.state === 'error_deleting') {
        out.push({ kind: 'failed-delete', subject, detail: `delete ${named()} failed: ${rec.error ?? 'no reason recorded'}; the CO's DeleteVolume retry finishes it`, remedy: 'retry' });
        continue;
      }
      if (rec.state !== 'available' && rec.state !== 'in-use') {
        out.push({ kind: 'unknown-state', subject, detail: `record ${named()} has state "${String(rec.state)}", which sinter never writes`, remedy: 'operator' });
        continue;
      }
      if ((rec.state === 'in-use') !== rec.attachments.length > 0)
        out.push({ kind: 'state-mismatch', subject, detail: `state is ${rec.state} but ${rec.attachments.length} publishes are recorded`, remedy: 'operator' });
      const st = snapshotStat(b.pre?.volumes, volDir, `${rec.id}.img`);
      if (!st) out.push({ kind: 'image-missing', subject, detail: `${rec.state} volume ${named()} has no image file ${img}`, remedy: 'operator' });
      else if (!st.isFile()) out.push({ kind: 'image-not-a-file', subject, detail: `${img} is not a regular file`, remedy: 'operator' });
      else if (st.size < rec.sizeBytes)
        out.push({ kind: 'image-too-small', subject, detail: `image is ${st.size} bytes, smaller than the recorded ${rec.sizeBytes}`, remedy: 'operator' });
      else if (st.size > rec.sizeBytes) {
        out.push({ kind: 'interrupted-expand', subject, detail: `image is ${st.size} bytes, the record says ${rec.sizeBytes}: an expand was interrupted after growing the image; a start records the new size`, remedy: 'restart' });
        plan.push({ do: 'record-size', id: rec.id, sizeBytes: st.size });
      }
    }
  }

  const ss = await scanOrMissing(b.snapshots, isSnapshotRecord, out, 'snapshots', b.pre?.snapshots);
  const knownSnaps = new Set<string>();
  if (ss) {
    commonFindings(ss, snapDir, out, plan);
    for (const rec of ss.records) {
      const img = imageOf(snapDir, rec.id);
      const subject = `snapshot ${rec.id}`;
      const named = () => `(${JSON.stringify(rec.name)})`; // only for a finding
      if (rec.state === 'creating' || rec.state === 'deleting') {
        out.push({
          kind: rec.state === 'creating' ? 'interrupted-create' : 'interrupted-delete',
          subject,
          detail: `${rec.state === 'creating' ? 'snapshot' : 'delete of snapshot'} ${named()} was interrupted; a start ${rec.state === 'creating' ? 'rolls it back' : 'finishes it'}`,
          remedy: 'restart',
        });
        plan.push({ do: rec.state === 'creating' ? 'roll-back-create' : 'finish-delete', what: 'snapshot', id: rec.id, name: rec.name });
        continue;
      }
      knownSnaps.add(rec.id);
      serve.snapshots.push(rec);
      if (rec.state === 'error' || rec.state === 'error_deleting') {
        out.push({ kind: rec.state === 'error' ? 'failed-create' : 'failed-delete', subject, detail: `snapshot ${named()}: ${rec.error ?? rec.state}; the CO's retry clears it`, remedy: 'retry' });
        continue;
      }
      if (rec.state !== 'available') {
        out.push({ kind: 'unknown-state', subject, detail: `record ${named()} has state "${String(rec.state)}", which sinter never writes`, remedy: 'operator' });
        continue;
      }
      const st = snapshotStat(b.pre?.snapshots, snapDir, `${rec.id}.img`);
      if (!st) out.push({ kind: 'image-missing', subject, detail: `snapshot ${named()} has no image file ${img}`, remedy: 'operator' });
      else if (!st.isFile()) out.push({ kind: 'image-not-a-file', subject, detail: `${img} is not a regular file`, remedy: 'operator' });
      else if (st.size < rec.sizeBytes)
        out.push({ kind: 'image-too-small', subject, detail: `image is ${st.size} bytes, smaller than the recorded ${rec.sizeBytes}`, remedy: 'operator' });
    }
  }

  // Image files no record explains; a start lists them and leaves them (they may hold data).
  for (const [scan, dir, ids, what] of [
    [vs, volDir, known, 'volume'],
    [ss, snapDir, knownSnaps, 'snapshot'],
  ] as const) {
    if (!scan) continue;
    const interrupted = new Set<string>();
    for (const r of scan.records) if (!ids.has(r.id)) interrupted.add(r.id);
    for (const f of scan.others) {
      if (f.endsWith('.img')) {
        const id = f.slice(0, -4);
        if (ids.has(id) || interrupted.has(id)) continue;
        const path = join(dir, f);
        out.push({ kind: `orphan-${what === 'volume' ? 'image' : 'snapshot'}`, subject: path, detail: `${what} image with no record; sinter never deletes it on its own (it may hold data)`, remedy: 'operator' });
      } else {
        const path = join(dir, f);
        out.push({ kind: 'unknown-file', subject: path, detail: `a file sinter does not write lies among the ${what} records`, remedy: 'operator' });
      }
    }
  }
  const summary = `${vs?.records.length ?? 0} volume records, ${ss?.records.length ?? 0} snapshot records in ${b.dataDir}`;
  return { summary, findings: out, volumes: vs?.records ?? [], plan, serve, foreign };
}
