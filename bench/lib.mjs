// Shared plumbing for the benchmarks: statistics, starting sinter and the
// floor server, the durable-write helpers the floors use, and cleanup that
// runs however the run ends.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { promises as fs } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir, loadavg } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { csiClient } from '../dist/csi/client.js';
import { HostExecutor } from '../dist/exec/run.js';

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;
export const MAIN = process.env.BENCH_MAIN ?? fileURLToPath(new URL('../dist/bundle/main.mjs', import.meta.url));
export const FLOOR_SERVER = fileURLToPath(new URL('./floor-server.mjs', import.meta.url));

/** The same door sinter uses to start host commands (its command runner, same options), for the raw sequences. */
export const hostExec = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 120_000 });

// ---------------------------------------------------------------- statistics

export function percentile(values, q) {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1));
  return s[i];
}
export const median = (v) => percentile(v, 0.5);
export const p99 = (v) => percentile(v, 0.99);
export const spread = (v) => ({ min: Math.min(...v), max: Math.max(...v) });

/** Times an async function in milliseconds. */
export async function timed(fn) {
  const t = performance.now();
  const out = await fn();
  return { ms: performance.now() - t, out };
}

/** Runs `total` jobs with `concurrency` workers; returns each job's latency (ms) and the wall time (ms). */
export async function pool(concurrency, total, job) {
  const lat = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: Math.min(concurrency, total) }, async () => {
      while (next < total) {
        const i = next++;
        const t = performance.now();
        await job(i);
        lat.push(performance.now() - t);
      }
    }),
  );
  return { lat, wallMs: performance.now() - t0 };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** CPU time (user + system, ms) a process and its command runner have used so far. */
export function cpuOf(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  // USER_HZ is 100 on Linux; the command runner forks the process's host commands, so its CPU is the process's.
  return (Number(f[11]) + Number(f[12])) * (1000 / 100) + runnerCpuMs(pid);
}

/** The kernel's CPU pressure (share of time some task waited for a CPU, last 60 s), if available. */
export function cpuPressure() {
  try {
    return Number(/some avg10=[\d.]+ avg60=([\d.]+)/.exec(readFileSync('/proc/pressure/cpu', 'utf8'))?.[1]);
  } catch {
    return undefined;
  }
}

export function rssOf(pid) {
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

export const load = () => loadavg()[0];

// ---------------------------------------------------------------- cleanup

export const base = mkdtempSync(join(tmpdir(), 'sinter-bench-'));
const children = new Set();
const hooks = [];
let cleaned = false;

/** Registers a cleanup step that cleanupAll runs (newest first) before it kills children and scrubs base; returns an unregister function. */
export function onCleanup(fn) {
  hooks.push(fn);
  return () => {
    const i = hooks.indexOf(fn);
    if (i >= 0) hooks.splice(i, 1);
  };
}

/** Unmounts everything under dir (deepest first) and detaches loop devices backed by files under it. */
export async function scrub(dir) {
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4]?.replace(/\\040/g, ' '))
    .filter((m) => !!m && (m === dir || m.startsWith(`${dir}/`)))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) await hostExec.run('umount', ['-l', m]).catch(() => undefined);
  const loops = await hostExec.run('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE']).catch(() => ({ stdout: '' }));
  for (const line of loops.stdout.split('\n')) {
    const [dev, ...rest] = line.trim().split(/\s+/);
    const back = rest.join(' ').replace(/ \(deleted\)$/, '');
    if (dev && back.startsWith(`${dir}/`)) await hostExec.run('losetup', ['-d', dev]).catch(() => undefined);
  }
}

/** Kills every child still running, unmounts and detaches whatever the run left under base, removes base. */
export async function cleanupAll() {
  if (cleaned) return;
  cleaned = true;
  for (const fn of hooks.splice(0).reverse()) {
    try {
      await fn();
    } catch (e) {
      process.stderr.write(`bench: cleanup step failed: ${e?.stack ?? e}\n`);
    }
  }
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }
  await scrub(base);
  rmSync(base, { recursive: true, force: true });
}

// `on`, not `once`: execa's signal-exit re-raises a signal when no listener but
// its own is left, which killed the process before the cleanup had run.
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    process.stderr.write(`\nbench: ${sig}, cleaning up ${base}\n`);
    cleanupAll().finally(() => process.exit(130));
  });
}
for (const ev of ['uncaughtException', 'unhandledRejection']) {
  process.once(ev, (e) => {
    process.stderr.write(`\nbench: ${ev}: ${e?.stack ?? e}; cleaning up ${base}\n`);
    cleanupAll().finally(() => process.exit(1));
  });
}

// ---------------------------------------------------------------- processes

export function track(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

let seq = 0;

/** Polls until a Probe on `client` answers ready; returns ms since t0. */
/** Polls until a Probe on `client` answers ready; returns ms since t0 and the process's CPU time by then. */
async function untilReady(child, socket, client, t0, what, timeoutMs = 60_000) {
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${what} exited (${child.exitCode ?? child.signalCode}) before answering Probe`);
    if (performance.now() - t0 > timeoutMs) throw new Error(`${what} did not answer Probe within ${timeoutMs} ms`);
    if (existsSync(socket)) {
      const r = await client.identity.Probe({}, { deadlineMs: 1000 }).catch(() => undefined);
      if (r?.ready?.value === true) return { ms: performance.now() - t0, cpuMs: cpuOf(child.pid) };
    }
    await sleep(2);
  }
}

function stopper(child, client) {
  return async (signal = 'SIGTERM') => {
    client.close();
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill(signal);
      const t = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(t);
    }
  };
}

/**
 * Starts `sinter <role>` with a file backend in dataDir (thin-provisioned,
 * over-subscription 1000, so 10,000 × 1 GiB fits), its log at the default
 * level (info) going to a file, as a container runtime would keep it.
 * `config` (YAML text) replaces that default configuration.
 */
export async function startSinter({ role = 'all', dataDir, dir = join(base, `sinter-${++seq}`), args = [], config: configText, readyTimeoutMs } = {}) {
  mkdirSync(dir, { recursive: true });
  const socket = join(dir, 'csi.sock');
  const kubeletRoot = join(dir, 'kubelet');
  mkdirSync(kubeletRoot, { recursive: true });
  const config = join(dir, 'config.yaml');
  writeFileSync(config, configText ?? `backends:\n  - name: default\n    dataDir: ${dataDir ?? join(dir, 'data')}\n    overSubscriptionRatio: 1000\n`);
  const logFile = join(dir, 'sinter.log');
  const logFd = openSync(logFile, 'a');
  const t0 = performance.now();
  const child = track(
    spawn('node', [...args, ...(process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean), MAIN, role, '--endpoint', `unix://${socket}`, '--config', config, '--kubelet-root', kubeletRoot, '--node-name', 'bench-node', '--log-level', process.env.BENCH_LOG_LEVEL ?? 'info'], {
      stdio: ['ignore', 'ignore', logFd],
    }),
  );
  closeSync(logFd);
  const client = csiClient(`unix://${socket}`);
  let ready;
  try {
    ready = await untilReady(child, socket, client, t0, `sinter ${role}`, readyTimeoutMs);
  } catch (e) {
    child.kill('SIGKILL');
    client.close();
    throw new Error(`${e.message}; log tail: ${readFileSync(logFile, 'utf8').slice(-600)}`);
  }
  return { dir, socket, kubeletRoot, dataDir: dataDir ?? join(dir, 'data'), logFile, child, pid: child.pid, client, startupMs: ready.ms, startupCpuMs: ready.cpuMs, rss: () => rssOf(child.pid), cpu: () => cpuOf(child.pid), stop: stopper(child, client) };
}

/** Starts the floor: a bare @grpc/grpc-js server with the same proto and loader, answering canned replies. */
export async function startFloorServer() {
  const dir = join(base, `floor-${++seq}`);
  mkdirSync(dir, { recursive: true });
  const socket = join(dir, 'floor.sock');
  const t0 = performance.now();
  const child = track(spawn('node', [FLOOR_SERVER, `unix://${socket}`], { stdio: ['ignore', 'ignore', 'inherit'] }));
  const client = csiClient(`unix://${socket}`);
  const ready = await untilReady(child, socket, client, t0, 'floor server');
  return { socket, child, pid: child.pid, client, startupMs: ready.ms, startupCpuMs: ready.cpuMs, rss: () => rssOf(child.pid), cpu: () => cpuOf(child.pid), stop: stopper(child, client) };
}

/** Runs a node one-liner to completion; ms from spawn to exit. */
export async function nodeStartup(args = ['-e', '']) {
  const t0 = performance.now();
  const child = track(spawn('node', args, { stdio: 'ignore' }));
  await new Promise((r) => child.once('exit', r));
  return performance.now() - t0;
}

// ---------------------------------------------------------------- durable writes (the floors)

export async function fsyncDir(dir) {
  const dh = await fs.open(dir, 'r');
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

/** A directory opened once, for fsyncs after renames and unlinks in it (what sinter's record stores do). */
export async function openDir(path) {
  const fh = await fs.open(path, 'r');
  return { path, sync: () => fh.sync(), close: () => fh.close() };
}

/**
 * temp file + write + fsync + rename + directory fsync: the discipline sinter's records follow.
 * Written here again on purpose: this is the raw floor sinter is measured against, so it must not be sinter's own code.
 */
export async function writeFileAtomic(path, data, dirHandle) {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${randomBytes(4).toString('hex')}.tmp`);
  const fh = await fs.open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fs.rename(tmp, path);
  await (dirHandle ? dirHandle.sync() : fsyncDir(dir));
}

export async function removeFileDurable(path, dirHandle) {
  await fs.unlink(path);
  await (dirHandle ? dirHandle.sync() : fsyncDir(dirname(path)));
}

/** A sparse image of `size` bytes, created exclusively and fsynced. */
export async function sparseImage(path, size) {
  const fh = await fs.open(path, 'wx', 0o600);
  try {
    await fh.truncate(size);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function fsyncFile(path) {
  const fh = await fs.open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export function freshDir(name) {
  const d = join(base, name);
  rmSync(d, { recursive: true, force: true });
  mkdirSync(d, { recursive: true });
  return d;
}

// ---------------------------------------------------------------- CSI shapes

export const mountCap = (fsType = 'ext4') => ({ mount: { fs_type: fsType, mount_flags: [] }, access_mode: { mode: 'SINGLE_NODE_WRITER' } });

/**
 * CPU time (ms) of all of a process's threads so far, from each thread's schedstat (ns): the main thread, libuv's
 * pool (file reads such as /proc/self/mountinfo, whose rendering by the kernel grows with the mounts) and V8's
 * helpers. Summed per thread since /proc/PID/stat counts in 10 ms ticks.
 */
/**
 * CPU ms of the command runner (src/exec/command_runner.pl) that process
 * `pid` started, 0 if it has none: the forks of host commands are its CPU
 * now, not the process's, and a CPU figure leaves them out at its peril.
 */
export function runnerCpuMs(pid) {
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    let kids = [];
    try {
      kids = readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
    } catch {
      continue;
    }
    for (const k of kids) {
      try {
        if (!readFileSync(`/proc/${k}/cmdline`, 'utf8').includes('command_runner.pl')) continue;
        return Number(readFileSync(`/proc/${k}/schedstat`, 'utf8').split(' ')[0]) / 1e6;
      } catch {
        // a child that ended meanwhile
      }
    }
  }
  return 0;
}

export function threadsCpuMs(pid) {
  let ns = 0;
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // a thread that ended meanwhile
    }
  }
  return ns / 1e6;
}
