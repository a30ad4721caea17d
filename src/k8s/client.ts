import { CoreV1Api, KubeConfig, Observable, StorageV1Api, type ConfigurationOptions, type ObservableMiddleware, type RequestContext, type ResponseContext } from '@kubernetes/client-node';
import type { KubernetesConfig } from '../config/types.js';

/** The pod's service account, or the kubeconfig file the configuration names. */
export function loadKubeConfig(k: Pick<KubernetesConfig, 'kubeconfig'>): KubeConfig {
  const kc = new KubeConfig();
  if (k.kubeconfig) kc.loadFromFile(k.kubeconfig);
  else kc.loadFromCluster();
  if (!kc.getCurrentCluster()) throw new Error(`kubeconfig ${k.kubeconfig ?? '(in-cluster)'} has no current cluster`);
  return kc;
}

/**
 * Request options that make a typed client call abortable: the generated
 * client (1.x: the object-parameter API over the observable API) takes an
 * AbortSignal only through a middleware.
 */
export function abortable(signal: AbortSignal): ConfigurationOptions {
  const mw: ObservableMiddleware = {
    pre: (ctx: RequestContext) => {
      ctx.setSignal(signal);
      return new Observable(Promise.resolve(ctx));
    },
    post: (res: ResponseContext) => new Observable(Promise.resolve(res)),
  };
  return { middleware: [mw], middlewareMergeStrategy: 'append' };
}

export interface KubeApis {
  storage: StorageV1Api;
  core: CoreV1Api;
}

export function makeApis(kc: KubeConfig): KubeApis {
  return { storage: kc.makeApiClient(StorageV1Api), core: kc.makeApiClient(CoreV1Api) };
}
