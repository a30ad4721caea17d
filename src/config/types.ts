// The configuration's types, inferred from the schemas in schema.ts (one
// source: a key added there appears here). Where load.ts resolves a default
// from the role, the node name or the backends, the type says it is resolved.
import type { InferOutput } from 'valibot';
import type { nvmeofSchema, controllerSchema, fileBackendSchema, lvmBackendSchema, rbdBackendSchema, execSchema, fcSchema, fileSchema, iscsiSchema, kubernetesSchema, nodeSchema } from './schema.js';

export type Role = 'controller' | 'node' | 'all';

type FileConfig = InferOutput<typeof fileSchema>;
type Resolved<T, K extends keyof T> = Omit<T, K> & { [P in K]-?: Exclude<T[P], undefined> };

export type LogLevel = FileConfig['logLevel'];
export type IscsiExportConfig = InferOutput<typeof iscsiSchema>;
export type NvmeofExportConfig = InferOutput<typeof nvmeofSchema>;
export type FileBackendConfig = InferOutput<typeof fileBackendSchema>;
export type RbdBackendConfig = InferOutput<typeof rbdBackendSchema>;
export type LvmBackendConfig = InferOutput<typeof lvmBackendSchema>;
export type BackendConfig = FileBackendConfig | LvmBackendConfig | RbdBackendConfig;
export type FcConfig = InferOutput<typeof fcSchema>;
export type NodeConfig = Resolved<InferOutput<typeof nodeSchema>, 'stateDir' | 'orphanTargetPrefixes' | 'orphanNqnPrefixes'>;
export type ControllerConfig = Resolved<InferOutput<typeof controllerSchema>, 'stateDir'>;
export type ExecConfig = InferOutput<typeof execSchema>;
/** `enabled` resolved from `auto|true|false`, the role and the environment. */
export type KubernetesConfig = Omit<InferOutput<typeof kubernetesSchema>, 'enabled'> & { enabled: boolean };
export type MetricsAddress = Exclude<FileConfig['metricsAddress'], undefined>;

export type Config = Omit<FileConfig, 'node' | 'controller' | 'kubernetes'> & {
  role: Role;
  node: NodeConfig;
  controller: ControllerConfig;
  kubernetes: KubernetesConfig;
};
