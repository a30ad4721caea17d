import { basename } from 'node:path';
import type { Executor } from '../exec/run.js';
import { LOOP_DEV_RE, LoopDevices } from './loop-device.js';
import type { MountSnapshot } from './mount.js';

/**
 * A read-only bind mount does not stop writes through a device node, so a
 * block volume published read-only is exposed through a read-only loop device
 * layered on the staged device; the kernel then refuses every write. One such
 * view per device, shared by all its read-only publishes and found again by
 * asking losetup, so a crash between attaching and recording leaks nothing.
 */
export class ReadOnlyBlock {
  private readonly loops: LoopDevices;

  constructor(exec: Executor, sysBlock = '/sys/block') {
    this.loops = new LoopDevices(exec, sysBlock);
  }

  /** Read-only loop devices currently layered on device. */
  async views(device: string): Promise<string[]> {
    return (await this.loops.associated(device, `listing read-only views of ${device}`)).filter((l) => l.readOnly).map((l) => l.device);
  }

  /** The view of device: the existing one, else a new one (looked for and made under the host's losetup lock). */
  async attach(device: string): Promise<string> {
    return this.loops.exclusive(async () => {
      const existing = await this.views(device);
      if (existing[0]) return existing[0];
      return this.loops.attachLocked(device, `attaching a read-only view of ${device}`, { readOnly: true });
    });
  }

  /** Whether m is a bind of a read-only view (of any device): such mounts show /loopN of the /dev filesystem. */
  static isViewMount(m: { root: string; fsType: string }, view: string): boolean {
    return m.root === `/${basename(view)}` && (m.fsType === 'devtmpfs' || m.fsType === 'tmpfs');
  }

  /** Makes the read-only views of device see its new size (after the device itself was refreshed). */
  async refresh(device: string): Promise<void> {
    for (const view of await this.views(device)) await this.loops.refreshCapacity(view, `refreshing the capacity of the read-only view ${view}`);
  }

  /** Every loop device layered on another loop device, whoever made it: for the orphan report. */
  async layered(): Promise<{ view: string; device: string }[]> {
    return (await this.loops.list())
      .filter((l) => LOOP_DEV_RE.test(l.device) && LOOP_DEV_RE.test(l.backingFile))
      .map((l) => ({ view: l.device, device: l.backingFile }));
  }

  /** Detaches one view of device if it is still that and no mount uses it; true if it did. */
  async detachUnused(view: string, device: string, snap: MountSnapshot): Promise<boolean> {
    if (!LOOP_DEV_RE.test(view)) return false;
    return this.loops.exclusive(async () => {
      if ((await this.loops.backingFile(view)) !== device) return false;
      if (snap.entries.some((m) => ReadOnlyBlock.isViewMount(m, view))) return false;
      return this.loops.detachLocked(view, `detaching the read-only view ${view}`);
    });
  }

  /** Detaches the views of device that no mount uses any more. */
  async release(device: string, snap: MountSnapshot): Promise<void> {
    for (const view of await this.views(device)) await this.detachUnused(view, device, snap);
  }
}
