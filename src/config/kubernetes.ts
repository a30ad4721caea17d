import { accessSync, constants } from 'node:fs';
import { ConfigError } from './error.js';
import { DEFAULT_GRACE_SECONDS, DEFAULT_RESYNC_SECONDS, kubernetesSchema, parseConfig } from './schema.js';
import type { KubernetesConfig, Role } from './types.js';

export { DEFAULT_GRACE_SECONDS, DEFAULT_RESYNC_SECONDS };

/** The environment a pod gets from the kubelet; both are needed for in-cluster config. */
export function inCluster(env: NodeJS.ProcessEnv): boolean {
  return Boolean(env.KUBERNETES_SERVICE_HOST && env.KUBERNETES_SERVICE_PORT);
}

/**
 * `kubernetes:` → whether the controller reads VolumeAttachment, CSINode and
 * PersistentVolume objects. `enabled: auto` (the default) turns it on for
 * `sinter controller` when it runs in a pod or a kubeconfig is given; `sinter all`
 * (standalone) never uses the API unless `enabled: true`; `sinter node` never does
 * (the node plugin only reports its node id).
 */
export function kubernetesFrom(raw: unknown, role: Role, env: NodeJS.ProcessEnv = process.env): KubernetesConfig {
  const { enabled: setting, kubeconfig, resyncSeconds, graceSeconds } = parseConfig(kubernetesSchema, raw, 'kubernetes');

  const reachable = kubeconfig !== undefined || inCluster(env);
  let enabled: boolean;
  if (role === 'node') enabled = false;
  else if (setting === 'auto') enabled = role === 'controller' && reachable;
  else enabled = setting;

  if (enabled && !reachable)
    throw new ConfigError('kubernetes.enabled', 'is true, but there is no kubernetes.kubeconfig and this is not a pod (KUBERNETES_SERVICE_HOST/PORT are unset)');
  if (enabled && kubeconfig !== undefined) {
    try {
      accessSync(kubeconfig, constants.R_OK);
    } catch (err) {
      throw new ConfigError('kubernetes.kubeconfig', `cannot read ${kubeconfig}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  }
  return { enabled, kubeconfig, resyncSeconds, graceSeconds };
}
