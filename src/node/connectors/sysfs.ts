import { constants } from 'node:fs';
import { open, readdir, readFile, realpath, stat } from 'node:fs/promises';
import { basename, posix } from 'node:path';

/**
 * Rooted access to sysfs and /dev for the SAN connectors (fc, the kernel
 * iSCSI initiator) and the multipath helpers. The roots are configurable
 * (node.sysfsRoot, node.devRoot) so that tests can run every discovery,
 * scan and delete against a simulated tree whose block devices are real loop
 * devices. All paths handed to these methods are relative to the root; names
 * taken from the tree are checked before they become part of a path.
 */
export class SysfsTree {
  readonly sysRoot: string;
  readonly devRoot: string;

  constructor(
    sysRoot = '/sys',
    devRoot = '/dev',
    /**
     * Called after every attribute write (scan, delete, rescan) with the full
     * path and the value. The kernel reacts to these writes; a simulated tree
     * uses the hook to play the kernel's part.
     */
    private readonly afterWrite?: (path: string, value: string) => void | Promise<void>,
  ) {
    this.sysRoot = trimSlash(sysRoot);
    this.devRoot = trimSlash(devRoot);
  }

  sys(rel: string): string {
    return posix.join(this.sysRoot, rel);
  }

  dev(rel: string): string {
    return posix.join(this.devRoot, rel);
  }

  /** An attribute's value, trimmed; undefined when it does not exist (or cannot be read). */
  async read(rel: string): Promise<string | undefined> {
    try {
      return (await readFile(this.sys(rel), 'utf8')).trim();
    } catch {
      return undefined;
    }
  }

  /** Directory entries, sorted; [] when the directory does not exist. */
  async list(rel: string): Promise<string[]> {
    try {
      return (await readdir(this.sys(rel))).sort();
    } catch {
      return [];
    }
  }

  async exists(rel: string): Promise<boolean> {
    try {
      await stat(this.sys(rel));
      return true;
    } catch {
      return false;
    }
  }

  /** The last component of the real path a sysfs link leads to (e.g. block/sdb/device → "1:0:2:3"). */
  async linkName(rel: string): Promise<string | undefined> {
    try {
      return basename(await realpath(this.sys(rel)));
    } catch {
      return undefined;
    }
  }

  /**
   * The real path a sysfs path leads to, relative to the root (class/iscsi_session/session3/device →
   * "devices/platform/host2/session3"); undefined when it does not resolve inside the root.
   */
  async realPath(rel: string): Promise<string | undefined> {
    try {
      const [real, root] = await Promise.all([realpath(this.sys(rel)), realpath(this.sysRoot)]);
      const out = posix.relative(root, real);
      return out === '' || out.startsWith('..') ? undefined : out;
    } catch {
      return undefined;
    }
  }

  /**
   * Writes one attribute the way `echo value > attr` does, but never creates
   * a file: a missing attribute (a device already gone) is ENOENT.
   */
  async write(rel: string, value: string): Promise<void> {
    const path = this.sys(rel);
    const fh = await open(path, constants.O_WRONLY | constants.O_TRUNC);
    try {
      await fh.write(value);
    } finally {
      await fh.close();
    }
    await this.afterWrite?.(path, value);
  }

  /** Entries of a /dev directory (e.g. disk/by-path), sorted; [] when missing. */
  async listDev(rel: string): Promise<string[]> {
    try {
      return (await readdir(this.dev(rel))).sort();
    } catch {
      return [];
    }
  }

  /**
   * The kernel name a /dev link leads to (by-path/… → "sdb", mapper/x →
   * "dm-3"), only when it resolves to a node directly in the dev root.
   */
  async devTarget(rel: string): Promise<string | undefined> {
    try {
      const target = await realpath(this.dev(rel));
      const devReal = await realpath(this.devRoot);
      return posix.dirname(target) === devReal ? basename(target) : undefined;
    } catch {
      return undefined;
    }
  }

  async devExists(rel: string): Promise<boolean> {
    try {
      await stat(this.dev(rel));
      return true;
    } catch {
      return false;
    }
  }

  /**
   * The kernel block device name of a device path (/dev/sdb → "sdb",
   * /dev/mapper/mpatha → "dm-3"), if the path is a block device under the dev root.
   */
  async kernelName(devicePath: string): Promise<string | undefined> {
    try {
      const real = await realpath(devicePath);
      const devReal = await realpath(this.devRoot);
      if (posix.dirname(real) !== devReal) return undefined;
      const name = basename(real);
      return KERNEL_NAME_RE.test(name) ? name : undefined;
    } catch {
      return undefined;
    }
  }
}

/** A block device's kernel name as sysfs shows it: sdb, sdaa, dm-3, nvme0n1 … */
export const KERNEL_NAME_RE = /^[a-z][a-z0-9-]{0,31}$/;

function trimSlash(p: string): string {
  return p.length > 1 && p.endsWith('/') ? p.slice(0, -1) : p;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
