import type { Logger } from 'pino';
import { failedPrecondition } from '../../errors/domain-error.js';
import type { GroupSnapshotRecord, GroupSnapshots } from '../backend.js';
import type { RbdAgent } from './agent.js';
import { snapshotImage, volumeImage } from './names.js';
import type { RbdPool } from './pool.js';
import type { StoredSnapshot, StoredVolume } from './records.js';

/** The one group snapshot sinter cuts in each of its temporary groups. */
export const GROUP_SNAP = 'sinter';

/** What the group snapshots need of their backend. */
export interface GroupHost {
  backend: string;
  pool: RbdPool;
  agent?: RbdAgent;
  features: readonly string[];
  dataPool?: string;
  volume(id: string): StoredVolume | undefined;
  snaps: Map<string, StoredSnapshot>;
  writeSnapshot(rec: StoredSnapshot): Promise<void>;
  log: Logger;
}

/**
 * Volume group snapshots on RBD (CSI GroupController, Cinder's group snapshots).
 *
 * The consistent point is Ceph's: a temporary `rbd group` named by the group
 * snapshot id, the volumes' images added to it, `rbd group snap create`
 * (librbd quiesces the images and takes their exclusive locks, then snapshots
 * them all). Each member then becomes an ordinary sinter snapshot image, so it
 * is a volume_content_source like any other snapshot, and the group is removed
 * so the volumes can join later group snapshots (an image belongs to one group
 * at a time). Ceph 16 cannot clone a group snapshot's member (cloning by
 * snapshot id came in 19), so the agent copies it out, sparse.
 *
 * Crash rules: the temporary group exists exactly while a create is unfinished,
 * so a start that finds one of this backend's groups rolls the whole group
 * snapshot back (its member images, with or without records, and the group);
 * the CO never heard it succeed and creates it again by name. Every member's
 * record carries the whole group's record: the group exists while any member does.
 */
export class RbdGroupSnapshots implements GroupSnapshots {
  private readonly groups = new Map<string, GroupSnapshotRecord>();

  constructor(private readonly h: GroupHost) {}

  /** Rebuilds the groups from their members' records (after start). */
  load(): void {
    this.groups.clear();
    for (const s of this.h.snaps.values()) if (s.rbd?.group && s.groupSnapshotId === s.rbd.group.id) this.groups.set(s.rbd.group.id, s.rbd.group);
  }

  get(id: string): GroupSnapshotRecord | undefined {
    return this.groups.get(id);
  }

  list(): IterableIterator<GroupSnapshotRecord> {
    return this.groups.values();
  }

  async create(spec: { id: string; name: string; sourceVolumeIds: string[]; snapshotIds: string[]; parameters: Record<string, string> }): Promise<GroupSnapshotRecord> {
    const agent = this.h.agent;
    if (!agent) throw failedPrecondition(`backend ${this.h.backend}: group snapshots need the rbd agent (python3-rbd, python3-rados) on the controller`);
    const vols = spec.sourceVolumeIds.map((id) => {
      const v = this.h.volume(id);
      if (!v) throw failedPrecondition(`source_volume_ids: volume ${id} is not on backend ${this.h.backend}`);
      return v;
    });
    const group = spec.id;
    const t = new Date().toISOString();
    const rec: GroupSnapshotRecord = { id: spec.id, name: spec.name, backend: this.h.backend, sourceVolumeIds: [...spec.sourceVolumeIds], snapshotIds: [...spec.snapshotIds], parameters: spec.parameters, createdAt: t };
    const members: StoredSnapshot[] = [];
    try {
      await this.h.pool.groupCreate(group);
      for (const v of vols) await this.h.pool.groupAdd(group, volumeImage(v.id));
      await this.h.pool.groupSnapCreate(group, GROUP_SNAP);
      // One copy at a time: they compete for the same OSDs, and the agent's pool is shared with creates.
      for (const [i, v] of vols.entries()) {
        const id = spec.snapshotIds[i]!;
        const dest = snapshotImage(id);
        await agent.call(
          'copy_group_snap',
          { pool: this.h.pool.pool, image: volumeImage(v.id), group, groupSnap: GROUP_SNAP, dest, features: this.h.features, dataPool: this.h.dataPool },
          `copying ${this.h.pool.spec(volumeImage(v.id))} out of group snapshot ${group}`,
          // A copy moves data: the command timeout is for one round trip, not for gigabytes.
          24 * 3600_000,
        );
        const snap: StoredSnapshot = {
          id,
          name: `${spec.name}/${v.id}`,
          backend: this.h.backend,
          sourceVolumeId: v.id,
          sizeBytes: v.sizeBytes,
          state: 'available',
          copyMethod: 'sparse-copy',
          groupSnapshotId: spec.id,
          createdAt: t,
          updatedAt: t,
          rbd: { cloneDepth: 0, group: rec },
        };
        await this.h.writeSnapshot(snap);
        members.push(snap);
      }
      // The commit: without the group, a start serves the members; with it, it rolls them back.
      await this.h.pool.groupRemove(group);
    } catch (e) {
      await this.rollBack(group, spec.snapshotIds).catch((re: unknown) =>
        this.h.log.warn({ group, err: (re as Error).message }, 'could not roll back a failed group snapshot; the next start or sinter fsck will'),
      );
      throw e;
    }
    for (const s of members) this.h.snaps.set(s.id, s);
    this.groups.set(rec.id, rec);
    return rec;
  }

  /** Removes what an unfinished create left: the member images (recorded or not) and the group with its snapshot. */
  async rollBack(group: string, snapshotIds: string[]): Promise<void> {
    for (const id of snapshotIds) await this.h.pool.remove(snapshotImage(id));
    await this.h.pool.groupRemove(group);
  }

  async delete(id: string): Promise<void> {
    const g = this.groups.get(id);
    if (!g) return;
    const present = g.snapshotIds.flatMap((s) => {
      const rec = this.h.snaps.get(s);
      return rec ? [rec] : [];
    });
    // All marked first: a crash part-way leaves every member `deleting`, which a start rolls forward.
    for (const s of present) {
      s.state = 'deleting';
      await this.h.writeSnapshot(s);
    }
    for (const s of present) {
      await this.h.pool.remove(snapshotImage(s.id));
      this.h.snaps.delete(s.id);
    }
    this.groups.delete(id);
  }
}
