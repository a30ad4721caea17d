import { readFile, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import type { PublishContext } from '../../contracts/publish-context.js';
import { invalidArgument, notFound } from '../../errors/domain-error.js';
import { KeyedLock } from '../../csi/locks.js';
import type { Executor } from '../../exec/run.js';
import { hostCommand, toHostError } from '../host-errors.js';
import { confine } from '../paths.js';
import { shown } from '../../errors/domain-error.js';
import type { Connector, DeviceCondition } from './connector.js';

type LocalContext = Extract<PublishContext, { transport: 'local' }>;

const LOOP_DEV_RE = /^\/dev\/loop\d+$/;

function asLocal(ctx: PublishContext): LocalContext {
  if (ctx.transport !== 'local') throw new Error(`local connector got a ${ctx.transport} context`);
  return ctx;
}

/**
 * The `local` transport: the volume is an image file on this node (the file
 * backend's data directory), attached as a loop device. Only files under the
 * configured local roots are ever attached.
 */
export class LocalConnector implements Connector {
  readonly transport = 'local' as const;
  // losetup --find picks a free device and then claims it; two at once can
  // race for the same one, so attaches and detaches go one at a time.
  private readonly losetupLock = new KeyedLock();

  constructor(
    private readonly exec: Executor,
    private readonly localRoots: readonly string[],
    private readonly sysBlock = '/sys/block',
  ) {}

  async validate(ctx: PublishContext): Promise<void> {
    await this.imagePath(asLocal(ctx));
  }

  /** The checked, resolved image path. */
  private async imagePath(ctx: LocalContext): Promise<string> {
    const c = await confine(ctx.path, this.localRoots);
    if (!c.ok) throw invalidArgument(`publish_context.path ${shown(ctx.path, 200)} ${c.why}; the local transport only attaches image files there`);
    if (!c.exists) throw notFound(`publish_context.path ${shown(ctx.path, 200)}: the volume's image file does not exist on this node`);
    const st = await stat(c.resolved);
    if (!st.isFile()) throw invalidArgument(`publish_context.path ${shown(ctx.path, 200)} is not a regular file; the local transport attaches image files only`);
    return c.resolved;
  }

  /** Loop devices currently backed by file (losetup matches by inode, so a re-created file is a different one). */
  private async loopsFor(file: string): Promise<string[]> {
    const res = await hostCommand(`listing loop devices of ${file}`, this.exec.run('losetup', ['--list', '--noheadings', '--output', 'NAME', '--associated', file]));
    return res.stdout
      .split('\n')
      .map((s) => s.trim())
      .filter((s) => LOOP_DEV_RE.test(s));
  }

  private async backingFile(device: string): Promise<string | undefined> {
    try {
      return (await readFile(`${this.sysBlock}/${basename(device)}/loop/backing_file`, 'utf8')).trim();
    } catch {
      return undefined;
    }
  }

  async connect(ctx: PublishContext): Promise<string> {
    return (await this.attach(ctx)).device;
  }

  /** The loop device of the image: the one already attached (attached: false), else a new one. */
  async attach(ctx: PublishContext): Promise<{ device: string; attached: boolean }> {
    const file = await this.imagePath(asLocal(ctx));
    return this.losetupLock.run('losetup', async () => {
      const existing = await this.loopsFor(file);
      if (existing[0]) return { device: existing[0], attached: false };
      const res = await hostCommand(`attaching ${file} as a loop device`, this.exec.run('losetup', ['--find', '--show', file]));
      const dev = res.stdout.trim();
      if (!LOOP_DEV_RE.test(dev)) throw new Error(`losetup --find --show printed ${JSON.stringify(dev)}, not a loop device`);
      return { device: dev, attached: true };
    });
  }

  async find(ctx: PublishContext): Promise<string | undefined> {
    const file = await this.imagePath(asLocal(ctx)).catch(() => undefined);
    if (!file) return undefined;
    return (await this.loopsFor(file))[0];
  }

  async disconnect(ctx: PublishContext, device?: string): Promise<void> {
    const local = asLocal(ctx);
    await this.losetupLock.run('losetup', async () => {
      const devices = new Set<string>();
      const file = await this.imagePath(local).catch(() => undefined);
      // The recorded device still backed by the image is its attachment: connect() never makes a
      // second one (it looks for an existing one first, under this lock), so no listing is needed.
      const back = device && LOOP_DEV_RE.test(device) ? await this.backingFile(device) : undefined;
      if (file && !(back !== undefined && back === file)) for (const d of await this.loopsFor(file)) devices.add(d);
      // The image may be gone (deleted volume); the recorded device still
      // shows which file it was attached to.
      if (device && back !== undefined) {
        const want = file ?? local.path;
        if (back !== undefined && (back === want || back === `${want} (deleted)` || back === local.path || back === `${local.path} (deleted)`)) devices.add(device);
      }
      for (const d of devices) {
        try {
          await this.exec.run('losetup', ['--detach', d]);
        } catch (e) {
          if ((await this.backingFile(d)) === undefined) continue; // detached meanwhile
          throw toHostError(`detaching loop device ${d}`, e);
        }
      }
    });
  }

  async rescan(_ctx: PublishContext, device: string): Promise<void> {
    await hostCommand(`refreshing the capacity of ${device}`, this.exec.run('losetup', ['--set-capacity', device]));
  }

  async attached(): Promise<{ device: string; source: string }[]> {
    const res = await hostCommand('listing loop devices', this.exec.run('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE']));
    if (!res.stdout.trim()) return [];
    const parsed = JSON.parse(res.stdout) as { loopdevices?: { name: string; 'back-file'?: string | null }[] };
    const out: { device: string; source: string }[] = [];
    for (const l of parsed.loopdevices ?? []) {
      const file = (l['back-file'] ?? '').replace(/ \(deleted\)$/, '');
      if (file && this.localRoots.some((r) => file.startsWith(r.endsWith('/') ? r : `${r}/`))) out.push({ device: l.name, source: file });
    }
    return out;
  }

  async release(device: string, source: string): Promise<boolean> {
    if (!LOOP_DEV_RE.test(device) || !this.localRoots.some((r) => source.startsWith(r.endsWith('/') ? r : `${r}/`))) return false;
    return this.losetupLock.run('losetup', async () => {
      const back = await this.backingFile(device);
      if (back !== source && back !== `${source} (deleted)`) return false;
      try {
        await this.exec.run('losetup', ['--detach', device]);
      } catch (e) {
        if ((await this.backingFile(device)) === undefined) return false;
        throw toHostError(`detaching loop device ${device}`, e);
      }
      return true;
    });
  }

  async condition(ctx: PublishContext, device: string): Promise<DeviceCondition> {
    const local = asLocal(ctx);
    const back = await this.backingFile(device);
    if (back === undefined) return { abnormal: true, attached: false, message: `loop device ${device} is no longer attached` };
    const file = await this.imagePath(local).catch(() => undefined);
    const gone = back.endsWith(' (deleted)');
    const name = gone ? back.slice(0, -' (deleted)'.length) : back;
    if (name !== local.path && name !== file) return { abnormal: true, attached: false, message: `loop device ${device} is now attached to another file` };
    if (gone) return { abnormal: true, attached: true, message: `the image file behind ${device} was deleted` };
    return { abnormal: false, attached: true, message: `attached as ${device}` };
  }
}
