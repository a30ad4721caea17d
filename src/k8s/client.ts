import { CoreV1Api, KubeConfig, StorageV1Api, type ConfigurationOptions, type Middleware, type RequestContext, type ResponseContext } from '@kubernetes/client-node';
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
 * client takes an AbortSignal only through a middleware. (The generated
 * ObjectParam API is typed with the observable middleware but wraps what it is
 * given as promise middleware, hence the cast.)
 */
export function abortable(signal: AbortSignal): ConfigurationOptions {
  const mw: Middleware = {
    pre: async (ctx: RequestContext) => {
      ctx.setSignal(signal);
      return ctx;
    },
    post: async (res: ResponseContext) => res,
  };
  return { middleware: [mw], middlewareMergeStrategy: 'append' } as unknown as ConfigurationOptions;
}

export interface KubeApis {
  storage: StorageV1Api;
  core: CoreV1Api;
}

export function makeApis(kc: KubeConfig): KubeApis {
  return { storage: kc.makeApiClient(StorageV1Api), core: kc.makeApiClient(CoreV1Api) };
}
