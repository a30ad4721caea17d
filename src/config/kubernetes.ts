import { accessSync, constants } from 'node:fs';
import type { KubernetesConfig, Role } from './types.js';
import { absPath, ConfigError, isObj, num, onlyKeys } from './validate.js';

export const KUBERNETES_KEYS = ['enabled', 'kubeconfig', 'resyncSeconds', 'graceSeconds'] as const;
export const DEFAULT_RESYNC_SECONDS = 60;
export const DEFAULT_GRACE_SECONDS = 120;

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
  const k = raw ?? {};
  if (!isObj(k)) throw new ConfigError('kubernetes', 'must be a map');
  onlyKeys(k, KUBERNETES_KEYS, 'kubernetes');

  const e = k.enabled ?? 'auto';
  let setting: 'auto' | boolean;
  if (e === 'auto' || e === true || e === false) setting = e;
  else if (e === 'true' || e === 'false') setting = e === 'true';
  else throw new ConfigError('kubernetes.enabled', 'must be auto, true or false');

  const kubeconfig = k.kubeconfig === undefined ? undefined : absPath(k.kubeconfig, 'kubernetes.kubeconfig');
  const resyncSeconds = k.resyncSeconds === undefined ? DEFAULT_RESYNC_SECONDS : num(k.resyncSeconds, 'kubernetes.resyncSeconds', 0.1, 86_400);
  const graceSeconds = k.graceSeconds === undefined ? DEFAULT_GRACE_SECONDS : num(k.graceSeconds, 'kubernetes.graceSeconds', 0.1, 86_400);

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
