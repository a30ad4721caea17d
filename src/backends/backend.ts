import type { Finding } from '../contracts/finding.js';
import type { NodeIdentity } from '../contracts/nodeid.js';
import type { PublishContext } from '../contracts/publish-context.js';

/** Cinder's volume states, kept on disk with each volume. */
export type VolumeState = 'creating' | 'available' | 'in-use' | 'deleting' | 'error' | 'error_deleting';
export type SnapshotState = 'creating' | 'available' | 'deleting' | 'error' | 'error_deleting';
export type AccessType = 'mount' | 'block';

/** What a volume was created to serve, kept to judge later requests. */
export interface CapabilitySummary {
  accessType: AccessType;
  accessMode: string;
  fsType?: string;
}

/** One node's publish of a volume: a row of Cinder's attachment table. */
export interface Attachment {
  nodeId: string;
  readonly: boolean;
  accessType: AccessType;
  accessMode: string;
  fsType?: string;
  mountFlags?: string[];
  at: string;
}

export interface ContentSource {
  type: 'snapshot' | 'volume';
  id: string;
}

export interface VolumeRecord {
  id: string;
  name: string;
  backend: string;
  sizeBytes: number;
  state: VolumeState;
  /** Why the volume is in an error state, for the operator. */
  error?: string;
  parameters: Record<string, string>;
  capabilities: CapabilitySummary[];
  source?: ContentSource;
  attachments: Attachment[];
  createdAt: string;
  updatedAt: string;
}

export interface SnapshotRecord {
  id: string;
  name: string;
  backend: string;
  sourceVolumeId: string;
  sizeBytes: number;
  state: SnapshotState;
  error?: string;
  /** How the data was copied: a copy-on-write clone or a sparse byte copy. */
  copyMethod?: 'reflink' | 'sparse-copy';
  /** Set on the members of a volume group snapshot: deleted only with their group (DeleteVolumeGroupSnapshot). */
  groupSnapshotId?: string;
  createdAt: string;
  updatedAt: string;
}

/** A volume group snapshot (CSI GroupController): snapshots of several volumes cut at one point in time. */
export interface GroupSnapshotRecord {
  id: string;
  name: string;
  backend: string;
  /** The source volumes, in the request's order, and each one's member snapshot (same order). */
  sourceVolumeIds: string[];
  snapshotIds: string[];
  parameters: Record<string, string>;
  createdAt: string;
}

export interface BackendCapacity {
  totalBytes: number;
  physicalFreeBytes: number;
  provisionedBytes: number;
  /** What the scheduler may still hand out, after over-subscription and reserve. */
  availableBytes: number;
  /** Why availableBytes is what it is, when a rule (not plain free space) set it: shown in RESOURCE_EXHAUSTED. */
  note?: string;
}

export interface RecoveryReport {
  /** Operations a crash interrupted and start-up finished or rolled back. */
  recovered: string[];
  /** Things on disk no record explains; listed, not deleted. */
  orphans: string[];
  /** Records that could not be read. */
  corrupt: string[];
}

export interface Inspection {
  /** One line: what was looked at (`12 volumes, 3 snapshots in /data`). */
  summary: string;
  findings: Finding[];
  /** The volume records as stored (for cross-checks such as exports against publishes). */
  volumes: VolumeRecord[];
}

/** One export as the target really has it now (read from the target daemon, not remembered). */
export interface ExportEntry {
  /** The volume it serves, when the export's name says so. */
  volumeId?: string;
  /** The target's own name (iSCSI target IQN …). */
  target: string;
  /** Initiators allowed in: iSCSI IQNs or FC WWPNs, as in the node id. */
  initiators: string[];
}

/** What one reconcileExports pass changed; an export is one initiator's access to one volume. */
export interface ExportsReconciled {
  /** Exports a publish record names that the target had lost (a restarted tgtd), put back. */
  restored: number;
  /** Exports no publish record explains, taken away (the fence). */
  revoked: number;
}

export interface VolumeHealth {
  abnormal: boolean;
  message: string;
}

export interface CreateVolumeSpec {
  id: string;
  name: string;
  sizeBytes: number;
  parameters: Record<string, string>;
  capabilities: CapabilitySummary[];
  source?: ContentSource;
}

/**
 * A Cinder "driver": owns its volumes' data and records. Knows nothing of gRPC;
 * the controller has validated ids and arguments before calling, and holds the
 * volume's lock around every call that changes it.
 */
export interface Backend {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly topology: Readonly<Record<string, string>>;

  start(): Promise<RecoveryReport>;
  /**
   * False while the backend cannot read its records for want of credentials that only requests bring
   * (rbd `keyFrom: secrets` before the first key); absent: always ready.
   */
  isReady?(): boolean;
  /** Reads the records start() put off, with the current request's credentials; true when it did so now. */
  startDeferred?(): Promise<boolean>;
  /** What a request that concerns this backend is told while it is not ready (UNAVAILABLE, saying how to give the credentials). */
  notReadyError?(): Error;
  /**
   * Before a request that brings credentials for this backend which it has not seen accepted: has the
   * storage judge them now (so a wrong key fails even a call that would touch nothing, an idempotent
   * retry), and keeps them for later work once accepted. Throws PERMISSION_DENIED when refused.
   */
  verifyCredentials?(): Promise<void>;
  /** Ends what the backend keeps running (the rbd agent); absent when it keeps nothing. */
  close?(): void;
  /**
   * At shutdown, once every RPC has finished and the background loops have
   * stopped (not after a forced shutdown): nothing calls the backend again.
   * The file backend leaves the next start a digest of its records here.
   */
  afterDrain?(): Promise<void>;
  /**
   * Read-only consistency check for `sinter fsck`: what start() would repair
   * (remedy `restart`) and what it would leave (`retry`, `operator`). Works on
   * a backend that was constructed but not started.
   */
  inspect(): Promise<Inspection>;
  /**
   * The exports that exist now, for fencing checks (an export must exist
   * exactly while a publish for that node is recorded). Left out by backends
   * whose transport exports nothing (the file backend's `local`).
   */
  listExports?(): Promise<ExportEntry[]>;
  /** Throws when the backend cannot serve (data directory gone, read-only, …). */
  probe(): Promise<void>;
  capacity(): Promise<BackendCapacity>;
  /**
   * Bytes the volumes and snapshots really occupy (allocated blocks of thin
   * images), for the metrics endpoint. Cheap to call: a backend whose count is
   * costly answers from its last count (refreshed in the background). Absent
   * when the backend cannot tell.
   */
  usedBytes?(): Promise<number>;

  volumes(): IterableIterator<VolumeRecord>;
  volume(id: string): VolumeRecord | undefined;
  snapshots(): IterableIterator<SnapshotRecord>;
  snapshot(id: string): SnapshotRecord | undefined;

  /**
   * For a backend whose records live in shared storage that several
   * controllers use (rbd): the volume id a name always gets, so two
   * controllers (or one after another's crash) meet on the same id instead
   * of making two volumes. Absent: a random id.
   */
  volumeIdFor?(name: string): string;
  /**
   * The record of `id` as the shared storage has it now, read into this
   * controller's view (another controller may have made or changed it).
   * undefined when there is none. Throws ABORTED while another controller is
   * still creating it.
   */
  load?(id: string): Promise<VolumeRecord | undefined>;
  createVolume(spec: CreateVolumeSpec): Promise<VolumeRecord>;
  deleteVolume(id: string): Promise<void>;
  /**
   * Grows the volume to sizeBytes, published or not, and makes its export
   * show the new size. Also called with sizeBytes ≤ the current size (a
   * retry): then it grows nothing but finishes what an interrupted expand
   * left (e.g. an iSCSI LUN still showing the old size).
   */
  expandVolume(id: string, sizeBytes: number): Promise<VolumeRecord>;
  setAttachments(id: string, attachments: Attachment[]): Promise<VolumeRecord>;
  /**
   * true: the controller may write an attachment record while the export
   * changes, instead of before a publish's export and after an unpublish's
   * revocation. Only for a backend whose records no other controller reads
   * (no `load`) and whose reconcileExports runs before the controller serves
   * and makes the exports match the durable records whatever a crash left:
   * an export no record explains is removed, a recorded one restored. With
   * CHAP secrets a publish stays in order (the CHAP record a restore needs is
   * durable, by prepareExport, before the attachment record).
   */
  readonly recordsBesideExport?: boolean;
  /**
   * Before the attachment record names a new publish: makes durable what
   * restoring its export needs (the node's CHAP record), so a crash between
   * that record and the export never lets the reconcile restore the export
   * weaker than asked. What a failed or crashed publish leaves is dropped by
   * the reconcile once no record names the node. Absent: nothing to keep.
   */
  prepareExport?(id: string, node: NodeIdentity, secrets: Record<string, string>): Promise<void>;
  /** initialize_connection: make the volume reachable by one node. `secrets` are ControllerPublishVolume's (CHAP). */
  exportVolume(id: string, node: NodeIdentity, readonly: boolean, secrets: Record<string, string>): Promise<PublishContext>;
  /**
   * Before a publish to a node that holds none of this volume (after the
   * attachment rules passed; `others` are the publishes other nodes keep):
   * a backend whose clients reach the storage themselves (rbd) refuses while
   * a client no publish explains still has the volume open.
   */
  beforeNewPublish?(id: string, node: NodeIdentity, others: Attachment[]): Promise<void>;
  /** terminate_connection: revoke that node's access; idempotent. */
  unexportVolume(id: string, node: NodeIdentity): Promise<void>;
  volumeHealth(id: string): Promise<VolumeHealth>;
  /**
   * Makes the exports match the records (a target daemon may have restarted
   * empty), taking each volume's lock through `withVolumeLock`. Absent when
   * the backend exports nothing.
   */
  reconcileExports?(withVolumeLock: <T>(volumeId: string, fn: () => Promise<T>) => Promise<T>): Promise<ExportsReconciled | void>;
  /** How often reconcileExports should run, in ms. */
  readonly reconcileIntervalMs?: number;

  createSnapshot(spec: { id: string; name: string; sourceVolumeId: string }): Promise<SnapshotRecord>;
  deleteSnapshot(id: string): Promise<void>;

  /**
   * Volume group snapshots, for backends that can cut snapshots of several
   * volumes at one write-order-consistent point (rbd: `rbd group snap create`).
   * Absent elsewhere: the controller then does not offer the GroupController.
   * The controller holds every source volume's lock around the create.
   */
  readonly groupSnapshots?: GroupSnapshots;
}

export interface GroupSnapshots {
  create(spec: { id: string; name: string; sourceVolumeIds: string[]; snapshotIds: string[]; parameters: Record<string, string> }): Promise<GroupSnapshotRecord>;
  /** Deletes the group snapshot and all its member snapshots; idempotent. */
  delete(id: string): Promise<void>;
  get(id: string): GroupSnapshotRecord | undefined;
  list(): IterableIterator<GroupSnapshotRecord>;
}
