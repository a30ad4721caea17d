import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import type { Executor } from '../exec/run.js';
import { hostCommand, toHostError } from './host-errors.js';
import type { MountSnapshot } from './mount.js';

const LOOP_DEV_RE = /^\/dev\/loop\d+$/;

/**
 * A read-only bind mount does not stop writes through a device node, so a
 * block volume published read-only is exposed through a read-only loop device
 * layered on the staged device; the kernel then refuses every write. One such
 * view per device, shared by all its read-only publishes and found again by
 * asking losetup, so a crash between attaching and recording leaks nothing.
 */
export class ReadOnlyBlock {
  constructor(
    private readonly exec: Executor,
    private readonly sysBlock = '/sys/block',
  ) {}

  private async sys(dev: string, file: string): Promise<string | undefined> {
    try {
      return (await readFile(`${this.sysBlock}/${basename(dev)}/${file}`, 'utf8')).trim();
    } catch {
      return undefined;
    }
  }

  /** Read-only loop devices currently layered on device. */
  async views(device: string): Promise<string[]> {
    const res = await hostCommand(
      `listing read-only views of ${device}`,
      this.exec.run('losetup', ['--list', '--noheadings', '--output', 'NAME,RO', '--associated', device]),
    );
    return res.stdout
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter(([name, ro]) => name !== undefined && LOOP_DEV_RE.test(name) && ro === '1')
      .map(([name]) => name!);
  }

  async attach(device: string): Promise<string> {
    const existing = await this.views(device);
    if (existing[0]) return existing[0];
    const res = await hostCommand(`attaching a read-only view of ${device}`, this.exec.run('losetup', ['--find', '--show', '--read-only', device]));
    const dev = res.stdout.trim();
    if (!LOOP_DEV_RE.test(dev)) throw new Error(`losetup --find --show printed ${JSON.stringify(dev)}, not a loop device`);
    return dev;
  }

  /** Whether m is a bind of a read-only view (of any device): such mounts show /loopN of the /dev filesystem. */
  static isViewMount(m: { root: string; fsType: string }, view: string): boolean {
    return m.root === `/${basename(view)}` && (m.fsType === 'devtmpfs' || m.fsType === 'tmpfs');
  }

  /** Makes the read-only views of device see its new size (after the device itself was refreshed). */
  async refresh(device: string): Promise<void> {
    for (const view of await this.views(device))
      await hostCommand(`refreshing the capacity of the read-only view ${view}`, this.exec.run('losetup', ['--set-capacity', view]));
  }

  /** Every loop device layered on another loop device, whoever made it: for the orphan report. */
  async layered(): Promise<{ view: string; device: string }[]> {
    const res = await hostCommand('listing loop devices', this.exec.run('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE']));
    if (!res.stdout.trim()) return [];
    const parsed = JSON.parse(res.stdout) as { loopdevices?: { name: string; 'back-file'?: string | null }[] };
    const out: { view: string; device: string }[] = [];
    for (const l of parsed.loopdevices ?? []) {
      const back = (l['back-file'] ?? '').replace(/ \(deleted\)$/, '');
      if (LOOP_DEV_RE.test(l.name) && LOOP_DEV_RE.test(back)) out.push({ view: l.name, device: back });
    }
    return out;
  }

  /** Detaches one view of device if it is still that and no mount uses it; true if it did. */
  async detachUnused(view: string, device: string, snap: MountSnapshot): Promise<boolean> {
    if (!LOOP_DEV_RE.test(view) || (await this.sys(view, 'loop/backing_file')) !== device) return false;
    if (snap.entries.some((m) => ReadOnlyBlock.isViewMount(m, view))) return false;
    try {
      await this.exec.run('losetup', ['--detach', view]);
    } catch (e) {
      if ((await this.sys(view, 'loop/backing_file')) === undefined) return false;
      throw toHostError(`detaching the read-only view ${view}`, e);
    }
    return true;
  }

  /** Detaches the views of device that no mount uses any more. */
  async release(device: string, snap: MountSnapshot): Promise<void> {
    for (const view of await this.views(device)) {
      if (snap.entries.some((m) => ReadOnlyBlock.isViewMount(m, view))) continue;
      if ((await this.sys(view, 'loop/backing_file')) !== device) continue;
      try {
        await this.exec.run('losetup', ['--detach', view]);
      } catch (e) {
        if ((await this.sys(view, 'loop/backing_file')) === undefined) continue;
        throw toHostError(`detaching the read-only view ${view}`, e);
      }
    }
  }
}
