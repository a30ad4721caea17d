import { realpath } from 'node:fs/promises';
import type { PublishContext } from '../contracts/publish-context.js';
import { stagedAt, type NodeDeps } from './context.js';

export type Orphan =
  | { kind: 'unreadable-record'; file: string; detail: string }
  | { kind: 'unfinished'; volumeId: string; detail: string }
  | { kind: 'staging-mount-missing'; volumeId: string; detail: string }
  | { kind: 'device-missing'; volumeId: string; detail: string }
  | { kind: 'publish-mount-missing'; volumeId: string; detail: string }
  | { kind: 'untracked-device'; device: string; detail: string };

/**
 * Compares the node's records with the host: volumes whose last operation did
 * not finish, staging or publish mounts that vanished (a reboot), devices
 * that are gone, and devices attached from sinter's roots that no record
 * claims. It only reports; kubelet's retries (or a person) repair.
 */
export async function findOrphans(d: NodeDeps, decode: (c: Record<string, string>) => PublishContext): Promise<Orphan[]> {
  const out: Orphan[] = [];
  const { records, corrupt } = await d.state.list();
  for (const c of corrupt) out.push({ kind: 'unreadable-record', file: c.file, detail: c.why });
  const snap = await d.mounter.snapshot();
  const claimed = new Set<string>();
  for (const rec of records) {
    if (rec.device) claimed.add(rec.device);
    for (const p of rec.publishes) if (p.roDevice) claimed.add(p.roDevice);
    if (rec.phase !== 'staged') {
      out.push({ kind: 'unfinished', volumeId: rec.volumeId, detail: `last node operation ${rec.phase === 'error' ? `failed: ${rec.lastError ?? ''}` : `was interrupted while ${rec.phase}`}` });
      continue;
    }
    const staging = await realpath(rec.stagingPath).catch(() => undefined);
    if (!staging || !snap.at(stagedAt(rec, staging)))
      out.push({ kind: 'staging-mount-missing', volumeId: rec.volumeId, detail: `nothing is mounted at ${rec.stagingPath}` });
    if (rec.device) {
      try {
        const ctx = decode(rec.publishContext);
        const cond = await d.connectors.for(ctx).condition(ctx, rec.device);
        if (cond.abnormal) out.push({ kind: 'device-missing', volumeId: rec.volumeId, detail: cond.message });
      } catch (e) {
        out.push({ kind: 'device-missing', volumeId: rec.volumeId, detail: (e as Error).message });
      }
    }
    for (const p of rec.publishes) {
      const t = await realpath(p.targetPath).catch(() => undefined);
      if (!t || !snap.at(t)) out.push({ kind: 'publish-mount-missing', volumeId: rec.volumeId, detail: `nothing is mounted at ${p.targetPath}` });
    }
  }
  for (const c of d.connectors.all()) {
    if (!c.attached) continue;
    for (const a of await c.attached().catch(() => [])) {
      if (!claimed.has(a.device)) out.push({ kind: 'untracked-device', device: a.device, detail: `${a.device} is attached to ${a.source} but no staged volume records it` });
    }
  }
  return out;
}
