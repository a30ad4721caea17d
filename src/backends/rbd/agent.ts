import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { Code } from '../../errors/domain-error.js';
import type { PipedProcess, PipeSpawner } from '../../exec/run.js';
import { CephCommandError, cephErrnoError, Errno, type CephConnection } from './cli.js';

/** src/backends/rbd and dist/backends/rbd both hold the agent (the build copies it). */
export const RBD_AGENT_PATH = fileURLToPath(new URL('./rbd_agent.py', import.meta.url));

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
  what: string;
}

interface Answer {
  id: number;
  ok: boolean;
  result?: unknown;
  errno?: number | null;
  error?: string;
}

/**
 * One long-lived librados connection in a Python co-process (Ceph's own
 * bindings, Debian's python3-rbd and python3-rados) spoken to in JSON lines:
 * an rbd CLI call costs a process start and a cluster connect (~100-200 ms),
 * a request to the agent a few ms.
 *
 * Why a co-process and not a node-gyp binding to librbd: the bindings are
 * Ceph's, versioned and packaged with librbd itself (no ABI to follow, no
 * compiler in the image, no native module to rebuild per Node.js release),
 * and a crash in librbd (an assert) takes down the agent, not the controller.
 * The agent is started on first use, restarted on the next call after it
 * dies, and killed when a call times out (a hung connection is not reused).
 */
export class RbdAgent {
  private proc?: PipedProcess;
  private starting?: Promise<PipedProcess>;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  /** The running agent's Ceph client (`client.<global id>`): its watches are the controller's own. */
  private client?: string;

  constructor(
    private readonly conn: CephConnection,
    private readonly spawner: PipeSpawner,
    private readonly log: Logger,
    private readonly python = '/usr/bin/python3',
  ) {}

  /** Sends one request; rejects with a CephCommandError carrying the errno librbd gave. */
  async call<T>(op: string, args: Record<string, unknown>, what: string, timeoutMs = this.conn.timeoutMs): Promise<T> {
    const proc = await this.ready(what);
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(cephErrnoError(what, Errno.ETIMEDOUT, `no answer in ${Math.round(timeoutMs / 1000)} s`, this.conn));
        // A connection that let a call hang is not trusted with the next one.
        this.stop();
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer, what });
      proc.stdin.write(JSON.stringify({ id, op, ...args }) + '\n');
    });
  }

  private ready(what: string): Promise<PipedProcess> {
    if (this.proc) return Promise.resolve(this.proc);
    this.starting ??= this.start(what).finally(() => (this.starting = undefined));
    return this.starting;
  }

  private async start(what: string): Promise<PipedProcess> {
    let proc: PipedProcess;
    try {
      proc = await this.spawner.spawnPiped(this.python, [RBD_AGENT_PATH]);
    } catch {
      throw missingBindings(what, undefined);
    }
    const lines = createInterface({ input: proc.stdout });
    const connected = new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => reject(cephErrnoError(what, Errno.ETIMEDOUT, 'no answer to the connect', this.conn)), this.conn.timeoutMs);
      this.pending.set(0, {
        resolve: (v) => (clearTimeout(timer), resolve(v)),
        reject: (e) => (clearTimeout(timer), reject(e)),
        timer,
        what,
      });
    });
    lines.on('line', (line) => this.onLine(line));
    void proc.exited.then((x) => {
      if (this.proc === proc) this.proc = undefined;
      lines.close();
      const err = new CephCommandError(Code.UNAVAILABLE, `the rbd agent exited (${x.signal ?? `exit ${x.exitCode ?? '?'}`}); the call is not known to have finished, retry`, undefined);
      for (const [id, p] of this.pending) {
        clearTimeout(p.timer);
        p.reject(id === 0 ? missingBindings(what, x.exitCode) : err);
      }
      this.pending.clear();
    });
    const secs = Math.max(1, Math.floor(this.conn.timeoutMs / 1000) - 1);
    proc.stdin.on('error', () => undefined); // an exited agent: its exit handler answers the callers
    proc.stdin.write(JSON.stringify({ monitors: this.conn.monitors.join(','), user: this.conn.user, keyFile: this.conn.keyFile, timeout: secs }) + '\n');
    try {
      const hello = (await connected) as { instanceId?: number } | undefined;
      this.client = typeof hello?.instanceId === 'number' ? `client.${hello.instanceId}` : undefined;
    } catch (e) {
      proc.kill();
      if (e instanceof AgentUnavailableError || !(e instanceof CephCommandError)) throw e;
      throw new AgentConnectError(e.code, e.message, e.errno);
    }
    this.proc = proc;
    this.log.info({ pid: proc.pid }, 'rbd agent connected');
    return proc;
  }

  private onLine(line: string): void {
    let a: Answer;
    try {
      a = JSON.parse(line) as Answer;
    } catch {
      this.log.warn({ line: line.slice(0, 200) }, 'rbd agent printed a line that is not JSON');
      return;
    }
    const p = this.pending.get(a.id);
    if (!p) return;
    this.pending.delete(a.id);
    clearTimeout(p.timer);
    if (a.ok) p.resolve(a.result ?? undefined);
    else p.reject(cephErrnoError(p.what, a.errno ?? undefined, a.error ?? 'failed', this.conn));
  }

  /** Kills the agent; the next call starts a new one. */
  stop(): void {
    this.proc?.kill();
    this.proc = undefined;
    this.client = undefined;
  }

  /** The running agent's Ceph client name (`client.4117`), if one runs. */
  ownClient(): string | undefined {
    return this.proc ? this.client : undefined;
  }
}

/** The agent cannot run here (no python3-rbd): the caller may fall back to the CLI. */
export class AgentUnavailableError extends CephCommandError {}

/**
 * The agent could not connect. librados says only "timed out" for a wrong key
 * as for a dead monitor; the caller asks the CLI, whose log names the cause.
 */
export class AgentConnectError extends CephCommandError {}

function missingBindings(what: string, exitCode: number | undefined): CephCommandError {
  return new AgentUnavailableError(
    Code.FAILED_PRECONDITION,
    `${what}: the rbd agent could not start (exit ${exitCode ?? '?'}); install python3-rbd and python3-rados on the controller`,
    undefined,
  );
}
