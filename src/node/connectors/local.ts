import { stat } from 'node:fs/promises';
import type { PublishContext } from '../../contracts/publish-context.js';
import { invalidArgument, notFound, shown } from '../../errors/domain-error.js';
import type { Executor } from '../../exec/run.js';
import { LOOP_DEV_RE, LoopDevices } from '../loop-device.js';
import { confine } from '../paths.js';
import type { Connector, DeviceCondition } from './connector.js';

type LocalContext = Extract<PublishContext, { transport: 'local' }>;

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
  private readonly loops: LoopDevices;

  constructor(
    exec: Executor,
    private readonly localRoots: readonly string[],
    sysBlock = '/sys/block',
  ) {
    this.loops = new LoopDevices(exec, sysBlock);
  }

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
    return (await this.loops.associated(file, `listing loop devices of ${file}`)).map((l) => l.device);
  }

  async connect(ctx: PublishContext): Promise<string> {
    return (await this.attach(ctx)).device;
  }

  /** The loop device of the image: the one already attached (attached: false), else a new one. */
  async attach(ctx: PublishContext): Promise<{ device: string; attached: boolean }> {
    const file = await this.imagePath(asLocal(ctx));
    return this.loops.exclusive(async () => {
      const existing = await this.loopsFor(file);
      if (existing[0]) return { device: existing[0], attached: false };
      return { device: await this.loops.attachLocked(file, `attaching ${file} as a loop device`), attached: true };
    });
  }

  async find(ctx: PublishContext): Promise<string | undefined> {
    const file = await this.imagePath(asLocal(ctx)).catch(() => undefined);
    if (!file) return undefined;
    return (await this.loopsFor(file))[0];
  }

  async disconnect(ctx: PublishContext, device?: string): Promise<void> {
    const local = asLocal(ctx);
    await this.loops.exclusive(async () => {
      const devices = new Set<string>();
      const file = await this.imagePath(local).catch(() => undefined);
      // The recorded device still backed by the image is its attachment: connect() never makes a
      // second one (it looks for an existing one first, under this lock), so no listing is needed.
      const back = device && LOOP_DEV_RE.test(device) ? await this.loops.backingFile(device) : undefined;
      if (file && !(back !== undefined && back === file)) for (const d of await this.loopsFor(file)) devices.add(d);
      // The image may be gone (deleted volume); the recorded device still
      // shows which file it was attached to.
      if (device && back !== undefined) {
        const want = file ?? local.path;
        if (back === want || back === `${want} (deleted)` || back === local.path || back === `${local.path} (deleted)`) devices.add(device);
      }
      for (const d of devices) await this.loops.detachLocked(d, `detaching loop device ${d}`);
    });
  }

  async rescan(_ctx: PublishContext, device: string): Promise<void> {
    await this.loops.refreshCapacity(device, `refreshing the capacity of ${device}`);
  }

  async attached(): Promise<{ device: string; source: string }[]> {
    return (await this.loops.list())
      .filter((l) => l.backingFile && this.localRoots.some((r) => l.backingFile.startsWith(r.endsWith('/') ? r : `${r}/`)))
      .map((l) => ({ device: l.device, source: l.backingFile }));
  }

  async release(device: string, source: string): Promise<boolean> {
    if (!LOOP_DEV_RE.test(device) || !this.localRoots.some((r) => source.startsWith(r.endsWith('/') ? r : `${r}/`))) return false;
    return this.loops.exclusive(async () => {
      const back = await this.loops.backingFile(device);
      if (back !== source && back !== `${source} (deleted)`) return false;
      return this.loops.detachLocked(device, `detaching loop device ${device}`);
    });
  }

  async condition(ctx: PublishContext, device: string): Promise<DeviceCondition> {
    const local = asLocal(ctx);
    const back = await this.loops.backingFile(device);
    if (back === undefined) return { abnormal: true, attached: false, message: `loop device ${device} is no longer attached` };
    const file = await this.imagePath(local).catch(() => undefined);
    const gone = back.endsWith(' (deleted)');
    const name = gone ? back.slice(0, -' (deleted)'.length) : back;
    if (name !== local.path && name !== file) return { abnormal: true, attached: false, message: `loop device ${device} is now attached to another file` };
    if (gone) return { abnormal: true, attached: true, message: `the image file behind ${device} was deleted` };
    return { abnormal: false, attached: true, message: `attached as ${device}` };
  }
}
