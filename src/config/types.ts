export type Role = 'controller' | 'node' | 'all';
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface FileBackendConfig {
  name: string;
  driver: 'file';
  dataDir: string;
  /** Labels the scheduler's filters match against StorageClass parameters (`type: ssd`). */
  labels: Record<string, string>;
  /** Topology segments of the nodes that can reach this backend; empty = every node. */
  topology: Record<string, string>;
  /** Cinder's max_over_subscription_ratio for thin (sparse) images. */
  overSubscriptionRatio: number;
  /** Cinder's reserved_percentage: part of the physical space never handed out. */
  reservedPercent: number;
  /** Caps the backend below its filesystem's size; 0 = the filesystem's size. */
  capacityBytes: number;
  /** How nodes reach the images: `local` (loop-attach the file, same host) or `iscsi` (tgtd exports). */
  export: 'local' | 'iscsi';
  iscsi?: IscsiExportConfig;
}

/** Cinder's iscsi_helper settings for a backend with `export: iscsi`. */
export interface IscsiExportConfig {
  helper: 'tgt';
  /** Portals handed to nodes in publish_context (`host:port`); `${VAR}` is read from the environment. */
  portals: string[];
  /** Target names: this prefix + volume id. */
  iqnPrefix: string;
  /** tgtd's management port (`tgtd -C N`); 0 = its default. */
  controlPort: number;
  writeCache: boolean;
  blockSize: 512 | 4096;
  /** How often the exports are checked against the records (tgtd forgets everything when it restarts). */
  reconcileSeconds: number;
}

export type BackendConfig = FileBackendConfig;

export interface FcConfig {
  /** How long connecting an FC LUN keeps scanning and waiting for it (and its multipath map). */
  scanTimeoutSeconds: number;
  /** How long disconnecting waits for deleted paths to disappear. */
  removeTimeoutSeconds: number;
}

export interface NodeConfig {
  maxVolumesPerNode: number;
  topology: Record<string, string>;
  stateDir: string;
  iscsiInitiatorName?: string;
  initiatorNameFile: string;
  /** `kernel` (iscsiadm + iscsid), `userspace` (libiscsi: qemu-nbd, nbdfuse, loop), `auto` (kernel when iscsi_tcp is there). */
  initiator: 'kernel' | 'userspace' | 'auto';
  /** Where sysfs is mounted (FC HBAs, SCSI disks, multipath maps); /sys on a node. */
  sysfsRoot: string;
  /** Where device nodes live (disk/by-path, mapper/); /dev on a node. */
  devRoot: string;
  fc: FcConfig;
  /**
   * What start-up does with an iSCSI attachment (session + LUN device) that no
   * stage record explains and nothing uses: `report` it only (the default: it
   * may be an administrator's), or `clean` it up (tear it down through the
   * connector). One that is in use is only ever reported.
   */
  orphanSessions: 'report' | 'clean';
  /** Targets whose orphan sessions `clean` may tear down (sinter's own); others are only reported. */
  orphanTargetPrefixes: string[];
}

/** The controller's own state (not a backend's): records of static volumes' publishes. */
export interface ControllerConfig {
  stateDir: string;
}

export interface ExecConfig {
  mode: 'direct' | 'nsenter' | 'chroot';
  hostRoot: string;
  timeoutSeconds: number;
  /** With mode nsenter: whose namespaces to enter, the host's (PID 1) or iscsid's (where it runs in a container of its own). */
  nsenterTarget: 'host' | 'iscsid';
}

/** The controller's Kubernetes API access (VolumeAttachment / CSINode / PersistentVolume reads). */
export interface KubernetesConfig {
  /** Resolved from `enabled: auto|true|false`, the role and the environment. */
  enabled: boolean;
  /** A kubeconfig file; absent = the pod's service account (in-cluster). */
  kubeconfig?: string;
  /** How often the reconciler compares backend publishes with VolumeAttachments. */
  resyncSeconds: number;
  /** How long a publish may lack a VolumeAttachment before it is revoked. */
  graceSeconds: number;
}

export interface Config {
  role: Role;
  endpoint: string;
  driverName: string;
  logLevel: LogLevel;
  nodeName: string;
  /** Explicit node id; otherwise built from nodeName + initiator properties. */
  nodeId?: string;
  kubeletRoots: string[];
  backends: BackendConfig[];
  node: NodeConfig;
  controller: ControllerConfig;
  exec: ExecConfig;
  shutdownGraceSeconds: number;
  kubernetes: KubernetesConfig;
  /** Where /metrics (Prometheus text format) is served over HTTP; absent = no metrics endpoint, no port opened. */
  metricsAddress?: MetricsAddress;
}

/** `host:port` as given (`:port` = every interface); port 0 picks a free one. */
export interface MetricsAddress {
  /** Empty = every interface. */
  host: string;
  port: number;
  /** As written, for logs and errors. */
  raw: string;
}
