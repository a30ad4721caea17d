import { join } from 'node:path';
import type { Logger } from 'pino';
import type { IscsiExportConfig, NvmeofExportConfig } from '../../config/types.js';
import { chapFromRequestSecrets } from '../../contracts/chap.js';
import { parseNodeId, type NodeIdentity } from '../../contracts/nodeid.js';
import type { PublishContext } from '../../contracts/publish-context.js';
import { Code, DomainError } from '../../errors/domain-error.js';
import type { Executor } from '../../exec/run.js';
import type { Attachment, ExportEntry, ExportsReconciled, VolumeHealth, VolumeRecord } from '../backend.js';
import { createTargetHelper } from './create.js';
import { IscsiExport } from './iscsi-export.js';
import { NvmeofExport } from './nvmeof-export.js';
import { NvmetTargetHelper } from './nvmet.js';

type WithVolumeLock = <T>(volumeId: string, fn: () => Promise<T>) => Promise<T>;

/**
 * How a backend whose volumes are block devices or images reaches nodes over
 * the network: Cinder's target_helper, whichever it is (tgt or LIO over
 * iSCSI, nvmet over NVMe/TCP), behind one shape, so the backend says "export
 * this device to this node" and never which protocol carries it.
 */
export interface VolumeExport {
  readonly transport: 'iscsi' | 'nvmeof';
  readonly reconcileIntervalMs: number;
  init(): Promise<void>;
  /** Throws when the target (tgtd, LIO's or nvmet's configfs) cannot be read: Probe's check. */
  check(): Promise<void>;
  export(volumeId: string, devicePath: string, node: NodeIdentity, secrets: Record<string, string>): Promise<PublishContext>;
  /** Before the volume's record names a new publish: what restoring its export needs (CHAP), durable (Backend.prepareExport). */
  prepare(volumeId: string, node: NodeIdentity, secrets: Record<string, string>): Promise<void>;
  /**
   * Fences `node` (its ACL or allowed host goes, its sessions or controllers
   * drop); with no other node in `attachments` the whole export goes. What a
   * restore of the export needs (its CHAP record) stays until reconcile finds
   * the volume's record without the node: the record may still name it.
   */
  unexport(volumeId: string, node: NodeIdentity, attachments: readonly Attachment[]): Promise<void>;
  remove(volumeId: string): Promise<void>;
  /** After the device grew: the export shows the new size to connected nodes (`force`: even when it seems to already). */
  refreshSize(volumeId: string, devicePath: string, force: boolean, sizeBytes: number): Promise<void>;
  entries(owns: (volumeId: string) => boolean): Promise<ExportEntry[]>;
  reconcile(volumes: () => Iterable<VolumeRecord>, devicePathOf: (id: string) => string, withVolumeLock: WithVolumeLock): Promise<ExportsReconciled>;
  health(rec: VolumeRecord, devicePath: string): Promise<VolumeHealth | undefined>;
}

export interface VolumeExportConfig {
  name: string;
  dataDir: string;
  export: 'iscsi' | 'nvmeof';
  iscsi?: IscsiExportConfig;
  nvmeof?: NvmeofExportConfig;
}

/** The export a backend's `export` key names (the schema has checked that its section is there). */
export function createVolumeExport(cfg: VolumeExportConfig, exec: Executor, log: Logger, owns: (volumeId: string) => boolean): VolumeExport {
  if (cfg.export === 'nvmeof') {
    if (!cfg.nvmeof) throw new Error(`backend "${cfg.name}": export: nvmeof without an nvmeof section`);
    const n = cfg.nvmeof;
    return new NvmeofVolumeExport(new NvmeofExport(new NvmetTargetHelper({ configfsRoot: n.configfsRoot, nqnPrefix: n.nqnPrefix, portals: n.portals }, log), log, owns), n.reconcileSeconds * 1000);
  }
  if (!cfg.iscsi) throw new Error(`backend "${cfg.name}": export: iscsi without an iscsi section`);
  const helper = createTargetHelper(cfg.iscsi, exec, log);
  return new IscsiVolumeExport(new IscsiExport(helper, cfg.iscsi.portals, join(cfg.dataDir, 'secrets'), log, owns), cfg.iscsi.reconcileSeconds * 1000);
}

const stillOld = (what: string, volumeId: string, sizeBytes: number, e: unknown, retry: string): DomainError =>
  new DomainError(e instanceof DomainError ? e.code : Code.INTERNAL, `volume ${volumeId} grew to ${sizeBytes} bytes, but its ${what} still shows the old size: ${(e as Error).message}; ${retry}`);

class IscsiVolumeExport implements VolumeExport {
  readonly transport = 'iscsi';
  constructor(
    private readonly x: IscsiExport,
    readonly reconcileIntervalMs: number,
  ) {}

  init(): Promise<void> {
    return this.x.init();
  }

  async check(): Promise<void> {
    await this.x.targets();
  }

  export(volumeId: string, devicePath: string, node: NodeIdentity, secrets: Record<string, string>): Promise<PublishContext> {
    return this.x.export(volumeId, devicePath, node, chapFromRequestSecrets(secrets));
  }

  prepare(volumeId: string, node: NodeIdentity, secrets: Record<string, string>): Promise<void> {
    return this.x.prepare(volumeId, node, chapFromRequestSecrets(secrets));
  }

  async unexport(volumeId: string, node: NodeIdentity, attachments: readonly Attachment[]): Promise<void> {
    const others = attachments.filter((a) => parseNodeId(a.nodeId)?.iqn !== node.iqn);
    // The last node leaving takes the target with it: nothing stays exported that no publish explains.
    if (others.length === 0) await this.x.removeTarget(volumeId);
    else await this.x.unexport(volumeId, node);
  }

  remove(volumeId: string): Promise<void> {
    return this.x.remove(volumeId);
  }

  async refreshSize(volumeId: string, devicePath: string, force: boolean, sizeBytes: number): Promise<void> {
    try {
      await this.x.refreshSize(volumeId, devicePath, force);
    } catch (e) {
      throw stillOld('iSCSI LUN', volumeId, sizeBytes, e, 'retrying the expand (or the next reconcile) finishes it');
    }
  }

  async entries(owns: (volumeId: string) => boolean): Promise<ExportEntry[]> {
    return (await this.x.targets()).filter((t) => t.volumeId && owns(t.volumeId)).map((t) => ({ volumeId: t.volumeId, target: t.iqn, initiators: t.acls }));
  }

  async reconcile(volumes: () => Iterable<VolumeRecord>, devicePathOf: (id: string) => string, withVolumeLock: WithVolumeLock): Promise<ExportsReconciled> {
    const r = await this.x.reconcile(volumes, devicePathOf, withVolumeLock);
    return { restored: r.aclsRestored.length, revoked: r.aclsRevoked.length };
  }

  health(rec: VolumeRecord, devicePath: string): Promise<VolumeHealth | undefined> {
    return this.x.health(rec, devicePath);
  }
}

class NvmeofVolumeExport implements VolumeExport {
  readonly transport = 'nvmeof';
  constructor(
    private readonly x: NvmeofExport,
    readonly reconcileIntervalMs: number,
  ) {}

  async init(): Promise<void> {
    // nvmet keeps no secrets: DH-HMAC-CHAP is refused (see NvmeofExport).
  }

  async check(): Promise<void> {
    await this.x.subsystems();
  }

  export(volumeId: string, devicePath: string, node: NodeIdentity, secrets: Record<string, string>): Promise<PublishContext> {
    return this.x.export(volumeId, devicePath, node, secrets);
  }

  async prepare(): Promise<void> {
    // Nothing a restore needs beyond the record: nvmet keeps no secrets.
  }

  async unexport(volumeId: string, node: NodeIdentity, attachments: readonly Attachment[]): Promise<void> {
    const others = attachments.filter((a) => parseNodeId(a.nodeId)?.nqn !== node.nqn);
    // The last node leaving takes the subsystem with it.
    if (others.length === 0) await this.x.remove(volumeId);
    else await this.x.unexport(volumeId, node);
  }

  remove(volumeId: string): Promise<void> {
    return this.x.remove(volumeId);
  }

  async refreshSize(volumeId: string, _devicePath: string, _force: boolean, sizeBytes: number): Promise<void> {
    // nvmet re-reads the namespace's size only when asked (revalidate_size); connected hosts then rescan by themselves.
    try {
      await this.x.refreshSize(volumeId);
    } catch (e) {
      throw stillOld('NVMe namespace', volumeId, sizeBytes, e, 'retry the expand');
    }
  }

  async entries(owns: (volumeId: string) => boolean): Promise<ExportEntry[]> {
    return (await this.x.entries()).filter((e) => e.volumeId && owns(e.volumeId));
  }

  async reconcile(volumes: () => Iterable<VolumeRecord>, devicePathOf: (id: string) => string, withVolumeLock: WithVolumeLock): Promise<ExportsReconciled> {
    const r = await this.x.reconcile(volumes, devicePathOf, withVolumeLock);
    return { restored: r.hostsRestored.length, revoked: r.hostsRevoked.length };
  }

  health(rec: VolumeRecord, devicePath: string): Promise<VolumeHealth | undefined> {
    return this.x.health(rec, devicePath);
  }
}
