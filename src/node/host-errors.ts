import { Code, DomainError, failedPrecondition, internal } from '../errors/domain-error.js';
import { ExecError } from '../exec/run.js';

/** Known packages for the commands the node runs, for "not installed" messages. */
const PACKAGES: Record<string, string> = {
  'mkfs.xfs': 'xfsprogs',
  xfs_growfs: 'xfsprogs',
  'mkfs.btrfs': 'btrfs-progs',
  btrfs: 'btrfs-progs',
  'mkfs.ext4': 'e2fsprogs',
  resize2fs: 'e2fsprogs',
  losetup: 'util-linux',
  blkid: 'util-linux',
  blockdev: 'util-linux',
  mount: 'util-linux (mount)',
  umount: 'util-linux (mount)',
  multipath: 'multipath-tools',
  cryptsetup: 'cryptsetup-bin',
  multipathd: 'multipath-tools',
};

function firstLine(s: string): string {
  return s.split('\n')[0] ?? '';
}

/**
 * Turns a failed host command into a one-line DomainError that says what the
 * node was doing, which command failed and why. DomainErrors pass through.
 */
export function toHostError(what: string, e: unknown): DomainError {
  if (e instanceof DomainError) return e;
  if (e instanceof ExecError) {
    const cmd = e.command.split(' ')[0] ?? e.command;
    if (e.exitCode === undefined && /ENOENT|not found/i.test(e.stderr)) {
      const pkg = PACKAGES[cmd];
      return failedPrecondition(`${what} failed: ${cmd} is not installed on this node${pkg ? ` (install ${pkg})` : ''}`);
    }
    if (e.timedOut) return new DomainError(Code.DEADLINE_EXCEEDED, `${what} failed: ${e.command} timed out; retry, and check the node's kernel log if it keeps happening`);
    return internal(`${what} failed: ${e.message}`);
  }
  const err = e as NodeJS.ErrnoException;
  if (err && typeof err === 'object' && typeof err.code === 'string') return internal(`${what} failed: ${err.code}: ${firstLine(err.message)}`);
  return internal(`${what} failed: ${firstLine(e instanceof Error ? e.message : String(e))}`);
}

export async function hostCommand<T>(what: string, p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (e) {
    throw toHostError(what, e);
  }
}

/** Same, for a block of work (file system calls, several commands). */
export async function doing<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw toHostError(what, e);
  }
}
