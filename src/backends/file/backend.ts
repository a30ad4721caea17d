import { accessSync, constants, promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { FileBackendConfig } from '../../config/types.js';
import type { NodeIdentity } from '../../contracts/nodeid.js';
import type { PublishContext } from '../../contracts/publish-context.js';
import type { Executor } from '../../exec/run.js';
import { createSparseFile, removeFileDurable } from '../../store/atomic-file.js';
import { RecordStore } from '../../store/record-store.js';
import { RecentCheck } from '../../util/recent-check.js';
import type {
  Attachment,
  Backend,
  BackendCapacity,
  ExportEntry,
  ExportsReconciled,
  CreateVolumeSpec,
  RecoveryReport,
  SnapshotRecord,
  VolumeHealth,
  VolumeRecord,
  VolumeState,
} from '../backend.js';
import { copyImage } from './copy.js';
import { backendOfVolume } from '../ids.js';
import { createVolumeExport, type VolumeExport } from '../targets/volume-export.js';
import { clearRecordDigest, inspectionFromDigest, writeRecordDigest } from './digest.js';
import { inspectFileBackend, type FileInspection, type Repair } from './inspect.js';
import { fileBackendDirs } from './layout.js';
import type { ReadAhead } from './read-ahead.js';

const now = () => new Date().toISOString();

/**
 * The embedded backend: each volume is a sparse image file with its record
 * beside it in one directory, so one directory fsync makes both durable.
 *
 * Crash rules: a record in `creating` was never reported to the CO, so start-up
 * rolls it back (the CO retries by name); a record in `deleting` is rolled
 * forward; nothing else is removed automatically.
 */
export class FileBackend implements Backend {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly topology: Readonly<Record<string, string>>;
  private readonly volDir: string;
  private readonly snapDir: string;
  private readonly volStore: RecordStore<VolumeRecord>;
  private readonly snapStore: RecordStore<SnapshotRecord>;
  private readonly vols = new Map<string, VolumeRecord>();
  private readonly snaps = new Map<string, SnapshotRecord>();
  private provisioned = 0;
  /** The last count of the images' allocated bytes (usedBytes). */
  private readonly used: { bytes: number; tookMs: number; at?: number; refreshing?: Promise<void> } = { bytes: 0, tookMs: 0 };
  /**
   * Set with `export: iscsi` (tgt or LIO) or `export: nvmeof` (nvmet): the
   * image file is the exported device (tgt's rdwr store, LIO's fileio
   * backstore, an nvmet file-backed namespace), as an LV is for LVM.
   * Unset with `export: local`: the node loop-attaches the image itself.
   */
  private readonly target?: VolumeExport;
  readonly reconcileIntervalMs?: number;
  /**
   * The records are this controller's alone (no `load`), and app.ts runs the
   * export reconcile after start() and before serving, so a publish's record
   * may be written while its export is made. Not with `export: local`: nothing to overlap.
   */
  readonly recordsBesideExport: boolean;

  constructor(
    private readonly cfg: FileBackendConfig,
    private readonly exec: Executor,
    private readonly log: Logger,
    /** The record directories as a worker read them while the driver loaded (main.ts); start() uses them once. */
    private readAhead?: ReadAhead,
  ) {
    const transport = cfg.export;
    if (transport !== 'local') {
      this.target = createVolumeExport({ ...cfg, export: transport }, exec, log, (id) => backendOfVolume(id) === cfg.name);
      this.reconcileIntervalMs = this.target.reconcileIntervalMs;
    }
    this.recordsBesideExport = this.target !== undefined;
    this.name = cfg.name;
    this.labels = cfg.labels;
    this.topology = cfg.topology;
    ({ volumes: this.volDir, snapshots: this.snapDir } = fileBackendDirs(cfg.dataDir));
    this.volStore = new RecordStore(this.volDir);
    this.snapStore = new RecordStore(this.snapDir);
  }

  imagePath(id: string): string {
    return join(this.volDir, `${id}.img`);
  }

  snapshotPath(id: string): string {
    return join(this.snapDir, `${id}.img`);
  }

  get dataDir(): string {
    return this.cfg.dataDir;
  }

  /**
   * The crash rules exist once: inspect (what `sinter fsck` shows) names each
   * interrupted operation and its repair; start-up applies that plan, then
   * serves the records inspect found sound.
   */
  async start(): Promise<RecoveryReport> {
    await fs.mkdir(this.cfg.dataDir, { recursive: true, mode: 0o700 });
    await this.volStore.init();
    await this.snapStore.init();
    await this.target?.init();

    const ahead = this.readAhead;
    this.readAhead = undefined;
    // A digest of the last clean shutdown that still holds stands in for reading and inspecting every record (digest.ts).
    const read = await ahead?.digests.get(fileBackendDirs(this.cfg.dataDir).digest);
    const digested = read && inspectionFromDigest(read, this.name);
    // The digest stops describing the directories at the first change (the repairs below, any RPC), so it goes
    // first: start() returns only once it is gone. Not before the read-ahead settled it: its worker reads the
    // digest (and removes it when done). The unlink and directory fsync run while inspect runs.
    const cleared = clearRecordDigest(this.cfg.dataDir);
    cleared.catch(() => undefined);
    let ins: FileInspection;
    if (digested) ins = digested;
    else {
      const pre = ahead && { volumes: await ahead.dirs.get(this.volDir), snapshots: await ahead.dirs.get(this.snapDir) };
      ins = pre ? await inspectFileBackend({ ...this.layout(), pre }) : await this.inspect();
    }
    await cleared;
    this.log.info({ volumes: ins.serve.volumes.length, snapshots: ins.serve.snapshots.length, from: digested ? 'digest' : 'files' }, 'records loaded');
    // Only an interrupted expand's repair looks a record up; most starts have none.
    const serve = ins.plan.some((s) => s.do === 'record-size') ? new Map(ins.serve.volumes.map((r) => [r.id, r])) : new Map<string, VolumeRecord>();
    const report: RecoveryReport = { recovered: [], orphans: [], corrupt: [] };
    for (const step of ins.plan) {
      const line = await this.repair(step, serve);
      if (line) report.recovered.push(line);
    }
    for (const rec of ins.serve.volumes) {
      this.vols.set(rec.id, rec);
      this.provisioned += rec.sizeBytes;
    }
    for (const rec of ins.serve.snapshots) this.snaps.set(rec.id, rec);
    report.corrupt.push(...ins.findings.filter((f) => f.kind === 'unreadable-record').map((f) => f.subject), ...ins.foreign);
    report.orphans.push(...ins.findings.filter((f) => f.kind === 'orphan-image' || f.kind === 'orphan-snapshot').map((f) => f.subject));

    for (const line of report.recovered) this.log.warn({ backend: this.name }, line);
    if (report.orphans.length) this.log.warn({ backend: this.name, orphans: report.orphans }, 'image files that no record explains (left in place; see sinter fsck)');
    if (report.corrupt.length) this.log.error({ backend: this.name, corrupt: report.corrupt }, 'unreadable records (left in place)');
    return report;
  }

  /** Carries out one step of inspect's plan; returns the line for the recovery report. */
  private async repair(step: Repair, serve: Map<string, VolumeRecord>): Promise<string | undefined> {
    switch (step.do) {
      case 'remove-temp':
        // The record the temp file was replacing still stands.
        await fs.rm(step.path, { force: true });
        return undefined;
      case 'roll-back-create':
      case 'finish-delete': {
        const [store, image] = step.what === 'volume' ? [this.volStore, this.imagePath(step.id)] : [this.snapStore, this.snapshotPath(step.id)];
        if (step.what === 'volume' && step.do === 'roll-back-create') await fs.rm(image, { force: true });
        else await removeFileDurable(image, store.syncDir);
        await store.remove(step.id);
        return `${step.what} ${step.id} (${step.name}): ${step.do === 'roll-back-create' ? 'rolled back an interrupted create' : 'finished an interrupted delete'}`;
      }
      case 'record-size': {
        // The image is grown before the record, so a larger image is a finished expand.
        const rec = serve.get(step.id);
        if (!rec) return undefined;
        const line = `volume ${rec.id}: recorded size ${rec.sizeBytes} → ${step.sizeBytes} after an interrupted expand`;
        rec.sizeBytes = step.sizeBytes;
        rec.updatedAt = now();
        await this.volStore.put(rec);
        return line;
      }
    }
  }

  /** Every RPC has finished and nothing runs against this backend any more: leaves the next start a digest of the records. */
  afterDrain(): Promise<void> {
    return writeRecordDigest(this.layout(), this.log);
  }

  /** What start() would repair and what it would leave for a person, touching nothing (`sinter fsck`). */
  inspect(): Promise<FileInspection> {
    return inspectFileBackend(this.layout());
  }

  private layout() {
    return { name: this.name, dataDir: this.cfg.dataDir, volumes: this.volStore, snapshots: this.snapStore };
  }

  async probe(): Promise<void> {
    // access(2) of two local directories is two metadata syscalls (~1 µs
    // each); through the thread pool each cost a round trip (~20 µs of CPU,
    // two thread wake-ups), a third of Probe's own cost, and Probe is polled.
    // A data directory that hangs stalls the thread pool, and so every
    // volume operation, just the same.
    for (const dir of [this.volDir, this.snapDir]) {
      try {
        accessSync(dir, constants.R_OK | constants.W_OK);
      } catch (e) {
        throw new Error(`backend "${this.name}": ${dir} is not readable and writable (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
      }
    }
    // Without its target daemon an exporting backend cannot publish anything;
    // asking tgtd is a tgtadm process, so from a recent check (as LVM does).
    if (this.target) await this.exportCheck.run();
  }

  private readonly exportCheck = new RecentCheck(async () => {
    await this.target?.check();
  });

  async capacity(): Promise<BackendCapacity> {
    const st = await fs.statfs(this.cfg.dataDir);
    const fsTotal = st.blocks * st.bsize;
    const totalBytes = this.cfg.capacityBytes > 0 ? Math.min(this.cfg.capacityBytes, fsTotal) : fsTotal;
    const physicalFreeBytes = st.bavail * st.bsize;
    const reserved = Math.floor((totalBytes * this.cfg.reservedPercent) / 100);
    // Cinder's thin-provisioning rule: virtual room is total × ratio minus what
    // is promised; and the physical space must stay above the reserve.
    const virtualFree = Math.floor(totalBytes * this.cfg.overSubscriptionRatio) - this.provisioned - reserved;
    const availableBytes = physicalFreeBytes <= reserved ? 0 : Math.max(0, virtualFree);
    return { totalBytes, physicalFreeBytes, provisionedBytes: this.provisioned, availableBytes };
  }

  /**
   * Allocated blocks of every image (what thin provisioning really uses).
   * Stat-ing 10,000 images takes about a second of thread-pool time here, so
   * a scrape never waits for it once a figure exists: it gets the last figure
   * and, when that is older than 50× what the last count took (1 s to 60 s),
   * starts a new count in the background. A few volumes are thus counted
   * again every second or so, 10,000 about once a minute.
   */
  async usedBytes(): Promise<number> {
    const u = this.used;
    const maxAge = Math.min(60_000, Math.max(1_000, 50 * u.tookMs));
    if (u.refreshing === undefined && (u.at === undefined || performance.now() - u.at > maxAge)) {
      const started = performance.now();
      u.refreshing = this.countAllocated().then(
        (bytes) => {
          u.bytes = bytes;
          u.at = performance.now();
          u.tookMs = u.at - started;
        },
        (e: unknown) => this.log.warn({ backend: this.name, err: (e as Error).message }, "cannot sum the images' allocated blocks"),
      );
      void u.refreshing.finally(() => (u.refreshing = undefined));
    }
    if (u.at === undefined) await u.refreshing;
    return u.bytes;
  }

  private async countAllocated(): Promise<number> {
    const paths = [...[...this.vols.keys()].map((id) => this.imagePath(id)), ...[...this.snaps.keys()].map((id) => this.snapshotPath(id))];
    let total = 0;
    let next = 0;
    // A few at a time: the thread pool is shared with the RPCs' file work.
    const worker = async () => {
      while (next < paths.length) {
        const st = await fs.stat(paths[next++]!).catch(() => undefined);
        if (st) total += st.blocks * 512;
      }
    };
    await Promise.all(Array.from({ length: Math.min(4, paths.length) }, worker));
    return total;
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

  private sourcePath(spec: CreateVolumeSpec): string | undefined {
    if (!spec.source) return undefined;
    return spec.source.type === 'snapshot' ? this.snapshotPath(spec.source.id) : this.imagePath(spec.source.id);
  }

  async createVolume(spec: CreateVolumeSpec): Promise<VolumeRecord> {
    const t = now();
    const rec: VolumeRecord = {
      id: spec.id,
      name: spec.name,
      backend: this.name,
      sizeBytes: spec.sizeBytes,
      state: 'creating',
      parameters: spec.parameters,
      capabilities: spec.capabilities,
      source: spec.source,
      attachments: [],
      createdAt: t,
      updatedAt: t,
    };
    await this.volStore.put(rec);
    this.vols.set(rec.id, rec);
    this.provisioned += rec.sizeBytes;
    const img = this.imagePath(rec.id);
    try {
      const src = this.sourcePath(spec);
      if (src) {
        await copyImage(src, img, this.exec);
        const fh = await fs.open(img, 'r+', 0o600);
        try {
          if ((await fh.stat()).size < spec.sizeBytes) await fh.truncate(spec.sizeBytes);
          await fh.sync();
        } finally {
          await fh.close();
        }
      } else {
        // A new image: O_EXCL, ftruncate to the size (sparse), fsync.
        await createSparseFile(img, spec.sizeBytes);
      }
      rec.state = 'available';
      rec.updatedAt = now();
      await this.volStore.put(rec);
      return rec;
    } catch (e) {
      rec.state = 'error';
      rec.error = `create failed: ${(e as Error).message}`;
      rec.updatedAt = now();
      await fs.rm(img, { force: true }).catch(() => undefined);
      await this.volStore.put(rec).catch(() => undefined);
      throw e;
    }
  }

  async deleteVolume(id: string): Promise<void> {
    const rec = this.vols.get(id);
    if (!rec) return;
    rec.state = 'deleting';
    rec.updatedAt = now();
    await this.volStore.put(rec);
    try {
      await this.target?.remove(id);
      await removeFileDurable(this.imagePath(id), this.volStore.syncDir);
      await this.volStore.remove(id);
    } catch (e) {
      rec.state = 'error_deleting';
      rec.error = `delete failed: ${(e as Error).message}`;
      rec.updatedAt = now();
      await this.volStore.put(rec).catch(() => undefined);
      throw e;
    }
    this.vols.delete(id);
    this.provisioned -= rec.sizeBytes;
  }

  async expandVolume(id: string, sizeBytes: number): Promise<VolumeRecord> {
    const rec = this.mustVolume(id);
    const grow = sizeBytes > rec.sizeBytes;
    if (grow) {
      const fh = await fs.open(this.imagePath(id), 'r+');
      try {
        await fh.truncate(sizeBytes);
        await fh.sync();
      } finally {
        await fh.close();
      }
      this.provisioned += sizeBytes - rec.sizeBytes;
      rec.sizeBytes = sizeBytes;
      rec.updatedAt = now();
      await this.volStore.put(rec);
    }
    // An exported LUN or namespace shows the new size only once the target
    // re-reads the image. Done on every call, so a retry after a crash between
    // the two steps finishes it (reconcile would too); `local` exports nothing.
    await this.target?.refreshSize(id, this.imagePath(id), grow, rec.sizeBytes);
    return rec;
  }

  async setAttachments(id: string, attachments: Attachment[]): Promise<VolumeRecord> {
    const rec = this.mustVolume(id);
    const state: VolumeState = rec.state === 'available' || rec.state === 'in-use' ? (attachments.length > 0 ? 'in-use' : 'available') : rec.state;
    const change = { attachments, state, updatedAt: now() };
    // The disk first: a failed write (disk full, EIO) must leave memory as the disk has it, or later
    // RPCs (and the export reconcile) would answer from a publish that is not recorded. The record
    // object is updated in place once durable: the controller's name index holds it.
    await this.volStore.put({ ...rec, ...change });
    Object.assign(rec, change);
    return rec;
  }

  async exportVolume(id: string, node: NodeIdentity, _readonly: boolean, secrets: Record<string, string>): Promise<PublishContext> {
    this.mustVolume(id);
    // Read-only is enforced by the node's mount; the export stays writable so
    // a later read-write publish of the same volume elsewhere is possible.
    if (this.target) return this.target.export(id, this.imagePath(id), node, secrets);
    // The local transport hands the node the image itself; the node loop-attaches it.
    return { transport: 'local', path: this.imagePath(id) };
  }

  async prepareExport(id: string, node: NodeIdentity, secrets: Record<string, string>): Promise<void> {
    this.mustVolume(id);
    await this.target?.prepare(id, node, secrets);
  }

  async unexportVolume(id: string, node: NodeIdentity): Promise<void> {
    // The local transport exports nothing, so there is nothing to revoke.
    await this.target?.unexport(id, node, this.vols.get(id)?.attachments ?? []);
  }

  /** What the target exports for this backend (fsck compares it with the publishes); none with `export: local`. */
  get listExports(): (() => Promise<ExportEntry[]>) | undefined {
    const target = this.target;
    return target && (() => target.entries((v) => backendOfVolume(v) === this.name));
  }

  async reconcileExports(withVolumeLock: <T>(volumeId: string, fn: () => Promise<T>) => Promise<T>): Promise<ExportsReconciled> {
    if (!this.target) return { restored: 0, revoked: 0 };
    return this.target.reconcile(() => this.vols.values(), (id) => this.imagePath(id), withVolumeLock);
  }

  async volumeHealth(id: string): Promise<VolumeHealth> {
    const rec = this.vols.get(id);
    if (!rec) return { abnormal: true, message: 'no record of this volume' };
    if (rec.state === 'error' || rec.state === 'error_deleting') return { abnormal: true, message: `volume is in state ${rec.state}: ${rec.error ?? 'unknown error'}` };
    const st = await fs.stat(this.imagePath(id)).catch(() => undefined);
    if (!st) return { abnormal: true, message: `image file ${id}.img is missing from backend "${this.name}": the volume's data is gone from the storage host; restore the file from a backup, or create a new volume from a snapshot` };
    if (st.size < rec.sizeBytes) return { abnormal: true, message: `image is ${st.size} bytes, smaller than the recorded ${rec.sizeBytes}` };
    const exportHealth = await this.target?.health(rec, this.imagePath(id));
    if (exportHealth) return exportHealth;
    // The Cinder state rides along so ControllerGetVolume shows it.
    return { abnormal: false, message: `${rec.state}: volume is healthy` };
  }

  async createSnapshot(spec: { id: string; name: string; sourceVolumeId: string }): Promise<SnapshotRecord> {
    const src = this.mustVolume(spec.sourceVolumeId);
    const t = now();
    const rec: SnapshotRecord = {
      id: spec.id,
      name: spec.name,
      backend: this.name,
      sourceVolumeId: spec.sourceVolumeId,
      sizeBytes: src.sizeBytes,
      state: 'creating',
      createdAt: t,
      updatedAt: t,
    };
    await this.snapStore.put(rec);
    this.snaps.set(rec.id, rec);
    const img = this.snapshotPath(rec.id);
    try {
      rec.copyMethod = await copyImage(this.imagePath(src.id), img, this.exec);
      const fh = await fs.open(img, 'r');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
      rec.state = 'available';
      rec.updatedAt = now();
      await this.snapStore.put(rec);
      return rec;
    } catch (e) {
      await fs.rm(img, { force: true }).catch(() => undefined);
      await this.snapStore.remove(rec.id).catch(() => undefined);
      this.snaps.delete(rec.id);
      throw e;
    }
  }

  async deleteSnapshot(id: string): Promise<void> {
    const rec = this.snaps.get(id);
    if (!rec) return;
    rec.state = 'deleting';
    rec.updatedAt = now();
    await this.snapStore.put(rec);
    try {
      await removeFileDurable(this.snapshotPath(id), this.snapStore.syncDir);
      await this.snapStore.remove(id);
    } catch (e) {
      rec.state = 'error_deleting';
      rec.error = `delete failed: ${(e as Error).message}`;
      await this.snapStore.put(rec).catch(() => undefined);
      throw e;
    }
    this.snaps.delete(id);
  }

  private mustVolume(id: string): VolumeRecord {
    const rec = this.vols.get(id);
    if (!rec) throw new Error(`volume ${id} is not on backend ${this.name}`);
    return rec;
  }
}
