import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { failedPrecondition, internal } from '../../errors/domain-error.js';
import type { DaemonSpawner, Executor } from '../../exec/run.js';
import { poll } from '../../util/poll.js';
import { LoopDevices } from '../loop-device.js';
import { livePid, readTail, stopPid, waitReady } from './iscsi/daemon-process.js';

/**
 * The user-space attach chain, for hosts without the kernel's initiator for
 * a transport (iscsi_tcp, rbd.ko, nbd.ko):
 *
 *   qemu-nbd (its block driver: iscsi, rbd …)  ──unix socket──►  nbdfuse (FUSE file)
 *       ──►  losetup (a real /dev/loopN)
 *
 * One attachment is one directory: qemu-nbd.pid, nbdfuse.pid, nbd.sock,
 * mnt/disk (the FUSE file) and the daemons' logs. The caller starts
 * qemu-nbd (its driver options are the transport's business); this class
 * does the rest and takes it all down again, re-inspecting what really runs
 * (pids, mount, the loop device whose backing file is mnt/disk), so both
 * directions are idempotent and survive a restart of the node plugin.
 */
export class NbdFuseChain {
  readonly loops: LoopDevices;

  constructor(
    private readonly exec: Executor & DaemonSpawner,
    private readonly opts: { procRoot: string; sysfsRoot: string; loginTimeoutMs: number; stopTimeoutMs: number; directIo: boolean; what: string },
    private readonly log?: Logger,
  ) {
    this.loops = new LoopDevices(exec, join(opts.sysfsRoot, 'block'));
  }

  /** nbdfuse over dir/nbd.sock, its file at dir/mnt/disk; `what` names the volume in an error. */
  async startNbdfuse(dir: string, what: string): Promise<void> {
    const pidFile = join(dir, 'nbdfuse.pid');
    await fs.rm(pidFile, { force: true });
    const log = join(dir, 'nbdfuse.log');
    await fs.rm(log, { force: true });
    const d = await this.exec.spawnDaemon('nbdfuse', ['-P', pidFile, join(dir, 'mnt', 'disk'), '--unix', join(dir, 'nbd.sock')], { logFile: log });
    const ok = await waitReady(pidFile, d.exited, this.opts.loginTimeoutMs);
    if (ok !== 'ready') {
      if (ok === 'timeout') await stopPid(this.opts.procRoot, d.pid, dir, this.opts.stopTimeoutMs);
      throw internal(`nbdfuse did not expose ${what} as a file${ok === 'timeout' ? ' in time' : ''}: ${(await readTail(log)).trim().split('\n').slice(-2).join(' | ') || 'no output'}`);
    }
  }

  /** The loop device over the FUSE file: looked for and made under the host's one losetup lock. */
  async attachLoop(dir: string, what: string): Promise<string> {
    const file = join(dir, 'mnt', 'disk');
    return this.loops.exclusive(async () => {
      const existing = await this.loops.backedBy(file);
      if (existing) return existing;
      return this.loops.attachLocked(file, `attaching ${what}'s file as a loop device`, { directIo: this.opts.directIo });
    });
  }

  /** What of an attachment really exists; undefined when its directory does not. */
  async inspect(dir: string): Promise<{ qemuNbdPid?: number; nbdfusePid?: number; mounted: boolean; devicePath?: string } | undefined> {
    try {
      await fs.access(dir);
    } catch {
      return undefined;
    }
    const qemuNbdPid = await livePid(this.opts.procRoot, join(dir, 'qemu-nbd.pid'), dir);
    const nbdfusePid = await livePid(this.opts.procRoot, join(dir, 'nbdfuse.pid'), dir);
    const mounted = await this.isMounted(join(dir, 'mnt'));
    const devicePath = await this.loopFor(join(dir, 'mnt', 'disk'));
    return { qemuNbdPid, nbdfusePid, mounted, devicePath };
  }

  /** Whether both daemons run, from pid files and /proc only (no command). */
  async daemons(dir: string): Promise<{ qemuNbd: boolean; nbdfuse: boolean }> {
    const [qemuNbd, nbdfuse] = await Promise.all([livePid(this.opts.procRoot, join(dir, 'qemu-nbd.pid'), dir), livePid(this.opts.procRoot, join(dir, 'nbdfuse.pid'), dir)]);
    return { qemuNbd: qemuNbd !== undefined, nbdfuse: nbdfuse !== undefined };
  }

  async isMounted(path: string): Promise<boolean> {
    const r = await this.exec.run('mountpoint', ['-q', path], { okExitCodes: [1, 32] });
    return r.exitCode === 0;
  }

  loopFor(file: string): Promise<string | undefined> {
    return this.loops.backedBy(file);
  }

  /** loop → FUSE → nbdfuse → qemu-nbd → directory; each step skipped when already gone. */
  async teardown(dir: string): Promise<void> {
    try {
      await fs.access(dir);
    } catch {
      return;
    }
    const file = join(dir, 'mnt', 'disk');
    const loop = await this.loopFor(file);
    if (loop) {
      await this.exec.run('blockdev', ['--flushbufs', loop]).catch((e) => this.log?.warn({ loop, err: (e as Error).message }, 'flush before detach failed'));
      await this.loops.detach(loop, `detaching ${loop}`);
      // A device still open (mounted, or briefly by udev's probe) is only marked for auto-clear; do not pull the file from under it.
      // Watch that one device (a udev probe ends within milliseconds), then check no other device took the file.
      await poll(async () => ((await this.loops.backingFile(loop)) === file ? undefined : true), { initialMs: 5, maxMs: 100, factor: 1.5, timeoutMs: this.opts.stopTimeoutMs });
      if (await this.loopFor(file)) throw failedPrecondition(`${loop} is still in use (mounted or open); unmount it before detaching ${this.opts.what}`);
    }
    // Unmount straight away; only a refusal is worth asking whether anything is mounted there.
    const mnt = join(dir, 'mnt');
    let refused: unknown;
    await poll(
      async () => {
        try {
          await this.exec.run('fusermount3', ['-u', mnt]);
        } catch (e) {
          if (await this.isMounted(mnt)) throw (refused = e);
        }
        return true;
      },
      { initialMs: 100, maxMs: 100, factor: 1, maxAttempts: 20, retryOn: (e) => e === refused },
    );
    const fusePid = await livePid(this.opts.procRoot, join(dir, 'nbdfuse.pid'), dir);
    if (fusePid) await stopPid(this.opts.procRoot, fusePid, dir, this.opts.stopTimeoutMs, 2000);
    const qemuPid = await livePid(this.opts.procRoot, join(dir, 'qemu-nbd.pid'), dir);
    if (qemuPid) await stopPid(this.opts.procRoot, qemuPid, dir, this.opts.stopTimeoutMs);
    await fs.rm(dir, { recursive: true, force: true });
    this.log?.info({ dir, what: this.opts.what }, 'user-space attachment detached');
  }
}
