import type { GroupControllerImpl } from '../csi/messages.js';
import { invalidArgument } from '../errors/domain-error.js';
import type { GroupSnapshotManager } from './group-snapshots.js';
import { wireSnapshot, timestamp } from './service.js';
import { answersAtOnce } from '../csi/call-context.js';

function required(v: string | undefined, field: string): string {
  if (typeof v !== 'string' || v === '') throw invalidArgument(`${field} is required`);
  return v;
}

/**
 * csi.v1.GroupController. Served by every controller; when no backend can cut
 * group snapshots it advertises nothing and the three RPCs answer
 * UNIMPLEMENTED (left out: the server answers that for a missing handler).
 */
export function groupControllerService(groups: GroupSnapshotManager): GroupControllerImpl {
  const wire = (id: string, snapshotIds: string[] = []) => {
    const g = groups.lookup(id, snapshotIds);
    const members = groups.members(g);
    return {
      group_snapshot_id: g.id,
      snapshots: members.map(wireSnapshot),
      creation_time: timestamp(g.createdAt),
      ready_to_use: members.length === g.snapshotIds.length && members.every((s) => s.state === 'available'),
    };
  };
  const base: GroupControllerImpl = {
    GroupControllerGetCapabilities: answersAtOnce(async () => ({ capabilities: groups.supported ? [{ rpc: { type: 'CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT' as const } }] : [] })),
  };
  if (!groups.supported) return base;
  return {
    ...base,
    async CreateVolumeGroupSnapshot(req) {
      const name = required(req.name, 'name');
      if (name.length > 255) throw invalidArgument('name must be at most 255 characters');
      const ids = req.source_volume_ids ?? [];
      for (const [i, id] of ids.entries()) required(id, `source_volume_ids[${i}]`);
      const g = await groups.create(name, ids, req.parameters ?? {});
      return { group_snapshot: wire(g.id) };
    },
    async DeleteVolumeGroupSnapshot(req) {
      const id = required(req.group_snapshot_id, 'group_snapshot_id');
      await groups.delete(id, req.snapshot_ids ?? []);
      return {};
    },
    async GetVolumeGroupSnapshot(req) {
      const id = required(req.group_snapshot_id, 'group_snapshot_id');
      return { group_snapshot: wire(id, req.snapshot_ids ?? []) };
    },
  };
}
