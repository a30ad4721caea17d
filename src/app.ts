import type { Logger } from 'pino';
import type { Backend, RecoveryReport } from './backends/backend.js';
import { createBackend } from './backends/create.js';
import type { Config } from './config/types.js';
import { KubeNodeRegistry } from './controller/kube-node-registry.js';
import { KubeNodeSegments, LocalNodeSegments } from './controller/node-topology.js';
import { StaticNodeRegistry, type NodeRegistry } from './controller/node-registry.js';
import { Reconciler } from './controller/reconcile.js';
import { ExportLoop } from './controller/export-loop.js';
import { gateOnCredentials } from './controller/credential-gate.js';
import { controllerService } from './controller/service.js';
import { groupControllerService } from './controller/group-service.js';
import { GroupSnapshotManager } from './controller/group-snapshots.js';
import { StaticVolumes, withStaticVolumes } from './controller/static-volumes.js';
import { SnapshotManager } from './controller/snapshots.js';
import { VolumeManager } from './controller/volumes.js';
import { loadCsi } from './csi/proto.js';
import { CsiServer, type CsiServices } from './csi/server.js';
import type { ReadAhead } from './backends/file/read-ahead.js';
import { HostExecutor } from './exec/run.js';
import type { NodeService } from './node/service.js';
import { identityService } from './identity/service.js';
import type { KubeCache } from './k8s/cache.js';
import type { MetricsEndpoint } from './metrics/endpoint.js';
import { VERSION } from './version.js';

export interface App {
  server: CsiServer;
  backends: Map<string, Backend>;
  volumes?: VolumeManager;
  statics?: StaticVolumes;
  recovery: Record<string, RecoveryReport>;
  nodeId?: string;
  /** With Kubernetes access (config `kubernetes.enabled`): the API mirrors and the reconciler. */
  kube?: KubeCache;
  reconciler?: Reconciler;
  exportLoop?: ExportLoop;
  node?: NodeService;
  /** With --metrics-address: the /metrics endpoint. */
  metrics?: MetricsEndpoint;
  listen(): Promise<string>;
  stop(): Promise<void>;
}

/** Wires the roles' services from one validated Config; starts backends and node state. */
export async function createApp(cfg: Config, log: Logger, opts: { readAhead?: ReadAhead } = {}): Promise<App> {
  const exec = new HostExecutor({ mode: cfg.exec.mode, hostRoot: cfg.exec.hostRoot, nsenterTarget: cfg.exec.nsenterTarget, spawnVia: cfg.exec.spawnVia, defaultTimeoutMs: cfg.exec.timeoutSeconds * 1000 }, log.child({ part: 'exec' }));
  const backends = new Map<string, Backend>();
  for (const b of cfg.backends) backends.set(b.name, await createBackend(b, exec, log, opts.readAhead));

  const services: CsiServices = {};
  const recovery: Record<string, RecoveryReport> = {};
  const hasController = cfg.role !== 'node';
  const hasNode = cfg.role !== 'controller';
  // Loaded only for a role with a node: a controller never builds the node service or its connectors.
  const nodeWiring = hasNode ? await import('./node/wiring.js') : undefined;
  const nodeId = nodeWiring ? nodeWiring.nodeIdFor(cfg) : undefined;
  let volumes: VolumeManager | undefined;
  let exportLoop: ExportLoop | undefined;
  let statics: StaticVolumes | undefined;
  let kube: KubeCache | undefined;
  let reconciler: Reconciler | undefined;
  let groups: GroupSnapshotManager | undefined;

  if (hasController) {
    // The CSI descriptors first (cached; CsiServer uses them): building them keeps
    // this thread busy while the worker main started still reads the records.
    loadCsi();
    for (const [name, b] of backends) recovery[name] = await b.start();
    // With Kubernetes access, CSINode decides the known nodes and VolumeAttachments guard DeleteVolume.
    if (cfg.kubernetes.enabled) {
      // Loaded only when used: @kubernetes/client-node costs ~0.9 s of start-up
      // and ~75 MiB of RSS, which a controller without API access never needs.
      const [{ KubeCache }, { loadKubeConfig }] = await Promise.all([import('./k8s/cache.js'), import('./k8s/client.js')]);
      kube = new KubeCache({ driverName: cfg.driverName, kubeConfig: loadKubeConfig(cfg.kubernetes), log: log.child({ part: 'k8s' }) });
    }
    const registry: NodeRegistry = kube ? new KubeNodeRegistry(kube.nodeDirectory()) : new StaticNodeRegistry(cfg.role === 'all' && nodeId ? new Set([nodeId]) : undefined);
    // In single-machine mode the controller knows its one node's attach limit.
    const localLimit = cfg.role === 'all' ? cfg.node.maxVolumesPerNode : 0;
    const maxVolumesPerNode = (id: string) => (id === nodeId ? localLimit : undefined);
    volumes = new VolumeManager(backends, registry, log.child({ part: 'controller' }), {
      externalAttachments: kube && ((id) => kube!.volumeAttachmentNodes(id)),
      maxVolumesPerNode,
      extraPublishedTo: (id) => statics?.publishedTo(id) ?? 0,
      nodeSegments: kube ? new KubeNodeSegments(kube) : new LocalNodeSegments(cfg.role === 'all' ? nodeId : undefined, cfg.node.topology),
    });
    volumes.index();
    const backendVolumes = volumes;
    statics = new StaticVolumes({
      stateDir: cfg.controller.stateDir,
      nodes: registry,
      log: log.child({ part: 'static-volumes' }),
      maxVolumesPerNode,
      otherPublishedTo: (id) => backendVolumes.publishedTo(id),
    });
    await statics.start();
    if (kube) {
      reconciler = new Reconciler({
        volumes,
        backends,
        statics,
        source: kube,
        log: log.child({ part: 'reconcile' }),
        graceMs: cfg.kubernetes.graceSeconds * 1000,
        intervalMs: cfg.kubernetes.resyncSeconds * 1000,
      });
    }
    exportLoop = new ExportLoop([...backends.values()], volumes, log.child({ part: 'exports' }));
    // Restore the exports before serving: a node may be waiting to log in again.
    await exportLoop.pass();
    const snapshots = new SnapshotManager(backends, volumes);
    snapshots.index();
    groups = new GroupSnapshotManager(backends, volumes, snapshots);
    groups.index();
    // A backend that read its records late (rbd keyFrom: secrets, at the first request with a key): the name indexes again.
    const managers = { volumes, snapshots, groups };
    const reindex = () => {
      managers.volumes.index();
      managers.snapshots.index();
      managers.groups.index();
    };
    services.controller = gateOnCredentials(withStaticVolumes(controllerService({ volumes, snapshots, backends }), { statics, volumes }), backends, reindex);
    services.groupController = gateOnCredentials(groupControllerService(groups), backends, reindex);
  }

  let node: NodeService | undefined;
  if (hasNode) {
    node = nodeWiring!.nodeServiceFor(cfg, nodeId!, exec, log.child({ part: 'node' }));
    await node.start();
    services.node = node.handlers();
  }

  services.identity = identityService({
    driverName: cfg.driverName,
    version: VERSION,
    hasController,
    hasGroupController: groups?.supported === true,
    log: log.child({ part: 'identity' }),
    probe: async () => {
      if (hasController) await Promise.all([...backends.values()].map((b) => b.probe()));
    },
  });

  const server = new CsiServer(services, log);
  let metrics: MetricsEndpoint | undefined;
  if (cfg.metricsAddress) {
    // Loaded only when asked for: prom-client and its collectors cost start-up time nobody else should pay.
    const { startMetrics } = await import('./metrics/endpoint.js');
    metrics = await startMetrics(cfg.metricsAddress, {
      setRpcObserver: (fn) => (server.rpcObserver = fn),
      backends: hasController ? backends : undefined,
      reconciler,
      exportLoop,
      node,
      log: log.child({ part: 'metrics' }),
    });
  }
  // Last, so that nothing runs in the background if the set-up above failed.
  kube?.start();
  reconciler?.start();
  exportLoop?.start();
  return {
    server,
    backends,
    volumes,
    statics,
    recovery,
    nodeId,
    kube,
    reconciler,
    exportLoop,
    node,
    metrics,
    listen: () => server.listen(cfg.endpoint),
    stop: async () => {
      // No revocation once shutdown begins; the caches serve in-flight RPCs to the end.
      await reconciler?.stop();
      await exportLoop?.stop();
      let drained = false;
      try {
        drained = await server.shutdown(cfg.shutdownGraceSeconds * 1000);
      } finally {
        await kube?.stop();
        await metrics?.close();
        if (drained) for (const b of backends.values()) await b.afterDrain?.();
        for (const b of backends.values()) b.close?.();
      }
    },
  };
}
