import type { Logger } from 'pino';
import type { Backend } from '../backends/backend.js';
import type { VolumeManager } from './volumes.js';

/**
 * Keeps every exporting backend's target daemon in step with the records:
 * once at start-up (tgtd forgets everything when it restarts) and then every
 * backend's reconcile interval. Passes never overlap; a failing pass is logged
 * once per change of error and retried on the next tick.
 */
/** What the export passes did, per backend name (the metrics endpoint's sinter_reconcile_exports_*). */
export interface ExportLoopStats {
  /** Exports put back after the target lost them. */
  restored: Record<string, number>;
  /** Exports no publish record explained, taken away. */
  revoked: Record<string, number>;
  /** Passes that failed (the target daemon did not answer …); retried on the next tick. */
  failures: Record<string, number>;
}

export class ExportLoop {
  readonly stats: ExportLoopStats = { restored: {}, revoked: {}, failures: {} };
  /** The one pending timer per backend; each tick replaces its own. */
  private timers = new Map<string, NodeJS.Timeout>();
  private running = new Set<Promise<void>>();
  private stopped = false;
  private lastError = new Map<string, string>();

  constructor(
    private readonly backends: Backend[],
    private readonly volumes: VolumeManager,
    private readonly log: Logger,
  ) {}

  /** One pass over every backend now; resolves when done. */
  async pass(): Promise<void> {
    await Promise.all(this.backends.filter((b) => typeof b.reconcileExports === 'function').map((b) => this.passOne(b)));
  }

  private async passOne(b: Backend): Promise<void> {
    const p = this.volumes.reconcileExports(b).then(
      (r) => {
        if (r) {
          this.stats.restored[b.name] = (this.stats.restored[b.name] ?? 0) + r.restored;
          this.stats.revoked[b.name] = (this.stats.revoked[b.name] ?? 0) + r.revoked;
        }
        if (this.lastError.delete(b.name)) this.log.info({ backend: b.name }, 'exports reconciled again');
      },
      (e: unknown) => {
        this.stats.failures[b.name] = (this.stats.failures[b.name] ?? 0) + 1;
        const msg = (e as Error).message;
        if (this.lastError.get(b.name) !== msg) this.log.error({ backend: b.name, err: msg }, 'cannot reconcile exports; will retry');
        this.lastError.set(b.name, msg);
      },
    );
    this.running.add(p);
    try {
      await p;
    } finally {
      this.running.delete(p);
    }
  }

  start(): void {
    for (const b of this.backends) {
      if (!b.reconcileExports || !b.reconcileIntervalMs) continue;
      const schedule = () => this.timers.set(b.name, setTimeout(tick, b.reconcileIntervalMs).unref());
      const tick = () => {
        if (this.stopped) return;
        void this.passOne(b).finally(() => {
          if (!this.stopped) schedule();
        });
      };
      schedule();
    }
  }

  /** How many timers are pending (one per reconciling backend while running). */
  pendingTimers(): number {
    return this.timers.size;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    await Promise.all([...this.running]);
  }
}
