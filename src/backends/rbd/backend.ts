import type { Logger } from 'pino';
import type { RbdBackendConfig } from '../../config/types.js';
import type { NodeIdentity } from '../../contracts/nodeid.js';
import type { PublishContext } from '../../contracts/publish-context.js';
import { KeyedLock } from '../../csi/locks.js';
import { Code, DomainError, failedPrecondition } from '../../errors/domain-error.js';
import type { Executor, PipeSpawner } from '../../exec/run.js';
import { RbdAgent } from './agent.js';
import { RbdGroupSnapshots } from './group-snapshots.js';
import type { Attachment, Backend, BackendCapacity, CreateVolumeSpec, RecoveryReport, SnapshotRecord, VolumeHealth, VolumeRecord } from '../backend.js';
import { CephCli } from './cli.js';
import { inspectRbdPool, type RbdInspection, type RbdRepair } from './inspect.js';
import { snapshotImage, volumeImage } from './names.js';
import { RbdPool } from './pool.js';
import { SNAPSHOT_META_KEY, VOLUME_META_KEY, type StoredSnapshot, type StoredVolume } from './records.js';

const now = () => new Date().toISOString();
const PROBE_CACHE_MS = 10_000;
const USAGE_CACHE_MS = 5_000;

/**
 * Ceph RBD (Cinder's RBD driver): a volume is an image named by its volume id,
 * a snapshot a clone image of its volume, and each record lives in its own
 * image's metadata, so the controller keeps nothing on local disk and any
 * replica reads the same state back at start.
 *
 * Crash rules (inspect.ts): an image without its record was never reported
 * to the CO, so a start removes it (the CO retries by name); a record in
 * `deleting` is rolled forward; a larger image than recorded is a finished
 * expand. Deleting an image that clones still read from moves it to the
 * trash; it is purged when its last clone goes.
 */
function isPipeSpawner(x: unknown): x is PipeSpawner {
  return typeof (x as Partial<PipeSpawner>).spawnPiped === 'function';
}

export class RbdBackend implements Backend {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly topology: Readonly<Record<string, string>>;
  readonly pool: RbdPool;
  /** The long-lived librados connection (src/backends/rbd/agent.ts), when the executor can start co-processes. */
  readonly agent?: RbdAgent;
  readonly groupSnapshots?: RbdGroupSnapshots;
  private readonly vols = new Map<string, StoredVolume>();
  private readonly snaps = new Map<string, StoredSnapshot>();
  /** One metadata write at a time per image: a background flatten and a publish both rewrite the record. */
  private readonly metaLocks = new KeyedLock();
  /** Background flattens (soft clone-depth limit), awaited by anything that removes or grows the image. */
  private readonly flattening = new Map<string, Promise<void>>();
  private provisioned = 0;

  constructor(
    private readonly cfg: RbdBackendConfig,
    exec: Executor,
    private readonly log: Logger,
  ) {
    this.name = cfg.name;
    this.labels = cfg.labels;
    this.topology = cfg.topology;
    const conn = { monitors: cfg.monitors, user: cfg.user, keyFile: cfg.keyFile, timeoutMs: cfg.commandTimeoutSeconds * 1000 };
    const cli = new CephCli(conn, exec);
    if (isPipeSpawner(exec)) this.agent = new RbdAgent(conn, exec, log.child({ part: 'rbd-agent' }));
    this.pool = new RbdPool(cfg.pool, cli, cfg.imageFeatures, cfg.dataPool, this.agent, log);
    if (this.agent)
      this.groupSnapshots = new RbdGroupSnapshots({
        backend: this.name,
        pool: this.pool,
        agent: this.agent,
        features: cfg.imageFeatures,
        dataPool: cfg.dataPool,
        volume: (id) => this.vols.get(id),
        snaps: this.snaps,
        writeSnapshot: (rec) => this.writeSnapshot(rec),
        log,
      });
  }

  close(): void {
    this.agent?.stop();
  }

  inspect(): Promise<RbdInspection> {
    return inspectRbdPool(this.name, this.pool);
  }

  async start(): Promise<RecoveryReport> {
    const ins = await this.inspect();
    const report: RecoveryReport = { recovered: [], orphans: [], corrupt: [] };
    const serve = new Map(ins.serve.volumes.map((r) => [r.id, r]));
    for (const step of ins.plan) {
      try {
        const line = await this.repair(step, serve);
        if (line) report.recovered.push(line);
      } catch (e) {
        this.log.error({ backend: this.name, step, err: (e as Error).message }, 'a start-up repair failed; sinter fsck shows what is left');
      }
    }
    for (const rec of ins.serve.volumes) {
      this.vols.set(rec.id, rec);
      this.provisioned += rec.sizeBytes;
    }
    for (const rec of ins.serve.snapshots) this.snaps.set(rec.id, rec);
    this.groupSnapshots?.load();
    report.corrupt.push(...ins.findings.filter((f) => f.kind === 'unreadable-record').map((f) => f.subject));
    for (const line of report.recovered) this.log.warn({ backend: this.name }, line);
    if (report.corrupt.length) this.log.error({ backend: this.name, corrupt: report.corrupt }, 'unreadable records (left in place)');
    return report;
  }

  private async repair(step: RbdRepair, serve: Map<string, StoredVolume>): Promise<string | undefined> {
    switch (step.do) {
      case 'roll-back-create':
        await this.pool.remove(step.image);
        return `${step.what} ${step.id}: rolled back an interrupted create (image ${this.pool.spec(step.image)} removed)`;
      case 'finish-delete':
        await this.pool.remove(step.image);
        return `${step.what} ${step.id}: finished an interrupted delete`;
      case 'record-size': {
        const rec = serve.get(step.id);
        if (!rec) return undefined;
        const line = `volume ${rec.id}: recorded size ${rec.sizeBytes} → ${step.sizeBytes} after an interrupted expand`;
        rec.sizeBytes = step.sizeBytes;
        await this.writeVolume(rec);
        return line;
      }
      case 'remove-temp-snap':
        await this.pool.removeSnap(step.image, step.snap);
        return `removed the temporary snapshot ${step.snap} of ${this.pool.spec(step.image)} an interrupted clone left`;
      case 'roll-back-group':
        if (!this.groupSnapshots) return undefined;
        await this.groupSnapshots.rollBack(step.group, step.snapshotIds);
        return `group snapshot ${step.group}: rolled back an interrupted create (${step.snapshotIds.length} member images and the rbd group removed)`;
      case 'purge-trash':
        return (await this.pool.purgeTrashed(step.trashId)) ? `purged ${step.name} from the trash (no clone needs it any more)` : undefined;
    }
  }

  /** The last probe's outcome, for PROBE_CACHE_MS: Probe is polled, and a Ceph CLI call costs ~0.2-2 s. */
  private probed?: { at: number; error?: Error; running?: Promise<void> };

  async probe(): Promise<void> {
    const p = this.probed;
    if (p && !p.running && performance.now() - p.at < PROBE_CACHE_MS) {
      if (p.error) throw p.error;
      return;
    }
    if (p?.running) return p.running;
    // One monitor round trip: the pool's usage (also proves the key and caps). Shared by the callers that wait for it.
    const running = this.pool.usage().then(
      () => void (this.probed = { at: performance.now() }),
      (e: unknown) => {
        const error = e instanceof Error ? e : new Error(String(e));
        this.probed = { at: performance.now(), error };
        throw error;
      },
    );
    this.probed = { at: p?.at ?? 0, error: p?.error, running };
    return running;
  }

  /**
   * The pool's usage, shared for USAGE_CACHE_MS: every CreateVolume asks the
   * scheduler, which asks for capacity, and `ceph df` is a monitor round trip
   * (a CLI process of ~0.3 s without the agent). What sinter itself provisions
   * meanwhile is counted exactly (this.provisioned); only other writers' use
   * of the pool is up to USAGE_CACHE_MS old.
   */
  private usageCache?: { at: number; value: Promise<{ stored: number; maxAvail: number }> };

  private usage(): Promise<{ stored: number; maxAvail: number }> {
    const c = this.usageCache;
    if (c && performance.now() - c.at < USAGE_CACHE_MS) return c.value;
    const value = this.pool.usage();
    const entry = { at: performance.now(), value };
    this.usageCache = entry;
    value.catch(() => {
      if (this.usageCache === entry) this.usageCache = undefined;
    });
    return value;
  }

  async capacity(): Promise<BackendCapacity> {
    const { stored, maxAvail } = await this.usage();
    // max_avail is what can still be written after replication, the pool's real free space.
    const totalBytes = stored + maxAvail;
    const reserved = Math.floor((totalBytes * this.cfg.reservedPercent) / 100);
    const virtualFree = Math.floor(totalBytes * this.cfg.overSubscriptionRatio) - this.provisioned - reserved;
    const availableBytes = maxAvail <= reserved ? 0 : Math.max(0, virtualFree);
    return { totalBytes, physicalFreeBytes: maxAvail, provisionedBytes: this.provisioned, availableBytes };
  }

  volumes(): IterableIterator<VolumeRecord> {
    return this.vols.values();
  }

  volume(id: string): VolumeRecord | undefined {
    return this.vols.get(id);
  }

  snapshots(): IterableIterator<SnapshotRecord> {
    return this.snaps.values();
  }

  snapshot(id: string): SnapshotRecord | undefined {
    return this.snaps.get(id);
  }

  private writeVolume(rec: StoredVolume): Promise<void> {
    rec.updatedAt = now();
    return this.metaLocks.run(rec.id, () => this.pool.setMeta(volumeImage(rec.id), VOLUME_META_KEY, JSON.stringify(rec)));
  }

  private writeSnapshot(rec: StoredSnapshot): Promise<void> {
    rec.updatedAt = now();
    return this.metaLocks.run(rec.id, () => this.pool.setMeta(snapshotImage(rec.id), SNAPSHOT_META_KEY, JSON.stringify(rec)));
  }

  /** The image a content source names, and its clone depth. */
  private sourceOf(spec: CreateVolumeSpec): { image: string; depth: number } | undefined {
    if (!spec.source) return undefined;
    if (spec.source.type === 'volume') {
      const v = this.vols.get(spec.source.id);
      if (!v) throw new DomainError(Code.NOT_FOUND, `volume_content_source: volume ${spec.source.id} does not exist on backend ${this.name}`);
      return { image: volumeImage(v.id), depth: v.rbd?.cloneDepth ?? 0 };
    }
    const s = this.snaps.get(spec.source.id);
    if (!s) throw new DomainError(Code.NOT_FOUND, `volume_content_source: snapshot ${spec.source.id} does not exist on backend ${this.name}`);
    return { image: snapshotImage(s.id), depth: s.rbd?.cloneDepth ?? 0 };
  }

  /**
   * The image, then its record: an image without a record is an interrupted
   * create (start rolls it back), so the record is written last and the
   * volume is reported only once it is there.
   */
  async createVolume(spec: CreateVolumeSpec): Promise<VolumeRecord> {
    const image = volumeImage(spec.id);
    const src = this.sourceOf(spec);
    const t = now();
    const rec: StoredVolume = {
      id: spec.id,
      name: spec.name,
      backend: this.name,
      sizeBytes: spec.sizeBytes,
      state: 'available',
      parameters: spec.parameters,
      capabilities: spec.capabilities,
      source: spec.source,
      attachments: [],
      createdAt: t,
      updatedAt: t,
      rbd: { cloneDepth: 0 },
    };
    try {
      if (src) {
        await this.pool.cloneFrom(src.image, image);
        const info = await this.pool.info(image);
        if (info && info.size < spec.sizeBytes) await this.pool.resize(image, spec.sizeBytes);
        rec.rbd = { cloneDepth: await this.limitDepth(image, src.depth + 1) };
        await this.writeVolume(rec);
      } else {
        // The image and its record in one agent request (record still last).
        await this.pool.create(image, spec.sizeBytes, { [VOLUME_META_KEY]: JSON.stringify(rec) });
      }
    } catch (e) {
      // Nothing was reported: take the image away so the CO's retry starts clean (a start would, too).
      await this.pool.remove(image).catch((re: unknown) => this.log.warn({ image, err: (re as Error).message }, 'could not remove the image of a failed create; a start or sinter fsck will'));
      throw e;
    }
    this.vols.set(rec.id, rec);
    this.provisioned += rec.sizeBytes;
    if (src && rec.rbd && rec.rbd.cloneDepth >= this.cfg.cloneDepthSoftLimit) this.flattenLater(rec);
    return rec;
  }

  /**
   * ceph-csi's clone-depth limits: at the hard limit the new image is
   * flattened before it is used (its depth becomes 0); at the soft limit it is
   * flattened in the background after the create (flattenLater). Returns the depth recorded.
   */
  private async limitDepth(image: string, depth: number): Promise<number> {
    if (depth < this.cfg.cloneDepthHardLimit) return depth;
    this.log.info({ image, depth, limit: this.cfg.cloneDepthHardLimit }, 'clone chain at the hard depth limit: flattening before use');
    await this.pool.flatten(image);
    return 0;
  }

  private flattenLater(rec: StoredVolume): void {
    const image = volumeImage(rec.id);
    if (this.flattening.has(rec.id)) return;
    const p = (async () => {
      try {
        await this.pool.flatten(image);
        if (this.vols.get(rec.id) === rec) {
          rec.rbd = { cloneDepth: 0 };
          await this.writeVolume(rec);
        }
        this.log.info({ image }, 'clone chain past the soft depth limit flattened');
      } catch (e) {
        this.log.warn({ image, err: (e as Error).message }, 'background flatten failed; the next clone of this chain tries again');
      } finally {
        this.flattening.delete(rec.id);
      }
    })();
    this.flattening.set(rec.id, p);
  }

  /** Waits for a background flatten of `id` (tests; and anything that removes or grows the image). */
  async settled(id?: string): Promise<void> {
    if (id) await this.flattening.get(id);
    else await Promise.all(this.flattening.values());
  }

  async deleteVolume(id: string): Promise<void> {
    const rec = this.vols.get(id);
    if (!rec) return;
    await this.settled(id);
    rec.state = 'deleting';
    await this.writeVolume(rec);
    try {
      await this.pool.remove(volumeImage(id));
    } catch (e) {
      rec.state = 'error_deleting';
      rec.error = `delete failed: ${(e as Error).message}`;
      await this.writeVolume(rec).catch(() => undefined);
      throw e;
    }
    this.vols.delete(id);
    this.provisioned -= rec.sizeBytes;
  }

  async expandVolume(id: string, sizeBytes: number): Promise<VolumeRecord> {
    const rec = this.mustVolume(id);
    await this.settled(id);
    if (sizeBytes > rec.sizeBytes) {
      // The image grows first: a crash before the record leaves a larger image, which start records.
      await this.pool.resize(volumeImage(id), sizeBytes);
      this.provisioned += sizeBytes - rec.sizeBytes;
      rec.sizeBytes = sizeBytes;
      await this.writeVolume(rec);
    }
    return rec;
  }

  async setAttachments(id: string, attachments: Attachment[]): Promise<VolumeRecord> {
    const rec = this.mustVolume(id);
    rec.attachments = attachments;
    if (rec.state === 'available' || rec.state === 'in-use') rec.state = attachments.length > 0 ? 'in-use' : 'available';
    await this.writeVolume(rec);
    return rec;
  }

  async exportVolume(id: string, _node: NodeIdentity, _readonly: boolean): Promise<PublishContext> {
    this.mustVolume(id);
    // Nothing to export: the node reaches the image with its own cephx key (node config), never one sent here.
    return { transport: 'rbd', pool: this.cfg.pool, image: volumeImage(id), monitors: [...this.cfg.monitors] };
  }

  async unexportVolume(): Promise<void> {
    // Fencing a lost node's client (ceph osd blocklist) is not done yet (issue #15).
  }

  async volumeHealth(id: string): Promise<VolumeHealth> {
    const rec = this.vols.get(id);
    if (!rec) return { abnormal: true, message: 'no record of this volume' };
    if (rec.state === 'error' || rec.state === 'error_deleting') return { abnormal: true, message: `volume is in state ${rec.state}: ${rec.error ?? 'unknown error'}` };
    const info = await this.pool.info(volumeImage(id));
    if (!info) return { abnormal: true, message: `image ${this.pool.spec(volumeImage(id))} is missing from the pool: the volume's data is gone; restore it from a backup, or create a new volume from a snapshot` };
    if (info.size < rec.sizeBytes) return { abnormal: true, message: `image is ${info.size} bytes, smaller than the recorded ${rec.sizeBytes}` };
    return { abnormal: false, message: `${rec.state}: volume is healthy` };
  }

  /** A snapshot is a clone image of the volume (it outlives the volume; clones of it come from a live image). */
  async createSnapshot(spec: { id: string; name: string; sourceVolumeId: string }): Promise<SnapshotRecord> {
    const src = this.mustVolume(spec.sourceVolumeId);
    const image = snapshotImage(spec.id);
    const t = now();
    const rec: StoredSnapshot = {
      id: spec.id,
      name: spec.name,
      backend: this.name,
      sourceVolumeId: spec.sourceVolumeId,
      sizeBytes: src.sizeBytes,
      state: 'available',
      createdAt: t,
      updatedAt: t,
      rbd: { cloneDepth: 0 },
    };
    try {
      await this.pool.cloneFrom(volumeImage(src.id), image);
      rec.rbd = { cloneDepth: await this.limitDepth(image, (src.rbd?.cloneDepth ?? 0) + 1) };
      await this.writeSnapshot(rec);
    } catch (e) {
      await this.pool.remove(image).catch(() => undefined);
      throw e;
    }
    this.snaps.set(rec.id, rec);
    return rec;
  }

  async deleteSnapshot(id: string): Promise<void> {
    const rec = this.snaps.get(id);
    if (!rec) return;
    rec.state = 'deleting';
    await this.writeSnapshot(rec);
    try {
      await this.pool.remove(snapshotImage(id));
    } catch (e) {
      rec.state = 'error_deleting';
      rec.error = `delete failed: ${(e as Error).message}`;
      await this.writeSnapshot(rec).catch(() => undefined);
      throw e;
    }
    this.snaps.delete(id);
  }

  private mustVolume(id: string): StoredVolume {
    const rec = this.vols.get(id);
    if (!rec) throw failedPrecondition(`volume ${id} is not on backend ${this.name}`);
    return rec;
  }
}
