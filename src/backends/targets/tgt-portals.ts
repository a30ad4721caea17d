import { isIP } from 'node:net';
import { parsePortal } from '../../contracts/publish-context.js';
import type { TgtPortal } from './tgt-parse.js';

/**
 * When tgtd starts it knows no target: an initiator that logs in again before
 * sinter has restored its target is refused and its connection closed, and
 * open-iscsi 2.1.8 was measured to stall in recovery on exactly that until
 * its replacement timeout failed the I/O (test/vm/iscsi-kernel.vm.test.ts).
 * A connection refused is what initiators retry without harm, so with
 * `iscsi.openPortals` tgtd starts on a parking portal only and sinter opens
 * the real ones once every backend exporting through that tgtd has restored
 * its exports into the daemon as it is now.
 *
 * One gate per tgtd (control port) in this process: each backend's helper is
 * a member, and a member counts as restored only for a pass that found the
 * portals closed when it began, so it restored into the restarted daemon and
 * not into the one before, and only while the targets it restored are still
 * there when the last member finishes (tgtd may have restarted again).
 */
export class TgtPortalGate {
  private readonly members = new Set<object>();
  /** Each member that restored since the portals closed, with the target names it restored. */
  private readonly restored = new Map<object, readonly string[]>();
  private tail: Promise<unknown> = Promise.resolve();

  /** One check-and-open at a time per tgtd: two helpers opening the same portal at once would have one refused (EADDRINUSE). */
  serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn, fn);
    this.tail = run.catch(() => undefined);
    return run;
  }

  join(member: object): void {
    this.members.add(member);
  }

  /** Records `member`'s restore of `targets`; true when every member has restored since the portals closed. */
  markRestored(member: object, targets: readonly string[] = []): boolean {
    this.restored.set(member, targets);
    return [...this.members].every((m) => this.restored.has(m));
  }

  /**
   * Before opening: a member whose targets are not all in the daemon restored
   * into an earlier one (tgtd restarted again since, as a crash-looping tgtd
   * does) and no longer counts. Returns how many were dropped.
   */
  dropStale(present: (target: string) => boolean): number {
    let dropped = 0;
    for (const [m, targets] of this.restored) {
      if (targets.every(present)) continue;
      this.restored.delete(m);
      dropped++;
    }
    return dropped;
  }

  /** The portals are open: earlier restores count for nothing at the next closing. */
  reset(): void {
    this.restored.clear();
  }

  /** Members still to restore (for the log line that says why a portal stays closed). */
  waitingFor(): number {
    return [...this.members].filter((m) => !this.restored.has(m)).length;
  }
}

const gates = new Map<number, TgtPortalGate>();

/** The gate of the tgtd on `controlPort`, shared by every helper of this process that drives it. */
export function tgtPortalGate(controlPort: number): TgtPortalGate {
  let g = gates.get(controlPort);
  if (!g) gates.set(controlPort, (g = new TgtPortalGate()));
  return g;
}

/** An IP literal in the form inet_ntop prints it (tgt shows bound addresses so). */
function canonicalHost(host: string): string {
  return isIP(host) === 6 ? new URL(`http://[${host}]/`).hostname.slice(1, -1) : host.toLowerCase();
}

/**
 * The configured portals (`host:port`, IP literals) tgtd is not listening on.
 * A wildcard listener of the same family and port covers a portal: tgtd could
 * not bind it beside one anyway.
 */
export function closedPortals(wanted: readonly string[], listening: readonly TgtPortal[]): string[] {
  return wanted.filter((raw) => {
    const p = parsePortal(raw);
    const host = canonicalHost(p.host);
    const wildcard = isIP(host) === 6 ? '::' : '0.0.0.0';
    return !listening.some((l) => l.port === p.port && (canonicalHost(l.host) === host || l.host === wildcard));
  });
}
