import { NODE_TOPOLOGY_KEY, type NodeIdentity } from '../contracts/nodeid.js';
import { failedPrecondition } from '../errors/domain-error.js';

/**
 * Where a volume may be published: every segment of its accessible topology
 * (its backend's topology, as CreateVolume returned it) must be one the node
 * reports with the same value. The node's segments are what its NodeGetInfo
 * reported as accessible_topology, learnt two ways:
 *
 * - `topology.sinter.csi.io/node` from the node id itself: the node plugin
 *   sets it to the id's host (src/node/wiring.ts), so it needs no lookup and
 *   cannot be stale;
 * - any other segment (a zone) from a NodeSegments source: the local node's
 *   own configuration in single-machine mode, or, with Kubernetes, what the
 *   kubelet recorded from NodeGetInfo (see KubeNodeSegments).
 *
 * A segment the controller cannot learn for that node is treated as missing:
 * a volume is never published where it cannot be shown to be reachable.
 */
export interface NodeSegments {
  /** The node's topology segments other than the node one, as far as known; an empty map when nothing is known. */
  segments(nodeId: string, node: NodeIdentity): Promise<Record<string, string>>;
}

/** Without Kubernetes: the local node's configured segments in `sinter all`, nothing for any other node. */
export class LocalNodeSegments implements NodeSegments {
  constructor(
    private readonly localNodeId: string | undefined,
    private readonly localTopology: Readonly<Record<string, string>> = {},
  ) {}

  async segments(nodeId: string): Promise<Record<string, string>> {
    return nodeId === this.localNodeId ? { ...this.localTopology } : {};
  }
}

const describe = (t: Readonly<Record<string, string>>) =>
  Object.entries(t)
    .map(([k, v]) => `${k}=${v}`)
    .join(', ');

/**
 * FAILED_PRECONDITION unless the node lies inside the volume's topology,
 * naming the node and the segment it lacks. An empty topology is reachable
 * from every node.
 */
export function checkNodeInTopology(label: string, volumeTopology: Readonly<Record<string, string>>, node: NodeIdentity, known: Readonly<Record<string, string>>): void {
  const nodeSegments: Record<string, string> = { ...known, [NODE_TOPOLOGY_KEY]: node.host };
  for (const [key, want] of Object.entries(volumeTopology)) {
    const has = nodeSegments[key];
    if (has === want) continue;
    const where =
      has === undefined
        ? `node ${node.host} reports no ${key} segment (set node.topology on its node plugin, and with Kubernetes check the node's CSINode topologyKeys and labels)`
        : `node ${node.host} is in ${key}=${has}`;
    throw failedPrecondition(`${label} is reachable only from topology ${describe(volumeTopology)}, and ${where}; it cannot be published there`);
  }
}

/** What KubeNodeSegments needs of the Kubernetes cache (KubeCache provides it). */
export interface NodeRegistrations {
  /** The CSINode entry carrying this node id for our driver: the node's name and the topology keys the kubelet recorded. */
  csiNodeOfId(nodeId: string): { nodeName: string; topologyKeys: string[] } | undefined;
  /** The Node's labels, read from the API server. */
  nodeLabels(nodeName: string): Promise<Record<string, string>>;
}

/**
 * With Kubernetes: the segments the kubelet recorded when our node plugin
 * registered. The kubelet writes NodeGetInfo's accessible_topology as the
 * CSINode's topologyKeys (for our driver) and the Node's labels (their
 * values); only labels named by those keys count, so an unrelated label of
 * the same name set by hand on a node without our plugin's say-so does not.
 * When the API server cannot be asked, nothing is known and the publish is
 * refused (the attacher retries it).
 */
export class KubeNodeSegments implements NodeSegments {
  constructor(private readonly registrations: NodeRegistrations) {}

  async segments(nodeId: string): Promise<Record<string, string>> {
    const reg = this.registrations.csiNodeOfId(nodeId);
    if (!reg || reg.topologyKeys.length === 0) return {};
    let labels: Record<string, string>;
    try {
      labels = await this.registrations.nodeLabels(reg.nodeName);
    } catch {
      return {};
    }
    const out: Record<string, string> = {};
    for (const k of reg.topologyKeys) if (labels[k] !== undefined) out[k] = labels[k];
    return out;
  }
}
