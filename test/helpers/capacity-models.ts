// Models of the two Kubernetes components between sinter's GetCapacity and a
// pod's placement, written from their source (reference only; no code copied):
//
//  - csi-provisioner v6.3.0 (kubernetes-csi/external-provisioner), central
//    capacity controller: pkg/capacity/capacity.go (work items = topology
//    segment x StorageClass, syncCapacity, obsolete objects), the topology
//    informer pkg/capacity/topology/nodes.go (segments from CSINode
//    topologyKeys + Node labels), pkg/capacity/provision.go (what a provision
//    refreshes), cmd/csi-provisioner/csi-provisioner.go (v1 API probe, owner
//    lookup) and pkg/owner/owner.go (the ownership walk); and, for the claim
//    the scheduler places, pkg/controller/controller.go (CreateVolume's
//    parameters) and pkg/controller/topology.go (strict-topology requisite).
//  - kube-scheduler v1.26 VolumeBinding filter for an unbound
//    WaitForFirstConsumer claim: pkg/scheduler/framework/plugins/volumebinding/
//    binder.go checkVolumeProvisions -> hasEnoughCapacity, capacitySufficient,
//    nodeHasAccess. Read at kubernetes commit 01aa0f3f: no capacity feature
//    gate left (GA in v1.24) and the CSIMigration gate still checked (removed
//    in v1.27), so v1.24-v1.26, the versions whose capacity check this is.
//
// Both talk to the API (the HTTP stand-in) with the real client library, and
// the provisioner model calls the real gRPC GetCapacity/CreateVolume of a
// running sinter. Sequential reconcile passes stand in for the work queues.
import { AppsV1Api, CoreV1Api, type KubeConfig, type V1CSIStorageCapacity, type V1LabelSelector, type V1Node, type V1OwnerReference, type V1StorageClass, StorageV1Api } from '@kubernetes/client-node';
import type { CsiClient } from '../../src/csi/client.js';

export const DRIVER_NAME_LABEL = 'csi.storage.k8s.io/drivername';
export const MANAGED_BY_LABEL = 'csi.storage.k8s.io/managed-by';

// ---- resource.Quantity, as far as these objects need it ----------------------

const BINARY = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'];
const SUFFIX: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18, '': 1 };

/** resource.NewQuantity(n, BinarySI).String(): the largest binary suffix that divides exactly; under 1024 plain decimal. */
export function binarySI(n: number): string {
  if (n < 1024) return String(n);
  let i = 0;
  while (i < BINARY.length - 1 && n % 1024 === 0 && n !== 0) {
    n /= 1024;
    i++;
  }
  return `${n}${BINARY[i]}`;
}

/** Quantity.Value() for the integer forms a server returns. */
export function quantityValue(q: string): number {
  const m = /^(\d+)([KMGTPE]i|[kMGTPE])?$/.exec(q);
  if (!m) throw new Error(`quantity "${q}" is not one the model reads`);
  return Number(m[1]) * SUFFIX[m[2] ?? ''];
}

// ---- topology segments (pkg/capacity/topology) ------------------------------

/** A segment: key/value pairs sorted by key; compared by content. */
export type Segment = [string, string][];

const segmentKey = (s: Segment) => JSON.stringify(s);
export const labelMap = (s: Segment): Record<string, string> => Object.fromEntries(s);

/**
 * nodeTopology.sync: for every CSINode on which the driver is registered, its
 * topologyKeys (sorted) with the values of the Node's labels; a node missing
 * one of the labels is skipped until its labels arrive; duplicates collapse.
 */
export async function discoverSegments(kc: KubeConfig, driver: string): Promise<Segment[]> {
  const storage = kc.makeApiClient(StorageV1Api);
  const core = kc.makeApiClient(CoreV1Api);
  const [csiNodes, nodes] = await Promise.all([storage.listCSINode(), core.listNode()]);
  const byName = new Map(nodes.items.map((n) => [n.metadata!.name!, n]));
  const out = new Map<string, Segment>();
  for (const cn of csiNodes.items) {
    const d = cn.spec.drivers.find((x) => x.name === driver);
    if (!d) continue; // driver not running on that node
    const node = byName.get(cn.metadata!.name!);
    if (!node) continue; // obsolete CSINode
    const keys = [...(d.topologyKeys ?? [])].sort();
    const seg: Segment = [];
    let complete = true;
    for (const k of keys) {
      const v = node.metadata?.labels?.[k];
      if (v === undefined) {
        complete = false;
        break;
      }
      seg.push([k, v]);
    }
    if (complete) out.set(segmentKey(seg), seg);
  }
  return [...out.values()];
}

// ---- the capacity controller (pkg/capacity/capacity.go) ----------------------

export interface ProvisionerModelOptions {
  kubeConfig: KubeConfig;
  driverName: string;
  /** NAMESPACE of the provisioner pod: where the objects go. */
  namespace: string;
  /** POD_NAME, for the owner walk. */
  podName: string;
  /** --capacity-ownerref-level; -1 = no owner. */
  ownerrefLevel: number;
  /** --capacity-for-immediate-binding */
  immediateBinding?: boolean;
  /** The real sinter controller service over gRPC. */
  controller: CsiClient['controller'];
}

export interface WorkItemResult {
  storageClassName: string;
  segment: Segment;
  /** The GetCapacity error that makes the controller retry the item later, with no object written. */
  error?: string;
}

export class ProvisionerCapacityModel {
  owner: V1OwnerReference | undefined;
  private readonly storage: StorageV1Api;
  private readonly core: CoreV1Api;
  private readonly apps: AppsV1Api;
  /** What the last pass did, item by item. */
  lastPass: WorkItemResult[] = [];
  readonly getCapacityCalls: { parameters: Record<string, string>; segment: Record<string, string> }[] = [];

  constructor(private readonly o: ProvisionerModelOptions) {
    this.storage = o.kubeConfig.makeApiClient(StorageV1Api);
    this.core = o.kubeConfig.makeApiClient(CoreV1Api);
    this.apps = o.kubeConfig.makeApiClient(AppsV1Api);
  }

  get managedBy(): string {
    return 'external-provisioner';
  }

  /**
   * cmd/csi-provisioner: with --enable-capacity it needs NAMESPACE, walks the
   * owners up from POD_NAME (owner.Lookup), and probes the v1 API by creating
   * an object with an invalid name, which must fail as Invalid (422).
   */
  async start(): Promise<void> {
    if (!this.o.namespace) throw new Error('need NAMESPACE env variable for CSIStorageCapacity objects');
    if (this.o.ownerrefLevel >= 0) {
      if (!this.o.podName) throw new Error('need POD_NAME env variable to determine CSIStorageCapacity owner');
      this.owner = await this.lookupOwner('v1', 'Pod', this.o.podName, this.o.ownerrefLevel);
    }
    try {
      await this.storage.createNamespacedCSIStorageCapacity({
        namespace: this.o.namespace,
        // As the Go client sends it: only the (invalid) name.
        body: { metadata: { name: '#%123-invalid-name' } } as V1CSIStorageCapacity,
      });
      throw new Error("creating an invalid v1.CSIStorageCapacity didn't fail as expected");
    } catch (e) {
      const code = (e as { code?: number }).code;
      if (code === 404) throw new Error('the model only covers the v1 CSIStorageCapacity API');
      if (code !== 422) throw e;
    }
  }

  /** pkg/owner/owner.go lookupRecursive: GET each object; at level 1 the controlling owner reference is taken without reading the owner. */
  private async lookupOwner(apiVersion: string, kind: string, name: string, levels: number): Promise<V1OwnerReference> {
    const ns = this.o.namespace;
    const obj =
      kind === 'Pod' && apiVersion === 'v1'
        ? await this.core.readNamespacedPod({ name, namespace: ns })
        : kind === 'ReplicaSet' && apiVersion === 'apps/v1'
          ? await this.apps.readNamespacedReplicaSet({ name, namespace: ns })
          : undefined;
    if (!obj) throw new Error(`the model walks Pod and ReplicaSet only, not ${apiVersion}/${kind}`);
    if (levels === 0) return { apiVersion, kind, name, uid: obj.metadata!.uid!, controller: true };
    const ctl = (obj.metadata?.ownerReferences ?? []).find((r) => r.controller === true);
    if (!ctl) throw new Error(`${apiVersion}/${kind} "${name}" in namespace "${ns}" has no controlling owner, cannot unwind the ownership further`);
    if (levels === 1) return { apiVersion: ctl.apiVersion, kind: ctl.kind, name: ctl.name, uid: ctl.uid, controller: true };
    return this.lookupOwner(ctl.apiVersion, ctl.kind, ctl.name, levels - 1);
  }

  /** StorageClasses the controller makes items for: this driver's, not Immediate (unless --capacity-for-immediate-binding). */
  private async classes(): Promise<V1StorageClass[]> {
    return (await this.storage.listStorageClass()).items.filter((sc) => sc.provisioner === this.o.driverName && (this.o.immediateBinding || sc.volumeBindingMode !== 'Immediate'));
  }

  /** The objects this instance manages (its informer lists with the two labels, in its namespace). */
  async managed(): Promise<V1CSIStorageCapacity[]> {
    const labelSelector = `${DRIVER_NAME_LABEL}=${this.o.driverName},${MANAGED_BY_LABEL}=${this.managedBy}`;
    return (await this.storage.listNamespacedCSIStorageCapacity({ namespace: this.o.namespace, labelSelector })).items;
  }

  /**
   * One pass of the controller: every (segment x class) item is synced
   * (GetCapacity, then create, or update when capacity, maximumVolumeSize or
   * the owner differ), and managed objects no item wants are deleted.
   * `only` restricts the pass to some items (provision.go's refreshes);
   * then nothing is deleted.
   */
  async sync(only?: (item: { storageClassName: string; segment: Segment }) => boolean): Promise<WorkItemResult[]> {
    const segments = await discoverSegments(this.o.kubeConfig, this.o.driverName);
    const classes = await this.classes();
    const existing = await this.managed();
    const claimed = new Set<string>();
    const results: WorkItemResult[] = [];
    for (const sc of classes) {
      for (const segment of segments) {
        const item = { storageClassName: sc.metadata!.name!, segment };
        // WorkItem.equals: same class, nodeTopology deep-equal to the segment's label selector.
        const obj = existing.find((c) => !claimed.has(c.metadata!.name!) && c.storageClassName === item.storageClassName && sameSelector(c.nodeTopology, { matchLabels: labelMap(segment) }));
        if (obj) claimed.add(obj.metadata!.name!);
        if (only && !only(item)) continue;
        results.push(await this.syncItem(sc, segment, obj));
      }
    }
    if (!only) {
      for (const c of existing) if (!claimed.has(c.metadata!.name!)) await this.storage.deleteNamespacedCSIStorageCapacity({ name: c.metadata!.name!, namespace: this.o.namespace });
    }
    this.lastPass = results;
    return results;
  }

  private async syncItem(sc: V1StorageClass, segment: Segment, obj: V1CSIStorageCapacity | undefined): Promise<WorkItemResult> {
    const storageClassName = sc.metadata!.name!;
    // The class's parameters as they stand (reserved keys included), no capabilities: "capacity is independent of the capabilities".
    const parameters = { ...(sc.parameters ?? {}) };
    this.getCapacityCalls.push({ parameters, segment: labelMap(segment) });
    let resp: { available_capacity?: number | string; maximum_volume_size?: { value?: number | string } | null };
    try {
      resp = await this.o.controller.GetCapacity({ parameters, volume_capabilities: [], accessible_topology: { segments: labelMap(segment) } });
    } catch (e) {
      return { storageClassName, segment, error: (e as Error).message };
    }
    const capacity = binarySI(Number(resp.available_capacity ?? 0));
    const maximumVolumeSize = resp.maximum_volume_size ? binarySI(Number(resp.maximum_volume_size.value ?? 0)) : undefined;
    if (!obj) {
      await this.storage.createNamespacedCSIStorageCapacity({
        namespace: this.o.namespace,
        body: {
          apiVersion: 'storage.k8s.io/v1',
          kind: 'CSIStorageCapacity',
          metadata: {
            generateName: 'csisc-',
            labels: { [DRIVER_NAME_LABEL]: this.o.driverName, [MANAGED_BY_LABEL]: this.managedBy },
            ...(this.owner ? { ownerReferences: [this.owner] } : {}),
          },
          storageClassName,
          nodeTopology: { matchLabels: labelMap(segment) },
          capacity,
          ...(maximumVolumeSize !== undefined ? { maximumVolumeSize } : {}),
        },
      });
      return { storageClassName, segment };
    }
    const ownedByUs = !this.owner || (obj.metadata?.ownerReferences ?? []).some((r) => r.controller === true && r.uid === this.owner!.uid);
    const sameMax = (obj.maximumVolumeSize === undefined) === (maximumVolumeSize === undefined) && (maximumVolumeSize === undefined || quantityValue(obj.maximumVolumeSize!) === quantityValue(maximumVolumeSize));
    if (obj.capacity !== undefined && quantityValue(obj.capacity) === quantityValue(capacity) && sameMax && ownedByUs) return { storageClassName, segment };
    const body: V1CSIStorageCapacity = { ...obj, capacity, maximumVolumeSize };
    if (!ownedByUs) body.metadata = { ...obj.metadata, ownerReferences: [...(obj.metadata?.ownerReferences ?? []), this.owner!] };
    await this.storage.replaceNamespacedCSIStorageCapacity({ name: obj.metadata!.name!, namespace: this.o.namespace, body });
    return { storageClassName, segment };
  }

  /**
   * provision.go after a successful Provision: with node affinity on the PV,
   * refresh the items whose segment equals one of its terms (termToSegment:
   * `In` with one value per key); without, refresh the class's items.
   */
  async refreshAfterProvision(pvNodeAffinityTerms: Segment[] | undefined, storageClassName: string): Promise<WorkItemResult[]> {
    if (pvNodeAffinityTerms && pvNodeAffinityTerms.length > 0) {
      const wanted = new Set(pvNodeAffinityTerms.map((t) => segmentKey([...t].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))));
      return this.sync((item) => wanted.has(segmentKey(item.segment)));
    }
    return this.sync((item) => item.storageClassName === storageClassName);
  }
}

function sameSelector(a: V1LabelSelector | undefined, b: V1LabelSelector): boolean {
  const la = a?.matchLabels ?? {};
  const lb = b.matchLabels ?? {};
  const ka = Object.keys(la).sort();
  const kb = Object.keys(lb).sort();
  return (a?.matchExpressions ?? []).length === 0 && ka.length === kb.length && ka.every((k, i) => k === kb[i] && la[k] === lb[k]);
}

// ---- kube-scheduler v1.26 volumebinding (binder.go) -------------------------

export const ERR_REASON_NOT_ENOUGH_SPACE = 'node(s) did not have enough free storage';
export const ERR_REASON_BIND_CONFLICT = "node(s) didn't find available persistent volumes to bind";

export interface Claim {
  storageClassName: string;
  /** spec.resources.requests.storage */
  request: string;
}

/** metav1.LabelSelectorAsSelector(...).Matches(node labels); an empty selector matches every node. */
function selectorMatchesNode(sel: V1LabelSelector, labels: Record<string, string>): boolean {
  for (const [k, v] of Object.entries(sel.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const e of sel.matchExpressions ?? []) {
    const has = e.key in labels;
    const v = labels[e.key];
    const ok =
      e.operator === 'In' ? has && (e.values ?? []).includes(v) : e.operator === 'NotIn' ? !has || !(e.values ?? []).includes(v) : e.operator === 'Exists' ? has : e.operator === 'DoesNotExist' ? !has : false;
    if (!ok) return false;
  }
  return true;
}

export class SchedulerVolumeBindingModel {
  private readonly storage: StorageV1Api;
  private readonly core: CoreV1Api;

  constructor(kc: KubeConfig) {
    this.storage = kc.makeApiClient(StorageV1Api);
    this.core = kc.makeApiClient(CoreV1Api);
  }

  /** checkVolumeProvisions for one unbound delayed-binding claim on one node: undefined when it fits, else the reason. */
  async checkNode(claim: Claim, node: V1Node): Promise<string | undefined> {
    const sc = await this.storage.readStorageClass({ name: claim.storageClassName });
    if (!sc.provisioner) return ERR_REASON_BIND_CONFLICT;
    // MatchTopologySelectorTerms(class.AllowedTopologies, node labels): none = any node.
    const labels = node.metadata?.labels ?? {};
    const terms = sc.allowedTopologies ?? [];
    if (terms.length > 0 && !terms.some((t) => (t.matchLabelExpressions ?? []).every((e) => e.values.includes(labels[e.key] ?? '\u0000')))) return ERR_REASON_BIND_CONFLICT;
    return (await this.hasEnoughCapacity(sc, claim, node)) ? undefined : ERR_REASON_NOT_ENOUGH_SPACE;
  }

  /** hasEnoughCapacity: only for CSI drivers with storageCapacity: true; some object of the class that the node can reach must hold the claim. */
  async hasEnoughCapacity(sc: V1StorageClass, claim: Claim, node: V1Node): Promise<boolean> {
    let driver;
    try {
      driver = await this.storage.readCSIDriver({ name: sc.provisioner });
    } catch (e) {
      if ((e as { code?: number }).code === 404) return true;
      throw e;
    }
    if (driver.spec.storageCapacity !== true) return true;
    const size = quantityValue(claim.request);
    const capacities = (await this.storage.listCSIStorageCapacityForAllNamespaces()).items;
    return capacities.some((c) => {
      if (c.storageClassName !== sc.metadata!.name) return false;
      // capacitySufficient: MaximumVolumeSize when present (more precise), else Capacity.
      const limit = c.maximumVolumeSize ?? c.capacity;
      if (limit === undefined || quantityValue(limit) < size) return false;
      // nodeHasAccess: no nodeTopology = unavailable.
      return c.nodeTopology !== undefined && c.nodeTopology !== null && selectorMatchesNode(c.nodeTopology, node.metadata?.labels ?? {});
    });
  }

  /** The VolumeBinding filter over every node: node name -> undefined (fits) or the reason it was filtered out. */
  async filter(claim: Claim): Promise<Map<string, string | undefined>> {
    const out = new Map<string, string | undefined>();
    for (const n of (await this.core.listNode()).items) out.set(n.metadata!.name!, await this.checkNode(claim, n));
    return out;
  }
}

// ---- the provisioner's CreateVolume for a placed claim (pkg/controller) -----

const PREFIX = 'csi.storage.k8s.io/';
/** removePrefixedParameters' list of reserved keys the provisioner consumes itself (controller.go v6.3.0). */
const RESERVED = new Set(
  ['fstype', ...['provisioner', 'controller-publish', 'node-stage', 'node-publish', 'controller-expand', 'node-expand', 'controller-modify'].flatMap((p) => [`${p}-secret-name`, `${p}-secret-namespace`]), 'secret-name', 'secret-namespace'].map((k) => PREFIX + k),
);

export interface PlacedClaim {
  storageClassName: string;
  sizeBytes: number;
  pvcName: string;
  pvcNamespace: string;
  pvcUid: string;
  /** The node kube-scheduler picked (the volume.kubernetes.io/selected-node annotation). */
  selectedNode: string;
}

/**
 * What csi-provisioner v6.3.0 sends for a WaitForFirstConsumer claim once the
 * scheduler picked a node, with --strict-topology, --extra-create-metadata and
 * --default-fstype=ext4 (the shipped flags): controller.go Provision
 * (fstype keys, removePrefixedParameters, pvc/pv metadata keys) and
 * topology.go GenerateAccessibilityRequirements (strict: requisite = preferred =
 * the selected node's segment from its CSINode keys and Node labels). Returns
 * the volume and the PV's node affinity terms (GenerateVolumeNodeAffinity).
 */
export async function provisionClaim(kc: KubeConfig, controller: CsiClient['controller'], driver: string, c: PlacedClaim) {
  const storage = kc.makeApiClient(StorageV1Api);
  const core = kc.makeApiClient(CoreV1Api);
  const sc = await storage.readStorageClass({ name: c.storageClassName });
  const params = sc.parameters ?? {};
  const fsKeys = Object.keys(params).filter((k) => k.toLowerCase() === 'fstype' || k === `${PREFIX}fstype`);
  if (fsKeys.length > 1) throw new Error(`fstype specified in parameters with both "fstype" and "${PREFIX}fstype" keys`);
  const fsType = fsKeys.length ? params[fsKeys[0]] : 'ext4';
  const parameters: Record<string, string> = {};
  for (const [k, v] of Object.entries(params)) {
    if (!k.startsWith(PREFIX)) parameters[k] = v;
    else if (!RESERVED.has(k)) throw new Error(`found unknown parameter key "${k}" with reserved namespace ${PREFIX}`);
  }
  const pvName = `pvc-${c.pvcUid}`;
  Object.assign(parameters, { [`${PREFIX}pvc/name`]: c.pvcName, [`${PREFIX}pvc/namespace`]: c.pvcNamespace, [`${PREFIX}pv/name`]: pvName });
  const csiNode = await storage.readCSINode({ name: c.selectedNode });
  const keys = csiNode.spec.drivers.find((d) => d.name === driver)?.topologyKeys ?? [];
  if (keys.length === 0) throw new Error(`no topology key found for node ${c.selectedNode}`);
  const node = await core.readNode({ name: c.selectedNode });
  const segment: Record<string, string> = {};
  for (const k of keys) {
    const v = node.metadata?.labels?.[k];
    if (v === undefined) throw new Error(`topology labels from selected node do not match topology keys from CSINode ${keys.join(',')}`);
    segment[k] = v;
  }
  const r = await controller.CreateVolume({
    name: pvName,
    capacity_range: { required_bytes: c.sizeBytes },
    // ReadWriteOnce is SINGLE_NODE_MULTI_WRITER for a driver that advertises it (csi-lib-utils accessmodes), as sinter does.
    volume_capabilities: [{ mount: { fs_type: fsType, mount_flags: [] }, access_mode: { mode: 'SINGLE_NODE_MULTI_WRITER' } }],
    parameters,
    accessibility_requirements: { requisite: [{ segments: segment }], preferred: [{ segments: segment }] },
  });
  const topo = (r.volume!.accessible_topology ?? []) as { segments: Record<string, string> }[];
  const terms: Segment[] | undefined = topo.length ? topo.map((t) => Object.entries(t.segments)) : undefined;
  return { volume: r.volume as { volume_id: string; capacity_bytes: number; accessible_topology: { segments: Record<string, string> }[] }, pvNodeAffinityTerms: terms };
}
