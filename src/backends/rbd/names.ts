import { SNAPSHOT_ID_RE, VOLUME_ID_RE } from '../ids.js';

// What sinter names in a pool. A volume is the image named by its volume id
// (`<backend>-<uuid>`); a snapshot is an image of its own, a clone of the
// volume (ceph-csi's layout: the volume can then be deleted while the
// snapshot lives, and clones of the snapshot come from a live image), named
// `<backend>.snap.<uuid>` ('@' would read as a snapshot in an image spec). A
// clone is made from a temporary RBD snapshot of its source named
// `sinter-clone.<target image>`, removed once the clone exists (clone
// format 2 keeps it in the trash namespace while the clone needs it).

export const TEMP_SNAP_PREFIX = 'sinter-clone.';

export function volumeImage(volumeId: string): string {
  return volumeId;
}

export function snapshotImage(snapshotId: string): string {
  const m = SNAPSHOT_ID_RE.exec(snapshotId);
  if (!m) throw new Error(`not a snapshot id: ${snapshotId}`);
  return `${m[1]}.snap.${m[2]}`;
}

const SNAP_IMAGE_RE = /^([a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?)\.snap\.([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/;

/** What an image name is to sinter: one of this backend's volumes or snapshots, or not sinter's. */
export function classifyImage(name: string, backend: string): { kind: 'volume'; id: string } | { kind: 'snapshot'; id: string } | undefined {
  const v = VOLUME_ID_RE.exec(name);
  if (v && v[1] === backend) return { kind: 'volume', id: name };
  const s = SNAP_IMAGE_RE.exec(name);
  if (s && s[1] === backend) return { kind: 'snapshot', id: `${s[1]}@${s[2]}` };
  return undefined;
}

export function tempSnapName(targetImage: string): string {
  return `${TEMP_SNAP_PREFIX}${targetImage}`;
}
