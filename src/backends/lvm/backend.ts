import { promises as fs } from 'node:fs';
import type { Logger } from 'pino';
import type { LvmBackendConfig } from '../../config/types.js';
import type { NodeIdentity } from '../../contracts/nodeid.js';
import type { PublishContext } from '../../contracts/publish-context.js';
import { failedPrecondition, notFound, resourceExhausted, unavailable } from '../../errors/domain-error.js';
import type { Executor } from '../../exec/run.js';
import type {
  Attachment,
  Backend,
  BackendCapacity,
  CreateVolumeSpec,
  ExportEntry,
  ExportsReconciled,
  RecoveryReport,
  SnapshotRecord,
  VolumeHealth,
  VolumeRecord,
} from '../backend.js';
import { backendOfVolume } from '../ids.js';
import { createVolumeExport, type VolumeExport } from '../targets/volume-export.js';
import { blockCopy } from './block-copy.js';
import { poolPastHighWater, thickCapacity, thinCapacity } from './capacity.js';
import { inspectLvm, type LvmInspection, type LvmRepair, type LvRecordState } from './inspect.js';
import { LvmCli, LvmError } from './lvm-cli.js';
import { lvOfSnapshot, lvOfVolume } from './names.js';
import { lvHealth, type LvInfo } from './report.js';
import { encodeRecord, tagChange } from './tags.js';
import { RecentCheck } from '../../util/recent-check.js';

const now = () => new Date().toISOString();
const MiB = 1024 * 1024;

/**
 * Cinder's reference driver (cinder/volume/drivers/lvm.py) as a sinter
 * backend: each volume is an LV in one volume group, thin (in a thin pool) or
 * thick, exported by the target helper with the LV's device as the iSCSI LUN
 * (tgt, LIO) or NVMe namespace (nvmet). Each record lives in its LV's tags (tags.ts), written by the same LVM
 * command that makes the change, so there is no record without its LV and no
 * sinter LV without its record; `dataDir` holds only CHAP secrets.
 */
export class LvmBackend implements Backend {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly topology: Readonly<Record<string, string>>;
  readonly reconcileIntervalMs: number;
  private readonly lvm: LvmCli;
  /** tgt or LIO (export: iscsi), nvmet (export: nvmeof). */
  private readonly target: VolumeExport;
  private readonly vols = new Map<string, VolumeRecord>();
  private readonly snaps = new Map<string, SnapshotRecord>();
  /** Each served record's LV tags and generation (the next write's starting point). */
  private readonly lvState = new Map<string, Omit<LvRecordState, 'lv'>>();
  /** thin or thick, settled at start (lvmType auto: thin when the pool exists). */
  private thin = false;

  constructor(
    private readonly cfg: LvmBackendConfig,
    private readonly exec: Executor,
    private readonly log: Logger,
  ) {
    this.name = cfg.name;
    this.labels = cfg.labels;
    this.topology = cfg.topology;
    this.lvm = new LvmCli(exec, { vg: cfg.volumeGroup, devices: cfg.devices, log });
    this.target = createVolumeExport(cfg, exec, log, (id) => backendOfVolume(id) === cfg.name);
    this.reconcileIntervalMs = this.target.reconcileIntervalMs;
  }

  private get vg(): string {
    return this.cfg.volumeGroup;
  }

  /** The LUN's backing device: the LV's path as udev makes it. */
  devicePath(lv: string): string {
    return `/dev/${this.vg}/${lv}`;
  }

  // ---------------------------------------------------------------- start, fsck

  async inspect(): Promise<LvmInspection> {
    const vg = await this.lvm.vg(this.vg);
    const lvs = vg ? await this.lvm.lvs(this.vg) : [];
    return inspectLvm({ backend: this.name, vgName: this.vg, thinPool: this.cfg.thinPool, lvmType: this.cfg.lvmType, vg, lvs });
  }

  async start(): Promise<RecoveryReport> {
    await fs.mkdir(this.cfg.dataDir, { recursive: true, mode: 0o700 });
    await this.target.init();
    const ins = await this.inspect();
    this.thin = this.cfg.lvmType === 'thin' || (this.cfg.lvmType === 'auto' && ins.pool !== undefined);
    const report: RecoveryReport = { recovered: [], orphans: [], corrupt: [] };
    for (const rec of ins.serve.volumes) this.vols.set(rec.id, rec);
    for (const rec of ins.serve.snapshots) this.snaps.set(rec.id, rec);
    for (const [id, s] of ins.lvs) this.lvState.set(id, { generation: s.generation, tags: s.tags });
    for (const step of ins.plan) {
      try {
        const line = await this.repair(step);
        if (line) report.recovered.push(line);
      } catch (e) {
        report.corrupt.push(`${step.lv}: ${step.do} failed: ${(e as Error).message}`);
      }
    }
    report.orphans.push(...ins.findings.filter((f) => f.kind === 'orphan-lv').map((f) => f.subject));
    report.corrupt.push(...ins.findings.filter((f) => f.kind === 'unreadable-record' || f.kind === 'missing-volume-group' || f.kind === 'missing-thin-pool').map((f) => `${f.subject}: ${f.detail}`));
    for (const line of report.recovered) this.log.warn({ backend: this.name }, line);
    if (report.orphans.length) this.log.warn({ backend: this.name, orphans: report.orphans }, 'LVs named like sinter volumes that carry no record (left in place; see sinter fsck)');
    if (report.corrupt.length) this.log.error({ backend: this.name, problems: report.corrupt }, 'LVM backend problems (left in place)');
    this.log.info({ backend: this.name, vg: this.vg, devices: await this.lvm.devices(), thin: this.thin, volumes: this.vols.size, snapshots: this.snaps.size }, 'LVM backend started');
    return report;
  }

  private async repair(step: LvmRepair): Promise<string | undefined> {
    switch (step.do) {
      case 'drop-stale-tags':
        await this.lvm.lvchange(this.vg, step.lv, step.tags.flatMap((t) => ['--deltag', t]));
        for (const s of this.lvState.values()) s.tags = s.tags.filter((t) => !step.tags.includes(t));
        return undefined;
      case 'roll-back-create':
        await this.target.remove(step.id).catch(() => undefined);
        await this.lvm.lvremove(this.vg, step.lv);
        return `${step.what} ${step.id} (${step.name}): rolled back an interrupted create`;
      case 'finish-delete': {
        await this.target.remove(step.id).catch(() => undefined);
        const lv = (await this.lvm.lvs(this.vg, step.lv))[0];
        if (lv && step.what === 'volume') await this.clear(lv, step.id);
        await this.lvm.lvremove(this.vg, step.lv);
        return `${step.what} ${step.id} (${step.name}): finished an interrupted delete`;
      }
      case 'record-size': {
        const rec = this.vols.get(step.id);
        if (!rec) return undefined;
        const line = `volume ${rec.id}: recorded size ${rec.sizeBytes} → ${step.sizeBytes} after an interrupted expand`;
        await this.putVolume({ ...rec, sizeBytes: step.sizeBytes, updatedAt: now() });
        return line;
      }
    }
  }

  // ---------------------------------------------------------------- records in tags

  /** The record as kept in tags: the LV name and the backend already say id and backend, but they stay for fsck's cross-check. */
  private async putRecord(id: string, lv: string, rec: VolumeRecord | SnapshotRecord): Promise<void> {
    const st = this.lvState.get(id);
    if (!st) throw new Error(`no tag state for ${id}`);
    const gen = st.generation + 1;
    const { add, del } = tagChange(st.tags, rec, gen);
    // One lvchange: one metadata commit (test/fixtures/lvm/tag-swap-seqno.txt); the generations cover a version that would split it.
    await this.lvm.lvchange(this.vg, lv, [...add.flatMap((t) => ['--addtag', t]), ...del.flatMap((t) => ['--deltag', t])]);
    this.lvState.set(id, { generation: gen, tags: [...st.tags.filter((t) => !del.includes(t)), ...add] });
  }

  private async putVolume(rec: VolumeRecord): Promise<VolumeRecord> {
    await this.putRecord(rec.id, lvOfVolume(rec.id), rec);
    this.vols.set(rec.id, rec);
    return rec;
  }

  private async putSnapshot(rec: SnapshotRecord): Promise<SnapshotRecord> {
    await this.putRecord(rec.id, lvOfSnapshot(rec.id), rec);
    this.snaps.set(rec.id, rec);
    return rec;
  }

  /** `--addtag` arguments that write generation 1 of a record in the lvcreate that makes its LV. */
  private firstTags(id: string, rec: VolumeRecord | SnapshotRecord): string[] {
    const tags = encodeRecord(rec, 1);
    this.lvState.set(id, { generation: 1, tags });
    return tags.flatMap((t) => ['--addtag', t]);
  }

  // ---------------------------------------------------------------- capacity

  /**
   * Probe is polled (by the CO, by liveness checks) with a short deadline, and
   * vgs + lvs + tgtadm are three processes: so it answers from the last check
   * and starts the next one in the background once that is older than 5 s.
   * Only the very first call waits for a check.
   */
  async probe(): Promise<void> {
    return this.probed.run();
  }

  private readonly probed = new RecentCheck(() => this.checkServing());

  private async checkServing(): Promise<void> {
    const vg = await this.lvm.vg(this.vg);
    if (!vg) throw unavailable(`volume group ${this.vg} of backend "${this.name}" does not exist (or its disks are missing)`);
    if (this.thin) await this.pool();
    await this.target.check();
  }

  private async pool(): Promise<LvInfo> {
    const pool = (await this.lvm.lvs(this.vg, this.cfg.thinPool))[0];
    if (!pool || pool.segtype !== 'thin-pool')
      throw failedPrecondition(`backend "${this.name}": volume group ${this.vg} has no thin pool ${this.cfg.thinPool} (thinPool); create it with lvcreate --type thin-pool`);
    return pool;
  }

  async capacity(): Promise<BackendCapacity> {
    if (this.thin) {
      const lvs = await this.lvm.lvs(this.vg);
      const pool = lvs.find((l) => l.name === this.cfg.thinPool && l.segtype === 'thin-pool');
      if (!pool) throw failedPrecondition(`backend "${this.name}": volume group ${this.vg} has no thin pool ${this.cfg.thinPool}`);
      return thinCapacity({
        pool: `${this.vg}/${pool.name}`,
        sizeBytes: pool.sizeBytes,
        dataPercent: pool.dataPercent ?? 0,
        metadataPercent: pool.metadataPercent ?? 0,
        provisionedBytes: lvs.filter((l) => l.segtype === 'thin' && l.pool === pool.name).reduce((s, l) => s + l.sizeBytes, 0),
        ratio: this.cfg.maxOverSubscriptionRatio,
        reservedPercent: this.cfg.reservedPercent,
        highWaterPercent: this.cfg.thinPoolHighWaterPercent,
      });
    }
    const vg = await this.lvm.vg(this.vg);
    if (!vg) throw unavailable(`volume group ${this.vg} does not exist`);
    let provisioned = 0;
    for (const v of this.vols.values()) provisioned += v.sizeBytes;
    return thickCapacity({ vgSizeBytes: vg.sizeBytes, vgFreeBytes: vg.freeBytes, provisionedBytes: provisioned, reservedPercent: this.cfg.reservedPercent });
  }

  /** RESOURCE_EXHAUSTED naming the pool once it is past its high-water mark: before it fills and every volume in it stops. */
  private async checkHighWater(): Promise<void> {
    if (!this.thin) return;
    const pool = await this.pool();
    const why = poolPastHighWater({ pool: `${this.vg}/${pool.name}`, dataPercent: pool.dataPercent ?? 0, metadataPercent: pool.metadataPercent ?? 0, highWaterPercent: this.cfg.thinPoolHighWaterPercent });
    if (why) throw resourceExhausted(why);
  }

  // ---------------------------------------------------------------- records

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

  // ---------------------------------------------------------------- volumes

  /** The LV a content source reads from. */
  private sourceLv(spec: CreateVolumeSpec): string | undefined {
    if (!spec.source) return undefined;
    return spec.source.type === 'snapshot' ? lvOfSnapshot(spec.source.id) : lvOfVolume(spec.source.id);
  }

  async createVolume(spec: CreateVolumeSpec): Promise<VolumeRecord> {
    await this.checkHighWater();
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
    const lv = lvOfVolume(rec.id);
    const srcLvName = this.sourceLv(spec);
    const src = srcLvName ? (await this.lvm.lvs(this.vg, srcLvName))[0] : undefined;
    if (srcLvName && !src) throw notFound(`volume_content_source: the LV ${srcLvName} of the source is missing from volume group ${this.vg}`);
    let made = false;
    try {
      if (src && this.thin && src.segtype === 'thin') {
        // A thin snapshot of the source, made writable and activatable (-kn): instant, shares every block.
        await this.lvm.lvcreate(['-s', '-kn', '-n', lv, ...this.firstTags(rec.id, rec), `${this.vg}/${src.name}`]);
        made = true;
        await this.lvm.lvchange(this.vg, lv, ['-ay']);
        if (spec.sizeBytes > src.sizeBytes) await this.lvm.lvextend(this.vg, lv, spec.sizeBytes);
      } else {
        const args = this.thin
          ? ['--type', 'thin', '-V', `${spec.sizeBytes}b`, '--thinpool', this.cfg.thinPool]
          : ['-L', `${spec.sizeBytes}b`, '-Zy', '--wipesignatures', 'y'];
        // A new thin LV without a source is whole the moment lvcreate commits its metadata (it reads
        // zeros; there is nothing to zero, wipe or copy after): its record goes in as 'available' in
        // that same lvcreate, one LVM command (a metadata commit, seconds under load) fewer. A thick LV
        // is zeroed and wiped by lvcreate after the commit, a clone is copied after it: they stay
        // 'creating' until done, which the next start rolls back after a crash.
        if (this.thin && !src) {
          const done = { ...rec, state: 'available' as const };
          await this.lvm.lvcreate([...args, '-n', lv, ...this.firstTags(rec.id, done), this.vg]);
          this.vols.set(rec.id, done);
          return done;
        }
        await this.lvm.lvcreate([...args, '-n', lv, ...this.firstTags(rec.id, rec), this.vg]);
        made = true;
        if (src) {
          // Thick (or a thick source): a block copy; a classic snapshot is active with its origin.
          if (!src.active) await this.lvm.lvchange(this.vg, src.name, ['-ay', '-K']);
          // A classic snapshot's lv_size is its copy-on-write space, not what it shows: the record knows the size.
          const srcBytes = spec.source!.type === 'snapshot' ? this.snaps.get(spec.source!.id)?.sizeBytes : this.vols.get(spec.source!.id)?.sizeBytes;
          const bytes = Math.min(srcBytes ?? src.sizeBytes, spec.sizeBytes);
          await blockCopy(this.exec, this.log, { from: this.devicePath(src.name), to: this.devicePath(lv), bytes, what: `clone ${spec.source!.id} → ${rec.id}` });
        }
      }
      this.vols.set(rec.id, rec);
      return await this.putVolume({ ...rec, state: 'available', updatedAt: now() });
    } catch (e) {
      if (made) {
        // The CO retries by name: leave nothing half made (a failed removal leaves 'creating', which the next start rolls back).
        await this.lvm.lvremove(this.vg, lv).catch((re: Error) => this.log.error({ lv, err: re.message }, 'removing a failed create'));
      }
      this.vols.delete(rec.id);
      this.lvState.delete(rec.id);
      throw this.translate(e, `create volume ${rec.id}`);
    }
  }

  /** LVM's answers as domain errors: "no space" is RESOURCE_EXHAUSTED, the rest keep their message. */
  private translate(e: unknown, what: string): unknown {
    if (e instanceof LvmError && e.kind === 'no-space') return resourceExhausted(`${what}: volume group ${this.vg} has too little free space: ${e.message}`);
    if (e instanceof LvmError && e.kind === 'vg-not-found') return unavailable(`${what}: volume group ${this.vg} does not exist`);
    return e;
  }

  /** Cinder's volume_clear for thick LVs: their extents go back to the VG and would show a later volume this one's data. */
  private clears(lv: LvInfo): boolean {
    return this.cfg.volumeClear !== 'none' && lv.segtype !== 'thin';
  }

  private async clear(lv: LvInfo, id: string): Promise<void> {
    if (!this.clears(lv)) return;
    if (!lv.active) await this.lvm.lvchange(this.vg, lv.name, ['-ay']);
    const bytes = this.cfg.volumeClearSizeMiB > 0 ? Math.min(lv.sizeBytes, this.cfg.volumeClearSizeMiB * MiB) : lv.sizeBytes;
    await blockCopy(this.exec, this.log, { from: '/dev/zero', to: this.devicePath(lv.name), bytes, what: `volume_clear ${id}` });
  }

  async deleteVolume(id: string): Promise<void> {
    const rec = this.vols.get(id);
    if (!rec) return;
    const lvName = lvOfVolume(id);
    const lv = (await this.lvm.lvs(this.vg, lvName))[0];
    if (lv && lv.attr[0] === 'o') {
      // A classic snapshot lives in its origin: lvremove would take it along.
      const deps = [...this.snaps.values()].filter((s) => s.sourceVolumeId === id).map((s) => s.id);
      throw failedPrecondition(`volume ${id} has ${deps.length || 'classic'} snapshot(s) ${deps.join(', ')} that live in it (thick LVM snapshots are not independent); delete them first`);
    }
    // The 'deleting' record is what lets the next start finish a delete a crash interrupted half-way: only
    // volume_clear (zeroing a thick LV) is half-way-able. Without it the delete is the export's removal (the
    // volume is unpublished, so a volume left 'available' without one is whole, and the CO retries the
    // delete) and one lvremove, one metadata commit: the record written first would be one more commit
    // (seconds under load) for nothing a restart needs. The record in memory says 'deleting' all the same.
    if (lv && this.clears(lv)) await this.putVolume({ ...rec, state: 'deleting', updatedAt: now() });
    else if (lv) this.vols.set(id, { ...rec, state: 'deleting', updatedAt: now() });
    try {
      await this.target.remove(id);
      if (lv) {
        await this.clear(lv, id);
        await this.lvm.lvremove(this.vg, lvName);
      }
    } catch (e) {
      if (lv) await this.putVolume({ ...rec, state: 'error_deleting', error: `delete failed: ${(e as Error).message}`, updatedAt: now() }).catch(() => undefined);
      throw e;
    }
    this.vols.delete(id);
    this.lvState.delete(id);
  }

  async expandVolume(id: string, sizeBytes: number): Promise<VolumeRecord> {
    let rec = this.mustVolume(id);
    const lvName = lvOfVolume(id);
    const grow = sizeBytes > rec.sizeBytes;
    if (grow) {
      const lv = (await this.lvm.lvs(this.vg, lvName))[0];
      if (!lv) throw notFound(`volume ${id}: its LV ${this.vg}/${lvName} is missing`);
      // LVM resizes the origin of a classic snapshot only while it is inactive ("Snapshot origin
      // volumes can be resized only while inactive"), and an exported volume is always active.
      if (lv.attr[0] === 'o' && lv.sizeBytes < sizeBytes)
        throw failedPrecondition(`volume ${id} is a thick LV with classic snapshots, which LVM cannot grow while it is in use; delete its snapshots (or restore from them into a new volume) and expand again`);
      // lvextend first: a crash before the record update leaves a larger LV, which start records.
      if (lv.sizeBytes < sizeBytes) await this.lvm.lvextend(this.vg, lvName, sizeBytes).catch((e: unknown) => Promise.reject(this.translate(e, `expand volume ${id}`)));
      rec = await this.putVolume({ ...rec, sizeBytes, updatedAt: now() });
    }
    await this.target.refreshSize(id, this.devicePath(lvName), grow, rec.sizeBytes);
    return rec;
  }

  async setAttachments(id: string, attachments: Attachment[]): Promise<VolumeRecord> {
    const rec = this.mustVolume(id);
    let state = rec.state;
    if (state === 'available' || state === 'in-use') state = attachments.length > 0 ? 'in-use' : 'available';
    return this.putVolume({ ...rec, attachments, state, updatedAt: now() });
  }

  async exportVolume(id: string, node: NodeIdentity, _readonly: boolean, secrets: Record<string, string>): Promise<PublishContext> {
    this.mustVolume(id);
    const lvName = lvOfVolume(id);
    const device = this.devicePath(lvName);
    // The device node is what the target opens, and LVM makes it only for an active LV: when it is there,
    // asking LVM (an `lvs`, a scan of the VG's metadata: 0.1 s on a host, seconds on a busy one) tells nothing more.
    if (!(await isBlockDevice(device))) {
      const lv = (await this.lvm.lvs(this.vg, lvName))[0];
      if (!lv) throw failedPrecondition(`volume ${id}: its LV ${this.vg}/${lvName} is missing from the volume group`);
      // After a reboot without autoactivation the LV has no device yet.
      if (!lv.active) await this.lvm.lvchange(this.vg, lvName, ['-ay']);
    }
    return this.target.export(id, device, node, secrets);
  }

  async prepareExport(id: string, node: NodeIdentity, secrets: Record<string, string>): Promise<void> {
    this.mustVolume(id);
    await this.target.prepare(id, node, secrets);
  }

  async unexportVolume(id: string, node: NodeIdentity): Promise<void> {
    await this.target.unexport(id, node, this.vols.get(id)?.attachments ?? []);
  }

  async listExports(): Promise<ExportEntry[]> {
    return this.target.entries((v) => backendOfVolume(v) === this.name);
  }

  async reconcileExports(withVolumeLock: <T>(volumeId: string, fn: () => Promise<T>) => Promise<T>): Promise<ExportsReconciled> {
    return this.target.reconcile(() => this.vols.values(), (id) => this.devicePath(lvOfVolume(id)), withVolumeLock);
  }

  async volumeHealth(id: string): Promise<VolumeHealth> {
    const rec = this.vols.get(id);
    if (!rec) return { abnormal: true, message: 'no record of this volume' };
    if (rec.state === 'error' || rec.state === 'error_deleting') return { abnormal: true, message: `volume is in state ${rec.state}: ${rec.error ?? 'unknown error'}` };
    const lvName = lvOfVolume(id);
    let lvs: LvInfo[];
    try {
      lvs = await this.lvm.lvs(this.vg);
    } catch (e) {
      return { abnormal: true, message: `cannot read volume group ${this.vg}: ${(e as Error).message}` };
    }
    const lv = lvs.find((l) => l.name === lvName);
    if (!lv)
      return {
        abnormal: true,
        message: `LV ${this.vg}/${lvName} is missing from backend "${this.name}": it was removed outside sinter and the volume's data is gone; restore it from a backup, or create a new volume from a snapshot`,
      };
    const h = lvHealth(lv.attr);
    if (h) return { abnormal: true, message: `LV ${this.vg}/${lvName} is ${h}` };
    if (lv.segtype === 'thin') {
      const pool = lvs.find((l) => l.name === lv.pool);
      const ph = pool && lvHealth(pool.attr);
      if (ph) return { abnormal: true, message: `its thin pool ${this.vg}/${lv.pool} is ${ph}: writes to the volume fail or wait` };
    }
    if (lv.sizeBytes < rec.sizeBytes) return { abnormal: true, message: `LV is ${lv.sizeBytes} bytes, smaller than the recorded ${rec.sizeBytes}` };
    const exportHealth = await this.target.health(rec, this.devicePath(lvName));
    if (exportHealth) return exportHealth;
    return { abnormal: false, message: `${rec.state}: volume is healthy` };
  }

  // ---------------------------------------------------------------- snapshots

  async createSnapshot(spec: { id: string; name: string; sourceVolumeId: string }): Promise<SnapshotRecord> {
    const src = this.mustVolume(spec.sourceVolumeId);
    const srcLv = (await this.lvm.lvs(this.vg, lvOfVolume(src.id)))[0];
    if (!srcLv) throw failedPrecondition(`source_volume_id: the LV of volume ${src.id} is missing from volume group ${this.vg}`);
    const t = now();
    const rec: SnapshotRecord = { id: spec.id, name: spec.name, backend: this.name, sourceVolumeId: src.id, sizeBytes: src.sizeBytes, state: 'creating', createdAt: t, updatedAt: t };
    const lv = lvOfSnapshot(rec.id);
    let args: string[];
    if (srcLv.segtype === 'thin') {
      // Thin snapshots keep LVM's activation skip: inactive until read (a clone activates its own copy).
      args = ['-s', '-n', lv];
    } else {
      if (this.cfg.thickSnapshotPercent === 0)
        throw failedPrecondition(`backend "${this.name}" makes no snapshots of thick volumes (thickSnapshotPercent is 0); set thickSnapshotPercent, or use a thin pool`);
      const cow = Math.max(4 * MiB, Math.ceil((srcLv.sizeBytes * this.cfg.thickSnapshotPercent) / 100));
      args = ['-s', '-L', `${cow}b`, '-n', lv];
    }
    // A snapshot (thin, or classic with its copy-on-write space) is whole the moment lvcreate commits it: its
    // record goes in as 'available' in that same lvcreate, one metadata commit instead of two.
    const done: SnapshotRecord = { ...rec, state: 'available' };
    try {
      await this.lvm.lvcreate([...args, ...this.firstTags(rec.id, done), `${this.vg}/${srcLv.name}`]);
      this.snaps.set(rec.id, done);
      return done;
    } catch (e) {
      this.snaps.delete(rec.id);
      this.lvState.delete(rec.id);
      throw this.translate(e, `snapshot ${rec.id}`);
    }
  }

  async deleteSnapshot(id: string): Promise<void> {
    const rec = this.snaps.get(id);
    if (!rec) return;
    const lvName = lvOfSnapshot(id);
    const lv = (await this.lvm.lvs(this.vg, lvName))[0];
    if (lv) {
      // One lvremove, one metadata commit: nothing a crash could leave half done, so no 'deleting' record
      // is written first (see deleteVolume); the record in memory says it.
      this.snaps.set(id, { ...rec, state: 'deleting', updatedAt: now() });
      try {
        await this.lvm.lvremove(this.vg, lvName);
      } catch (e) {
        await this.putSnapshot({ ...rec, state: 'error_deleting', error: `delete failed: ${(e as Error).message}`, updatedAt: now() }).catch(() => undefined);
        throw e;
      }
    }
    this.snaps.delete(id);
    this.lvState.delete(id);
  }

  private mustVolume(id: string): VolumeRecord {
    const rec = this.vols.get(id);
    if (!rec) throw notFound(`volume ${id} is not on backend ${this.name}`);
    return rec;
  }
}

const isBlockDevice = (path: string): Promise<boolean> =>
  fs.stat(path).then(
    (st) => st.isBlockDevice(),
    () => false,
  );
