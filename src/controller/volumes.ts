import type { Logger } from 'pino';
import type { Backend, CapabilitySummary, ContentSource, ExportsReconciled, VolumeRecord } from '../backends/backend.js';
import { backendOfSnapshot, backendOfVolume, newVolumeId, VOLUME_ID_RE } from '../backends/ids.js';
import { NODE_TOPOLOGY_KEY, parseNodeId } from '../contracts/nodeid.js';
import type { PublishContext } from '../contracts/publish-context.js';
import { aborted, alreadyExists, failedPrecondition, invalidArgument, notFound, outOfRange } from '../errors/domain-error.js';
import { KeyedLock } from '../csi/locks.js';
import { checkNewPublish, checkRepublish, newAttachment } from './attachment-rules.js';
import { type FsType, type ParsedCapability } from './capabilities.js';
import type { NodeRegistry } from './node-registry.js';
import { checkNodeInTopology, type NodeSegments } from './node-topology.js';
import { paginate, type Page } from './pagination.js';
import { sameParameters, type VolumeParameters } from './parameters.js';
import { capacityFor, schedule, type PlacementFilter } from './scheduler.js';
import type { Topology, TopologyRequirement } from './topology.js';

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;
export const DEFAULT_VOLUME_SIZE = GiB;
/** mkfs refuses smaller devices: xfs needs 300 MiB, btrfs about 114 MiB. */
export const MIN_SIZE_FOR_FS: Record<FsType, number> = { ext4: MiB, xfs: 300 * MiB, btrfs: 128 * MiB };

export interface CapacityRange {
  required_bytes?: number;
  limit_bytes?: number;
}

export interface CreateVolumeInput {
  name: string;
  capacity?: CapacityRange;
  capabilities: CapabilitySummary[];
  parameters: VolumeParameters;
  source?: ContentSource;
  topology?: TopologyRequirement;
}

/**
 * The filesystem a CreateVolume asks for: its mount capabilities' fs_type
 * (csi-provisioner sets every one from csi.storage.k8s.io/fstype). Two
 * different ones cannot both be made.
 */
export function requestedFsType(caps: Pick<CapabilitySummary, 'accessType' | 'fsType'>[]): string | undefined {
  const kinds = [...new Set(caps.filter((c) => c.accessType === 'mount' && c.fsType).map((c) => c.fsType!))];
  if (kinds.length > 1) throw invalidArgument(`volume_capabilities ask for different filesystems (${kinds.join(', ')}); a volume holds one`);
  return kinds[0];
}

/**
 * The filesystem a volume was made for: its mount capability's fs_type, or,
 * for records written before sinter dropped its own `fsType` parameter, that
 * parameter.
 */
export function recordedFsType(v: VolumeRecord): string | undefined {
  return v.parameters.fsType ?? v.capabilities.find((c) => c.accessType === 'mount' && c.fsType)?.fsType;
}

const roundUp = (n: number, unit: number) => Math.ceil(n / unit) * unit;

/**
 * Picks the size for a create or expand: the request rounded up to whole MiB
 * (4 KiB when a tight limit forces it), never under `floor`, never above the
 * limit; OUT_OF_RANGE when no size fits.
 */
export function sizeFor(range: CapacityRange | undefined, fallback: number, floor: number): number {
  const req = range?.required_bytes ?? 0;
  const lim = range?.limit_bytes ?? 0;
  if (req < 0 || lim < 0) throw invalidArgument('capacity_range: required_bytes and limit_bytes must not be negative');
  if (!Number.isSafeInteger(req) || !Number.isSafeInteger(lim)) throw outOfRange('capacity_range: sizes above 8 PiB are not supported');
  if (lim > 0 && req > lim) throw invalidArgument(`capacity_range: required_bytes ${req} is above limit_bytes ${lim}`);
  let size = Math.max(roundUp(req > 0 ? req : lim > 0 ? Math.min(fallback, lim) : fallback, MiB), floor);
  if (lim > 0 && size > lim) {
    // Whole MiB overshoots the limit: settle for 4 KiB steps, which every block layer accepts.
    size = roundUp(Math.max(req, floor), 4096);
    if (size > lim) throw outOfRange(`capacity_range: no size in 4 KiB steps between ${Math.max(req, floor)} and ${lim} bytes`);
  }
  return size;
}

/** The smallest volume CreateVolume makes for these parameters and capabilities: mkfs's floor when a filesystem is made, else 1 MiB. */
export function sizeFloor(capabilities: Pick<CapabilitySummary, 'accessType' | 'fsType'>[]): number {
  const fsType = (requestedFsType(capabilities) ?? 'ext4') as FsType;
  return capabilities.some((c) => c.accessType === 'mount') ? MIN_SIZE_FOR_FS[fsType] : MiB;
}

/** The largest required_bytes (without a limit) that sizeFor turns into a size of at most `bytes`: it rounds up to whole MiB. */
export function largestSizeWithin(bytes: number): number {
  return Math.floor(bytes / MiB) * MiB;
}

/** What a StorageClass's parameters and a topology ask of a backend: one filter for CreateVolume and GetCapacity. */
function placementFilter(p: VolumeParameters, topology: TopologyRequirement | undefined): PlacementFilter {
  return { type: p.type, backend: p.backend, topology };
}

export interface CapacityInput {
  parameters: VolumeParameters;
  capabilities: Pick<CapabilitySummary, 'accessType' | 'fsType'>[];
  /** The one segment GetCapacity asks about (accessible_topology); undefined = anywhere. */
  topology?: Topology;
}

export interface VolumeManagerOptions {
  /** How many volumes a node may have published at once; undefined or 0 = no limit. */
  maxVolumesPerNode?: (nodeId: string) => number | undefined;
  /**
   * Attachments the CO records outside the backends (Kubernetes VolumeAttachment
   * objects): the nodes (names or ids) a volume is attached to there. DeleteVolume
   * refuses while this is non-empty, even when no backend publish is recorded. It
   * may throw a DomainError (UNAVAILABLE) when it cannot tell.
   */
  externalAttachments?: (volumeId: string) => string[];
  /** Publishes on a node that no backend records (static volumes), counted against maxVolumesPerNode. */
  extraPublishedTo?: (nodeId: string) => number;
  /** The nodes' topology segments beyond the node one (which the node id carries); none known when absent. */
  nodeSegments?: NodeSegments;
}

export interface UnpublishOptions {
  /** Checked under the volume's lock: unpublish only if it still returns true (the reconciler's re-check). */
  onlyIf?: () => boolean;
  /** Wait for the volume's lock (sinter's own reconcilers) instead of answering ABORTED while it is held (an RPC). */
  wait?: boolean;
}

/**
 * The controller's volume lifecycle across all backends: name idempotency,
 * scheduling, Cinder's attachment rules. Holds the per-name and per-volume
 * locks; backends do the I/O.
 */
export class VolumeManager {
  readonly locks = new KeyedLock();
  private readonly byName = new Map<string, VolumeRecord>();
  private sortedCache: VolumeRecord[] | undefined;

  constructor(
    private readonly backends: Map<string, Backend>,
    private readonly nodes: NodeRegistry,
    private readonly log: Logger,
    private readonly opts: VolumeManagerOptions = {},
  ) {}

  /** Rebuilds the name index from the backends' records (after their start()). */
  index(): void {
    this.byName.clear();
    for (const b of this.backends.values()) for (const v of b.volumes()) this.byName.set(v.name, v);
    this.sortedCache = undefined;
  }

  backendOf(volumeId: string): Backend | undefined {
    const name = backendOfVolume(volumeId);
    return name === undefined ? undefined : this.backends.get(name);
  }

  get(volumeId: string): VolumeRecord | undefined {
    return this.backendOf(volumeId)?.volume(volumeId);
  }

  /** The volume's record, read from shared storage when this controller has not seen it (another replica made it). */
  private async known(b: Backend, volumeId: string): Promise<VolumeRecord | undefined> {
    const v = b.volume(volumeId) ?? (VOLUME_ID_RE.test(volumeId) ? await b.load?.(volumeId) : undefined);
    if (v && !this.byName.has(v.name)) this.remember(v);
    return v;
  }

  /**
   * Under the volume's lock, before a change: the record as the shared storage has it now. Another
   * replica may have changed it since this one read it (the sidecars' leaders can sit in different
   * pods, so a publish and an expand of one volume can reach different replicas), and a change made
   * from the old copy would write its old attachments back, or fence a node by a publish already
   * gone. A backend without shared state (load absent) is its own truth.
   */
  private async refresh(b: Backend, volumeId: string): Promise<void> {
    if (!b.load) return;
    const before = b.volume(volumeId);
    const now = await b.load(volumeId);
    if (now === before) return;
    if (!now && before) this.forget(before);
    else if (now && !this.byName.has(now.name)) this.remember(now);
    this.sortedCache = undefined;
  }

  mustGet(volumeId: string, field = 'volume_id'): VolumeRecord {
    const v = this.get(volumeId);
    if (!v) throw notFound(`${field}: volume "${volumeId.slice(0, 128)}" does not exist`);
    return v;
  }

  async create(input: CreateVolumeInput): Promise<VolumeRecord> {
    const floor = sizeFloor(input.capabilities);

    return this.lockFor(`name:${input.name}`, false)(async () => {
      const existing = this.byName.get(input.name);
      if (existing) {
        if (existing.state === 'error') {
          // A failed attempt the CO never heard succeed: clear it and try again.
          this.log.warn({ volume_id: existing.id, name: input.name, err: existing.error }, 'retrying a create that failed before');
          await this.locks.run(`vol:${existing.id}`, () => this.backends.get(existing.backend)!.deleteVolume(existing.id));
          this.forget(existing);
        } else {
          this.checkCompatible(existing, input);
          return existing;
        }
      }

      let sourceBackend: Backend | undefined;
      let sourceSize = 0;
      if (input.source) {
        const src = this.resolveSource(input.source);
        sourceBackend = src.backend;
        sourceSize = src.sizeBytes;
      }
      // A copy is never smaller than what it copies; without a size it takes the source's.
      const sizeBytes = sizeFor(input.capacity, input.source ? sourceSize : DEFAULT_VOLUME_SIZE, Math.max(floor, sourceSize));

      const candidates = sourceBackend ? [sourceBackend] : [...this.backends.values()];
      const { backend } = await schedule(candidates, { sizeBytes, ...placementFilter(input.parameters, input.topology) });
      const id = backend.volumeIdFor?.(input.name) ?? newVolumeId(backend.name);
      const sourceLock = input.source ? [`${input.source.type === 'snapshot' ? 'snap' : 'vol'}:${input.source.id}`] : [];
      const rec = await this.locks.runAll([`vol:${id}`, ...sourceLock], async () => {
        // Another controller on the same storage may have made it (and died before answering).
        const made = await backend.load?.(id);
        if (made && made.name === input.name) {
          this.checkCompatible(made, input);
          return made;
        }
        if (input.source) {
          // It may have gone, or grown (an expand that held its lock), while we waited.
          const now = this.resolveSource(input.source);
          if (now.sizeBytes > sizeBytes)
            throw aborted(`volume_content_source: the source grew to ${now.sizeBytes} bytes while this copy waited for it; retry`);
        }
        return backend.createVolume({
          id,
          name: input.name,
          sizeBytes,
          parameters: input.parameters.own,
          capabilities: input.capabilities,
          source: input.source,
        });
      }).catch((e: unknown) => {
        const failed = backend.volume(id);
        if (failed) this.remember(failed);
        throw e;
      });
      this.remember(rec);
      return rec;
    });
  }

  /**
   * GetCapacity: the room CreateVolume would find for these parameters in one
   * topology segment, judged by the scheduler's own filters (capacityFor).
   * maximumBytes is the largest request CreateVolume would accept there (sizes
   * are whole MiB), 0 when not even the smallest volume fits.
   */
  async capacity(input: CapacityInput): Promise<{ availableBytes: number; maximumBytes: number; minimumBytes: number }> {
    const topology = input.topology ? { requisite: [input.topology] } : undefined;
    const r = await capacityFor([...this.backends.values()], placementFilter(input.parameters, topology));
    const minimumBytes = sizeFloor(input.capabilities);
    const largest = largestSizeWithin(r.largestBytes);
    return { availableBytes: r.availableBytes, maximumBytes: largest >= minimumBytes ? largest : 0, minimumBytes };
  }

  private resolveSource(src: ContentSource): { backend: Backend; sizeBytes: number } {
    if (src.type === 'snapshot') {
      const b = this.backends.get(backendOfSnapshot(src.id) ?? '');
      const snap = b?.snapshot(src.id);
      if (!b || !snap || snap.state !== 'available') throw notFound(`volume_content_source.snapshot.snapshot_id: snapshot "${src.id.slice(0, 128)}" does not exist`);
      return { backend: b, sizeBytes: snap.sizeBytes };
    }
    const b = this.backendOf(src.id);
    const vol = b?.volume(src.id);
    if (!b || !vol) throw notFound(`volume_content_source.volume.volume_id: volume "${src.id.slice(0, 128)}" does not exist`);
    if (vol.state !== 'available' && vol.state !== 'in-use') throw failedPrecondition(`volume_content_source.volume.volume_id: volume ${src.id} is ${vol.state} and cannot be cloned`);
    return { backend: b, sizeBytes: vol.sizeBytes };
  }

  private checkCompatible(v: VolumeRecord, input: CreateVolumeInput): void {
    const req = input.capacity?.required_bytes ?? 0;
    const lim = input.capacity?.limit_bytes ?? 0;
    if ((req > 0 && v.sizeBytes < req) || (lim > 0 && v.sizeBytes > lim))
      throw alreadyExists(`name: volume "${v.name}" exists with ${v.sizeBytes} bytes, outside the requested capacity_range`);
    const { fsType: _legacy, ...params } = v.parameters;
    if (!sameParameters(params, input.parameters.own)) throw alreadyExists(`name: volume "${v.name}" exists with different parameters`);
    const had = recordedFsType(v);
    const wants = requestedFsType(input.capabilities);
    if (had && wants && had !== wants) throw alreadyExists(`name: volume "${v.name}" exists, made for ${had}, not ${wants}`);
    const a = v.source;
    const b = input.source;
    if ((a?.type ?? '') !== (b?.type ?? '') || (a?.id ?? '') !== (b?.id ?? ''))
      throw alreadyExists(`name: volume "${v.name}" exists with a different volume_content_source`);
    if (v.state === 'deleting' || v.state === 'error_deleting') throw aborted(`name: volume "${v.name}" is being deleted; retry later`);
  }

  private remember(v: VolumeRecord): void {
    this.byName.set(v.name, v);
    this.sortedCache = undefined;
  }

  private forget(v: VolumeRecord): void {
    if (this.byName.get(v.name)?.id === v.id) this.byName.delete(v.name);
    this.sortedCache = undefined;
  }

  async delete(volumeId: string): Promise<void> {
    const b = this.backendOf(volumeId);
    if (!b) return; // not ours or malformed: nothing to delete, which is success
    await this.known(b, volumeId);
    await this.lockFor(`vol:${volumeId}`, false)(async () => {
      await this.refresh(b, volumeId);
      const v = b.volume(volumeId);
      if (!v) return;
      if (v.attachments.length > 0)
        throw failedPrecondition(`volume ${volumeId} is still published to ${v.attachments.map((a) => a.nodeId).join(', ')}; unpublish it first`);
      const external = this.opts.externalAttachments?.(volumeId) ?? [];
      if (external.length > 0)
        throw failedPrecondition(`volume ${volumeId} still has a VolumeAttachment on node ${external.join(', ')}; wait for the detach to finish`);
      await b.deleteVolume(volumeId);
      this.forget(v);
    });
  }

  async expand(volumeId: string, range: CapacityRange | undefined): Promise<VolumeRecord> {
    if (!range || (!range.required_bytes && !range.limit_bytes)) throw invalidArgument('capacity_range is required');
    const b = this.backendOf(volumeId);
    if (!b || !(await this.known(b, volumeId))) throw notFound(`volume_id: volume "${volumeId.slice(0, 128)}" does not exist`);
    return this.lockFor(`vol:${volumeId}`, false)(async () => {
      await this.refresh(b, volumeId);
      const v = this.mustGet(volumeId);
      if (v.state !== 'available' && v.state !== 'in-use') throw failedPrecondition(`volume ${volumeId} is ${v.state} and cannot be expanded`);
      const target = sizeFor(range, v.sizeBytes, MiB);
      if (target > v.sizeBytes) {
        const { availableBytes } = await b.capacity();
        if (target - v.sizeBytes > availableBytes) throw outOfRange(`capacity_range: backend ${b.name} has ${availableBytes} bytes available, ${target - v.sizeBytes} more needed`);
      }
      // Called even when the volume is already this large: the retry of an
      // expand that crashed half-way lets the backend finish (an iSCSI LUN's size).
      return b.expandVolume(volumeId, Math.max(target, v.sizeBytes));
    });
  }

  async publish(volumeId: string, nodeId: string, cap: ParsedCapability, readonly: boolean, secrets: Record<string, string> = {}): Promise<PublishContext> {
    const b = this.backendOf(volumeId);
    if (!b || !(await this.known(b, volumeId))) throw notFound(`volume_id: volume "${volumeId.slice(0, 128)}" does not exist`);
    const node = this.nodes.lookup(nodeId);
    if (!node) throw notFound(`node_id: node "${nodeId.slice(0, 128)}" is not known to this controller`);
    // The backend's topology is the volume's accessible topology (CreateVolume returned it); a
    // repeated publish is checked too, so a publish recorded before this rule cannot be renewed.
    const needsLookup = Object.keys(b.topology).some((k) => k !== NODE_TOPOLOGY_KEY);
    const known = needsLookup ? ((await this.opts.nodeSegments?.segments(nodeId, node)) ?? {}) : {};
    checkNodeInTopology(`volume ${volumeId}`, b.topology, node, known);
    return this.lockFor(`vol:${volumeId}`, false)(async () => {
      await this.refresh(b, volumeId);
      const v = this.mustGet(volumeId);
      if (v.state !== 'available' && v.state !== 'in-use') throw failedPrecondition(`volume ${volumeId} is ${v.state}; only available or in-use volumes can be published`);
      const mine = v.attachments.find((a) => a.nodeId === nodeId);
      if (mine) {
        checkRepublish(`volume ${volumeId}`, mine, cap, readonly);
        return b.exportVolume(volumeId, node, readonly, secrets);
      }
      const others = v.attachments.filter((a) => a.nodeId !== nodeId);
      checkNewPublish(`volume ${volumeId}`, others, nodeId, cap, this.publishedTo(nodeId) + (this.opts.extraPublishedTo?.(nodeId) ?? 0), this.opts.maxVolumesPerNode?.(nodeId));
      await b.beforeNewPublish?.(volumeId, node, others);
      await b.prepareExport?.(volumeId, node, secrets);
      const att = newAttachment(nodeId, cap, readonly);
      const before = v.attachments;
      const undo = () => b.setAttachments(volumeId, before.filter((a) => a.nodeId !== nodeId)).catch(() => undefined);
      if (b.recordsBesideExport && Object.keys(secrets).length === 0) {
        // Both at once: a crash at any point is settled by the start-up reconcile (an export no
        // durable record explains goes, a recorded publish is restored), and the CO retries.
        const [recorded, exported] = await Promise.allSettled([b.setAttachments(volumeId, [...before, att]), b.exportVolume(volumeId, node, readonly, secrets)]);
        if (exported.status === 'rejected') {
          await undo();
          throw exported.reason;
        }
        if (recorded.status === 'rejected') {
          // Exported but not recorded: take the export back rather than leave one nobody knows about.
          await undo();
          await b.unexportVolume(volumeId, node).catch((e: Error) => this.log.warn({ volume_id: volumeId, node_id: nodeId, err: e.message }, 'export left for the reconcile to remove'));
          throw recorded.reason;
        }
        return exported.value;
      }
      // Record first: a crash between the two leaves a publish the retry or the
      // reconciler completes, never an export nobody knows about.
      await b.setAttachments(volumeId, [...before, att]);
      try {
        return await b.exportVolume(volumeId, node, readonly, secrets);
      } catch (e) {
        await undo();
        throw e;
      }
    });
  }

  async unpublish(volumeId: string, nodeId: string | undefined, opts: UnpublishOptions = {}): Promise<void> {
    const b = this.backendOf(volumeId);
    if (!b || !(await this.known(b, volumeId))) return; // gone: nothing is published
    await this.lockFor(`vol:${volumeId}`, opts.wait === true)(async () => {
      // The reconciler's revocations too: judged on the record as it is now, not on this replica's old copy.
      await this.refresh(b, volumeId);
      const v = b.volume(volumeId);
      if (!v) return;
      if (opts.onlyIf && !opts.onlyIf()) return;
      const before = v.attachments;
      const leaving = before.filter((a) => !nodeId || a.nodeId === nodeId);
      if (leaving.length === 0) return;
      const revoke = async () => {
        for (const a of leaving) {
          // The id itself carries the connector properties: revoking must not
          // depend on the node still being registered (a node gone from the cluster).
          const node = this.nodes.lookup(a.nodeId) ?? parseNodeId(a.nodeId);
          if (node) await b.unexportVolume(volumeId, node);
        }
      };
      const remaining = before.filter((a) => !leaving.includes(a));
      if (b.recordsBesideExport) {
        // The revocation starts first (it reads the attachments it leaves to the others), the record
        // beside it: a crash at any point ends with the export gone, since the start-up reconcile
        // removes an export no durable record explains, and restores one the record still holds.
        const [revoked, recorded] = await Promise.allSettled([revoke(), b.setAttachments(volumeId, remaining)]);
        if (revoked.status === 'rejected') {
          // Not fenced yet: the publish stays recorded (in memory at least), so the retry revokes again.
          await b.setAttachments(volumeId, before).catch(() => undefined);
          throw revoked.reason;
        }
        if (recorded.status === 'rejected') throw recorded.reason;
        return;
      }
      // Revoke access before forgetting the publish: fencing comes first.
      await revoke();
      await b.setAttachments(volumeId, remaining);
    });
  }

  /** The lock an operation takes on `key`: waiting its turn, or ABORTED while another call holds it. */
  lockFor(key: string, wait: boolean): <T>(fn: () => Promise<T>) => Promise<T> {
    return wait ? (fn) => this.locks.run(key, fn) : (fn) => this.locks.exclusive(key, fn, describeControllerKey);
  }

  /** Makes one backend's exports match its records, volume by volume under each volume's lock. */
  async reconcileExports(b: Backend): Promise<ExportsReconciled | void> {
    return b.reconcileExports?.((volumeId, fn) => this.locks.run(`vol:${volumeId}`, fn));
  }

  /** How many backend volumes are published to the node. */
  publishedTo(nodeId: string): number {
    let n = 0;
    for (const b of this.backends.values()) for (const v of b.volumes()) if (v.attachments.some((a) => a.nodeId === nodeId)) n++;
    return n;
  }

  /** Every volume of every backend, sorted by id; cached until the next create or delete. */
  sorted(): VolumeRecord[] {
    if (!this.sortedCache) {
      const all: VolumeRecord[] = [];
      for (const b of this.backends.values()) for (const v of b.volumes()) all.push(v);
      all.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      this.sortedCache = all;
    }
    return this.sortedCache;
  }

  list(maxEntries: number | undefined, token: string | undefined): Page<VolumeRecord> {
    return paginate(this.sorted(), (v) => v.id, maxEntries, token, (t) => VOLUME_ID_RE.test(t), (v) => v.state !== 'creating' && v.state !== 'deleting');
  }
}

/** A lock key in words for an ABORTED message. */
export function describeControllerKey(key: string): string {
  const [kind, ...rest] = key.split(':');
  const what = rest.join(':');
  switch (kind) {
    case 'name': return `volume name ${JSON.stringify(what)}`;
    case 'vol': return `volume ${what}`;
    case 'snapname': return `snapshot name ${JSON.stringify(what)}`;
    case 'snap': return `snapshot ${what}`;
    default: return key;
  }
}
