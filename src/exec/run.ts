import { openSync, closeSync } from 'node:fs';
import { maskSecrets } from './mask.js';
import { CommandRunner, RunnerLost } from './command-runner.js';
import { readdir, readFile } from 'node:fs/promises';
import type { Logger } from 'pino';

// execa is a large module graph (~130 ms of start-up); a controller may never
// start a host command, so it is loaded on the first run().
let execaModule: Promise<typeof import('execa')> | undefined;
const loadExeca = () => (execaModule ??= import('execa'));
type Execa = Awaited<ReturnType<typeof loadExeca>>['execa'];
/** What a finished execa child resolves to, as much as a spawner reads of it. */
interface ExitedLike {
  exitCode?: number;
  signal?: string;
  cause?: unknown;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export interface ExecOptions {
  /** Milliseconds before the command is killed (SIGKILL after SIGTERM grace). */
  timeoutMs?: number;
  /** Exit codes that are answers, not failures (e.g. blkid's 2 = "nothing found"). */
  okExitCodes?: number[];
  input?: string;
  env?: Record<string, string>;
  /** Strings to mask wherever the command line or output is logged or reported. */
  secrets?: string[];
}

export class ExecError extends Error {
  constructor(
    readonly command: string,
    readonly exitCode: number | undefined,
    readonly stderr: string,
    readonly timedOut: boolean,
  ) {
    super(
      timedOut
        ? `${command} timed out`
        : `${command} failed (exit ${exitCode ?? 'signal'}): ${stderr.trim().split('\n').slice(-3).join(' | ') || 'no output'}`,
    );
    this.name = 'ExecError';
  }
}

export interface Executor {
  run(cmd: string, args: string[], opts?: ExecOptions): Promise<ExecResult>;
  /**
   * The path under which this process opens a host path itself, or undefined
   * when it cannot (its commands run in another mount namespace or root, or
   * it is a stand-in). A daemon's control socket is read this way.
   */
  hostPath?(path: string): string | undefined;
}

/** Options for a long-running process (qemu-nbd, nbdfuse, …). */
export interface DaemonOptions {
  /** File that receives the daemon's stdout and stderr (created 0600, appended to). */
  logFile?: string;
  env?: Record<string, string>;
  /** Strings to mask wherever the command line is logged. */
  secrets?: string[];
}

export interface DaemonExit {
  exitCode: number | undefined;
  signal: string | undefined;
}

/** A process started by spawnDaemon. It runs in its own session and outlives its parent. */
export interface DaemonHandle {
  readonly pid: number;
  /** The command line as it may be logged (secrets masked). */
  readonly shown: string;
  /** Settles when the process exits, while the parent that spawned it lives. */
  readonly exited: Promise<DaemonExit>;
}

/**
 * Starts long-running helpers. Kept apart from Executor so existing Executor
 * implementations (and test fakes) need not change.
 */
export interface DaemonSpawner {
  spawnDaemon(cmd: string, args: string[], opts?: DaemonOptions): Promise<DaemonHandle>;
}

/** A long-lived helper spoken to over its stdin and stdout (the rbd agent): it lives and dies with this process. */
export interface PipedProcess {
  readonly pid: number;
  readonly shown: string;
  readonly stdin: NodeJS.WritableStream;
  readonly stdout: NodeJS.ReadableStream;
  /** Settles when the process exits. */
  readonly exited: Promise<DaemonExit>;
  kill(): void;
}

export interface PipeSpawner {
  spawnPiped(cmd: string, args: string[], opts?: DaemonOptions): Promise<PipedProcess>;
}

export interface HostExecConfig {
  /**
   * How commands reach the host when the plugin runs in a container:
   * `direct` runs them here; `nsenter` enters PID 1's mount (and net) namespaces;
   * `chroot` runs them under a host root mounted into the container.
   */
  mode: 'direct' | 'nsenter' | 'chroot';
  hostRoot?: string;
  /**
   * With `nsenter`: whose namespaces, the host's (PID 1, the default) or
   * iscsid's, for hosts that run iscsid in a container of its own (the node
   * database and the sessions then live in its mount and net namespaces).
   */
  nsenterTarget?: 'host' | 'iscsid';
  /** Where /proc is (to find iscsid); tests may point elsewhere. */
  procRoot?: string;
  defaultTimeoutMs: number;
  /**
   * Who forks the commands run() starts: `runner` (the default), a small
   * co-process (command-runner.ts), or `self`, this process through execa.
   * Without perl the runner falls back to `self` on its own.
   */
  spawnVia?: 'runner' | 'self';
}

/** After a timeout's SIGTERM, how long a command has before SIGKILL. */
const KILL_GRACE_MS = 2000;

const mask = maskSecrets;

/** The only place in sinter that starts a host process. */
export class HostExecutor implements Executor {
  constructor(
    private readonly cfg: HostExecConfig,
    private readonly log?: Logger,
  ) {
    if ((cfg.spawnVia ?? 'runner') === 'runner')
      this.runner = new CommandRunner(undefined, (why) => this.log?.warn({ why }, 'the command runner (perl) cannot start; host commands are forked from this process'));
  }

  /**
   * Direct mode only: under nsenter the host's files are in another mount
   * namespace, and under chroot an absolute symlink on the host (/var/run →
   * /run) resolves in the container's root, not the host's.
   */
  hostPath(path: string): string | undefined {
    return this.cfg.mode === 'direct' ? path : undefined;
  }

  private readonly runner?: CommandRunner;

  /** The last iscsid found, checked again before each use (iscsid may have restarted). */
  private iscsidPid?: string;

  private async wrap(cmd: string, args: string[], shown: string): Promise<[string, string[]]> {
    switch (this.cfg.mode) {
      case 'nsenter':
        return ['nsenter', ['--target', await this.nsenterPid(shown), '--mount', '--uts', '--ipc', '--net', '--', cmd, ...args]];
      case 'chroot':
        return ['chroot', [this.cfg.hostRoot ?? '/host', cmd, ...args]];
      default:
        return [cmd, args];
    }
  }

  private async nsenterPid(shown: string): Promise<string> {
    if ((this.cfg.nsenterTarget ?? 'host') === 'host') return '1';
    const proc = this.cfg.procRoot ?? '/proc';
    const isIscsid = async (pid: string) => (await readFile(`${proc}/${pid}/comm`, 'utf8').catch(() => '')).trim() === 'iscsid';
    if (this.iscsidPid && (await isIscsid(this.iscsidPid))) return this.iscsidPid;
    const pids = (await readdir(proc).catch(() => [] as string[])).filter((e) => /^\d+$/.test(e)).sort((a, b) => Number(a) - Number(b));
    for (const pid of pids) {
      if (await isIscsid(pid)) {
        this.iscsidPid = pid;
        return pid;
      }
    }
    throw new ExecError(
      shown,
      undefined,
      `iscsid is not running, and exec.nsenterTarget is iscsid (host commands run in its namespaces): start iscsid, or set exec.nsenterTarget to host`,
      false,
    );
  }

  async run(cmd: string, args: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const shown = mask([cmd, ...args].join(' '), opts.secrets);
    const [file, argv] = await this.wrap(cmd, args, shown);
    const started = performance.now();
    const timeoutMs = opts.timeoutMs ?? this.cfg.defaultTimeoutMs;
    let res: { exitCode: number | undefined; timedOut: boolean; stdout: string; stderr: string; startError?: string };
    const viaRunner = await this.runner
      ?.run(file, argv, { timeoutMs, graceMs: KILL_GRACE_MS, input: opts.input, env: opts.env })
      .catch((e: unknown) => {
        if (e instanceof RunnerLost) throw new ExecError(shown, undefined, e.message, false);
        throw e;
      });
    if (viaRunner?.kind === 'error') res = { exitCode: undefined, timedOut: false, stdout: '', stderr: '', startError: `cannot run ${file}: ${viaRunner.message}` };
    else if (viaRunner) res = viaRunner;
    else {
      const { execa } = await loadExeca();
      const r = await execa(file, argv, {
        reject: false,
        timeout: timeoutMs,
        forceKillAfterDelay: KILL_GRACE_MS,
        input: opts.input,
        env: opts.env ? { ...process.env, ...opts.env } : undefined,
        stripFinalNewline: false,
        encoding: 'utf8',
      });
      res = { exitCode: r.exitCode, timedOut: Boolean(r.timedOut), stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? '') };
      // The binary could not be started at all (ENOENT, EACCES).
      if (r.failed && r.exitCode === undefined && !r.timedOut && r.cause) res.startError = String((r.cause as Error).message ?? r.cause);
    }
    const exitCode = res.exitCode ?? -1;
    const { stdout, stderr } = res;
    const ms = Math.round(performance.now() - started);
    const ok = !res.timedOut && (exitCode === 0 || (opts.okExitCodes ?? []).includes(exitCode));
    this.log?.debug({ cmd: shown, exitCode, ms }, 'exec');
    if (!ok) {
      if (res.startError !== undefined) throw new ExecError(shown, undefined, mask(res.startError, opts.secrets), false);
      throw new ExecError(shown, res.exitCode, mask(stderr || stdout, opts.secrets), res.timedOut);
    }
    return { stdout, stderr, exitCode };
  }

  /**
   * What spawnPiped and spawnDaemon share: the command wrapped for the exec
   * mode, `logFile` (or /dev/null) opened as a real descriptor for the child's
   * output and closed here once the child holds it, a start failure as an
   * ExecError, and the exit as a promise. `launch` makes the one execa call,
   * so the child keeps the stdio types its options give it.
   */
  private async start<C extends PromiseLike<ExitedLike> & { readonly pid?: number }>(
    cmd: string,
    args: string[],
    opts: DaemonOptions,
    launch: (execa: Execa, file: string, argv: string[], log: 3, env: NodeJS.ProcessEnv | undefined) => C,
  ): Promise<{ child: C; pid: number; shown: string; exited: Promise<DaemonExit> }> {
    const shown = mask([cmd, ...args].join(' '), opts.secrets);
    const [file, argv] = await this.wrap(cmd, args, shown);
    const { execa } = await loadExeca();
    // A real file descriptor, not a pipe through this process: a daemon must
    // keep writing its log after the plugin that started it exits.
    // (execa's types accept a descriptor only as a small literal; any open fd works at run time.)
    const fd = openSync(opts.logFile ?? '/dev/null', 'a', 0o600) as 3;
    let child: C;
    try {
      child = launch(execa, file, argv, fd, opts.env ? { ...process.env, ...opts.env } : undefined);
    } finally {
      closeSync(fd);
    }
    const pid = child.pid;
    if (pid === undefined) {
      const res = await child;
      throw new ExecError(shown, undefined, mask(String((res.cause as Error | undefined)?.message ?? 'could not start'), opts.secrets), false);
    }
    const exited: Promise<DaemonExit> = Promise.resolve(child).then(
      (r) => ({ exitCode: r.exitCode, signal: r.signal ?? undefined }),
      () => ({ exitCode: undefined, signal: undefined }),
    );
    return { child, pid, shown, exited };
  }

  /**
   * Starts a co-process with piped stdin/stdout (stderr to `logFile` or
   * discarded), killed with this process: unlike a daemon it serves only the
   * plugin that started it.
   */
  async spawnPiped(cmd: string, args: string[], opts: DaemonOptions = {}): Promise<PipedProcess> {
    const { child: proc, pid, shown, exited } = await this.start(cmd, args, opts, (execa, file, argv, fd, env) =>
      execa(file, argv, { reject: false, cleanup: true, buffer: false, stdio: ['pipe', 'pipe', fd], env }),
    );
    // The co-process never holds this process open (a `sinter fsck` must exit
    // when done); a caller waiting for an answer keeps its own timer.
    proc.unref();
    for (const st of [proc.stdin, proc.stdout] as unknown[]) (st as { unref?: () => void }).unref?.();
    this.log?.debug({ cmd: shown, pid }, 'co-process started');
    return { pid, shown, stdin: proc.stdin, stdout: proc.stdout, exited, kill: () => void proc.kill('SIGKILL') };
  }

  /**
   * Starts a process that keeps running after this call (and after the node
   * plugin itself restarts): detached into its own session, stdin closed,
   * output to `logFile` (or discarded). Resolves once the process is spawned;
   * whether it became ready is for the caller to check.
   */
  async spawnDaemon(cmd: string, args: string[], opts: DaemonOptions = {}): Promise<DaemonHandle> {
    const { child, pid, shown, exited } = await this.start(cmd, args, opts, (execa, file, argv, fd, env) =>
      execa(file, argv, { reject: false, detached: true, cleanup: false, stdio: ['ignore', fd, fd], env }),
    );
    child.unref();
    this.log?.debug({ cmd: shown, pid }, 'daemon started');
    return { pid, shown, exited };
  }
}
