import { readFile } from 'node:fs/promises';
import { Code, DomainError } from '../../errors/domain-error.js';
import { ExecError, type Executor } from '../../exec/run.js';
import type { CephAuth, CephKeys } from './credentials.js';

/** How to reach the cluster: every call names all of it, nothing comes from /etc/ceph or DNS. */
export interface CephConnection {
  monitors: string[];
  user: string;
  /** The user's key: a key file, or the requests' secrets (credentials.ts). */
  keys: CephKeys;
  timeoutMs: number;
}

/** The errno an rbd/ceph command exited with (they exit with it), when it is one of these. */
export const Errno = { EPERM: 1, ENOENT: 2, EIO: 5, EACCES: 13, EBUSY: 16, EEXIST: 17, EINVAL: 22, ENOSPC: 28, ENOTEMPTY: 39, ETIMEDOUT: 110 } as const;

/** A failed rbd/ceph command, with its errno (exit code) for the caller to decide on. */
export class CephCommandError extends DomainError {
  constructor(
    code: DomainError['code'],
    message: string,
    readonly errno: number | undefined,
  ) {
    super(code, message);
    this.name = 'CephCommandError';
  }
}

/**
 * The `rbd` and `ceph` command-line clients (JSON output) through src/exec.
 *
 * Each call passes the monitors (`-m`), the user (`--id`) and the key as a
 * file (`--keyfile`: never on the command line, never logged), and
 * `--conf /dev/null`: without a configuration file librados would read
 * /etc/ceph/ceph.conf, and without monitors it would look them up in DNS
 * (SRV records). librados' own timeouts are set from the command timeout so a
 * dead cluster fails the call instead of hanging it for librados' default 5 minutes.
 */
export class CephCli {
  constructor(
    private readonly conn: CephConnection,
    private readonly exec: Executor,
  ) {}

  private common(keyFile: string): string[] {
    const secs = String(Math.max(1, Math.floor(this.conn.timeoutMs / 1000) - 1));
    return [
      '--conf', '/dev/null',
      '-m', this.conn.monitors.join(','),
      '--id', this.conn.user,
      '--keyfile', keyFile,
      '--client_mount_timeout', secs,
      '--rados_mon_op_timeout', secs,
      '--rados_osd_op_timeout', secs,
    ];
  }

  /** The key's text, masked in anything an error might echo (rbd never prints it; defence in depth). */
  private async secrets(auth: CephAuth): Promise<string[]> {
    if (auth.kind === 'key') return this.conn.keys.maskable(auth);
    const key = await readFile(auth.keyFile, 'utf8').catch(() => '');
    return key.trim() ? [key.trim()] : [];
  }

  /** Runs `rbd ARGS`; `what` names the operation in an error ("creating image X"). */
  async rbd(args: string[], what: string): Promise<string> {
    return this.run('rbd', args, what);
  }

  async rbdJson<T>(args: string[], what: string): Promise<T> {
    const out = await this.run('rbd', [...args, '--format', 'json'], what);
    return parseJson<T>(out, what);
  }

  async cephJson<T>(args: string[], what: string): Promise<T> {
    // The ceph CLI has its own connect timeout (its default hunts for 5 minutes).
    const secs = String(Math.max(1, Math.floor(this.conn.timeoutMs / 1000) - 1));
    const out = await this.run('ceph', ['--connect-timeout', secs, ...args, '--format', 'json'], what);
    return parseJson<T>(out, what);
  }

  /** Runs `ceph ARGS` (plain output; some commands, e.g. `osd blocklist add`, print only to stderr). */
  async ceph(args: string[], what: string): Promise<string> {
    const secs = String(Math.max(1, Math.floor(this.conn.timeoutMs / 1000) - 1));
    return this.run('ceph', ['--connect-timeout', secs, ...args], what);
  }

  private async run(cmd: 'rbd' | 'ceph', args: string[], what: string): Promise<string> {
    const keys = this.conn.keys;
    const auth = keys.auth();
    const secrets = await this.secrets(auth);
    try {
      const r = await keys.withKeyFile(auth, (keyFile) => this.exec.run(cmd, [...this.common(keyFile), ...args], { timeoutMs: this.conn.timeoutMs, secrets }));
      keys.accepted(auth);
      return r.stdout;
    } catch (e) {
      const err = toCephError(e, what, this.conn, auth);
      // Ceph answered (the image is missing, the name taken …): the key got in.
      if (err instanceof CephCommandError && err.errno !== undefined && !AUTH_OR_REACH.has(err.errno)) keys.accepted(auth);
      throw err;
    }
  }
}

/** Errnos that say nothing about whether the key was accepted. */
const AUTH_OR_REACH: ReadonlySet<number> = new Set([Errno.EACCES, Errno.EPERM, Errno.ETIMEDOUT, Errno.EIO]);

function parseJson<T>(out: string, what: string): T {
  try {
    return JSON.parse(out || 'null') as T;
  } catch {
    throw new DomainError(Code.INTERNAL, `${what}: the Ceph client printed something that is not JSON: ${out.slice(0, 200)}`);
  }
}

/** The last meaningful line of a Ceph client's stderr (librados prefixes lines with a timestamp and thread id). */
function lastLine(stderr: string): string {
  const lines = stderr
    .split('\n')
    .map((l) => l.replace(/^\S+T\S+\s+[0-9a-f]+\s+-?\d+\s+/, '').trim())
    .filter(Boolean);
  return lines.slice(-2).join(' | ') || 'no output';
}

/** An rbd/ceph failure as a DomainError that says what to do; the errno is kept for callers that expect some. */
export function toCephError(e: unknown, what: string, conn: CephErrorContext, auth?: CephAuth): DomainError {
  if (!(e instanceof ExecError)) return e instanceof DomainError ? e : new DomainError(Code.INTERNAL, `${what}: ${(e as Error).message}`);
  if (e.exitCode === undefined && !e.timedOut)
    return new CephCommandError(Code.FAILED_PRECONDITION, `${what}: the Ceph client tools are not installed on the controller (install ceph-common): ${lastLine(e.stderr)}`, undefined);
  const detail = lastLine(e.stderr);
  // A wrong key is not refused outright: the client retries until its mount timeout, logging why.
  // (The ceph CLI exits 1 for any failure, so exit 1 alone says nothing.)
  if (/handle_auth_bad_method|Permission denied|EACCES/i.test(e.stderr) || e.exitCode === Errno.EACCES) return cephErrnoError(what, Errno.EACCES, detail, conn, auth);
  if (e.timedOut || e.exitCode === Errno.ETIMEDOUT || /timed out|hunting|connection refused/i.test(e.stderr)) return cephErrnoError(what, Errno.ETIMEDOUT, detail, conn);
  return cephErrnoError(what, e.exitCode, detail, conn);
}

/** Absolute paths in a Ceph client's message (a key file, an admin socket) are this host's business, not the caller's. */
const HOST_PATH_RE = /(?<![\w.:/-])\/(?:[\w.+@-]+\/)*[\w.+@-]+\/?/g;

/**
 * A Ceph errno (the rbd/ceph CLI's exit code, librbd's errno in the agent) as
 * the domain error that says what to do; the errno is kept for callers that
 * branch on it. The one mapping both clients use, so a call fails the same
 * way whichever client ran it. Host paths in `detail` are left out.
 */
/** What an error message may say about the connection: never the key, only where it came from. */
export type CephErrorContext = Pick<CephConnection, 'user' | 'monitors'> & { keys?: Pick<CephKeys, 'keyHint'> };

export function cephErrnoError(what: string, errno: number | undefined, detail: string, conn: CephErrorContext, auth?: CephAuth): CephCommandError {
  const d = detail.replace(HOST_PATH_RE, '<path>');
  switch (errno) {
    case Errno.ENOENT:
      return new CephCommandError(Code.NOT_FOUND, `${what}: not found (${d})`, errno);
    case Errno.EEXIST:
      return new CephCommandError(Code.ALREADY_EXISTS, `${what}: already exists (${d})`, errno);
    case Errno.EBUSY:
    case Errno.ENOTEMPTY:
      return new CephCommandError(Code.FAILED_PRECONDITION, `${what}: in use (${d})`, errno);
    case Errno.ENOSPC:
      return new CephCommandError(Code.RESOURCE_EXHAUSTED, `${what}: the pool is full (${d})`, errno);
    case Errno.EACCES:
    case Errno.EPERM:
      return new CephCommandError(
        Code.PERMISSION_DENIED,
        `${what}: Ceph refused client.${conn.user} (${d}); ${conn.keys?.keyHint(auth) ?? 'check the key in its key file'} and that the user's caps include "profile rbd" on the pool`,
        errno,
      );
    case Errno.ETIMEDOUT:
      return new CephCommandError(
        Code.UNAVAILABLE,
        `${what}: the Ceph monitors (${conn.monitors.join(',')}) did not answer in time (${d}); check that they run and that this host reaches them`,
        errno,
      );
    default:
      return new CephCommandError(Code.INTERNAL, `${what} failed (errno ${errno ?? '?'}): ${d}`, errno);
  }
}
