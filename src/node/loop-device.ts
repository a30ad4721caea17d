import { readdir, readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { KeyedLock } from '../csi/locks.js';
import type { Executor } from '../exec/run.js';
import { hostCommand, toHostError } from './host-errors.js';

export const LOOP_DEV_RE = /^\/dev\/loop\d+$/;

/**
 * `losetup --find` picks a free device and then claims it: two at once can
 * race for the same one. The local transport, the read-only block views and
 * the user-space iSCSI initiator all make loop devices on one host, so they
 * share this one lock (per process: one node plugin per host).
 */
const HOST_LOCK = new KeyedLock();

export interface AttachOptions {
  readOnly?: boolean;
  directIo?: boolean;
}

/** The node's loop devices: the one place that runs losetup. */
export class LoopDevices {
  constructor(
    private readonly exec: Executor,
    private readonly sysBlock = '/sys/block',
  ) {}

  /** Runs fn holding the host's losetup lock: a look-then-attach or look-then-detach is then one step. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return HOST_LOCK.run('losetup', fn);
  }

  /** `losetup --find --show`: a new loop device over `file`. Only inside exclusive(). */
  async attachLocked(file: string, what: string, opts: AttachOptions = {}): Promise<string> {
    const args = ['--find', '--show'];
    if (opts.readOnly) args.push('--read-only');
    if (opts.directIo) args.push('--direct-io=on');
    args.push(file);
    const res = await hostCommand(what, this.exec.run('losetup', args));
    const dev = res.stdout.trim().split('\n').pop() ?? '';
    if (!LOOP_DEV_RE.test(dev)) throw new Error(`losetup --find --show printed ${JSON.stringify(dev)}, not a loop device`);
    return dev;
  }

  /** A new loop device over `file`, under the lock. */
  attach(file: string, what: string, opts: AttachOptions = {}): Promise<string> {
    return this.exclusive(() => this.attachLocked(file, what, opts));
  }

  /** Detaches `device`; false when it was already gone. Only inside exclusive(). */
  async detachLocked(device: string, what: string): Promise<boolean> {
    try {
      await this.exec.run('losetup', ['--detach', device]);
      return true;
    } catch (e) {
      if ((await this.backingFile(device)) === undefined) return false; // detached meanwhile
      throw toHostError(what, e);
    }
  }

  detach(device: string, what: string): Promise<boolean> {
    return this.exclusive(() => this.detachLocked(device, what));
  }

  /** What backs `device` (sysfs), with " (deleted)" when its file was removed; undefined when not attached. */
  async backingFile(device: string): Promise<string | undefined> {
    try {
      return (await readFile(join(this.sysBlock, basename(device), 'loop', 'backing_file'), 'utf8')).trim();
    } catch {
      return undefined;
    }
  }

  /** The loop device backed by exactly `file`, from sysfs (no process started). */
  async backedBy(file: string): Promise<string | undefined> {
    let names: string[];
    try {
      names = (await readdir(this.sysBlock)).filter((n) => /^loop\d+$/.test(n));
    } catch {
      return undefined;
    }
    for (const n of names) if ((await this.backingFile(`/dev/${n}`)) === file) return `/dev/${n}`;
    return undefined;
  }

  /** `losetup --associated`: loop devices over `file` (by inode, so a re-created file is a different one), with their read-only flag. */
  async associated(file: string, what: string): Promise<{ device: string; readOnly: boolean }[]> {
    const res = await hostCommand(what, this.exec.run('losetup', ['--list', '--noheadings', '--output', 'NAME,RO', '--associated', file]));
    return res.stdout
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter(([name]) => name !== undefined && LOOP_DEV_RE.test(name))
      .map(([name, ro]) => ({ device: name!, readOnly: ro === '1' }));
  }

  /** Every loop device and its backing file (" (deleted)" stripped). */
  async list(): Promise<{ device: string; backingFile: string }[]> {
    const res = await hostCommand('listing loop devices', this.exec.run('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE']));
    if (!res.stdout.trim()) return [];
    const parsed = JSON.parse(res.stdout) as { loopdevices?: { name: string; 'back-file'?: string | null }[] };
    return (parsed.loopdevices ?? []).map((l) => ({ device: l.name, backingFile: (l['back-file'] ?? '').replace(/ \(deleted\)$/, '') }));
  }

  /** Makes `device` see its file's new size. */
  async refreshCapacity(device: string, what: string): Promise<void> {
    await hostCommand(what, this.exec.run('losetup', ['--set-capacity', device]));
  }
}
