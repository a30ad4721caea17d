import { parseNodeId, type NodeIdentity } from '../contracts/nodeid.js';

/**
 * Which node ids the controller will publish to. In single-machine mode that is
 * the local node alone; with Kubernetes it is the nodes whose CSINode carries
 * our driver; with neither, any well-formed id (the CO vouches for it).
 */
export interface NodeRegistry {
  lookup(nodeId: string): NodeIdentity | undefined;
}

export class StaticNodeRegistry implements NodeRegistry {
  constructor(private readonly ids: Set<string> | undefined) {}

  lookup(nodeId: string): NodeIdentity | undefined {
    const parsed = parseNodeId(nodeId);
    if (!parsed) return undefined;
    if (this.ids && !this.ids.has(nodeId)) return undefined;
    return parsed;
  }
}
