import type { Finding } from '../../contracts/finding.js';
import type { Inspection, SnapshotRecord, VolumeRecord } from '../backend.js';
import { isSnapshotRecord, isVolumeRecord } from '../file/records.js';
import { idOfLv } from './names.js';
import { lvHealth, type LvInfo, type VgInfo } from './report.js';
import { decodeTags, splitTags } from './tags.js';

/** One LV's record as read from its tags, with what the next write needs. */
export interface LvRecordState {
  lv: LvInfo;
  generation: number;
  tags: string[];
}

/**
 * A repair start-up makes for one `restart` finding (the crash rules, once):
 * inspectLvm computes them, LvmBackend.start() applies them, fsck shows them.
 */
export type LvmRepair =
  | { do: 'drop-stale-tags'; lv: string; tags: string[] }
  | { do: 'roll-back-create'; what: 'volume' | 'snapshot'; id: string; name: string; lv: string }
  | { do: 'finish-delete'; what: 'volume' | 'snapshot'; id: string; name: string; lv: string }
  | { do: 'record-size'; id: string; lv: string; sizeBytes: number };

export interface LvmInspection extends Inspection {
  plan: LvmRepair[];
  /** What a start serves (after the plan): records neither interrupted nor unreadable. */
  serve: { volumes: VolumeRecord[]; snapshots: SnapshotRecord[] };
  /** Each served record's LV and tag generation. */
  lvs: Map<string, LvRecordState>;
  /** The thin pool, when the volume group has it. */
  pool?: LvInfo;
}

export interface LvmLayout {
  backend: string;
  vgName: string;
  thinPool: string;
  lvmType: 'thin' | 'thick' | 'auto';
  vg: VgInfo | undefined;
  lvs: LvInfo[];
}

const roundUp = (n: number, unit: number) => Math.ceil(n / unit) * unit;

/**
 * The LVM backend's consistency check, read-only and pure (the LVs as lvs
 * reported them): what start() repairs and what it leaves for a person.
 *
 * Crash rules: the record is written in the same LVM commit as the change it
 * describes, so an LV with its record in `creating` was never reported to the
 * CO (rolled back: removed), one in `deleting` is finished (cleared as
 * configured and removed), an LV larger than its record is a finished expand
 * whose record update was lost (recorded), and tags of an older generation
 * beside the current ones are dropped.
 */
export function inspectLvm(l: LvmLayout): LvmInspection {
  const findings: Finding[] = [];
  const plan: LvmRepair[] = [];
  const serve: LvmInspection['serve'] = { volumes: [], snapshots: [] };
  const states = new Map<string, LvRecordState>();
  const vgSubject = `volume group ${l.vgName}`;
  if (!l.vg) {
    findings.push({ kind: 'missing-volume-group', subject: vgSubject, detail: `volume group ${l.vgName} does not exist (or its disks are missing): create it, or fix backends[].volumeGroup`, remedy: 'operator' });
    return { summary: `no volume group ${l.vgName}`, findings, volumes: [], plan, serve, lvs: states };
  }
  const pool = l.lvs.find((x) => x.name === l.thinPool && x.segtype === 'thin-pool');
  if (l.lvmType === 'thin' && !pool)
    findings.push({ kind: 'missing-thin-pool', subject: `${l.vgName}/${l.thinPool}`, detail: `lvmType is thin but volume group ${l.vgName} has no thin pool ${l.thinPool}: create it (lvcreate --type thin-pool) or fix thinPool`, remedy: 'operator' });
  const poolHealth = pool && lvHealth(pool.attr);
  if (pool && poolHealth) findings.push({ kind: 'thin-pool-unhealthy', subject: `${l.vgName}/${pool.name}`, detail: `thin pool is ${poolHealth}: every volume in it may stop; extend it (lvextend) or repair it (lvconvert --repair)`, remedy: 'operator' });

  const extent = l.vg.extentBytes;
  let volumes = 0;
  let snapshots = 0;
  for (const lv of l.lvs) {
    const named = idOfLv(lv.name, l.backend);
    if (!named) continue;
    const subject = `${named.kind} ${named.id}`;
    const tags = splitTags(lv.tags);
    const dec = decodeTags(tags);
    if (dec.stale.length > 0) {
      plan.push({ do: 'drop-stale-tags', lv: lv.name, tags: dec.stale });
      findings.push({ kind: 'stale-record-tags', subject, detail: `LV ${lv.name} carries ${dec.stale.length} tag(s) of an older record generation (an update a crash cut short); a start removes them`, remedy: 'restart' });
    }
    if (dec.record === undefined) {
      findings.push({
        kind: dec.unreadable ? 'unreadable-record' : 'orphan-lv',
        subject,
        detail: dec.unreadable
          ? `LV ${l.vgName}/${lv.name}: its record tags cannot be read (${dec.unreadable}); left in place, invisible to the CO`
          : `LV ${l.vgName}/${lv.name} is named like a sinter ${named.kind} but carries no record; sinter never removes it on its own (it may hold data)`,
        remedy: 'operator',
      });
      continue;
    }
    const rec = dec.record as VolumeRecord | SnapshotRecord;
    const valid = named.kind === 'volume' ? isVolumeRecord(rec) : isSnapshotRecord(rec);
    if (!valid || rec.id !== named.id) {
      findings.push({ kind: 'unreadable-record', subject, detail: `LV ${l.vgName}/${lv.name}: its record does not describe ${named.id}; left in place`, remedy: 'operator' });
      continue;
    }
    const name = `(${JSON.stringify(rec.name)})`;
    if (rec.state === 'creating') {
      plan.push({ do: 'roll-back-create', what: named.kind, id: rec.id, name: rec.name, lv: lv.name });
      findings.push({ kind: 'interrupted-create', subject, detail: `create ${name} was interrupted before the CO heard of it; a start rolls it back (removes LV ${lv.name})`, remedy: 'restart' });
      continue;
    }
    if (rec.state === 'deleting') {
      plan.push({ do: 'finish-delete', what: named.kind, id: rec.id, name: rec.name, lv: lv.name });
      findings.push({ kind: 'interrupted-delete', subject, detail: `delete ${name} was interrupted; a start finishes it (clears it as configured and removes LV ${lv.name})`, remedy: 'restart' });
      continue;
    }
    states.set(rec.id, { lv, generation: dec.generation!, tags: tags.filter((t) => !dec.stale.includes(t)) });
    if (named.kind === 'volume') {
      volumes++;
      serve.volumes.push(rec as VolumeRecord);
    } else {
      snapshots++;
      serve.snapshots.push(rec as SnapshotRecord);
    }
    if (rec.state === 'error' || rec.state === 'error_deleting') {
      findings.push({ kind: rec.state === 'error' ? 'failed-create' : 'failed-delete', subject, detail: `${named.kind} ${name}: ${rec.error ?? rec.state}; the CO's retry clears it`, remedy: 'retry' });
      continue;
    }
    if (named.kind === 'snapshot') {
      const h = lvHealth(lv.attr);
      if (h) findings.push({ kind: 'snapshot-invalid', subject, detail: `snapshot LV ${lv.name} is ${h}: its data is lost; delete the snapshot`, remedy: 'operator' });
      continue;
    }
    const v = rec as VolumeRecord;
    if (v.state !== 'available' && v.state !== 'in-use') {
      findings.push({ kind: 'unknown-state', subject, detail: `record ${name} has state "${String(v.state)}", which sinter never writes`, remedy: 'operator' });
      continue;
    }
    const want = roundUp(v.sizeBytes, extent);
    if (lv.sizeBytes < v.sizeBytes)
      findings.push({ kind: 'lv-too-small', subject, detail: `LV ${lv.name} is ${lv.sizeBytes} bytes, smaller than the recorded ${v.sizeBytes} (reduced outside sinter?)`, remedy: 'operator' });
    else if (lv.sizeBytes > want) {
      plan.push({ do: 'record-size', id: v.id, lv: lv.name, sizeBytes: lv.sizeBytes });
      findings.push({ kind: 'interrupted-expand', subject, detail: `LV is ${lv.sizeBytes} bytes, the record says ${v.sizeBytes}: an expand was interrupted after lvextend; a start records the new size`, remedy: 'restart' });
    }
  }
  const kind = pool ? `thin pool ${pool.name}` : 'no thin pool';
  const summary = `${volumes} volumes, ${snapshots} snapshots in volume group ${l.vgName} (${kind})`;
  return { summary, findings, volumes: serve.volumes, plan, serve, lvs: states, pool };
}
