import { parseNodeId, type NodeIdentity } from '../contracts/nodeid.js';
import type { NodeRegistry } from './node-registry.js';

/** What KubeNodeRegistry needs of the Kubernetes cache (KubeCache provides it). */
export interface NodeIdDirectory {
  /** The CSINode mirror has listed at least once. */
  readonly synced: boolean;
  /** Some CSINode lists this id as our driver's nodeID. */
  hasNodeId(nodeId: string): boolean;
}

/**
 * The nodes the controller publishes to, with Kubernetes: those whose CSINode
 * carries our driver with exactly this node id (node-driver-registrar writes it
 * from NodeGetInfo). A well-formed id that no CSINode carries is unknown, so
 * ControllerPublishVolume answers NOT_FOUND.
 */
export class KubeNodeRegistry implements NodeRegistry {
  constructor(private readonly nodes: NodeIdDirectory) {}

  lookup(nodeId: string): NodeIdentity | undefined {
    const parsed = parseNodeId(nodeId);
    if (!parsed) return undefined;
    // Until the CSINode mirror has listed once (API server down at start), we
    // cannot tell a new node from an unknown one. Refusing would stop every
    // attach for as long as the API is away, although the attacher itself only
    // sends ids it read from CSINode; so, like StaticNodeRegistry without a
    // list, any well-formed id is accepted. After the first sync the mirror
    // decides, using its last known state while the API is unreachable.
    if (!this.nodes.synced) return parsed;
    return this.nodes.hasNodeId(nodeId) ? parsed : undefined;
  }
}
