import type { ExportEntry, VolumeRecord } from '../backends/backend.js';
import type { Finding } from '../contracts/finding.js';
import { normalizeWwpn, parseNodeId } from '../contracts/nodeid.js';

/** The initiator names a publish to this node id admits (its IQN, WWPNs and NVMe host NQN). */
function initiatorsOf(nodeId: string): string[] {
  const n = parseNodeId(nodeId);
  if (!n) return [];
  return [...(n.iqn ? [n.iqn] : []), ...n.wwpns.map(normalizeWwpn), ...(n.nqn ? [n.nqn] : [])];
}

const norm = (i: string) => (/^(0x)?[0-9a-f:]{16,23}$/i.test(i) ? normalizeWwpn(i) : i);

/**
 * Fencing check (ARCHITECTURE.md: an export exists exactly while a publish
 * for that node exists), for backends that export (`listExports`). A backend
 * that reconciles its exports at start (`reconcileExports`) repairs every
 * difference on a restart; otherwise:
 * - an initiator admitted with no publish recorded for it: sinter never makes
 *   an export before recording the publish, so this is a fencing breach for a
 *   person to look at;
 * - a publish with no export: a publish or unpublish was interrupted between
 *   its two steps; the CO's retry finishes it.
 */
export function checkExports(backend: string, exports: ExportEntry[], volumes: VolumeRecord[], reconcilesAtStart = false): Finding[] {
  const out: Finding[] = [];
  const byStart = (fallback: Finding['remedy']): Finding['remedy'] => (reconcilesAtStart ? 'restart' : fallback);
  const fixedBy = reconcilesAtStart ? 'a start (and the periodic export reconcile) brings the exports in line with the records' : '';
  const byId = new Map(volumes.map((v) => [v.id, v]));
  const exported = new Map<string, Set<string>>();
  for (const e of exports) {
    const v = e.volumeId ? byId.get(e.volumeId) : undefined;
    if (!v) {
      out.push({
        kind: 'orphan-export',
        subject: e.target,
        detail: `backend ${backend} exports ${e.target}${e.volumeId ? ` for volume ${e.volumeId}, which has no record` : ''}; ${fixedBy || 'remove it by hand'}`,
        remedy: byStart('operator'),
      });
      continue;
    }
    const allowed = new Set(v.attachments.flatMap((a) => initiatorsOf(a.nodeId)));
    const seen = exported.get(v.id) ?? new Set<string>();
    exported.set(v.id, seen);
    for (const i of e.initiators.map(norm)) {
      seen.add(i);
      if (!allowed.has(i))
        out.push({
          kind: 'unfenced-initiator',
          subject: `volume ${v.id}`,
          detail: `export ${e.target} admits ${i}, to which the volume is not published; ${fixedBy || 'revoke it by hand'}`,
          remedy: byStart('operator'),
        });
    }
  }
  for (const v of volumes) {
    for (const a of v.attachments) {
      const want = initiatorsOf(a.nodeId);
      if (want.length === 0) continue;
      const have = exported.get(v.id) ?? new Set<string>();
      if (!want.some((i) => have.has(i)))
        out.push({
          kind: 'missing-export',
          subject: `volume ${v.id}`,
          detail: `published to ${a.nodeId} but not exported to it; ${fixedBy || "the CO's ControllerPublishVolume (or Unpublish) retry settles it"}`,
          remedy: byStart('retry'),
        });
    }
  }
  return out;
}
