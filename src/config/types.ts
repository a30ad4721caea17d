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
}

export type BackendConfig = FileBackendConfig;

export interface NodeConfig {
  maxVolumesPerNode: number;
  topology: Record<string, string>;
  stateDir: string;
  iscsiInitiatorName?: string;
  initiatorNameFile: string;
}

export interface ExecConfig {
  mode: 'direct' | 'nsenter' | 'chroot';
  hostRoot: string;
  timeoutSeconds: number;
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
  exec: ExecConfig;
  shutdownGraceSeconds: number;
  kubernetes: KubernetesConfig;
}
