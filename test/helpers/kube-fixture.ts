import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { KubeCache } from '../../src/k8s/cache.js';
import { loadKubeConfig } from '../../src/k8s/client.js';
import { KubeApiStandIn } from './kube-api-standin.js';

export const DRIVER = 'sinter.csi.io';

export interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}

/** A logger whose lines the test can read back. */
export function capturingLogger(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) });
  return { log, lines };
}

/**
 * Everything a test against the HTTP stand-in needs, with one cleanup that
 * stops caches, loops and the server and removes the temp dir, in that order,
 * whatever state the test left them in.
 */
export class KubeFixture {
  readonly dir = mkdtempSync(join(tmpdir(), 'sinter-k8s-'));
  readonly standin = new KubeApiStandIn();
  readonly logs = capturingLogger();
  private readonly cleanups: (() => Promise<void> | void)[] = [];

  /** Starts the stand-in now, or (serverUp: false) only reserves its port: "API server down at start". */
  async setUp(serverUp = true): Promise<void> {
    if (serverUp) await this.standin.start();
    else this.standin.port = await KubeApiStandIn.freePort();
  }

  kubeconfigPath(): string {
    return this.standin.writeKubeconfig(this.dir);
  }

  cache(opts: { pageSize?: number } = {}): KubeCache {
    const cache = new KubeCache({
      driverName: DRIVER,
      kubeConfig: loadKubeConfig({ kubeconfig: this.kubeconfigPath() }),
      log: this.logs.log,
      reflector: { initialBackoffMs: 20, maxBackoffMs: 200, listTimeoutMs: 5000, ...opts },
    });
    this.onCleanup(() => cache.stop());
    return cache;
  }

  onCleanup(fn: () => Promise<void> | void): void {
    this.cleanups.push(fn);
  }

  logged(msg: RegExp): LogLine[] {
    return this.logs.lines.filter((l) => msg.test(l.msg));
  }

  async cleanup(): Promise<void> {
    for (const fn of this.cleanups.reverse()) await Promise.resolve(fn()).catch(() => undefined);
    await this.standin.stop().catch(() => undefined);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
