import { KERNEL_NAME_RE, type SysfsTree } from './sysfs.js';
import { poll, realClock, type Clock } from '../../util/poll.js';

/** A SCSI address as the kernel writes it: host:channel:target:lun. */
export interface Hctl {
  host: number;
  channel: number;
  target: number;
  lun: number;
}

const HCTL_RE = /^(\d{1,6}):(\d{1,6}):(\d{1,9}):(\d{1,20})$/;

export function parseHctl(s: string | undefined): Hctl | undefined {
  const m = s === undefined ? null : HCTL_RE.exec(s);
  if (!m) return undefined;
  const [host, channel, target, lun] = [m[1], m[2], m[3], m[4]].map(Number) as [number, number, number, number];
  if (!Number.isSafeInteger(lun)) return undefined;
  return { host, channel, target, lun };
}

export const hctlString = (h: Hctl) => `${h.host}:${h.channel}:${h.target}:${h.lun}`;

/**
 * The LUN part of a /dev/disk/by-path name, as udev's path_id writes it:
 * `lun-3` below 256, the 64-bit SAM form above (`lun-0x0100000000000000`
 * style, low and high 16-bit words first).
 */
export function byPathLun(lun: number): string {
  if (lun < 256) return `lun-${lun}`;
  const lo = (lun & 0xffff).toString(16).padStart(4, '0');
  const hi = (Math.floor(lun / 0x10000) & 0xffff).toString(16).padStart(4, '0');
  return `lun-0x${lo}${hi}00000000`;
}

/**
 * SCSI disks through sysfs: which disk sits at an address, its WWID and
 * state, and the three writes the kernel offers: scan a host for one
 * channel/target/LUN, rescan a disk's capacity, delete a disk. Shared by the
 * fc and kernel-iSCSI connectors.
 */
export class ScsiDisks {
  constructor(
    private readonly sysfs: SysfsTree,
    private readonly clock: Clock = realClock,
  ) {}

  /** The address of a disk (block/<disk>/device → …/H:C:T:L). */
  async hctlOf(disk: string): Promise<Hctl | undefined> {
    if (!KERNEL_NAME_RE.test(disk)) return undefined;
    return parseHctl(await this.sysfs.linkName(`block/${disk}/device`));
  }

  /** The disk at an address, if the kernel has one there. */
  async diskAt(h: Hctl): Promise<string | undefined> {
    const names = await this.sysfs.list(`bus/scsi/devices/${hctlString(h)}/block`);
    return names.find((n) => KERNEL_NAME_RE.test(n));
  }

  async wwid(disk: string): Promise<string | undefined> {
    return this.sysfs.read(`block/${disk}/device/wwid`);
  }

  async state(disk: string): Promise<string | undefined> {
    return this.sysfs.read(`block/${disk}/device/state`);
  }

  async holders(disk: string): Promise<string[]> {
    return (await this.sysfs.list(`block/${disk}/holders`)).filter((n) => KERNEL_NAME_RE.test(n));
  }

  async exists(disk: string): Promise<boolean> {
    return this.sysfs.exists(`block/${disk}`);
  }

  /** Asks host `h.host` to probe exactly one channel/target/LUN (`echo "C T L" > scsi_host/hostN/scan`). */
  async scan(h: Hctl): Promise<void> {
    await this.sysfs.write(`class/scsi_host/host${h.host}/scan`, `${h.channel} ${h.target} ${h.lun}`);
  }

  /** Makes the kernel re-read the disk's capacity. */
  async rescan(disk: string): Promise<void> {
    await this.sysfs.write(`block/${disk}/device/rescan`, '1');
  }

  /** Removes the disk from the kernel; false when it was already gone. */
  async delete(disk: string): Promise<boolean> {
    try {
      await this.sysfs.write(`block/${disk}/device/delete`, '1');
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT' && !(await this.exists(disk))) return false;
      throw e;
    }
  }

  /** Waits until none of the disks exist any more; returns those still there at the deadline. */
  async waitGone(disks: string[], timeoutMs: number): Promise<string[]> {
    let left = disks;
    await poll(
      async () => {
        const still: string[] = [];
        for (const d of left) if (await this.exists(d)) still.push(d);
        left = still;
        return left.length === 0 ? true : undefined;
      },
      { initialMs: 25, maxMs: 500, minSleepMs: 1, timeoutMs, clock: this.clock },
    );
    return left;
  }
}
