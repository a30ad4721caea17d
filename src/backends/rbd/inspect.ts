import type { Finding } from '../../contracts/finding.js';
import type { Inspection } from '../backend.js';
import { backendOfGroupSnapshot, GROUP_SNAPSHOT_ID_RE } from '../ids.js';
import { classifyImage, TEMP_SNAP_PREFIX } from './names.js';
import type { RbdPool } from './pool.js';
import { parseSnapshot, parseVolume, SNAPSHOT_META_KEY, VOLUME_META_KEY, type StoredSnapshot, type StoredVolume } from './records.js';

/**
 * A repair start-up makes for one `restart` finding; inspect computes them,
 * RbdBackend.start() applies them, `sinter fsck` shows them (the file
 * backend's scheme, src/backends/file/inspect.ts).
 */
export type RbdRepair =
  | { do: 'roll-back-create' | 'finish-delete'; what: 'volume' | 'snapshot'; image: string; id: string }
  | { do: 'record-size'; id: string; sizeBytes: number }
  | { do: 'remove-temp-snap'; image: string; snap: string }
  | { do: 'purge-trash'; trashId: string; name: string }
  | { do: 'roll-back-group'; group: string; snapshotIds: string[] };

export interface RbdInspection extends Inspection {
  plan: RbdRepair[];
  serve: { volumes: StoredVolume[]; snapshots: StoredSnapshot[] };
}

/** How many metadata reads run at once: each is an rbd process (~150 ms). */
const PARALLEL = 8;

async function mapLimit<T, R>(items: T[], n: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!);
      }
    }),
  );
  return out;
}

/**
 * The rbd backend's consistency check, read-only: this backend's images in
 * the pool and their records (image metadata), stated as findings, with the
 * plan a start carries out. Images whose names are not this backend's are
 * never looked at (other backends and users may share the pool).
 */
export async function inspectRbdPool(backend: string, pool: RbdPool): Promise<RbdInspection> {
  const findings: Finding[] = [];
  const plan: RbdRepair[] = [];
  const serve: RbdInspection['serve'] = { volumes: [], snapshots: [] };
  const { images, snaps } = await pool.list();
  const ours = images.flatMap((e) => {
    const c = classifyImage(e.image, backend);
    return c ? [{ ...c, entry: e }] : [];
  });
  const metas = await mapLimit(ours, PARALLEL, (o) => pool.meta(o.entry.image));
  const names = new Set(images.map((e) => e.image));

  for (const [i, o] of ours.entries()) {
    const meta = metas[i];
    if (meta === undefined) continue; // removed meanwhile
    const image = o.entry.image;
    const subject = `${o.kind} ${o.id}`;
    const raw = meta[o.kind === 'volume' ? VOLUME_META_KEY : SNAPSHOT_META_KEY];
    if (raw === undefined) {
      findings.push({
        kind: 'interrupted-create',
        subject,
        detail: `image ${pool.spec(image)} has no record: its create was interrupted before the record was written (the CO never heard of it); a start removes the image`,
        remedy: 'restart',
      });
      plan.push({ do: 'roll-back-create', what: o.kind, image, id: o.id });
      continue;
    }
    const rec = o.kind === 'volume' ? parseVolume(raw) : parseSnapshot(raw);
    if (!rec || rec.id !== o.id) {
      findings.push({ kind: 'unreadable-record', subject, detail: `the record in image-meta ${o.kind === 'volume' ? VOLUME_META_KEY : SNAPSHOT_META_KEY} of ${pool.spec(image)} cannot be read; left in place, the ${o.kind} is invisible to the CO`, remedy: 'operator' });
      continue;
    }
    if (rec.state === 'deleting') {
      findings.push({ kind: 'interrupted-delete', subject, detail: `delete of ${o.kind} ${JSON.stringify(rec.name)} was interrupted; a start finishes it (removes the image, or moves it to the trash while clones need it)`, remedy: 'restart' });
      plan.push({ do: 'finish-delete', what: o.kind, image, id: o.id });
      continue;
    }
    if (rec.state === 'creating') {
      findings.push({ kind: 'interrupted-create', subject, detail: `create of ${o.kind} ${JSON.stringify(rec.name)} was interrupted; a start rolls it back`, remedy: 'restart' });
      plan.push({ do: 'roll-back-create', what: o.kind, image, id: o.id });
      continue;
    }
    if (o.kind === 'volume') {
      const v = rec as StoredVolume;
      serve.volumes.push(v);
      if (v.state === 'error' || v.state === 'error_deleting')
        findings.push({ kind: v.state === 'error' ? 'failed-create' : 'failed-delete', subject, detail: `volume ${JSON.stringify(v.name)}: ${v.error ?? v.state}; the CO's retry clears it`, remedy: 'retry' });
      else if (o.entry.size > v.sizeBytes) {
        findings.push({ kind: 'interrupted-expand', subject, detail: `image is ${o.entry.size} bytes, the record says ${v.sizeBytes}: an expand was interrupted after growing the image; a start records the new size`, remedy: 'restart' });
        plan.push({ do: 'record-size', id: v.id, sizeBytes: o.entry.size });
      } else if (o.entry.size < v.sizeBytes)
        findings.push({ kind: 'image-too-small', subject, detail: `image is ${o.entry.size} bytes, smaller than the recorded ${v.sizeBytes}`, remedy: 'operator' });
    } else {
      serve.snapshots.push(rec as StoredSnapshot);
    }
  }

  // A temporary clone snapshot whose clone never came to be (a crash between the two steps).
  for (const s of snaps) {
    if (!s.snapshot.startsWith(TEMP_SNAP_PREFIX) || !classifyImage(s.image, backend)) continue;
    const target = s.snapshot.slice(TEMP_SNAP_PREFIX.length);
    if (names.has(target) && plan.some((p) => p.do === 'roll-back-create' && p.image === target)) {
      plan.push({ do: 'remove-temp-snap', image: s.image, snap: s.snapshot });
      continue; // the target's roll-back is the finding
    }
    findings.push({ kind: 'stray-temp', subject: `${pool.spec(s.image)}@${s.snapshot}`, detail: `temporary snapshot of a clone ${names.has(target) ? 'that was finished' : 'that was never made'}: a crash interrupted the clone; a start removes it`, remedy: 'restart' });
    plan.push({ do: 'remove-temp-snap', image: s.image, snap: s.snapshot });
  }

  // A temporary rbd group lives only while a group snapshot is cut: one left over is an interrupted create.
  for (const g of await pool.groups()) {
    if (backendOfGroupSnapshot(g) !== backend || !GROUP_SNAPSHOT_ID_RE.test(g)) continue;
    const members = serve.snapshots.filter((s) => s.groupSnapshotId === g);
    serve.snapshots = serve.snapshots.filter((s) => s.groupSnapshotId !== g);
    // Member images a copy had begun but not recorded are already interrupted creates above.
    const ids = [...new Set([...members.map((m) => m.id), ...(members[0]?.rbd?.group?.snapshotIds ?? [])])];
    findings.push({ kind: 'interrupted-group-snapshot', subject: `group snapshot ${g}`, detail: `rbd group ${pool.spec(g)} is left from a group snapshot that was being cut (${members.length} members recorded); a start removes its member snapshots and the group, and the CO's retry cuts it again`, remedy: 'restart' });
    plan.push({ do: 'roll-back-group', group: g, snapshotIds: ids });
  }

  // This backend's images in the trash wait for their last clone; a start purges those no clone needs any more.
  for (const t of await pool.trash()) if (classifyImage(t.name, backend)) plan.push({ do: 'purge-trash', trashId: t.id, name: t.name });

  const summary = `${serve.volumes.length} volumes, ${serve.snapshots.length} snapshots of backend "${backend}" in pool ${pool.pool}`;
  return { summary, findings, volumes: serve.volumes, plan, serve };
}
