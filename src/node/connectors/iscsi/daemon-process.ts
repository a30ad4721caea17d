import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { unavailable } from '../../../errors/domain-error.js';
import { poll } from '../../../util/poll.js';

// The user-space initiator's daemons (qemu-nbd, nbdfuse) seen as processes:
// pid files, liveness (the process is alive and its command line names our
// directory), and a stop that escalates from SIGTERM to SIGKILL.

/** Waits for a pid file (ready), the daemon's exit, or the timeout. */
export async function waitReady(pidFile: string, exited: Promise<unknown>, timeoutMs: number): Promise<'ready' | 'exited' | 'timeout'> {
  let gone = false;
  void exited.then(() => (gone = true));
  // A local login takes tens of milliseconds: look often at first (a pid file is one small read), back off to 100 ms.
  const r = await poll<'ready' | 'exited'>(
    async () => {
      if (await readPid(pidFile)) return 'ready';
      if (gone) return (await readPid(pidFile)) ? 'ready' : 'exited';
      return undefined;
    },
    { initialMs: 5, maxMs: 100, factor: 1.5, timeoutMs },
  );
  return r ?? 'timeout';
}

/** The pid in a pid file when that process is alive and is ours (its command line names our directory). */
export async function livePid(procRoot: string, pidFile: string, dir: string): Promise<number | undefined> {
  const pid = await readPid(pidFile);
  if (!pid) return undefined;
  try {
    const cmdline = await fs.readFile(join(procRoot, String(pid), 'cmdline'), 'utf8');
    const stat = await fs.readFile(join(procRoot, String(pid), 'stat'), 'utf8');
    if (/\)\s+Z\s/.test(stat)) return undefined; // a zombie is gone for our purposes
    return cmdline.includes(dir) ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * SIGTERM, wait, SIGKILL. qemu-nbd ignores SIGTERM while libiscsi is
 * reconnecting (e.g. after the target fenced it), hence the hard stop.
 * `waitFirstMs`: time to exit on its own before SIGTERM (nbdfuse exits after unmount).
 */
export async function stopPid(procRoot: string, pid: number, dir: string, stopTimeoutMs: number, waitFirstMs = 0): Promise<void> {
  const alive = async () => {
    try {
      const stat = await fs.readFile(join(procRoot, String(pid), 'stat'), 'utf8');
      if (/\)\s+Z\s/.test(stat)) return false;
      const cmdline = await fs.readFile(join(procRoot, String(pid), 'cmdline'), 'utf8');
      return cmdline.includes(dir);
    } catch {
      return false;
    }
  };
  // These exit within milliseconds when they exit at all: poll often at first, back off to 50 ms.
  const waitGone = async (ms: number) => (await poll(async () => ((await alive()) ? undefined : true), { initialMs: 2, maxMs: 50, factor: 1.5, timeoutMs: ms })) ?? false;
  if (waitFirstMs > 0 && (await waitGone(waitFirstMs))) return;
  if (!(await alive())) return;
  signal(pid, 'SIGTERM');
  if (await waitGone(stopTimeoutMs / 2)) return;
  signal(pid, 'SIGKILL');
  if (!(await waitGone(stopTimeoutMs / 2))) throw unavailable(`process ${pid} did not exit after SIGKILL`);
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
  }
}

export async function readPid(file: string): Promise<number | undefined> {
  try {
    const n = Number((await fs.readFile(file, 'utf8')).trim());
    return Number.isInteger(n) && n > 1 ? n : undefined;
  } catch {
    return undefined;
  }
}

export async function readTail(file: string): Promise<string> {
  try {
    const s = await fs.readFile(file, 'utf8');
    return s.slice(-4000);
  } catch {
    return '';
  }
}
