import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** The runner's script; `npm run build` copies it beside this module in dist/. */
export const COMMAND_RUNNER_PATH = fileURLToPath(new URL('./command_runner.pl', import.meta.url));

export interface RunnerRequest {
  timeoutMs: number;
  /** After the timeout's SIGTERM, how long before SIGKILL. */
  graceMs: number;
  input?: string;
  /** Added to (or replacing in) the environment the runner started with, which is this process's. */
  env?: Record<string, string>;
}

export type RunnerReply =
  | { kind: 'exit'; exitCode: number | undefined; signal: string | undefined; timedOut: boolean; stdout: string; stderr: string }
  /** The command could not be started (no such file, not executable). */
  | { kind: 'error'; message: string };

/** The runner died while the command ran: whether the command ran, and how far, is unknown. */
export class RunnerLost extends Error {}

type Pending = { resolve: (r: RunnerReply) => void; reject: (e: Error) => void };

/**
 * Starts host commands through command_runner.pl, a ~5 MiB co-process that
 * forks for us: a fork of this process copies the page tables of its whole
 * heap on the main thread (3–8 ms at 100–150 MiB, on every command), a fork of
 * the runner does not. One runner serves every command of this process; it is
 * started on first use, restarted after it dies, and ends when we do.
 *
 * run() answers undefined when the runner cannot start at all (no perl): the
 * caller then starts the command itself.
 */
export class CommandRunner {
  private proc?: ChildProcess;
  private ready?: Promise<boolean>;
  private readonly pending = new Map<string, Pending>();
  private nextId = 1;
  private buf: Buffer = Buffer.alloc(0);
  /** Set once the runner failed to start: it is not tried again. */
  private unavailable = false;
  /** Holds the event loop open while something waits on the runner. */
  private waiting = 0;

  constructor(
    private readonly script = COMMAND_RUNNER_PATH,
    private readonly onUnavailable?: (why: string) => void,
  ) {}

  async run(file: string, args: string[], req: RunnerRequest): Promise<RunnerReply | undefined> {
    if (this.unavailable) return undefined;
    this.hold(1);
    try {
      if (!(await this.start())) return undefined;
      const proc = this.proc;
      if (!proc?.stdin) throw new RunnerLost('the command runner exited');
      const id = String(this.nextId++);
      const env = Object.entries(req.env ?? {}).flat();
      const fields = [id, String(Math.max(0, Math.round(req.timeoutMs))), String(req.graceMs), req.input === undefined ? '0' : '1', req.input ?? '', String(env.length / 2), ...env, file, ...args];
      const reply = new Promise<RunnerReply>((resolve, reject) => this.pending.set(id, { resolve, reject }));
      proc.stdin.write(encode(fields));
      return await reply;
    } finally {
      this.hold(-1);
    }
  }

  private hold(d: number): void {
    const before = this.waiting;
    this.waiting += d;
    const p = this.proc;
    if (!p) return;
    if (before === 0 && this.waiting > 0) {
      p.ref();
      (p.stdout as unknown as { ref?: () => void } | null)?.ref?.();
    } else if (before > 0 && this.waiting === 0) {
      p.unref();
      (p.stdout as unknown as { unref?: () => void } | null)?.unref?.();
    }
  }

  private start(): Promise<boolean> {
    if (this.ready) return this.ready;
    this.ready = new Promise<boolean>((resolve) => {
      let settled = false;
      const settle = (ok: boolean, why?: string) => {
        if (settled) return;
        settled = true;
        if (!ok) {
          this.unavailable = true;
          this.onUnavailable?.(why ?? 'it did not start');
        }
        resolve(ok);
      };
      let proc: ChildProcess;
      try {
        proc = spawn('perl', [this.script], { stdio: ['pipe', 'pipe', 'inherit'] });
      } catch (e) {
        settle(false, (e as Error).message);
        return;
      }
      this.proc = proc;
      this.buf = Buffer.alloc(0);
      if (this.waiting === 0) proc.unref();
      proc.on('error', (e) => {
        settle(false, e.message);
        this.lost(proc);
      });
      proc.on('exit', (code, signal) => {
        settle(false, `it exited (${signal ?? `code ${code}`}) before it was ready`);
        this.lost(proc);
      });
      // A write to a runner that just died: the exit handler answers the waiters.
      proc.stdin?.on('error', () => undefined);
      proc.stdout?.on('data', (chunk: Buffer) => {
        this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
        for (;;) {
          const got = decode(this.buf);
          if (!got) break;
          this.buf = this.buf.subarray(got.used);
          if (got.fields[0] === 'ready' && got.fields.length === 1) settle(true);
          else this.answer(got.fields);
        }
      });
      if (this.waiting === 0) (proc.stdout as unknown as { unref?: () => void } | null)?.unref?.();
    });
    return this.ready;
  }

  private answer(f: string[]): void {
    const id = f[0] ?? '';
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (f[1] === 'error') p.resolve({ kind: 'error', message: f[2] ?? 'could not start' });
    else
      p.resolve({
        kind: 'exit',
        exitCode: f[2] === '' ? undefined : Number(f[2]),
        signal: f[3] || undefined,
        timedOut: f[4] === '1',
        stdout: f[5] ?? '',
        stderr: f[6] ?? '',
      });
  }

  /** The runner is gone: whoever waits learns it, and the next command starts a new one. */
  private lost(proc: ChildProcess): void {
    if (this.proc !== proc) return;
    this.proc = undefined;
    if (!this.unavailable) this.ready = undefined;
    const waiters = [...this.pending.values()];
    this.pending.clear();
    for (const w of waiters) w.reject(new RunnerLost('the command runner exited while the command ran; whether it ran is unknown'));
  }

  /** Stops the runner (tests; a process exiting needs nothing: the runner sees its stdin end). */
  stop(): void {
    this.proc?.kill('SIGKILL');
  }
}

/** "<count>\n" then each field as "<byte length>:<bytes>" (command_runner.pl reads the same). */
export function encode(fields: string[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`${fields.length}\n`)];
  for (const f of fields) {
    const b = Buffer.from(f, 'utf8');
    parts.push(Buffer.from(`${b.length}:`), b);
  }
  return Buffer.concat(parts);
}

/** One whole message from the front of `buf`, or undefined while it is incomplete. */
export function decode(buf: Buffer): { fields: string[]; used: number } | undefined {
  const nl = buf.indexOf(10);
  if (nl < 0) return undefined;
  const count = Number(buf.toString('latin1', 0, nl));
  let pos = nl + 1;
  const fields: string[] = [];
  for (let i = 0; i < count; i++) {
    const colon = buf.indexOf(58, pos);
    if (colon < 0) return undefined;
    const len = Number(buf.toString('latin1', pos, colon));
    if (buf.length < colon + 1 + len) return undefined;
    fields.push(buf.toString('utf8', colon + 1, colon + 1 + len));
    pos = colon + 1 + len;
  }
  return { fields, used: pos };
}
