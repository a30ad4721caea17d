import { randomUUID } from 'node:crypto';

const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';
const BACKEND = '[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?';

/** `<backend>-<uuid>`: matched in full before any id reaches a path. */
export const VOLUME_ID_RE = new RegExp(`^(${BACKEND})-(${UUID})$`);
/** `<backend>@<uuid>`, like a ZFS snapshot name, so it can never be taken for a volume id. */
export const SNAPSHOT_ID_RE = new RegExp(`^(${BACKEND})@(${UUID})$`);

export function newVolumeId(backend: string): string {
  return `${backend}-${randomUUID()}`;
}

export function newSnapshotId(backend: string): string {
  return `${backend}@${randomUUID()}`;
}

/** The backend a volume id belongs to, or undefined when the id is not ours. */
export function backendOfVolume(id: string): string | undefined {
  return VOLUME_ID_RE.exec(id)?.[1];
}

export function backendOfSnapshot(id: string): string | undefined {
  return SNAPSHOT_ID_RE.exec(id)?.[1];
}

/**
 * `<backend>.group.<uuid>`: a volume group snapshot. Neither a volume id nor a
 * snapshot id can look like it (backend names have no dots); the rbd backend
 * names its temporary `rbd group` by it.
 */
export const GROUP_SNAPSHOT_ID_RE = new RegExp(`^(${BACKEND})\\.group\\.(${UUID})$`);

export function newGroupSnapshotId(backend: string): string {
  return `${backend}.group.${randomUUID()}`;
}

export function backendOfGroupSnapshot(id: string): string | undefined {
  return GROUP_SNAPSHOT_ID_RE.exec(id)?.[1];
}
