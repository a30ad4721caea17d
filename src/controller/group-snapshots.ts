import type { Backend, GroupSnapshotRecord, SnapshotRecord } from '../backends/backend.js';
import { backendOfGroupSnapshot, newGroupSnapshotId, newSnapshotId } from '../backends/ids.js';
import { alreadyExists, failedPrecondition, invalidArgument, notFound } from '../errors/domain-error.js';
import { K8S_PREFIX } from './parameters.js';
import type { SnapshotManager } from './snapshots.js';
import type { VolumeManager } from './volumes.js';

const sameSet = (a: readonly string[], b: readonly string[]) => a.length === b.length && new Set([...a, ...b]).size === new Set(a).size;

const sameMap = (a: Record<string, string>, b: Record<string, string>) => {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => b[k] === a[k]);
};

/**
 * Volume group snapshots across backends (CSI GroupController): name
 * idempotency, the source volumes' locks, and the rules the spec sets on the
 * member list; cutting the snapshots is the backend's (Backend.groupSnapshots).
 */
export class GroupSnapshotManager {
  private readonly byName = new Map<string, GroupSnapshotRecord>();

  constructor(
    private readonly backends: Map<string, Backend>,
    private readonly volumes: VolumeManager,
    private readonly snapshots: SnapshotManager,
  ) {}

  /** Whether any configured backend can cut group snapshots (the capability is advertised only then). */
  get supported(): boolean {
    return [...this.backends.values()].some((b) => b.groupSnapshots !== undefined);
  }

  index(): void {
    this.byName.clear();
    for (const b of this.backends.values()) for (const g of b.groupSnapshots?.list() ?? []) this.byName.set(g.name, g);
  }

  get(id: string): GroupSnapshotRecord | undefined {
    return this.backends.get(backendOfGroupSnapshot(id) ?? '')?.groupSnapshots?.get(id);
  }

  /** The member snapshots as they stand (a member whose delete was interrupted is left out). */
  members(g: GroupSnapshotRecord): SnapshotRecord[] {
    const b = this.backends.get(g.backend);
    return g.snapshotIds.flatMap((id) => {
      const s = b?.snapshot(id);
      return s ? [s] : [];
    });
  }

  async create(name: string, sourceVolumeIds: string[], parameters: Record<string, string>): Promise<GroupSnapshotRecord> {
    if (sourceVolumeIds.length === 0) throw invalidArgument('source_volume_ids is required and must not be empty');
    if (new Set(sourceVolumeIds).size !== sourceVolumeIds.length) throw invalidArgument('source_volume_ids: a volume is listed twice');
    for (const k of Object.keys(parameters))
      if (!k.startsWith(K8S_PREFIX)) throw invalidArgument(`parameters: unknown key "${k.slice(0, 64)}" (group snapshots take no parameters)`);
    return this.volumes.lockFor(`gsnapname:${name}`, false)(async () => {
      const existing = this.byName.get(name);
      if (existing) {
        if (!sameSet(existing.sourceVolumeIds, sourceVolumeIds))
          throw alreadyExists(`name: group snapshot "${name}" exists for other source volumes (${existing.sourceVolumeIds.join(', ')})`);
        if (!sameMap(existing.parameters, parameters)) throw alreadyExists(`name: group snapshot "${name}" exists with other parameters`);
        return existing;
      }
      const vols = sourceVolumeIds.map((id, i) => {
        const v = this.volumes.get(id);
        if (!v) throw notFound(`source_volume_ids[${i}]: volume "${id.slice(0, 128)}" does not exist`);
        return v;
      });
      const backendNames = [...new Set(vols.map((v) => v.backend))];
      if (backendNames.length > 1)
        throw failedPrecondition(`source_volume_ids: the volumes are on different backends (${backendNames.join(', ')}); a group snapshot is cut on one backend`);
      const backend = this.backends.get(backendNames[0]!)!;
      const gs = backend.groupSnapshots;
      if (!gs) throw failedPrecondition(`source_volume_ids: backend ${backend.name} cannot cut group snapshots (only rbd backends can)`);
      const id = newGroupSnapshotId(backend.name);
      const snapshotIds = vols.map(() => newSnapshotId(backend.name));
      const rec = await this.volumes.locks.runAll([...sourceVolumeIds.map((v) => `vol:${v}`), `gsnap:${id}`], async () => {
        for (const [i, vid] of sourceVolumeIds.entries()) {
          const v = backend.volume(vid);
          if (!v) throw notFound(`source_volume_ids[${i}]: volume "${vid}" does not exist`);
          if (v.state !== 'available' && v.state !== 'in-use') throw failedPrecondition(`source_volume_ids[${i}]: volume ${vid} is ${v.state}`);
        }
        return gs.create({ id, name, sourceVolumeIds, snapshotIds, parameters });
      });
      this.byName.set(name, rec);
      for (const s of this.members(rec)) this.snapshots.remember(s);
      return rec;
    });
  }

  /** The group snapshot, with the CO's member list checked against ours (INVALID_ARGUMENT on a mismatch, as the spec asks). */
  private checked(id: string, snapshotIds: string[]): GroupSnapshotRecord | undefined {
    const g = this.get(id);
    if (g && snapshotIds.length > 0 && !sameSet(g.snapshotIds, snapshotIds))
      throw invalidArgument(`snapshot_ids: group snapshot ${id} holds ${g.snapshotIds.join(', ')}, not ${snapshotIds.join(', ')}`);
    return g;
  }

  lookup(id: string, snapshotIds: string[]): GroupSnapshotRecord {
    const g = this.checked(id, snapshotIds);
    if (!g) throw notFound(`group_snapshot_id: group snapshot "${id.slice(0, 128)}" does not exist`);
    return g;
  }

  async delete(id: string, snapshotIds: string[]): Promise<void> {
    if (!this.checked(id, snapshotIds)) return;
    await this.volumes.lockFor(`gsnap:${id}`, false)(async () => {
      const g = this.get(id);
      if (!g) return;
      await this.volumes.locks.runAll(
        g.snapshotIds.map((s) => `snap:${s}`),
        () => this.backends.get(g.backend)!.groupSnapshots!.delete(id),
      );
      for (const s of g.snapshotIds) this.snapshots.forget(s);
      if (this.byName.get(g.name)?.id === id) this.byName.delete(g.name);
    });
  }
}
