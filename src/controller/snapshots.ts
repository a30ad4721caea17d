import type { Backend, SnapshotRecord } from '../backends/backend.js';
import { backendOfSnapshot, newSnapshotId, SNAPSHOT_ID_RE } from '../backends/ids.js';
import { aborted, alreadyExists, failedPrecondition, invalidArgument, notFound } from '../errors/domain-error.js';
import { K8S_PREFIX } from './parameters.js';
import { paginate, type Page } from './pagination.js';
import type { VolumeManager } from './volumes.js';

export interface SnapshotFilter {
  snapshotId?: string;
  sourceVolumeId?: string;
}

/** Snapshots across backends: name idempotency and listing; the copy itself is the backend's. */
export class SnapshotManager {
  private readonly byName = new Map<string, SnapshotRecord>();

  constructor(
    private readonly backends: Map<string, Backend>,
    private readonly volumes: VolumeManager,
  ) {}

  index(): void {
    this.byName.clear();
    for (const b of this.backends.values()) for (const s of b.snapshots()) this.byName.set(s.name, s);
  }

  /** A snapshot made outside create() (a member of a group snapshot), for name lookups. */
  remember(s: SnapshotRecord): void {
    this.byName.set(s.name, s);
  }

  forget(id: string): void {
    for (const [name, s] of this.byName) if (s.id === id) this.byName.delete(name);
  }

  get(id: string): SnapshotRecord | undefined {
    return this.backends.get(backendOfSnapshot(id) ?? '')?.snapshot(id);
  }

  async create(name: string, sourceVolumeId: string, parameters: Record<string, string> | undefined): Promise<SnapshotRecord> {
    for (const k of Object.keys(parameters ?? {}))
      if (!k.startsWith(K8S_PREFIX)) throw invalidArgument(`parameters: unknown key "${k.slice(0, 64)}" (snapshots take no parameters)`);
    const locks = this.volumes.locks;
    return this.volumes.lockFor(`snapname:${name}`, false)(async () => {
      const existing = this.byName.get(name);
      if (existing) {
        if (existing.sourceVolumeId !== sourceVolumeId)
          throw alreadyExists(`name: snapshot "${name}" exists for another source volume (${existing.sourceVolumeId})`);
        if (existing.state === 'deleting' || existing.state === 'error_deleting') throw aborted(`name: snapshot "${name}" is being deleted; retry later`);
        return existing;
      }
      const backend = this.volumes.backendOf(sourceVolumeId);
      if (!backend?.volume(sourceVolumeId)) throw notFound(`source_volume_id: volume "${sourceVolumeId.slice(0, 128)}" does not exist`);
      const id = newSnapshotId(backend.name);
      const snap = await locks.runAll([`vol:${sourceVolumeId}`, `snap:${id}`], async () => {
        const v = backend.volume(sourceVolumeId);
        if (!v) throw notFound(`source_volume_id: volume "${sourceVolumeId}" does not exist`);
        if (v.state !== 'available' && v.state !== 'in-use') throw failedPrecondition(`source_volume_id: volume ${sourceVolumeId} is ${v.state}`);
        return backend.createSnapshot({ id, name, sourceVolumeId });
      });
      this.byName.set(name, snap);
      return snap;
    });
  }

  async delete(id: string): Promise<void> {
    const backend = this.backends.get(backendOfSnapshot(id) ?? '');
    if (!backend) return;
    await this.volumes.lockFor(`snap:${id}`, false)(async () => {
      const s = backend.snapshot(id);
      if (!s) return;
      if (s.groupSnapshotId)
        throw invalidArgument(`snapshot_id: snapshot ${id} is a member of group snapshot ${s.groupSnapshotId} and is deleted only with it (DeleteVolumeGroupSnapshot)`);
      await backend.deleteSnapshot(id);
      if (this.byName.get(s.name)?.id === id) this.byName.delete(s.name);
    });
  }

  list(filter: SnapshotFilter, maxEntries: number | undefined, token: string | undefined): Page<SnapshotRecord> {
    let all: SnapshotRecord[];
    if (filter.snapshotId) {
      const s = this.get(filter.snapshotId);
      all = s ? [s] : [];
    } else {
      all = [];
      for (const b of this.backends.values()) for (const s of b.snapshots()) all.push(s);
    }
    if (filter.sourceVolumeId) all = all.filter((s) => s.sourceVolumeId === filter.sourceVolumeId);
    all = all.filter((s) => s.state === 'available');
    all.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return paginate(all, (s) => s.id, maxEntries, token, (t) => SNAPSHOT_ID_RE.test(t));
  }
}
