import type { Logger } from 'pino';
import type { Backend } from '../backends/backend.js';
import { backendOfVolume } from '../backends/ids.js';
import { parseNodeId } from '../contracts/nodeid.js';
import type { AttachmentView } from '../k8s/cache.js';
import { isStaticHandle, type StaticVolumes } from './static-volumes.js';
import type { VolumeManager } from './volumes.js';

export type { AttachmentView };

/** The cluster's attachment records as the reconciler reads them (KubeCache provides this). */
export interface AttachmentSource {
  /** Listed at least once and currently watching: absence of an object means something. */
  readonly live: boolean;
  /** Every VolumeAttachment of our driver, resolved to volume and node ids. */
  attachments(): AttachmentView[];
  /** Called after any change of the objects or of `live`. */
  onChange(cb: () => void): () => void;
}

/**
 * Whether a VolumeAttachment holds the backend publish (volumeId, nodeId), so
 * the reconciler must leave it alone. It holds when all of these are true:
 *
 * 1. it is not being deleted (no metadata.deletionTimestamp). Attaching
 *    (status.attached false, maybe with an attachError) and attached both hold;
 *    a VolumeAttachment being deleted means Kubernetes has decided to detach,
 *    so it holds nothing: the attacher's ControllerUnpublish normally ends the
 *    publish well within the grace period, and if that detach is lost or stuck
 *    the reconciler revokes it.
 * 2. its volume is this volume: the volume handle of the PV named by
 *    spec.source.persistentVolumeName (or spec.source.inlineVolumeSpec.csi).
 *    When that PV is not in the cache the volume cannot be ruled out, and the
 *    attachment holds every publish on its node (conservative).
 * 3. its node is this node: the nodeID of our driver in the CSINode named
 *    spec.nodeName equals nodeId. When that node has no CSINode entry for us
 *    (a node being removed), the host part of nodeId must equal spec.nodeName.
 *    A node that re-registered with a different id (new initiator name) no
 *    longer holds publishes made to its old id: those are fenced.
 */
export function holds(va: AttachmentView, volumeId: string, nodeId: string): boolean {
  if (va.deleting) return false;
  if (va.volumeId !== undefined && va.volumeId !== volumeId) return false;
  if (va.nodeId !== undefined) return va.nodeId === nodeId;
  return va.nodeName !== '' && parseNodeId(nodeId)?.host === va.nodeName;
}

export interface ReconcilerOptions {
  volumes: VolumeManager;
  backends: Map<string, Backend>;
  /** Static volumes' publish records: reconciled like the backends' (dropping one revokes nothing on the array). */
  statics?: StaticVolumes;
  source: AttachmentSource;
  log: Logger;
  /** How long a publish may lack a holding VolumeAttachment before it is revoked. */
  graceMs: number;
  /** Period of the full comparison (besides the passes that cache events trigger). */
  intervalMs: number;
  /** Cache events within this window are folded into one pass. */
  debounceMs?: number;
  /** Monotonic clock in ms, for tests. */
  now?: () => number;
}

/** Counters and gauges of the reconciler, for logs, tests and the metrics endpoint (src/metrics, sinter_reconcile_*). */
export interface ReconcilerStats {
  /** Passes that compared the backends with the cluster. */
  passes: number;
  /** Passes skipped because the cluster view was not live (API unreachable or not yet listed). */
  waits: number;
  /** Whether the reconciler is waiting for the Kubernetes API right now. */
  waiting: boolean;
  /** Publishes revoked because no VolumeAttachment held them for longer than the grace period (all backends; read-only sum). */
  readonly revoked: number;
  /** The same by backend name (`static` for static volumes). */
  revokedByBackend: Record<string, number>;
  /** Revocations that failed (retried on the next pass). */
  revokeFailures: number;
  /** Gauge: publishes without a holding VolumeAttachment, still within the grace period. */
  pendingRevocations: number;
  /** Gauge: VolumeAttachments with status.attached=true whose backend publish is missing. */
  missingPublishes: number;
  /** Counter: how many times such a missing publish was newly found and reported. */
  missingReported: number;
  lastPassAt?: string;
}

const keyOf = (volumeId: string, nodeId: string) => `${volumeId}\n${nodeId}`;

/**
 * Compares the backends' publish records (Cinder's attachment table) with
 * Kubernetes' VolumeAttachments, the CO's record of what should be attached:
 *
 * - a publish that no VolumeAttachment holds (see `holds`) for longer than the
 *   grace period is revoked through VolumeManager.unpublish — the export/ACL
 *   for that node goes away: the fence after a lost detach;
 * - a VolumeAttachment that says attached while the backend has no publish for
 *   it is reported (a warning once, `stats.missingPublishes`/`missingReported`);
 *   the attacher's next ControllerPublishVolume (its reconcile-sync finds the
 *   volume missing from ListVolumes' published nodes) records and exports it again.
 *
 * It only judges while the cluster view is live; while the API is unreachable it
 * waits, and forgets the grace clocks so that a publish is never revoked on
 * the strength of a stale cache.
 */
export class Reconciler {
  readonly stats: ReconcilerStats = {
    passes: 0,
    waits: 0,
    waiting: false,
    revokedByBackend: {},
    get revoked() {
      return Object.values(this.revokedByBackend).reduce((a, b) => a + b, 0);
    },
    revokeFailures: 0,
    pendingRevocations: 0,
    missingPublishes: 0,
    missingReported: 0,
  };
  /** publish key → when it was first seen without a holder. */
  private readonly unheldSince = new Map<string, number>();
  private missing = new Set<string>();
  private readonly now: () => number;
  private readonly debounceMs: number;
  private unsubscribe: (() => void) | undefined;
  private interval: NodeJS.Timeout | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private deadline: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = true;
  private everWaited = false;

  constructor(private readonly opts: ReconcilerOptions) {
    this.now = opts.now ?? (() => performance.now());
    this.debounceMs = opts.debounceMs ?? Math.min(1000, opts.intervalMs);
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.unsubscribe = this.opts.source.onChange(() => this.trigger());
    this.interval = setInterval(() => this.trigger(0), this.opts.intervalMs);
    this.interval.unref();
    this.trigger(0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    for (const t of [this.interval, this.debounce, this.deadline]) if (t) clearTimeout(t);
    this.interval = this.debounce = this.deadline = undefined;
    await this.running;
  }

  /** Schedules a pass (debounced); passes never overlap. */
  trigger(delayMs = this.debounceMs): void {
    if (this.stopped) return;
    if (this.debounce) {
      if (delayMs > 0) return; // one is already coming
      clearTimeout(this.debounce);
    }
    this.debounce = setTimeout(() => {
      this.debounce = undefined;
      void this.pass();
    }, delayMs);
  }

  /** Runs one pass now (or waits for the running one and runs another). */
  async pass(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      try {
        do {
          this.again = false;
          await this.runOnce().catch((e: unknown) => this.opts.log.error({ err: (e as Error).message }, 'reconciliation pass failed'));
        } while (this.again && !this.stopped);
      } finally {
        this.running = undefined;
      }
    })();
    return this.running;
  }

  private isHeld(volumeId: string, nodeId: string, vas: AttachmentView[]): boolean {
    return vas.some((va) => holds(va, volumeId, nodeId));
  }

  /** The VolumeAttachments that may hold a publish of each volume: its own, plus those whose PV is unknown. */
  private candidates(vas: AttachmentView[]): (volumeId: string) => AttachmentView[] {
    const byVolume = new Map<string, AttachmentView[]>();
    const unresolved: AttachmentView[] = [];
    for (const va of vas) {
      if (va.volumeId === undefined) unresolved.push(va);
      else {
        const list = byVolume.get(va.volumeId);
        if (list) list.push(va);
        else byVolume.set(va.volumeId, [va]);
      }
    }
    return (volumeId) => {
      const own = byVolume.get(volumeId) ?? [];
      return unresolved.length > 0 ? [...own, ...unresolved] : own;
    };
  }

  private async runOnce(): Promise<void> {
    const { source, log, graceMs, backends } = this.opts;
    if (!source.live) {
      this.stats.waits++;
      if (!this.stats.waiting) {
        this.stats.waiting = true;
        this.everWaited = true;
        log.info('reconciliation waits for the Kubernetes API; no publish is revoked meanwhile');
      }
      this.unheldSince.clear();
      this.stats.pendingRevocations = 0;
      return;
    }
    if (this.stats.waiting || (this.stats.passes === 0 && !this.everWaited)) log.info({ graceMs }, 'reconciliation of publishes with VolumeAttachments is running');
    this.stats.waiting = false;
    this.stats.passes++;
    this.stats.lastPassAt = new Date().toISOString();

    const vas = source.attachments();
    const candidatesOf = this.candidates(vas);
    const now = this.now();
    const seen = new Set<string>();
    const due: { volumeId: string; nodeId: string; since: number }[] = [];
    let nextDeadline = Infinity;

    for (const v of this.publishedVolumes(backends)) {
      for (const a of v.attachments) {
        const key = keyOf(v.id, a.nodeId);
        seen.add(key);
        if (this.isHeld(v.id, a.nodeId, candidatesOf(v.id))) {
          this.unheldSince.delete(key);
          continue;
        }
        let since = this.unheldSince.get(key);
        if (since === undefined) {
          since = now;
          this.unheldSince.set(key, now);
          log.info({ volume_id: v.id, node_id: a.nodeId, graceMs }, 'publish has no VolumeAttachment; it is revoked when none appears within the grace period');
        }
        if (now - since >= graceMs) due.push({ volumeId: v.id, nodeId: a.nodeId, since });
        else nextDeadline = Math.min(nextDeadline, since + graceMs);
      }
    }
    for (const key of this.unheldSince.keys()) if (!seen.has(key)) this.unheldSince.delete(key);

    for (const d of due) {
      if (this.stopped) break;
      await this.revoke(d.volumeId, d.nodeId, now - d.since);
    }
    this.stats.pendingRevocations = this.unheldSince.size;

    this.reportMissing(vas);

    if (this.deadline) clearTimeout(this.deadline);
    this.deadline = undefined;
    if (nextDeadline !== Infinity && !this.stopped) {
      this.deadline = setTimeout(() => {
        this.deadline = undefined;
        void this.pass();
      }, Math.max(0, nextDeadline - this.now()) + 1);
    }
  }

  /** Every volume with publishes: the backends' and the static ones. */
  private *publishedVolumes(backends: Map<string, Backend>): Generator<{ id: string; attachments: { nodeId: string }[] }> {
    for (const b of backends.values()) yield* b.volumes();
    if (this.opts.statics) yield* this.opts.statics.sorted();
  }

  private attachmentsOf(volumeId: string): { nodeId: string }[] | undefined {
    if (isStaticHandle(volumeId)) return this.opts.statics?.get(volumeId)?.attachments;
    return this.opts.volumes.get(volumeId)?.attachments;
  }

  private async revoke(volumeId: string, nodeId: string, unheldMs: number): Promise<void> {
    const { source, volumes, statics, log } = this.opts;
    let decided = false;
    try {
      // Re-checked under the volume's lock: a ControllerPublish for a new
      // VolumeAttachment may have come in since the pass looked.
      const onlyIf = () =>
        (decided =
          source.live &&
          (this.attachmentsOf(volumeId)?.some((a) => a.nodeId === nodeId) ?? false) &&
          !this.isHeld(volumeId, nodeId, source.attachments()));
      if (isStaticHandle(volumeId)) await statics?.unpublish(volumeId, nodeId, { onlyIf, wait: true });
      else await volumes.unpublish(volumeId, nodeId, { onlyIf, wait: true });
    } catch (e) {
      this.stats.revokeFailures++;
      log.error({ volume_id: volumeId, node_id: nodeId, err: (e as Error).message }, 'revoking a publish that no VolumeAttachment holds failed; retrying on the next pass');
      return;
    }
    this.unheldSince.delete(keyOf(volumeId, nodeId));
    if (decided) {
      const backend = isStaticHandle(volumeId) ? 'static' : (backendOfVolume(volumeId) ?? 'unknown');
      this.stats.revokedByBackend[backend] = (this.stats.revokedByBackend[backend] ?? 0) + 1;
      log.warn({ volume_id: volumeId, node_id: nodeId, unheldSeconds: Math.round(unheldMs / 100) / 10 }, 'revoked a publish that no VolumeAttachment held for longer than the grace period (lost detach): the node no longer has access');
    }
  }

  private reportMissing(vas: AttachmentView[]): void {
    const { volumes, statics, log } = this.opts;
    const now = new Set<string>();
    for (const va of vas) {
      if (!va.attached || va.deleting || va.volumeId === undefined) continue;
      const isStatic = statics !== undefined && isStaticHandle(va.volumeId);
      if (backendOfVolume(va.volumeId) === undefined && !isStatic) continue; // not a sinter volume id
      const v = isStatic ? statics.get(va.volumeId) : volumes.get(va.volumeId);
      const published = v?.attachments.some((a) => (va.nodeId !== undefined ? a.nodeId === va.nodeId : parseNodeId(a.nodeId)?.host === va.nodeName)) ?? false;
      if (published) continue;
      now.add(va.name);
      if (!this.missing.has(va.name)) {
        this.stats.missingReported++;
        log.warn(
          { volumeAttachment: va.name, volume_id: va.volumeId, node: va.nodeName, node_id: va.nodeId, volumeExists: v !== undefined },
          'VolumeAttachment says attached but the backend has no publish for it; the next ControllerPublishVolume restores it',
        );
      }
    }
    this.missing = now;
    this.stats.missingPublishes = now.size;
  }
}
