import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { RBD_ATTACH_KEY, type PublishContext } from '../../contracts/publish-context.js';
import { KeyedLock } from '../../csi/locks.js';
import { failedPrecondition, internal } from '../../errors/domain-error.js';
import type { DaemonSpawner, Executor } from '../../exec/run.js';
import { writeFileAtomic } from '../../store/atomic-file.js';
import type { Connector, DeviceCondition } from './connector.js';
import { asRbd, imageKey, rbdCredentials, type RbdContext } from './rbd-common.js';
import { readTail, stopPid, waitReady } from './iscsi/daemon-process.js';
import { NbdFuseChain } from './nbd-chain.js';
import { RbdClosedMark } from './rbd-closed-mark.js';
import { KernelRbdConnector } from './rbd-kernel.js';


export interface RbdConnectorConfig {
  /** Private state directory (created 0700), e.g. /run/sinter/rbd-userspace. */
  stateDir: string;
  /** The node's cephx user and key file (node config); NodeStageVolume secrets `userID`/`userKey` take precedence. */
  user?: string;
  keyFile?: string;
  procRoot?: string;
  sysfsRoot?: string;
  /** How long qemu-nbd may take to connect to the cluster and open the image, and nbdfuse to mount. */
  openTimeoutMs?: number;
  stopTimeoutMs?: number;
  /** `kernel` (rbd device map), `userspace` (qemu-nbd, nbdfuse, loop), `auto` (kernel when the rbd module is there or loads). Default auto. */
  attach?: RbdAttachMode;
  /** `rbd device map -o` options for the kernel attach. */
  mapOptions?: string[];
  /** Private state of the kernel attach (its mapping records); default: stateDir's sibling `rbd-kernel`. */
  kernelStateDir?: string;
  devRoot?: string;
  /**
   * This node's host (its node id's first part): with keyFile, the node marks an
   * image closed after unstage and clears the mark before it opens it again
   * (src/contracts/rbd-closed.ts), so the controller's fence can tell a client
   * that left from one cut off by a partition.
   */
  nodeHost?: string;
}

export type RbdAttachMode = 'kernel' | 'userspace' | 'auto';

/**
 * Whether this host can map images with the kernel's rbd client: the rbd bus
 * is in sysfs, or `modprobe rbd` loads it (a node plugin in a container sees
 * the host's modules through /lib/modules).
 */
export async function kernelRbdAvailable(exec: Executor, sysfsRoot = '/sys'): Promise<boolean> {
  const bus = async () => fs.access(join(sysfsRoot, 'bus', 'rbd')).then(() => true, () => false);
  if (await bus()) return true;
  const r = await exec.run('modprobe', ['rbd'], { okExitCodes: [1], timeoutMs: 30_000 }).catch(() => undefined);
  return r?.exitCode === 0 && (await bus());
}

/**
 * The `rbd` transport (os-brick's RBDConnector): the kernel client
 * (KernelRbdConnector, rbd-kernel.ts) or user space (UserspaceRbdConnector
 * below). The node's default is chosen once, at the first call, as
 * node.rbd.attach says; a volume whose StorageClass asks for one mode
 * (parameter rbdAttach, `attach` in its connection) gets that mode when the
 * node can do it, else FAILED_PRECONDITION naming the parameter. An existing
 * attachment is always reached the way it was made (the stage record keeps
 * the connection with its `attach`).
 */
export class RbdConnector implements Connector {
  readonly transport = 'rbd' as const;
  private chosen?: Promise<'kernel' | 'userspace'>;
  private kernelConn?: KernelRbdConnector;
  private userspaceConn?: UserspaceRbdConnector;
  /** Why this node cannot attach a mode (undefined: it can); only a "can" is kept, a missing module may be loaded later. */
  private readonly can = new Map<'kernel' | 'userspace', Promise<string | undefined>>();
  private readonly closed?: RbdClosedMark;

  constructor(
    private readonly cfg: RbdConnectorConfig,
    private readonly exec: Executor & DaemonSpawner,
    private readonly log?: Logger,
  ) {
    if (cfg.nodeHost && cfg.keyFile) this.closed = new RbdClosedMark({ nodeHost: cfg.nodeHost, user: cfg.user, keyFile: cfg.keyFile, timeoutMs: cfg.openTimeoutMs }, exec, log);
  }

  /** The node's default attach: kernel or userspace. */
  async mode(): Promise<'kernel' | 'userspace'> {
    this.chosen ??= (async () => {
      const mode = this.cfg.attach ?? 'auto';
      const kernel = mode === 'kernel' || (mode === 'auto' && (await kernelRbdAvailable(this.exec, this.cfg.sysfsRoot)));
      this.log?.info({ mode, chosen: kernel ? 'kernel' : 'userspace' }, 'rbd attach');
      return kernel ? 'kernel' : 'userspace';
    })();
    this.chosen.catch(() => (this.chosen = undefined));
    return this.chosen;
  }

  private kernel(): KernelRbdConnector {
    this.kernelConn ??= new KernelRbdConnector(
      { stateDir: this.cfg.kernelStateDir ?? join(this.cfg.stateDir, '..', 'rbd-kernel'), user: this.cfg.user, keyFile: this.cfg.keyFile, mapOptions: this.cfg.mapOptions, sysfsRoot: this.cfg.sysfsRoot, devRoot: this.cfg.devRoot },
      this.exec,
      this.log,
    );
    return this.kernelConn;
  }

  private userspace(): UserspaceRbdConnector {
    this.userspaceConn ??= new UserspaceRbdConnector(this.cfg, this.exec, this.log);
    return this.userspaceConn;
  }

  private by(mode: 'kernel' | 'userspace'): Connector {
    return mode === 'kernel' ? this.kernel() : this.userspace();
  }

  /** The connector of an attachment: the mode its connection names, else the node's default. */
  private async of(ctx: PublishContext): Promise<Connector> {
    return this.by(asRbd(ctx).attach ?? (await this.mode()));
  }

  /** Why this node cannot attach `mode`, or undefined. */
  private unable(mode: 'kernel' | 'userspace'): Promise<string | undefined> {
    let p = this.can.get(mode);
    if (!p) {
      // A literal union, not string: the image test finds every host command the node runs from these types.
      const has = (cmd: 'rbd' | 'qemu-nbd' | 'nbdfuse') => this.exec.run(cmd, ['--version'], { timeoutMs: 30_000 }).then(() => true, () => false);
      p = (async () => {
        if (mode === 'kernel') {
          if (!(await kernelRbdAvailable(this.exec, this.cfg.sysfsRoot))) return 'has no rbd kernel module (no /sys/bus/rbd, and modprobe rbd failed)';
          if (!(await has('rbd'))) return 'has no rbd command (Debian package ceph-common) to map images with';
          return undefined;
        }
        const missing = [];
        for (const cmd of ['qemu-nbd', 'nbdfuse'] as const) if (!(await has(cmd))) missing.push(cmd);
        return missing.length ? `has no ${missing.join(' and ')} (Debian packages qemu-utils, qemu-block-extra, libnbd-bin)` : undefined;
      })();
      this.can.set(mode, p);
      void p.then((why) => why !== undefined && this.can.delete(mode), () => this.can.delete(mode));
    }
    return p;
  }

  /** The connector for a new attachment: the mode the StorageClass asks for, if this node can do it. */
  private async forNew(ctx: PublishContext): Promise<Connector> {
    const asked = asRbd(ctx).attach;
    if (asked) {
      const why = await this.unable(asked);
      if (why !== undefined)
        throw failedPrecondition(
          `the StorageClass parameter ${RBD_ATTACH_KEY} (volume_context.${RBD_ATTACH_KEY}) asks for the ${asked} rbd attach, but this node ${why}; schedule the pod on a node that can, or use ${RBD_ATTACH_KEY}: auto`,
        );
    }
    return this.of(ctx);
  }

  async validate(ctx: PublishContext): Promise<void> {
    return (await this.forNew(ctx)).validate(ctx);
  }

  async connect(ctx: PublishContext, secrets: Record<string, string>): Promise<string> {
    return (await this.attach(ctx, secrets)).device;
  }

  async attach(ctx: PublishContext, secrets: Record<string, string>): Promise<{ device: string; attached: boolean }> {
    const conn = await this.forNew(ctx);
    // The mark is cleared before every attach and set only after a detach, so an
    // attachment already there came after the last clear: a retried stage does
    // not ask Ceph again.
    if (this.closed && (await conn.find(ctx)) === undefined) await this.closed.clear(asRbd(ctx));
    return conn.attach!(ctx, secrets);
  }

  async find(ctx: PublishContext): Promise<string | undefined> {
    return (await this.of(ctx)).find(ctx);
  }

  async disconnect(ctx: PublishContext, device?: string): Promise<void> {
    await (await this.of(ctx)).disconnect(ctx, device);
    await this.closed?.set(asRbd(ctx));
  }

  async rescan(ctx: PublishContext, device: string): Promise<void> {
    return (await this.of(ctx)).rescan(ctx, device);
  }

  async staleSizeReason(ctx: PublishContext): Promise<string | undefined> {
    return (await this.of(ctx)).staleSizeReason?.(ctx);
  }

  async condition(ctx: PublishContext, device: string): Promise<DeviceCondition> {
    return (await this.of(ctx)).condition(ctx, device);
  }

  /**
   * Both modes' attachments (a StorageClass may have asked for the one the
   * node does not default to): kernel mappings from sysfs, user-space ones
   * from the state dir; neither runs a command (unless a mapping sinter did not
   * make asks for the node's default mode). Mappings sinter did not make
   * are reported only where the kernel attach is the node's default: on a
   * user-space node they are the administrator's business.
   */
  async attached(): Promise<{ device: string; source: string; notReleasable?: string }[]> {
    const [k, u] = await Promise.all([this.kernel().attached(), this.userspace().attached()]);
    // The default mode matters only for a mapping sinter did not make; asking for it
    // otherwise would run `modprobe rbd` (and load execa) in every node's start-up.
    const foreign = k.some((a) => a.notReleasable !== undefined);
    const mode = foreign ? await this.mode() : undefined;
    return [...(mode === 'kernel' ? k : k.filter((a) => a.notReleasable === undefined)), ...u];
  }

  async release(device: string, source: string, inUse: PublishContext[]): Promise<boolean> {
    for (const c of [this.kernel(), this.userspace()])
      if ((await c.attached()).some((a) => a.device === device && a.source === source)) return c.release(device, source, inUse);
    return false;
  }
}


/** qemu option values: a comma is written as two. */
const qemuOpt = (v: string) => v.replace(/,/g, ',,');

/** A monitor address as qemu's rbd driver takes it (host and port; librados reads msgr2 from any port but 6789). */
export function monitorHostPort(m: string): { host: string; port: number } {
  const bare = m.replace(/^v[12]:/, '');
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(bare);
  if (v6) return { host: v6[1]!, port: v6[2] ? Number(v6[2]) : 3300 };
  const [host, port] = bare.split(':');
  return { host: host!, port: port ? Number(port) : m.startsWith('v1:') ? 6789 : 3300 };
}

interface AttachmentRecord {
  pool: string;
  image: string;
  monitors: string[];
  createdAt: string;
}

/**
 * The `rbd` transport in user space, for nodes without the rbd kernel module:
 * qemu-nbd with its rbd driver (librbd) opens the image, then the shared
 * nbdfuse + loop chain (nbd-chain.ts, as the user-space iSCSI initiator)
 * makes a block device of it.
 *
 * librbd gets everything explicitly: monitors as `server.N.*`, the cephx user,
 * the key as a qemu secret object read from a 0600 file (never on the command
 * line: a key from the stage secrets is written to the attachment's 0700
 * directory and removed once qemu-nbd has opened the image), and
 * `conf=/dev/null` so it reads no /etc/ceph and looks nothing up in DNS.
 */
export class UserspaceRbdConnector implements Connector {
  readonly transport = 'rbd' as const;
  private readonly locks = new KeyedLock();
  private readonly chain: NbdFuseChain;
  private readonly procRoot: string;
  private readonly openTimeoutMs: number;
  private readonly stopTimeoutMs: number;

  constructor(
    private readonly cfg: RbdConnectorConfig,
    private readonly exec: Executor & DaemonSpawner,
    private readonly log?: Logger,
  ) {
    this.procRoot = cfg.procRoot ?? '/proc';
    this.openTimeoutMs = cfg.openTimeoutMs ?? 60_000;
    this.stopTimeoutMs = cfg.stopTimeoutMs ?? 10_000;
    this.chain = new NbdFuseChain(
      exec,
      { procRoot: this.procRoot, sysfsRoot: cfg.sysfsRoot ?? '/sys', loginTimeoutMs: this.openTimeoutMs, stopTimeoutMs: this.stopTimeoutMs, directIo: true, what: 'the rbd image' },
      log,
    );
  }

  dirFor(c: RbdContext): string {
    return join(this.cfg.stateDir, imageKey(c));
  }


  async validate(ctx: PublishContext): Promise<void> {
    asRbd(ctx);
  }

  async connect(ctx: PublishContext, secrets: Record<string, string>): Promise<string> {
    return (await this.attach(ctx, secrets)).device;
  }

  async attach(ctx: PublishContext, secrets: Record<string, string>): Promise<{ device: string; attached: boolean }> {
    const c = asRbd(ctx);
    const creds = rbdCredentials(secrets, this.cfg);
    return this.locks.run(`${c.pool}/${c.image}`, async () => {
      await fs.mkdir(this.cfg.stateDir, { recursive: true, mode: 0o700 });
      const dir = this.dirFor(c);
      const st = await this.chain.inspect(dir);
      if (st?.qemuNbdPid && st.nbdfusePid && st.mounted && st.devicePath) return { device: st.devicePath, attached: false };
      if (st) {
        this.log?.warn({ dir, st }, 'incomplete user-space rbd attachment found; tearing it down before attaching again');
        await this.chain.teardown(dir);
      }
      await fs.mkdir(join(dir, 'mnt'), { recursive: true, mode: 0o700 });
      await fs.chmod(dir, 0o700);
      const rec: AttachmentRecord = { pool: c.pool, image: c.image, monitors: c.monitors, createdAt: new Date().toISOString() };
      await writeFileAtomic(join(dir, 'attachment.json'), JSON.stringify(rec, null, 2));
      const what = `rbd image ${c.pool}/${c.image}`;
      try {
        await this.startQemuNbd(dir, c, creds);
        await this.chain.startNbdfuse(dir, what);
        const device = await this.chain.attachLoop(dir, what);
        this.log?.info({ pool: c.pool, image: c.image, device }, 'user-space rbd attached');
        return { device, attached: true };
      } catch (e) {
        await this.chain.teardown(dir).catch((te: unknown) => this.log?.error({ dir, err: (te as Error).message }, 'cleanup after a failed attach failed'));
        throw e;
      } finally {
        await fs.rm(join(dir, 'key'), { force: true });
      }
    });
  }

  private async startQemuNbd(dir: string, c: RbdContext, creds: { user: string; key?: string; keyFile?: string }): Promise<void> {
    const pidFile = join(dir, 'qemu-nbd.pid');
    const sock = join(dir, 'nbd.sock');
    await fs.rm(pidFile, { force: true });
    await fs.rm(sock, { force: true });
    let keyFile = creds.keyFile;
    if (creds.key !== undefined) {
      keyFile = join(dir, 'key');
      await fs.rm(keyFile, { force: true });
      const fh = await fs.open(keyFile, 'wx', 0o600);
      try {
        await fh.writeFile(creds.key.trim());
      } finally {
        await fh.close();
      }
    }
    const image = ['driver=rbd', `pool=${qemuOpt(c.pool)}`, `image=${qemuOpt(c.image)}`, `user=${qemuOpt(creds.user)}`, 'key-secret=sinter-rbd-key', 'auth-client-required.0=cephx', 'conf=/dev/null'];
    c.monitors.forEach((m, i) => {
      const { host, port } = monitorHostPort(m);
      image.push(`server.${i}.host=${qemuOpt(host)}`, `server.${i}.port=${port}`);
    });
    const args = [
      '--object', `secret,id=sinter-rbd-key,format=base64,file=${qemuOpt(keyFile!)}`,
      '--image-opts', image.join(','),
      // --persistent: keep serving when nbdfuse reconnects; the pid file appears once the image is open and the socket listens.
      '--socket', sock, '--persistent', '--pid-file', pidFile,
    ];
    const log = join(dir, 'qemu-nbd.log');
    await fs.rm(log, { force: true });
    const d = await this.exec.spawnDaemon('qemu-nbd', args, { logFile: log });
    const ok = await waitReady(pidFile, d.exited, this.openTimeoutMs);
    if (ok !== 'ready') {
      if (ok === 'timeout') await stopPid(this.procRoot, d.pid, dir, this.stopTimeoutMs);
      const text = (await readTail(log)).trim().split('\n').slice(-2).join(' | ') || 'no output';
      if (/Permission denied|error connecting|\(13\)|\(1\)/i.test(text))
        throw failedPrecondition(`opening rbd image ${c.pool}/${c.image} as client.${creds.user} was refused by Ceph (${text}); check the node's cephx key and that its caps include "profile rbd" on pool ${c.pool}`);
      if (/No such file or directory|\(2\)/.test(text)) throw failedPrecondition(`rbd image ${c.pool}/${c.image} does not exist in the cluster at ${c.monitors.join(',')}`);
      throw internal(`qemu-nbd could not open rbd image ${c.pool}/${c.image}${ok === 'timeout' ? ' in time (are the monitors reachable from this node?)' : ''}: ${text}`);
    }
  }

  async find(ctx: PublishContext): Promise<string | undefined> {
    const st = await this.chain.inspect(this.dirFor(asRbd(ctx)));
    return st?.mounted ? st.devicePath : undefined;
  }

  async disconnect(ctx: PublishContext): Promise<void> {
    const c = asRbd(ctx);
    await this.locks.run(`${c.pool}/${c.image}`, () => this.chain.teardown(this.dirFor(c)));
  }

  /** Nothing to re-read: see staleSizeReason. */
  async rescan(): Promise<void> {}

  async staleSizeReason(): Promise<string> {
    // qemu-nbd reads the image size when it opens it and NBD cannot announce a new one; nbdfuse and the loop device keep theirs.
    return 'the user-space rbd attach (qemu-nbd, nbdfuse) cannot see an attached image grow; the filesystem grows at the next stage: unstage and stage the volume again (e.g. restart the pod), then expand';
  }

  async condition(ctx: PublishContext, device: string): Promise<DeviceCondition> {
    const c = asRbd(ctx);
    const dir = this.dirFor(c);
    const [found, daemons] = await Promise.all([this.find(c).catch(() => undefined), this.chain.daemons(dir)]);
    const restage = 'I/O to the volume fails until it is staged again: delete the pod using it so kubelet unstages and restages the volume';
    if (!daemons.qemuNbd) return { abnormal: true, attached: found !== undefined, message: `the connection to rbd image ${c.pool}/${c.image} is down (its qemu-nbd process exited; see qemu-nbd.log in the node's rbd state directory); ${restage}` };
    if (!daemons.nbdfuse) return { abnormal: true, attached: found !== undefined, message: `the user-space attachment of rbd image ${c.pool}/${c.image} is broken (its nbdfuse process exited); ${restage}` };
    if (!found) return { abnormal: true, attached: false, message: `rbd image ${c.pool}/${c.image} is no longer attached` };
    if (found !== device) return { abnormal: true, attached: false, message: `${device} no longer belongs to rbd image ${c.pool}/${c.image}` };
    return { abnormal: false, attached: true, message: `attached as ${device}` };
  }

  /** Every user-space rbd attachment on this node (orphan reports). */
  async attached(): Promise<{ device: string; source: string }[]> {
    let names: string[];
    try {
      names = await fs.readdir(this.cfg.stateDir);
    } catch {
      return [];
    }
    const out: { device: string; source: string }[] = [];
    for (const n of names) {
      const dir = join(this.cfg.stateDir, n);
      const rec = await readRecord(dir);
      const st = await this.chain.inspect(dir);
      if (rec && st?.devicePath) out.push({ device: st.devicePath, source: `rbd:${rec.pool}/${rec.image}` });
    }
    return out;
  }

  /** Takes down an attachment attached() listed, unless a staged volume uses that image. */
  async release(device: string, source: string, inUse: PublishContext[]): Promise<boolean> {
    const m = /^rbd:([^/]+)\/(.+)$/.exec(source);
    if (!m) return false;
    const [pool, image] = [m[1]!, m[2]!];
    if (inUse.some((c) => c.transport === 'rbd' && c.pool === pool && c.image === image)) return false;
    const ctx: RbdContext = { transport: 'rbd', pool, image, monitors: [] };
    if ((await this.find(ctx)) !== device) return false;
    await this.disconnect(ctx);
    return true;
  }
}

async function readRecord(dir: string): Promise<AttachmentRecord | undefined> {
  try {
    return JSON.parse(await fs.readFile(join(dir, 'attachment.json'), 'utf8')) as AttachmentRecord;
  } catch {
    return undefined;
  }
}
