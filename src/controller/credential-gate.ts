import type { Backend } from '../backends/backend.js';
import { backendOfGroupSnapshot, backendOfSnapshot, backendOfVolume } from '../backends/ids.js';

type Handler = (req: never) => Promise<unknown>;

/** RPCs that touch no backend's storage. */
const UNGATED = new Set(['ControllerGetCapabilities', 'GroupControllerGetCapabilities']);

/** The backends a request names by id (volumes, snapshots, group snapshots, content sources). */
function namedBackends(req: unknown): Set<string> {
  const out = new Set<string>();
  if (!req || typeof req !== 'object') return out;
  const r = req as Record<string, unknown>;
  const add = (name: string | undefined) => name !== undefined && out.add(name);
  const str = (v: unknown) => (typeof v === 'string' ? v : '');
  add(backendOfVolume(str(r.volume_id)));
  add(backendOfVolume(str(r.source_volume_id)));
  add(backendOfSnapshot(str(r.snapshot_id)));
  add(backendOfGroupSnapshot(str(r.group_snapshot_id)));
  for (const id of Array.isArray(r.source_volume_ids) ? r.source_volume_ids : []) add(backendOfVolume(str(id)));
  for (const id of Array.isArray(r.snapshot_ids) ? r.snapshot_ids : []) add(backendOfSnapshot(str(id)));
  const cs = r.volume_content_source as { snapshot?: { snapshot_id?: string }; volume?: { volume_id?: string } } | undefined;
  add(backendOfSnapshot(str(cs?.snapshot?.snapshot_id)));
  add(backendOfVolume(str(cs?.volume?.volume_id)));
  return out;
}

/**
 * Before each controller RPC: a backend's new credentials are judged by its storage
 * (Backend.verifyCredentials); a backend that put off reading its records for
 * want of credentials (rbd `keyFrom: secrets`) reads them now if this request
 * brings them (then `onStarted` re-indexes the managers), and a request that
 * concerns a backend still waiting is UNAVAILABLE, with the backend's own
 * message saying how to give the credentials. A list of everything
 * (ListVolumes, ListSnapshots unfiltered) concerns every backend: a list that
 * leaves volumes out would tell the CO they are gone. CreateVolume and
 * GetCapacity are judged by the scheduler (AwaitingCredentialsError).
 */
export function gateOnCredentials<T extends object>(impl: T, backends: Map<string, Backend>, onStarted: () => void): T {
  const admit = async (method: string, req: unknown) => {
    // A key no call has seen accepted is judged first: a retry that would touch nothing must not pass with a wrong one.
    for (const b of backends.values()) await b.verifyCredentials?.();
    const waiting = [...backends.values()].filter((b) => b.isReady && !b.isReady());
    if (waiting.length === 0) return;
    let started = false;
    for (const b of waiting) if (await b.startDeferred?.()) started = true;
    if (started) onStarted();
    const still = waiting.filter((b) => !b.isReady!());
    if (still.length === 0) return;
    const named = namedBackends(req);
    const listsAll = (method === 'ListVolumes' || method === 'ListSnapshots') && named.size === 0;
    const blocked = still.find((b) => listsAll || named.has(b.name));
    if (blocked) throw blocked.notReadyError?.() ?? new Error(`backend ${blocked.name} is not ready`);
  };
  const out: Record<string, Handler> = {};
  for (const [method, fn] of Object.entries(impl) as [string, Handler][]) {
    if (typeof fn !== 'function' || UNGATED.has(method)) {
      out[method] = fn;
      continue;
    }
    out[method] = async (req: never) => {
      await admit(method, req);
      return fn.call(impl, req);
    };
  }
  return out as T;
}
