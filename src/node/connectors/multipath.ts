import type { Logger } from 'pino';
import { Code, DomainError, failedPrecondition } from '../../errors/domain-error.js';
import { ExecError, type Executor } from '../../exec/run.js';
import { doing, toHostError } from '../host-errors.js';
import { deviceMountPoint } from '../mount.js';
import type { ScsiDisks } from './scsi.js';
import { KERNEL_NAME_RE, sleep, type SysfsTree } from './sysfs.js';

/** A device-mapper multipath map and the SCSI paths under it. */
export interface MultipathMap {
  /** Kernel name, e.g. dm-3. */
  dm: string;
  /** Map name (dm/name): the WWID or an alias such as mpatha. */
  name: string;
  /** The WWID multipathd keyed the map by (dm/uuid without its "mpath-" prefix). */
  wwid: string;
  /** Kernel names of the path devices (slaves), e.g. sdb, sdc. */
  slaves: string[];
}

/** What a set of paths to one LUN resolves to. */
export type PathChoice = { kind: 'map'; map: MultipathMap; device: string | undefined } | { kind: 'paths' };

/**
 * The hex digits that identify a LUN, whichever way it is written: sysfs
 * device/wwid says `naa.600a0b80…` (or `eui.…`, `t10.…`), multipath's WWID
 * (scsi_id) says `3600a0b80…` (2 = EUI-64, 3 = NAA), dm/uuid `mpath-3600a…`.
 */
export function normalizeWwid(raw: string): string {
  let s = raw.trim().toLowerCase().replace(/^mpath-/, '');
  const m = /^(naa|eui|t10)\.(.*)$/.exec(s);
  if (m) return m[1] === 't10' ? `t10.${m[2]!}` : m[2]!.replace(/[^0-9a-f]/g, '');
  if (/^[23][0-9a-f]+$/.test(s)) s = s.slice(1);
  return s;
}

export interface MultipathOptions {
  /** `multipath -f` tries (a map just unmounted can be busy for a moment). */
  flushTries?: number;
  flushRetryMs?: number;
  /** Mount table for the in-use check before anything is removed; default /proc/self/mountinfo. */
  mountInfoPath?: string;
}

/**
 * Multipath (dm-multipath) handling shared by the SAN connectors: find the
 * map that holds a LUN's paths (sysfs holders/slaves, checked against the
 * WWID), choose it over the paths, flush it, resize it. Paths themselves
 * are ScsiDisks' business.
 */
export class Multipath {
  private readonly flushTries: number;
  private readonly flushRetryMs: number;
  private readonly mountInfoPath: string;

  constructor(
    private readonly exec: Executor,
    private readonly sysfs: SysfsTree,
    private readonly disks: ScsiDisks,
    private readonly log?: Logger,
    opts: MultipathOptions = {},
  ) {
    this.flushTries = opts.flushTries ?? 5;
    this.flushRetryMs = opts.flushRetryMs ?? 1000;
    this.mountInfoPath = opts.mountInfoPath ?? '/proc/self/mountinfo';
  }

  /** The multipath map with this kernel name, or undefined when dm is not one (an LVM volume, a crypt device …) or is gone. */
  async map(dm: string): Promise<MultipathMap | undefined> {
    if (!/^dm-\d+$/.test(dm)) return undefined;
    const uuid = await this.sysfs.read(`block/${dm}/dm/uuid`);
    if (!uuid?.startsWith('mpath-')) return undefined;
    const name = (await this.sysfs.read(`block/${dm}/dm/name`)) ?? '';
    if (!/^[A-Za-z0-9._:+-]{1,128}$/.test(name)) return undefined;
    const slaves = (await this.sysfs.list(`block/${dm}/slaves`)).filter((s) => KERNEL_NAME_RE.test(s));
    return { dm, name, wwid: uuid.slice('mpath-'.length), slaves };
  }

  /**
   * Whether dm is a dm-crypt mapping (dm/uuid `CRYPT-…`, as cryptsetup names
   * them): an encrypted volume's decrypted view, opened by stage over the
   * LUN's device. It is a user of that device, as a mount is, not a layer of
   * the LUN's path stack: the LUN's device stays the path (or the map) under it.
   */
  async isCrypt(dm: string): Promise<boolean> {
    if (!/^dm-\d+$/.test(dm)) return false;
    return (await this.sysfs.read(`block/${dm}/dm/uuid`))?.startsWith('CRYPT-') ?? false;
  }

  /** The device node of a map: /dev/mapper/<name> when udev made it, else /dev/dm-N; undefined when neither exists yet. */
  async devicePath(map: MultipathMap): Promise<string | undefined> {
    if ((await this.sysfs.devTarget(`mapper/${map.name}`)) === map.dm) return this.sysfs.dev(`mapper/${map.name}`);
    if (await this.sysfs.devExists(map.dm)) return this.sysfs.dev(map.dm);
    return undefined;
  }

  /** The map a device path names (/dev/mapper/x or /dev/dm-N), if it is a multipath map. */
  async mapOfDevice(device: string): Promise<MultipathMap | undefined> {
    const name = await this.sysfs.kernelName(device);
    return name ? this.map(name) : undefined;
  }

  /**
   * Decides how a LUN reached through `paths` (all of one LUN) is used:
   * through the multipath map that holds them, or through the path itself
   * when no map holds it. Refuses paths held by anything that is not a
   * multipath map, paths in different maps, a map whose WWID is not the
   * LUN's, and paths that disagree about the WWID (a zoning or masking
   * mix-up: two LUNs, not two paths to one). One exception: a dm-crypt
   * mapping over the only path is that device's user (an encrypted volume
   * staged over it, met again by a retried or repeated stage), not a layer
   * of the LUN: the path is the LUN's device, and stage checks the mapping.
   */
  async choose(paths: string[], what: string): Promise<PathChoice> {
    const wwids = new Map<string, string>();
    for (const p of paths) {
      const w = await this.disks.wwid(p);
      if (w) wwids.set(p, normalizeWwid(w));
    }
    const distinct = new Set(wwids.values());
    if (distinct.size > 1)
      throw failedPrecondition(
        `${what}: its paths report different WWIDs (${[...wwids].map(([p, w]) => `${p}=${w}`).join(', ')}); they are different LUNs, check the LUN mapping on the array`,
      );
    const lunWwid = [...distinct][0];
    const maps = new Map<string, MultipathMap>();
    let crypt: string | undefined;
    for (const p of paths) {
      for (const h of await this.disks.holders(p)) {
        const m = await this.map(h);
        if (m) maps.set(m.dm, m);
        else if (paths.length === 1 && (await this.isCrypt(h))) crypt = h;
        else throw failedPrecondition(`${what}: path ${p} is held by ${h}, which is not a multipath map (LVM or another device-mapper user on the node?); sinter will not use it`);
      }
    }
    if (crypt && maps.size > 0)
      throw failedPrecondition(`${what}: path ${paths[0]} is held both by a multipath map and by the dm-crypt mapping ${crypt}; sinter will not use it`);
    if (maps.size > 1) throw failedPrecondition(`${what}: its paths are in different multipath maps (${[...maps.values()].map((m) => m.name).join(', ')})`);
    const map = [...maps.values()][0];
    if (!map) return { kind: 'paths' };
    if (lunWwid && normalizeWwid(map.wwid) !== lunWwid)
      throw failedPrecondition(`${what}: multipath map ${map.name} has WWID ${map.wwid}, but the LUN's is ${lunWwid}; check multipath's configuration`);
    return { kind: 'map', map, device: await this.devicePath(map) };
  }

  /** `blockdev --flushbufs` on a device; a device already gone is nothing to flush. */
  async flushBuffers(device: string): Promise<void> {
    try {
      await this.exec.run('blockdev', ['--flushbufs', device]);
    } catch (e) {
      if (e instanceof ExecError && /No such (file|device)/i.test(e.stderr)) return;
      throw toHostError(`flushing the buffers of ${device}`, e);
    }
  }

  /**
   * Flushes the map's buffers and removes it (`multipath -f`), retrying while
   * it is briefly busy. Success when the map is already gone.
   */
  async flush(map: MultipathMap): Promise<void> {
    const dev = await this.devicePath(map);
    if (dev) await this.flushBuffers(dev);
    for (let attempt = 1; ; attempt++) {
      if (!(await this.stillThere(map))) return;
      try {
        await this.exec.run('multipath', ['-f', map.name]);
        return;
      } catch (e) {
        if (!(await this.stillThere(map))) return;
        if (attempt >= this.flushTries) throw toHostError(`removing multipath map ${map.name} (${map.dm})`, e);
        this.log?.info({ map: map.name, attempt, err: (e as Error).message.split('\n')[0] }, 'multipath map busy; retrying the flush');
        await sleep(this.flushRetryMs);
      }
    }
  }

  /** Makes multipathd re-read the size of the map's paths (after each path was rescanned). */
  async resize(map: MultipathMap): Promise<void> {
    try {
      await this.exec.run('multipathd', ['resize', 'map', map.name]);
    } catch (e) {
      throw toHostError(`resizing multipath map ${map.name}`, e);
    }
  }

  /** Why a block device must not be removed (mounted, or held by something above it), if it must not. */
  async inUse(kernel: string, ignoreHolder?: string): Promise<string | undefined> {
    const holders = (await this.disks.holders(kernel)).filter((h) => h !== ignoreHolder);
    if (holders.length) {
      // dm-N alone names nothing a user recognises; its dm name (sinter-<volume>, vg-lv, a WWID) does.
      const named = await Promise.all(holders.map(async (h) => ((n) => (n ? `${h} (${n})` : h))(await this.sysfs.read(`block/${h}/dm/name`))));
      return `${kernel} is held by ${named.join(', ')}`;
    }
    const at = await deviceMountPoint(this.mountInfoPath, kernel, await this.sysfs.read(`block/${kernel}/dev`));
    return at !== undefined ? `${kernel} is mounted at ${at}` : undefined;
  }

  /**
   * Takes a LUN off the node: refuses (touching nothing) while the maps or
   * paths are mounted or held by anything else; then flushes and removes each
   * map, flushes each path's buffers, deletes each path and waits until the
   * kernel has let go of them. The caller has made sure every path is the LUN's.
   */
  async removeLun(maps: MultipathMap[], paths: string[], what: string, timeoutMs: number): Promise<void> {
    for (const m of maps) {
      const busy = await this.inUse(m.dm);
      if (busy) throw failedPrecondition(`${what} is still in use (${busy}); unmount it first`);
    }
    for (const disk of paths) {
      const holder = maps.find((m) => m.slaves.includes(disk))?.dm;
      const busy = await this.inUse(disk, holder);
      if (busy) throw failedPrecondition(`${what} is still in use (${busy}); unmount it first`);
    }
    for (const m of maps) await this.flush(m);
    for (const disk of paths) {
      // A path that already failed cannot be flushed; deleting it is still right (os-brick does the same).
      if (await this.sysfs.devExists(disk))
        await this.flushBuffers(this.sysfs.dev(disk)).catch((e: Error) => this.log?.warn({ device: disk, err: e.message }, 'flush before removing a SCSI path failed; removing it anyway'));
      await doing(`deleting path ${disk} of ${what}`, () => this.disks.delete(disk));
    }
    const left = await this.disks.waitGone(paths, timeoutMs);
    if (left.length)
      throw new DomainError(Code.DEADLINE_EXCEEDED, `${what}: path${left.length > 1 ? 's' : ''} ${left.join(', ')} still present ${timeoutMs / 1000}s after being deleted; retry`);
  }

  /** Makes the kernel see a grown LUN: rescan every path's capacity, then resize the map over them. */
  async growLun(map: MultipathMap | undefined, paths: string[], what: string): Promise<void> {
    for (const d of [...paths].sort()) await doing(`rescanning the capacity of ${d} (${what})`, () => this.disks.rescan(d));
    if (map) await this.resize(map);
  }

  /** Whether the same map (same dm name and WWID) still exists. */
  private async stillThere(map: MultipathMap): Promise<boolean> {
    const now = await this.map(map.dm);
    return now !== undefined && now.wwid === map.wwid;
  }
}
