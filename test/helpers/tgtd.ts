import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';

/** The host tools the iSCSI integration tests need, by Debian package. */
export const ISCSI_TEST_TOOLS: Record<string, string> = {
  tgtd: 'tgt',
  tgtadm: 'tgt',
  'qemu-nbd': 'qemu-utils (+ qemu-block-extra for the iscsi driver)',
  nbdfuse: 'libnbd-bin',
  fusermount3: 'fuse3',
  losetup: 'util-linux',
};

function missingTools(tools: string[]): string[] {
  const path = (process.env.PATH ?? '').split(':');
  return tools.filter((t) => !path.some((d) => existsSync(join(d, t))));
}

/** Throws a message naming the packages to install when a tool is missing. */
export function requireIscsiTools(): void {
  const missing = missingTools(Object.keys(ISCSI_TEST_TOOLS));
  if (missing.length) throw new Error(`iSCSI integration tests need ${missing.map((m) => `${m} (${ISCSI_TEST_TOOLS[m]})`).join(', ')}: apt-get install tgt qemu-utils qemu-block-extra libnbd-bin fuse3`);
  const archDirs = readdirSync('/usr/lib').filter((d) => d.endsWith('-linux-gnu'));
  if (!archDirs.some((d) => existsSync(join('/usr/lib', d, 'qemu', 'block-iscsi.so')))) {
    throw new Error('qemu-nbd has no iSCSI driver: apt-get install qemu-block-extra');
  }
}

/**
 * For a test that only runs the target side (tgtd, driven with tgtadm) and no
 * initiator: the host and the VM guest (which has no qemu-nbd) both have it.
 */
export function requireTgt(): void {
  const missing = missingTools(['tgtd', 'tgtadm']);
  if (missing.length) throw new Error(`this test needs ${missing.join(' and ')}: apt-get install tgt`);
}

/** A free TCP port on 127.0.0.1 (listen on 0, read, close). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (typeof a === 'object' && a ? resolve(a.port) : reject(new Error('no port'))));
    });
  });
}

function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = connect({ host, port });
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

export interface TestTgtdOptions {
  /** Address the iSCSI portal listens on; default 127.0.0.1. */
  address?: string;
  /** Portal port; default a free port on 127.0.0.1 (give one when `address` is in another network namespace). */
  port?: number;
  /**
   * A command prefix tgtd runs under, e.g. `['nsenter', '--net=/run/netns/x', '--']`
   * (netnsWrapper in netns.ts); it must exec tgtd, not fork it. The portal's
   * readiness is probed under it too. tgtadm needs no prefix: the control
   * socket is a path (/var/run/tgtd/socket.N), reachable from any network namespace.
   */
  wrapper?: string[];
  /** Start on a spare port only, as a deployment with `iscsi.openPortals` does: the usual portal opens with openPortal() or by sinter. */
  portalClosed?: boolean;
}

/**
 * A tgtd owned by the test: foreground (-f), private control port and a
 * private iSCSI portal (on 127.0.0.1 unless told otherwise). stop() always
 * ends it (SIGTERM, then SIGKILL) and removes its control socket files.
 */
export class TestTgtd {
  proc?: ResultPromise;
  /** Its logs: made at each start, removed by stop() (every test stops its tgtd; keeping them left a directory per run in /tmp). */
  readonly logDir = mkdtempSync(join(tmpdir(), 'sinter-tgtd-'));
  private starts = 0;

  private constructor(
    readonly controlPort: number,
    readonly iscsiPort: number,
    readonly address: string = '127.0.0.1',
    private readonly wrapper: string[] = [],
  ) {}

  static async start(opts: TestTgtdOptions = {}): Promise<TestTgtd> {
    // The control port only names a unix socket (/var/run/tgtd/socket.N); tgtd takes 0..32767.
    let cp = 0;
    do cp = 20000 + Math.floor(Math.random() * 12000);
    while (existsSync(`/var/run/tgtd/socket.${cp}`));
    const t = new TestTgtd(cp, opts.port ?? (await freePort()), opts.address, opts.wrapper);
    try {
      await t.startAgain({ portalClosed: opts.portalClosed });
    } catch (e) {
      // A tgtd that started but never answered would otherwise outlive the test.
      await t.stop();
      throw e;
    }
    return t;
  }

  get running(): boolean {
    const p = this.proc;
    return Boolean(p && p.pid !== undefined && p.exitCode === null && p.signalCode === null);
  }

  get portal(): string {
    return `${this.address}:${this.iscsiPort}`;
  }

  /**
   * Starts tgtd again on the same control port. `portalClosed`: it listens on
   * a spare port instead, and its portal opens only with openPortal().
   */
  async startAgain(opts: { portalClosed?: boolean } = {}): Promise<void> {
    if (this.running) throw new Error('tgtd is still running');
    this.removeSockets();
    mkdirSync(this.logDir, { recursive: true });
    const log = join(this.logDir, `tgtd.${++this.starts}.log`);
    const portal = opts.portalClosed ? `${this.address}:${await freePort()}` : this.portal;
    const argv = ['tgtd', '-f', '-C', String(this.controlPort), '--iscsi', `portal=${portal}`];
    const [cmd, ...args] = [...this.wrapper, ...argv];
    this.proc = execa(cmd, args, {
      reject: false,
      cleanup: true,
      stdin: 'ignore',
      stdout: { file: log },
      stderr: { file: log },
    });
    const deadline = Date.now() + 15_000 * Math.max(1, Number(process.env.SINTER_TEST_SLOW ?? 1) || 1);
    for (;;) {
      if (!this.running) throw new Error(`tgtd exited at start: ${readFileSync(log, 'utf8')}`);
      const r = await execa('tgtadm', ['-C', String(this.controlPort), '--lld', 'iscsi', '--op', 'show', '--mode', 'target'], { reject: false });
      if (r.exitCode === 0 && (opts.portalClosed || (await this.portalAccepts()))) return;
      if (Date.now() > deadline) throw new Error(`tgtd did not come up: ${readFileSync(log, 'utf8')}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Opens the usual portal on a tgtd started with `portalClosed`. */
  async openPortal(): Promise<void> {
    await execa('tgtadm', ['-C', String(this.controlPort), '--lld', 'iscsi', '--op', 'new', '--mode', 'portal', '--param', `portal=${this.portal}`]);
    if (!(await this.portalAccepts())) throw new Error(`tgtd's portal ${this.portal} does not accept connections after --op new --mode portal`);
  }

  /** Whether the usual portal accepts a TCP connection now. */
  async portalAccepts(): Promise<boolean> {
    if (this.wrapper.length === 0) return canConnect(this.address, this.iscsiPort);
    // The portal is in another network namespace: connect from there (bash's /dev/tcp).
    const [cmd, ...args] = [...this.wrapper, 'bash', '-c', 'exec 3<>"/dev/tcp/$0/$1"', this.address, String(this.iscsiPort)];
    return (await execa(cmd, args, { reject: false, timeout: 5000 })).exitCode === 0;
  }

  /** Kills tgtd the hard way (a crash: it keeps no configuration). */
  async kill(): Promise<void> {
    const p = this.proc;
    if (!p || !this.running) return;
    p.kill('SIGKILL');
    await p;
    this.removeSockets();
  }

  /**
   * Graceful stop (`tgtadm --op delete --mode system`; tgtd does not exit on
   * SIGTERM), SIGKILL as the fallback; then removes its logs (read them with
   * lastLog() before). startAgain() may follow.
   */
  async stop(): Promise<void> {
    const p = this.proc;
    if (p && this.running) {
      await execa('tgtadm', ['-C', String(this.controlPort), '--op', 'delete', '--mode', 'system'], { reject: false, timeout: 5000 });
      const done = await Promise.race([p.then(() => true), new Promise((r) => setTimeout(() => r(false), 3000))]);
      if (!done) {
        p.kill('SIGKILL');
        await p;
      }
    }
    this.removeSockets();
    rmSync(this.logDir, { recursive: true, force: true });
  }

  /** What the latest tgtd start wrote (for a failure message), while it runs or until stop(). */
  lastLog(): string {
    try {
      return readFileSync(join(this.logDir, `tgtd.${this.starts}.log`), 'utf8');
    } catch {
      return '';
    }
  }

  private removeSockets(): void {
    for (const f of [`socket.${this.controlPort}`, `socket.${this.controlPort}.lock`]) rmSync(join('/var/run/tgtd', f), { force: true });
  }
}
