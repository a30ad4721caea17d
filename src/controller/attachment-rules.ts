import type { Attachment } from '../backends/backend.js';
import { alreadyExists, failedPrecondition, resourceExhausted } from '../errors/domain-error.js';
import { isSingleNode, type ParsedCapability } from './capabilities.js';

/**
 * Cinder's attachment rules, one copy for volumes sinter created and static
 * (pre-provisioned) ones. `label` names the volume in messages ("volume X",
 * "static volume X").
 */

/** A repeated publish to the same node must ask for the same thing; anything else is ALREADY_EXISTS. */
export function checkRepublish(label: string, mine: Attachment, cap: ParsedCapability, readonly: boolean): void {
  if (mine.readonly !== readonly || mine.accessType !== cap.accessType || mine.accessMode !== cap.accessMode || (mine.fsType ?? '') !== (cap.fsType ?? ''))
    throw alreadyExists(`${label} is already published to this node with a different capability or readonly flag; unpublish it first`);
}

/**
 * A publish to a new node: within the node's max_volumes_per_node (counting
 * `publishedToNode`, what the node already holds), and never beside another
 * node when either access mode allows a single node.
 */
export function checkNewPublish(label: string, others: Attachment[], nodeId: string, cap: ParsedCapability, publishedToNode: number, limit: number | undefined): void {
  if (limit && publishedToNode >= limit) throw resourceExhausted(`node_id: node "${nodeId}" already has ${limit} volumes published, its limit (max_volumes_per_node)`);
  if (others.length > 0 && (isSingleNode(cap.accessMode) || others.some((a) => isSingleNode(a.accessMode))))
    throw failedPrecondition(`${label} is published to node ${others[0]!.nodeId} and its access mode allows a single node; unpublish it there first`);
}

export function newAttachment(nodeId: string, cap: ParsedCapability, readonly: boolean, at = new Date().toISOString()): Attachment {
  return {
    nodeId,
    readonly,
    accessType: cap.accessType,
    accessMode: cap.accessMode,
    fsType: cap.fsType,
    mountFlags: cap.mountFlags.length ? cap.mountFlags : undefined,
    at,
  };
}
