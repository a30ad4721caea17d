/**
 * A readiness check too costly to run on every Probe (it starts host
 * processes: vgs, lvs, tgtadm): Probe is polled by kubelet and every sidecar,
 * so it answers from the last outcome and starts the next check in the
 * background once that outcome is older than `maxAgeMs`. Only the first call
 * waits for a check. A failure is reported until a later check succeeds.
 */
export class RecentCheck {
  private at?: number;
  private error?: Error;
  private running?: Promise<void>;

  constructor(
    private readonly check: () => Promise<void>,
    private readonly maxAgeMs = 5_000,
    private readonly now: () => number = () => performance.now(),
  ) {}

  async run(): Promise<void> {
    if (!this.running && (this.at === undefined || this.now() - this.at > this.maxAgeMs)) {
      const running = this.check().then(
        () => void (this.error = undefined),
        (e: unknown) => void (this.error = e instanceof Error ? e : new Error(String(e))),
      );
      this.running = running.finally(() => {
        this.at = this.now();
        this.running = undefined;
      });
    }
    if (this.at === undefined) await this.running;
    if (this.error) throw this.error;
  }
}
