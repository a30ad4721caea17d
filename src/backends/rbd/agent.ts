import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { Code } from '../../errors/domain-error.js';
import type { PipedProcess, PipeSpawner } from '../../exec/run.js';
import { CephCommandError, cephErrnoError, Errno, type CephConnection } from './cli.js';
import type { CephAuth } from './credentials.js';

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

/** One agent process: one librados connection, authenticated with one key. */
interface AgentConn {
  proc: PipedProcess;
  /** Which key it connected with (CephAuth.id): a call with another key needs another connection. */
  authId: string;
  pending: Map<number, Pending>;
  /** Its Ceph client (`client.<global id>`): its watches are the controller's own. */
  client?: string;
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
 *
 * The key reaches the agent on its stdin (the connect line), never its
 * command line. A connection is bound to the key it authenticated with: a
 * call that brings another key (keyFrom: secrets) gets a new connection with
 * it, so Ceph judges that key; once it connects it replaces the old one,
 * which finishes what it was asked and exits. A key Ceph refuses leaves the
 * old connection in place.
 */
export class RbdAgent {
  private current?: AgentConn;
  private readonly starting = new Map<string, Promise<AgentConn>>();
  private readonly live = new Set<AgentConn>();
  private nextId = 1;

  constructor(
    private readonly conn: CephConnection,
    private readonly spawner: PipeSpawner,
    private readonly log: Logger,
    private readonly python = '/usr/bin/python3',
  ) {}

  /** Sends one request; rejects with a CephCommandError carrying the errno librbd gave. */
  async call<T>(op: string, args: Record<string, unknown>, what: string, timeoutMs = this.conn.timeoutMs): Promise<T> {
    const auth = this.conn.keys.auth();
    const c = await this.ready(auth, what);
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        c.pending.delete(id);
        reject(cephErrnoError(what, Errno.ETIMEDOUT, `no answer in ${Math.round(timeoutMs / 1000)} s`, this.conn));
        // A connection that let a call hang is not trusted with the next one.
        this.kill(c);
      }, timeoutMs);
      c.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer, what });
      c.proc.stdin.write(JSON.stringify({ id, op, ...args }) + '\n');
    });
  }

  private ready(auth: CephAuth, what: string): Promise<AgentConn> {
    if (this.current?.authId === auth.id) return Promise.resolve(this.current);
    let p = this.starting.get(auth.id);
    if (!p) {
      p = this.start(auth, what).finally(() => this.starting.delete(auth.id));
      this.starting.set(auth.id, p);
    }
    return p;
  }

  private async start(auth: CephAuth, what: string): Promise<AgentConn> {
    let proc: PipedProcess;
    try {
      proc = await this.spawner.spawnPiped(this.python, [RBD_AGENT_PATH]);
    } catch {
      throw missingBindings(what, undefined);
    }
    const c: AgentConn = { proc, authId: auth.id, pending: new Map() };
    this.live.add(c);
    const lines = createInterface({ input: proc.stdout });
    const connected = new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => reject(cephErrnoError(what, Errno.ETIMEDOUT, 'no answer to the connect', this.conn)), this.conn.timeoutMs);
      c.pending.set(0, {
        resolve: (v) => (clearTimeout(timer), resolve(v)),
        reject: (e) => (clearTimeout(timer), reject(e)),
        timer,
        what,
      });
    });
    lines.on('line', (line) => this.onLine(c, line, auth));
    void proc.exited.then((x) => {
      this.live.delete(c);
      if (this.current === c) this.current = undefined;
      lines.close();
      const err = new CephCommandError(Code.UNAVAILABLE, `the rbd agent exited (${x.signal ?? `exit ${x.exitCode ?? '?'}`}); the call is not known to have finished, retry`, undefined);
      for (const [id, p] of c.pending) {
        clearTimeout(p.timer);
        p.reject(id === 0 ? missingBindings(what, x.exitCode) : err);
      }
      c.pending.clear();
    });
    const secs = Math.max(1, Math.floor(this.conn.timeoutMs / 1000) - 1);
    proc.stdin.on('error', () => undefined); // an exited agent: its exit handler answers the callers
    const key = auth.kind === 'key' ? { key: auth.key } : { keyFile: auth.keyFile };
    proc.stdin.write(JSON.stringify({ monitors: this.conn.monitors.join(','), user: this.conn.user, ...key, timeout: secs }) + '\n');
    try {
      const hello = (await connected) as { instanceId?: number } | undefined;
      c.client = typeof hello?.instanceId === 'number' ? `client.${hello.instanceId}` : undefined;
    } catch (e) {
      proc.kill();
      if (e instanceof AgentUnavailableError || !(e instanceof CephCommandError)) throw e;
      // librados says only "timed out" for a refused key. While a connection with another key answers
      // (same monitors, same user), the new key is what differs: refused, without a CLI call to say so.
      const other = this.current;
      if (other && auth.kind === 'key' && e.errno === Errno.ETIMEDOUT && (await this.answers(other)))
        throw cephErrnoError(what, Errno.EACCES, 'the monitors did not accept this key, while the connection with the key held works', this.conn, auth);
      throw new AgentConnectError(e.code, e.message, e.errno);
    }
    this.conn.keys.accepted(auth);
    const old = this.current;
    this.current = c;
    // The old connection answers what it was asked, then exits (its stdin closed).
    if (old) old.proc.stdin.end();
    this.log.info({ pid: proc.pid, replaced: old?.proc.pid }, 'rbd agent connected');
    return c;
  }

  private onLine(c: AgentConn, line: string, auth: CephAuth): void {
    let a: Answer;
    try {
      a = JSON.parse(line) as Answer;
    } catch {
      this.log.warn({ line: line.slice(0, 200) }, 'rbd agent printed a line that is not JSON');
      return;
    }
    const p = c.pending.get(a.id);
    if (!p) return;
    c.pending.delete(a.id);
    clearTimeout(p.timer);
    if (a.ok) p.resolve(a.result ?? undefined);
    else p.reject(cephErrnoError(p.what, a.errno ?? undefined, a.error ?? 'failed', this.conn, auth));
  }

  /** Whether the connection answers a request that asks the cluster something (its fsid) within a few seconds. */
  private answers(c: AgentConn): Promise<boolean> {
    const id = this.nextId++;
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        c.pending.delete(id);
        resolve(false);
      }, 3000);
      c.pending.set(id, { resolve: () => resolve(true), reject: () => resolve(false), timer, what: 'checking the held connection' });
      c.proc.stdin.write(JSON.stringify({ id, op: 'hello' }) + '\n');
    });
  }

  private kill(c: AgentConn): void {
    c.proc.kill();
    if (this.current === c) this.current = undefined;
  }

  /** Kills the agents; the next call starts a new one. */
  stop(): void {
    for (const c of this.live) c.proc.kill();
    this.current = undefined;
  }

  /** The running agent's Ceph client name (`client.4117`), if one runs. */
  ownClient(): string | undefined {
    return this.current?.client;
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
