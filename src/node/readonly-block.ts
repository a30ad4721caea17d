import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import type { Executor } from '../exec/run.js';
import { hostCommand, toHostError } from './host-errors.js';

const LOOP_DEV_RE = /^\/dev\/loop\d+$/;

/**
 * A read-only bind mount does not stop writes through a device node, so a
 * block volume published read-only is exposed through a read-only loop device
 * layered on the staged device. The kernel then refuses every write.
 */
export class ReadOnlyBlock {
  constructor(
    private readonly exec: Executor,
    private readonly sysBlock = '/sys/block',
  ) {}

  private async backing(dev: string): Promise<string | undefined> {
    try {
      return (await readFile(`${this.sysBlock}/${basename(dev)}/loop/backing_file`, 'utf8')).trim();
    } catch {
      return undefined;
    }
  }

  private async readOnlyFlag(dev: string): Promise<boolean> {
    try {
      return (await readFile(`${this.sysBlock}/${basename(dev)}/ro`, 'utf8')).trim() === '1';
    } catch {
      return false;
    }
  }

  /** A read-only loop device over device: the recorded one if still right, else a new one. */
  async attach(device: string, recorded?: string): Promise<string> {
    if (recorded && LOOP_DEV_RE.test(recorded) && (await this.backing(recorded)) === device && (await this.readOnlyFlag(recorded))) return recorded;
    const res = await hostCommand(`attaching a read-only view of ${device}`, this.exec.run('losetup', ['--find', '--show', '--read-only', device]));
    const dev = res.stdout.trim();
    if (!LOOP_DEV_RE.test(dev)) throw new Error(`losetup --find --show printed ${JSON.stringify(dev)}, not a loop device`);
    return dev;
  }

  /** Detaches roDevice if it is still the read-only view of device; otherwise leaves it alone. */
  async detach(roDevice: string, device: string | undefined): Promise<void> {
    if (!LOOP_DEV_RE.test(roDevice)) return;
    const back = await this.backing(roDevice);
    if (back === undefined || (device !== undefined && back !== device)) return;
    try {
      await this.exec.run('losetup', ['--detach', roDevice]);
    } catch (e) {
      if ((await this.backing(roDevice)) === undefined) return;
      throw toHostError(`detaching the read-only view ${roDevice}`, e);
    }
  }
}
