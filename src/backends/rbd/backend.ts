import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { chapFromRequestSecrets } from '../../contracts/chap.js';
import { backendOfVolume } from '../ids.js';
import { createTargetHelper } from '../targets/create.js';
import { IscsiExport } from '../targets/iscsi-export.js';
import type { RbdBackendConfig } from '../../config/types.js';
import type { NodeIdentity } from '../../contracts/nodeid.js';
import type { PublishContext } from '../../contracts/publish-context.js';
import { KeyedLock } from '../../csi/locks.js';
import { aborted, Code, DomainError, failedPrecondition } from '../../errors/domain-error.js';
import type { Executor, PipeSpawner } from '../../exec/run.js';
import { RbdAgent } from './agent.js';
import { RbdGroupSnapshots } from './group-snapshots.js';
import type { Attachment, Backend, BackendCapacity, ExportEntry, ExportsReconciled, CreateVolumeSpec, RecoveryReport, SnapshotRecord, VolumeHealth, VolumeRecord, VolumeState } from '../backend.js';
import { parseNodeId } from '../../contracts/nodeid.js';
import { rbdClosedMetaKey } from '../../contracts/rbd-closed.js';
import { CephBlocklist } from './blocklist.js';
import { CephCli, CephCommandError, Errno } from './cli.js';
import { CephKeys } from './credentials.js';
import { inspectRbdPool, type RbdInspection, type RbdRepair } from './inspect.js';
import { snapshotImage, volumeImage } from './names.js';
import { RbdPool } from './pool.js';
import { parseVolume, SNAPSHOT_META_KEY, VOLUME_META_KEY, type RbdClient, type RbdFenceEntry, type StoredSnapshot, type StoredVolume } from './records.js';

const now = () => new Date().toISOString();
/** RFC 4122 name-based (SHA-1, version 5) UUID of `name` in the namespace `ns`. */
export function uuidV5(ns: string, name: string): string {
  const h = createHash('sha1').update(Buffer.from(ns.replace(/-/g, ''), 'hex')).update(name, 'utf8').digest();
  h[6] = (h[6]! & 0x0f) | 0x50;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}
/** sinter's namespace for rbd volume ids (a fixed random UUID). */
const RBD_ID_NAMESPACE = '6f1c2a4e-8d1b-4a57-9a53-2f0f1e7c9b3d';

const sameHost = (nodeId: string, node: NodeIdentity) => (parseNodeId(nodeId)?.host ?? nodeId) === node.host;
/** Fence entries Ceph still holds (it drops them at `until`). */
const unexpired = (f: RbdFenceEntry[] | undefined) => (f ?? []).filter((e) => Date.parse(e.until) > Date.now());
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
  readonly blocklist: CephBlocklist;
  /** The client scan (reconcileExports): which client instances watch each published image. */
  readonly reconcileIntervalMs: number;
  /** The iSCSI gateway (export: iscsi): tgtd serves the images through tgt-rbd. */
  private readonly iscsi?: IscsiExport;
  private readonly tgtConf?: string;
  readonly listExports?: () => Promise<ExportEntry[]>;
  /** Logged once: the cephx user may not lift fences. */
  private warnedRemove = false;
  private readonly vols = new Map<string, StoredVolume>();
  private readonly snaps = new Map<string, StoredSnapshot>();
  /** One metadata write at a time per image: a background flatten and a publish both rewrite the record. */
  private readonly metaLocks = new KeyedLock();
  /** Background flattens (soft clone-depth limit), awaited by anything that removes or grows the image. */
  private readonly flattening = new Map<string, Promise<void>>();
  private provisioned = 0;
  /** The cephx key: a file, or the requests' secrets (keyFrom). */
  readonly keys: CephKeys;
  /** keyFrom: secrets and no key yet at start: the record scan waits for the first request that brings one. */
  private deferred = false;
  private deferredStart?: Promise<boolean>;

  constructor(
    private readonly cfg: RbdBackendConfig,
    exec: Executor,
    private readonly log: Logger,
  ) {
    this.name = cfg.name;
    this.labels = cfg.labels;
    this.topology = cfg.topology;
    this.keys = new CephKeys(cfg.name, cfg, log);
    const conn = { monitors: cfg.monitors, user: cfg.user, keys: this.keys, timeoutMs: cfg.commandTimeoutSeconds * 1000 };
    const cli = new CephCli(conn, exec);
    if (cfg.agent && isPipeSpawner(exec)) this.agent = new RbdAgent(conn, exec, log.child({ part: 'rbd-agent' }));
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
    this.blocklist = new CephBlocklist(cli);
    this.reconcileIntervalMs = cfg.clientScanSeconds * 1000;
    if (cfg.export === 'iscsi' && cfg.iscsi && cfg.dataDir) {
      // tgtd's librbd gets monitors and the key file from a conf of its own: nothing from /etc/ceph, no DNS lookup.
      this.tgtConf = join(cfg.dataDir, 'tgt-ceph.conf');
      const helper = createTargetHelper(cfg.iscsi, exec, log, { backingStoreType: 'rbd', bsopts: `conf=${this.tgtConf};id=${cfg.user}` });
      this.iscsi = new IscsiExport(helper, cfg.iscsi.portals, join(cfg.dataDir, 'secrets'), log, (id) => backendOfVolume(id) === cfg.name);
      this.reconcileIntervalMs = cfg.iscsi.reconcileSeconds * 1000;
      const iscsi = this.iscsi;
      this.listExports = () => this.gatewayExports(iscsi);
    }
  }

  close(): void {
    this.agent?.stop();
  }

  /** The conf tgtd's rbd backing store reads (bsopts conf=): monitors and key file explicit. */
  private async writeTgtConf(): Promise<void> {
    if (!this.tgtConf || !this.cfg.dataDir) return;
    await mkdir(this.cfg.dataDir, { recursive: true, mode: 0o700 });
    const secs = Math.max(1, this.cfg.commandTimeoutSeconds - 1);
    await writeFile(
      this.tgtConf,
      ['[global]', `mon_host = ${this.cfg.monitors.join(',')}`, `keyfile = ${this.cfg.keyFile}`, 'keyring = /dev/null', 'auth_client_required = cephx', `client_mount_timeout = ${secs}`, `rados_mon_op_timeout = ${secs}`, ''].join('\n'),
      { mode: 0o600 },
    );
  }

  inspect(): Promise<RbdInspection> {
    return inspectRbdPool(this.name, this.pool);
  }

  async start(): Promise<RecoveryReport> {
    if (!this.keys.available()) {
      // keyFrom: secrets without keyFile: nothing can be read until a request brings the key.
      this.deferred = true;
      this.keys.warnWaiting('reading the volume records');
      return { recovered: [], orphans: [], corrupt: [] };
    }
    return this.scan();
  }

  /** Whether the records are read (false only while keyFrom: secrets waits for its first key). */
  isReady(): boolean {
    return !this.deferred;
  }

  notReadyError(): Error {
    return this.keys.noKeyYet();
  }

  /** A key Ceph has not accepted yet is tried on one monitor round trip (the pool's usage) before the request goes on. */
  async verifyCredentials(): Promise<void> {
    if (this.deferred || !this.keys.requestBringsNewKey()) return;
    await this.pool.usage();
  }

  /**
   * The start-up scan a missing key put off, run with the key the current
   * request brings (Ceph judges it on the scan's first call). Resolves true
   * when it ran now, false when there was nothing to do or no key to do it with.
   */
  startDeferred(): Promise<boolean> {
    if (!this.deferred || !this.keys.requestBringsKey()) return Promise.resolve(false);
    this.deferredStart ??= this.scan().then(
      (report) => {
        this.deferred = false;
        this.log.info({ backend: this.name, volumes: this.vols.size, snapshots: this.snaps.size, recovered: report.recovered.length }, 'records read with the cephx key a request brought');
        return true;
      },
      (e: unknown) => {
        this.deferredStart = undefined;
        throw e;
      },
    );
    return this.deferredStart;
  }

  private async scan(): Promise<RecoveryReport> {
    if (this.iscsi) {
      await this.writeTgtConf();
      await this.iscsi.init();
    }
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
      case 'roll-back-create': {
        // Another controller on this pool may be making it right now: only a create older than any takes is abandoned.
        const info = await this.pool.info(step.image);
        const born = info?.create_timestamp ? Date.parse(info.create_timestamp) : NaN;
        if (!Number.isNaN(born) && Date.now() - born < this.cfg.staleCreateSeconds * 1000) return undefined;
        await this.pool.remove(step.image);
        return `${step.what} ${step.id}: rolled back an interrupted create (image ${this.pool.spec(step.image)} removed)`;
      }
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
    // Waiting for a key is not a fault: a failed Probe would have the liveness probe restart a controller that is fine.
    if (!this.keys.available()) return this.keys.warnWaiting('the health probe');
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
   * A name's volume id is derived from the name (a version-5 UUID of pool and
   * name): every controller on this pool computes the same one, so a retry on
   * another replica finds what a killed one made, and two replicas acting on
   * one name at once meet on one image, which only one `rbd create` can make.
   */
  volumeIdFor(name: string): string {
    return `${this.name}-${uuidV5(RBD_ID_NAMESPACE, `${this.cfg.pool}\n${name}`)}`;
  }

  /**
   * The volume's record as the pool has it now, into this controller's view.
   * An image with no record is a create in progress (ABORTED: retry) or, once
   * older than staleCreateSeconds, one whose controller died: removed, so
   * the retry makes it afresh.
   */
  async load(id: string): Promise<VolumeRecord | undefined> {
    const image = volumeImage(id);
    const meta = await this.pool.meta(image);
    if (meta === undefined) {
      const gone = this.vols.get(id);
      if (gone) {
        this.vols.delete(id);
        this.provisioned -= gone.sizeBytes;
      }
      return undefined;
    }
    const rec = parseVolume(meta[VOLUME_META_KEY]);
    if (rec && rec.id === id) {
      const had = this.vols.get(id);
      if (had && had.updatedAt >= rec.updatedAt) return had;
      this.provisioned += rec.sizeBytes - (had?.sizeBytes ?? 0);
      this.vols.set(id, rec);
      return rec;
    }
    if (meta[VOLUME_META_KEY] !== undefined) throw new DomainError(Code.INTERNAL, `the record of image ${this.pool.spec(image)} cannot be read; sinter fsck shows it`);
    const info = await this.pool.info(image);
    const born = info?.create_timestamp ? Date.parse(info.create_timestamp) : NaN;
    const ageMs = Number.isNaN(born) ? Infinity : Date.now() - born;
    if (ageMs < this.cfg.staleCreateSeconds * 1000)
      throw aborted(`volume ${id} is being created by another controller (image ${this.pool.spec(image)} has no record yet); retry`);
    this.log.warn({ image: this.pool.spec(image), ageSeconds: Math.round(ageMs / 1000) }, 'image without a record, older than staleCreateSeconds: a create whose controller died; removing it so the retry starts clean');
    await this.pool.remove(image);
    return undefined;
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
    let theirs = false;
    try {
      if (src) {
        await this.pool.cloneFrom(src.image, image);
        const info = await this.pool.info(image);
        if (info && info.size < spec.sizeBytes) await this.pool.resize(image, spec.sizeBytes);
        rec.rbd = { cloneDepth: await this.limitDepth(image, src.depth + 1) };
        await this.writeVolume(rec);
      } else {
        try {
          // The image and its record in one agent request (record still last).
          await this.pool.create(image, spec.sizeBytes, { [VOLUME_META_KEY]: JSON.stringify(rec) });
        } catch (e) {
          // Another controller made it since load() looked: its image, not ours to remove.
          if (e instanceof CephCommandError && e.errno === Errno.EEXIST) {
            theirs = true;
            throw aborted(`volume ${spec.id} (${JSON.stringify(spec.name)}) is being created by another controller; retry`);
          }
          throw e;
        }
      }
    } catch (e) {
      if (theirs) throw e;
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
      await this.iscsi?.remove(id);
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
    const state: VolumeState = rec.state === 'available' || rec.state === 'in-use' ? (attachments.length > 0 ? 'in-use' : 'available') : rec.state;
    // The pool first, as the file and LVM backends do: a failed write must leave this controller's
    // view as the pool has it, not answer later RPCs from a publish that is not recorded.
    const next: StoredVolume = { ...rec, attachments, state };
    await this.writeVolume(next);
    Object.assign(rec, { attachments, state, updatedAt: next.updatedAt });
    return rec;
  }

  async exportVolume(id: string, node: NodeIdentity, _readonly: boolean, secrets: Record<string, string> = {}): Promise<PublishContext> {
    this.mustVolume(id);
    if (this.iscsi) return this.iscsi.export(id, this.pool.spec(volumeImage(id)), node, chapFromRequestSecrets(secrets));
    // Nothing to export: the node reaches the image with its own cephx key (node config), never one sent here.
    return { transport: 'rbd', pool: this.cfg.pool, image: volumeImage(id), monitors: [...this.cfg.monitors] };
  }

  async prepareExport(id: string, node: NodeIdentity, secrets: Record<string, string>): Promise<void> {
    this.mustVolume(id);
    await this.iscsi?.prepare(id, node, chapFromRequestSecrets(secrets));
  }

  /**
   * The fence (Cinder's terminate_connection, for a client that reaches the
   * image itself): when the last publish ends, every client instance still
   * watching the image, and every one the client scan attributed to the
   * leaving node, goes on the OSD blocklist before any other node can map it.
   * A node that unstaged first has no client left and nothing is fenced. While
   * other nodes keep publishes (multi-node access) nothing is: their clients
   * cannot be told apart from the leaving node's.
   */
  async unexportVolume(id: string, node: NodeIdentity): Promise<void> {
    const rec = this.vols.get(id);
    if (!rec) return;
    if (this.iscsi) {
      // The gateway's fence is the target's: the ACL goes and the initiator's sessions end (tgtd is the only Ceph client).
      const others = rec.attachments.filter((a) => parseNodeId(a.nodeId)?.iqn !== node.iqn);
      if (others.length === 0) await this.iscsi.removeTarget(id);
      else await this.iscsi.unexport(id, node);
      return;
    }
    const leaving = rec.attachments.filter((a) => sameHost(a.nodeId, node));
    const others = rec.attachments.filter((a) => !leaving.includes(a));
    if (others.length > 0) {
      this.log.info({ volume_id: id, node: node.host, others: others.map((a) => a.nodeId) }, 'publish ends while other nodes keep theirs: their clients cannot be told apart, nothing is fenced');
      return;
    }
    await this.fence(rec, leaving[0]?.nodeId ?? node.host);
  }

  /** Blocklists the image's live clients and those recorded for nodeId that may still write (stillWriters); the blocklist first, the record after (a lost record only means the entry expires unrecorded). */
  private async fence(rec: StoredVolume, nodeId: string): Promise<void> {
    await this.settled(rec.id); // a background flatten is our own client: never fence it
    const image = volumeImage(rec.id);
    const fenced = new Set((rec.rbd?.fenced ?? []).map((f) => f.address));
    const targets = new Map<string, RbdClient>();
    const seenAt = now();
    for (const w of await this.pool.watchers(image)) if (!fenced.has(w.address)) targets.set(w.address, { nodeId, address: w.address, client: w.client, seenAt });
    const silent = (rec.rbd?.clients ?? []).filter((c) => c.nodeId === nodeId && !fenced.has(c.address) && !targets.has(c.address));
    for (const c of await this.stillWriters(image, nodeId, silent)) targets.set(c.address, c);
    const until = new Date(Date.now() + this.cfg.fenceSeconds * 1000).toISOString();
    for (const t of targets.values()) await this.blocklist.add(t.address, this.cfg.fenceSeconds);
    const kept = (rec.rbd?.clients ?? []).filter((c) => c.nodeId !== nodeId);
    if (targets.size === 0 && kept.length === (rec.rbd?.clients ?? []).length) return;
    rec.rbd = { cloneDepth: rec.rbd?.cloneDepth ?? 0, clients: kept, fenced: [...unexpired(rec.rbd?.fenced), ...[...targets.values()].map((t) => ({ ...t, until }))] };
    await this.writeVolume(rec);
    if (targets.size > 0)
      this.log.warn(
        { volume_id: rec.id, node_id: nodeId, clients: [...targets.values()].map((t) => `${t.client}@${t.address}`), until },
        'publish ended while the node still had the image open (or had it open and went silent): its Ceph client instances are blocklisted',
      );
  }

  /**
   * Of the clients the scan recorded for a node that no longer watch the
   * image, those that may still write. A watch lapses 30 s into a partition,
   * and the client writes again when it heals (a reader that never took the
   * exclusive lock can take it then), so a missing watch alone proves nothing.
   * What does: the node's closed mark (src/contracts/rbd-closed.ts), set after
   * its unstage took the client away and cleared before any new one. With the
   * mark, a recorded client is gone unless it still holds the image's
   * exclusive lock (then it is not gone, whatever the mark says); without it
   * every recorded client stays a target, harmlessly for one that is gone
   * (nonces are never reused).
   */
  private async stillWriters(image: string, nodeId: string, silent: RbdClient[]): Promise<RbdClient[]> {
    if (silent.length === 0) return [];
    const host = parseNodeId(nodeId)?.host;
    const [holders, meta] = await Promise.all([this.pool.lockHolders(image), host ? this.pool.meta(image) : undefined]);
    const closedAt = host ? meta?.[rbdClosedMetaKey(host)] : undefined;
    if (closedAt === undefined) return silent;
    const holding = new Set((holders ?? []).map((h) => h.address));
    const gone = silent.filter((c) => !holding.has(c.address));
    if (gone.length > 0) this.log.info({ image: this.pool.spec(image), closedAt, clients: gone.map((c) => `${c.client}@${c.address}`) }, 'the node marked the image closed after its unstage: its recorded clients are gone, not fenced');
    return silent.filter((c) => holding.has(c.address));
  }

  /**
   * Before a publish to a node that holds none: lifts this node's own fences
   * (it has the volume back, so its clients may write again), then, unless
   * other nodes share the volume, refuses while a client that no publish
   * explains still watches the image: a writer sinter did not fence (an
   * operator's tool, a node unpublished by hand without unstaging).
   */
  async beforeNewPublish(id: string, node: NodeIdentity, others: Attachment[]): Promise<void> {
    const rec = this.mustVolume(id);
    if (this.iscsi) return; // the gateway's tgtd is the image's one client
    await this.unfence(rec, node);
    if (others.length > 0) return;
    const fenced = new Set((rec.rbd?.fenced ?? []).map((f) => f.address));
    const live = (await this.pool.watchers(volumeImage(id))).filter((w) => !fenced.has(w.address));
    if (live.length === 0) return;
    const known = new Map((rec.rbd?.clients ?? []).map((c) => [c.address, c.nodeId]));
    const who = live.map((w) => `${w.client} at ${w.address}${known.has(w.address) ? ` (node ${parseNodeId(known.get(w.address)!)?.host ?? known.get(w.address)})` : ''}`).join(', ');
    throw failedPrecondition(
      `volume ${id}: rbd image ${this.pool.spec(volumeImage(id))} is still open by Ceph ${who}, which no publish explains; unstage it on that node, or, if that node is gone, fence the client (ceph osd blocklist add ${live[0]!.address}) and retry`,
    );
  }

  /** Lifts the fences of `node`'s earlier client instances, and forgets expired ones. */
  private async unfence(rec: StoredVolume, node: NodeIdentity): Promise<void> {
    const all = rec.rbd?.fenced ?? [];
    if (all.length === 0) return;
    const keep: RbdFenceEntry[] = [];
    for (const f of unexpired(all)) {
      if (!sameHost(f.nodeId, node)) {
        keep.push(f);
        continue;
      }
      const r = await this.blocklist.remove(f.address);
      if (r === 'refused') {
        keep.push(f);
        if (!this.warnedRemove) this.log.warn({ user: this.cfg.user }, `client.${this.cfg.user} may not remove blocklist entries (mon cap 'allow command "osd blocklist"'); they expire on their own after fenceSeconds`);
        this.warnedRemove = true;
      } else this.log.info({ volume_id: rec.id, node: node.host, client: `${f.client}@${f.address}` }, 'volume published to the fenced node again: its old client instance is no longer blocklisted');
    }
    if (keep.length === all.length) return;
    rec.rbd = { ...rec.rbd, cloneDepth: rec.rbd?.cloneDepth ?? 0, fenced: keep };
    await this.writeVolume(rec);
  }

  /**
   * The client scan: which client instances watch each image one node alone
   * has published, recorded against that node so the fence finds them even
   * after their watch lapses (a partitioned client's does after 30 s).
   */
  async reconcileExports(withVolumeLock: <T>(volumeId: string, fn: () => Promise<T>) => Promise<T>): Promise<ExportsReconciled | void> {
    if (this.deferred || !this.keys.available()) return this.keys.warnWaiting('the client scan');
    if (this.iscsi) {
      const r = await this.iscsi.reconcile(() => this.vols.values(), (id) => this.pool.spec(volumeImage(id)), withVolumeLock);
      return { restored: r.aclsRestored.length, revoked: r.aclsRevoked.length };
    }
    for (const v of [...this.vols.values()]) {
      if (v.attachments.length !== 1 || this.flattening.has(v.id)) continue;
      await withVolumeLock(v.id, async () => {
        // As the pool has it now: another replica may have moved the publish since this one read the record.
        await this.load(v.id).catch(() => undefined);
        const rec = this.vols.get(v.id);
        const only = rec?.attachments.length === 1 ? rec.attachments[0]! : undefined;
        if (!rec || !only || this.flattening.has(rec.id)) return;
        const known = new Set([...(rec.rbd?.clients ?? []), ...(rec.rbd?.fenced ?? [])].map((c) => c.address));
        const fresh = (await this.pool.watchers(volumeImage(rec.id))).filter((w) => !known.has(w.address));
        const fencedBefore = rec.rbd?.fenced?.length ?? 0;
        const fenced = unexpired(rec.rbd?.fenced);
        if (fresh.length === 0 && fenced.length === fencedBefore) return;
        const seenAt = now();
        rec.rbd = { cloneDepth: rec.rbd?.cloneDepth ?? 0, fenced, clients: [...(rec.rbd?.clients ?? []), ...fresh.map((w) => ({ nodeId: only.nodeId, address: w.address, client: w.client, seenAt }))] };
        await this.writeVolume(rec);
      });
    }
  }

  /** The gateway's targets (listExports, for sinter fsck's fencing check; absent when nodes map images themselves). */
  private async gatewayExports(iscsi: IscsiExport): Promise<ExportEntry[]> {
    return (await iscsi.targets())
      .filter((t) => t.volumeId && backendOfVolume(t.volumeId) === this.name)
      .map((t) => ({ volumeId: t.volumeId, target: t.iqn, initiators: t.acls }));
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
