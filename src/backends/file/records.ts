import type { SnapshotRecord, VolumeRecord } from '../backend.js';
import { SNAPSHOT_ID_RE, VOLUME_ID_RE } from '../ids.js';

/** The shape a volume record file must have to be loaded (anything else is reported as unreadable). */
export function isVolumeRecord(v: unknown): v is VolumeRecord {
  const r = v as VolumeRecord;
  return typeof r === 'object' && r !== null && typeof r.id === 'string' && VOLUME_ID_RE.test(r.id) && typeof r.name === 'string' &&
    typeof r.sizeBytes === 'number' && typeof r.state === 'string' && Array.isArray(r.attachments);
}

export function isSnapshotRecord(v: unknown): v is SnapshotRecord {
  const r = v as SnapshotRecord;
  return typeof r === 'object' && r !== null && typeof r.id === 'string' && SNAPSHOT_ID_RE.test(r.id) && typeof r.name === 'string' &&
    typeof r.sourceVolumeId === 'string' && typeof r.state === 'string';
}
