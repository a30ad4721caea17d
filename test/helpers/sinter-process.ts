import { readHostNqn } from '../../src/node/wiring.js';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { connect } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa, type ResultPromise } from 'execa';
import { csiClient, type CsiClient } from '../../src/csi/client.js';
import type { AccessMode, VolumeCapability } from '../../src/csi/messages.js';

/** sinter's entry, as the image runs it: the bundle of dist/ (scripts/bundle.mjs; test/global-setup.ts and `npm run build` make it). */
export const MAIN = fileURLToPath(new URL('../../dist/bundle/main.mjs', import.meta.url));

/**
 * How long a process may take to start or stop. Node in the VM guest (qemu TCG)
 * runs ~7x slower than here: the vm vitest project sets SINTER_TEST_SLOW=8.
 */
export const SLOW = Math.max(1, Number(process.env.SINTER_TEST_SLOW ?? 1) || 1);

export interface SinterProcess {
  base: string;
  socket: string;
  dataDir: string;
  kubeletRoot: string;
  client: CsiClient;
  proc: ResultPromise;
  /** Everything the process wrote to stderr so far (its JSON log lines). */
  logs(): string;
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** SIGKILL, without warning; with `detached`, the whole process group (sinter and the host commands it runs), as a container's death would. */
  kill(): Promise<void>;
  /** Stops the process and removes every mount and loop device left under base. */
  cleanup(): Promise<void>;
}

export interface StartOptions {
  role?: 'all' | 'controller' | 'node';
  args?: string[];
  base?: string;
  nodeName?: string;
  /** Own process group, so kill() takes its children (losetup, mkfs, cp …) with it. */
  detached?: boolean;
  logLevel?: string;
  /** Options for node itself, before the script (e.g. --expose-gc). */
  nodeArgs?: string[];
  /**
   * A command prefix sinter runs under, e.g. `['nsenter', '--net=/run/netns/x', '--']`
   * (see netnsWrapper in netns.ts). It must exec its command, not fork it, so
   * that stop() and kill() signal sinter itself.
   */
  wrapper?: string[];
  /**
   * How long sinter may go without using any CPU before its first ready Probe (stuck, not
   * slow); default 15 s × SLOW. The whole wait is capped at four times this.
   */
  readyTimeoutMs?: number;
}

/** The command line startSinter runs (after `node`). */
export function sinterArgs(base: string, opts: StartOptions = {}): string[] {
  return [
    MAIN,
    opts.role ?? 'all',
    '--endpoint',
    `unix://${join(base, 'csi.sock')}`,
    '--kubelet-root',
    join(base, 'kubelet'),
    '--node-name',
    opts.nodeName ?? 'test-node',
    '--log-level',
    opts.logLevel ?? 'info',
    ...((opts.args ?? []).includes('--config') ? [] : ['--data-dir', join(base, 'data')]),
    ...(opts.args ?? []),
  ];
}

/** Whether a unix socket accepts a connection now. */
function accepts(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect(path);
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, timeoutMs = 15_000, intervalMs = 50): Promise<T> {
  const until = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < until) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
}

/** Unmounts anything under `dir` (deepest first) and detaches loop devices backed by files under it. */
export async function scrub(dir: string): Promise<void> {
  // Loop devices are listed before the unmounts: once a FUSE or tmpfs mount
  // under dir is lazily unmounted, a device backed by a file on it shows a
  // path outside dir ("/disk") and would stay bound for good.
  const before = (await loopsBacked()).filter((l) => l.back.startsWith(`${dir}/`));
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4]?.replace(/\\040/g, ' '))
    .filter((m): m is string => !!m && (m === dir || m.startsWith(`${dir}/`)))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) await execa('umount', ['-l', m]).catch(() => undefined);
  for (const l of await loopsBacked()) {
    // Still ours: under dir, or the same file seen from outside its unmounted
    // store (a device freed meanwhile may already be another test's).
    const was = before.find((b) => b.dev === l.dev);
    if (l.back.startsWith(`${dir}/`) || (was && l.back && was.back.endsWith(l.back))) await execa('losetup', ['-d', l.dev]).catch(() => undefined);
  }
}

async function loopsBacked(): Promise<{ dev: string; back: string }[]> {
  const loops = await execa('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE']).catch(() => ({ stdout: '' }));
  return loops.stdout
    .split('\n')
    .map((line) => {
      const [dev, ...rest] = line.trim().split(/\s+/);
      return { dev: dev ?? '', back: rest.join(' ').replace(/ \(deleted\)$/, '') };
    })
    .filter((l) => l.dev);
}

function killGroup(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}

/**
 * CPU time (clock ticks) a process and its reaped children have used so far, from
 * /proc/<pid>/stat (utime, stime, cutime, cstime); undefined once it is gone.
 */
function cpuTicks(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
  } catch {
    return undefined;
  }
}

/**
 * Waits until sinter's socket accepts and a Probe says ready, and returns the client.
 * On a loaded host (a TCG guest sharing 2 cores with other runs) start-up can take
 * minutes, so no fixed deadline decides: it fails when the process exits, or when it
 * has used no CPU (itself or through the commands it ran) for `idleMs`, i.e. it is
 * stuck rather than slow, or after 4 × idleMs in all. A Probe that runs out of time is
 * asked again with twice the time (one that takes longer than its deadline would
 * otherwise never be seen), up to idleMs.
 */
async function waitReady(proc: ResultPromise, socket: string, logs: () => string, idleMs: number): Promise<CsiClient> {
  const t0 = Date.now();
  let lastCpu = cpuTicks(proc.pid);
  let busyAt = t0;
  let probeMs = 1000 * SLOW;
  let client: CsiClient | undefined;
  let last = 'no socket yet';
  try {
    for (;;) {
      if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`sinter exited with ${proc.exitCode ?? proc.signalCode}: ${logs().slice(-500)}`);
      if (!client && existsSync(socket) && (await accepts(socket))) client = csiClient(`unix://${socket}`);
      if (client) {
        try {
          const r = await client.identity.Probe({}, { deadlineMs: probeMs });
          if (r.ready?.value === true) return client;
          last = 'Probe answered not ready';
        } catch (e) {
          last = `Probe: ${(e as Error).message}`;
          if ((e as { code?: number }).code === 4) probeMs = Math.min(probeMs * 2, idleMs);
        }
      }
      const now = Date.now();
      const cpu = cpuTicks(proc.pid);
      if (cpu !== undefined && cpu !== lastCpu) {
        lastCpu = cpu;
        busyAt = now;
      }
      if (now - busyAt > idleMs || now - t0 > 4 * idleMs) {
        const why = now - busyAt > idleMs ? `it used no CPU for ${((now - busyAt) / 1000).toFixed(0)} s` : `${((now - t0) / 1000).toFixed(0)} s passed`;
        throw new Error(`timed out waiting for sinter to answer Probe (${why}; last: ${last}): ${logs().slice(-500)}`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  } catch (e) {
    client?.close();
    throw e;
  }
}

export async function startSinter(opts: StartOptions = {}): Promise<SinterProcess> {
  const base = opts.base ?? mkdtempSync(join(tmpdir(), 'sinter-it-'));
  const socket = join(base, 'csi.sock');
  const dataDir = join(base, 'data');
  const kubeletRoot = join(base, 'kubelet');
  mkdirSync(kubeletRoot, { recursive: true });
  const args = sinterArgs(base, opts);
  let stderr = '';
  const argv = ['node', ...(opts.nodeArgs ?? []), ...args];
  const [cmd, ...cmdArgs] = opts.wrapper?.length ? [...opts.wrapper, ...argv] : argv;
  const proc = execa(cmd, cmdArgs, { reject: false, stdout: 'ignore', stderr: 'pipe', buffer: false, detached: opts.detached === true });
  proc.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  // The client is made once the socket accepts connections: a channel that met a
  // refused connection first (a stale socket of a killed run) waits out gRPC's
  // reconnect back-off, about a second.
  let client: CsiClient;
  try {
    client = await waitReady(proc, socket, () => stderr, opts.readyTimeoutMs ?? 15_000 * SLOW);
  } catch (e) {
    if (opts.detached) killGroup(proc.pid);
    proc.kill('SIGKILL');
    throw e;
  }
  const stop = async (signal: NodeJS.Signals = 'SIGTERM') => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill(signal);
      await Promise.race([proc, new Promise((r) => setTimeout(r, 15_000 * SLOW))]);
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    }
  };
  const kill = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      if (opts.detached) killGroup(proc.pid);
      else proc.kill('SIGKILL');
      await proc;
    }
  };
  return {
    base,
    socket,
    dataDir,
    kubeletRoot,
    client,
    proc,
    logs: () => stderr,
    stop,
    kill,
    async cleanup() {
      client.close();
      await stop();
      await scrub(base);
      if (!opts.base) rmSync(base, { recursive: true, force: true });
    },
  };
}

export const MiB = 1024 * 1024;

export const mountCap = (mode: AccessMode = 'SINGLE_NODE_WRITER', fsType = ''): VolumeCapability => ({ mount: { fs_type: fsType, mount_flags: [] }, access_mode: { mode } });
export const blockCap = (mode: AccessMode = 'SINGLE_NODE_WRITER'): VolumeCapability => ({ block: {}, access_mode: { mode } });

/** The gRPC status code of a rejected call, or 'OK'. */
/**
 * Calls `fn` the way the sidecars do: an ABORTED answer (another operation on
 * the same volume is in progress) is retried after a backoff. `firstCodes`
 * collects the code of every first attempt, so a test can see the refusals.
 */
export async function asSidecar<T>(fn: () => Promise<T>, firstCodes?: string[]): Promise<T> {
  for (let attempt = 0, wait = 5; ; attempt++, wait = Math.min(wait * 2, 200)) {
    try {
      const r = await fn();
      if (attempt === 0) firstCodes?.push('OK');
      return r;
    } catch (e) {
      const code = (e as { code?: number }).code;
      if (attempt === 0) firstCodes?.push(await codeOf(Promise.reject(e)));
      // 10 over gRPC; 'aborted' from a module called directly.
      if ((code !== 10 && (code as unknown) !== 'aborted') || attempt >= 200) throw e;
      await new Promise((r) => setTimeout(r, wait));
    }
  }
}

export async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'OK';
  } catch (e) {
    const code = (e as { code?: number }).code;
    const names = ['OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND', 'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', 'UNAUTHENTICATED'];
    if (typeof code === 'string') return (code as string).toUpperCase().replace(/-/g, '_'); // a domain error, called directly
    return code === undefined ? `thrown: ${(e as Error).message}` : names[code] ?? String(code);
  }
}

/**
 * The `;nqn` tail a node id built on this machine carries: nvme-cli writes
 * /etc/nvme/hostnqn when it is installed (the host and the VM guest have it),
 * and the node id gains it as its fourth field (src/contracts/nodeid.ts).
 */
export function hostNqnTail(): string {
  const nqn = readHostNqn('/etc/nvme/hostnqn');
  return nqn ? `;${nqn}` : '';
}
