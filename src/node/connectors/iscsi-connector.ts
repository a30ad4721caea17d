import { realpath } from 'node:fs/promises';
import { DEFAULT_IQN_PREFIX, sameIqn } from '../../contracts/nodeid.js';
import type { Logger } from 'pino';
import { chapFromRequestSecrets } from '../../contracts/chap.js';
import type { PublishContext } from '../../contracts/publish-context.js';
import { failedPrecondition } from '../../errors/domain-error.js';
import type { DaemonSpawner, Executor } from '../../exec/run.js';
import type { Connector, DeviceCondition } from './connector.js';
import {
  createIscsiInitiator,
  KernelIscsiInitiator,
  parsePortal,
  UserspaceIscsiInitiator,
  type IscsiInitiator,
  type IscsiTarget,
  type InitiatorMode,
  type KernelInitiatorConfig,
  type UserspaceAttachmentInfo,
} from './iscsi/index.js';

type IscsiContext = Extract<PublishContext, { transport: 'iscsi' }>;

export interface IscsiConnectorConfig {
  mode: InitiatorMode;
  /** This node's initiator name, as carried in its node id; undefined when the host has none. */
  initiatorName?: string;
  /** Private state of the user-space initiator. */
  stateDir: string;
  sysfsRoot?: string;
  /** Where the kernel initiator's device nodes are (node.devRoot); default /dev. */
  devRoot?: string;
  /**
   * Target name prefixes of sinter's own targets: only their orphan sessions
   * are ever torn down (node.orphanTargetPrefixes). Default: the default iqnPrefix.
   */
  orphanTargetPrefixes?: string[];
  /** Further kernel initiator settings (timeouts, the mount table to check; a simulated sysfs and clock in tests). */
  kernel?: Omit<KernelInitiatorConfig, 'sysfsRoot' | 'devRoot'>;
}

function asIscsi(ctx: PublishContext): IscsiContext {
  if (ctx.transport !== 'iscsi') throw new Error(`iscsi connector got a ${ctx.transport} context`);
  return ctx;
}

const targetOf = (ctx: IscsiContext): IscsiTarget => ({ portals: ctx.portals, iqn: ctx.iqn, lun: ctx.lun });
/** The controller's default iqnPrefix. */
/** attached()'s `source` of a kernel LUN, and its inverse. */
const kernelSource = (iqn: string, lun: number) => `${iqn} lun ${lun}`;
const KERNEL_SOURCE_RE = /^(\S+) lun (\d+)$/;
const userspaceSource = (a: Pick<UserspaceAttachmentInfo, 'iqn' | 'lun' | 'portal'>) => `${a.iqn} lun ${a.lun} via ${a.portal}`;

/**
 * The `iscsi` transport (os-brick's ISCSIConnector) over the initiator the
 * node config picks: the kernel's (iscsiadm) or the user-space one (libiscsi
 * via qemu-nbd, nbdfuse and a loop device) for hosts without iscsi_tcp.
 */
export class IscsiConnector implements Connector {
  readonly transport = 'iscsi' as const;
  /** A session no record explains may be an administrator's: released only with node.orphanSessions: clean. */
  readonly releaseOptIn = true;
  private initiator?: Promise<IscsiInitiator>;

  constructor(
    private readonly cfg: IscsiConnectorConfig,
    private readonly exec: Executor & DaemonSpawner,
    private readonly log: Logger,
  ) {}

  private get(): Promise<IscsiInitiator> {
    this.initiator ??= createIscsiInitiator(
      this.cfg.mode,
      { userspace: { stateDir: this.cfg.stateDir }, kernel: { ...this.cfg.kernel, sysfsRoot: this.cfg.sysfsRoot, devRoot: this.cfg.devRoot } },
      this.exec,
      this.log,
    );
    return this.initiator;
  }

  async validate(ctx: PublishContext): Promise<void> {
    asIscsi(ctx);
    if (!this.cfg.initiatorName)
      throw failedPrecondition('this node has no iSCSI initiator name (install open-iscsi or set node.iscsiInitiatorName), so no target will let it log in');
  }

  async connect(ctx: PublishContext, secrets: Record<string, string>): Promise<string> {
    const c = asIscsi(ctx);
    await this.validate(c);
    const chap = chapFromRequestSecrets(secrets);
    const att = await (await this.get()).connect(targetOf(c), { initiatorName: this.cfg.initiatorName!, chap });
    return att.devicePath;
  }

  async find(ctx: PublishContext): Promise<string | undefined> {
    const c = asIscsi(ctx);
    const ini = await this.get();
    if (ini instanceof UserspaceIscsiInitiator) {
      const hit = (await ini.list()).find((a) => a.iqn === c.iqn && a.lun === c.lun && a.mounted && a.devicePath);
      return hit?.devicePath;
    }
    if (ini instanceof KernelIscsiInitiator) return ini.find(targetOf(c));
    return undefined;
  }

  async disconnect(ctx: PublishContext): Promise<void> {
    await (await this.get()).disconnect(targetOf(asIscsi(ctx)));
  }

  async rescan(ctx: PublishContext, _device: string): Promise<void> {
    asIscsi(ctx);
    const ini = await this.get();
    // The user-space initiator sees a LUN at the size it had at login (see
    // staleSizeReason); the kernel initiator grows online.
    if (ini instanceof UserspaceIscsiInitiator) return;
    if (ini instanceof KernelIscsiInitiator) await ini.rescan(targetOf(asIscsi(ctx)));
  }

  async staleSizeReason(ctx: PublishContext): Promise<string | undefined> {
    asIscsi(ctx);
    if (!((await this.get()) instanceof UserspaceIscsiInitiator)) return undefined;
    // qemu-nbd reads the LUN's capacity once, at login, and NBD has no way to
    // announce a new size; nbdfuse's file and the loop device over it keep theirs.
    return (
      'the user-space iSCSI initiator cannot see an attached LUN grow (qemu-nbd and nbdfuse fix its size at login); ' +
      'the filesystem grows at the next stage: unstage and stage the volume again (e.g. restart the pod), then expand; or use the kernel initiator (node.initiator: kernel)'
    );
  }

  /** Every iSCSI attachment on this node, so start-up can report those no staged volume explains. */
  async attached(): Promise<{ device: string; source: string; notReleasable?: string }[]> {
    const ini = await this.get();
    const mark = (a: { device: string; source: string }, iqn: string) => (this.ours(iqn) ? a : { ...a, notReleasable: this.notOurs(iqn) });
    if (ini instanceof UserspaceIscsiInitiator)
      return (await ini.list()).filter((a) => a.devicePath).map((a) => mark({ device: a.devicePath!, source: userspaceSource(a) }, a.iqn));
    if (ini instanceof KernelIscsiInitiator) return (await ini.attachments()).map((a) => mark({ device: a.device, source: kernelSource(a.iqn, a.lun) }, a.iqn));
    return [];
  }

  private ours(iqn: string): boolean {
    const prefixes = this.cfg.orphanTargetPrefixes ?? [DEFAULT_IQN_PREFIX];
    return prefixes.some((p) => iqn.toLowerCase().startsWith(p.toLowerCase()));
  }

  private notOurs(iqn: string): string {
    return `its target ${iqn} is not one of sinter's (node.orphanTargetPrefixes: ${(this.cfg.orphanTargetPrefixes ?? [DEFAULT_IQN_PREFIX]).join(', ')}), so sinter never tears it down`;
  }

  /**
   * Start-up clean-up (node.orphanSessions: clean) of an attachment attached()
   * listed that no record explains and nothing uses, with the disconnect
   * logic an unstage uses. User space: the whole chain (loop device, FUSE
   * mount, nbdfuse, qemu-nbd: its own session), unless a volume with a record
   * uses that target and LUN (then it is that volume's, whatever its record
   * says). Kernel: flush and delete this LUN's SCSI device on its session, log
   * out only when no other LUN of the session has a block device and no
   * volume with a record uses the target, then forget the node record.
   * False when device is no longer attached to source.
   */
  async release(device: string, source: string, inUse: PublishContext[]): Promise<boolean> {
    const ini = await this.get();
    const used = inUse.filter((c): c is IscsiContext => c.transport === 'iscsi');
    const iqnOfSource = /^(\S+) lun \d+/.exec(source)?.[1];
    if (!iqnOfSource || !this.ours(iqnOfSource)) return false;
    if (ini instanceof UserspaceIscsiInitiator) {
      const a = (await ini.list()).find((x) => x.devicePath === device && userspaceSource(x) === source);
      if (!a) return false;
      if (used.some((c) => sameIqn(c.iqn, a.iqn) && c.lun === a.lun)) return false;
      // disconnect() finds the attachment again by (portal, iqn, lun): make sure that is this directory.
      if (ini.dirFor(parsePortal(a.portal), a.iqn, a.lun) !== a.dir) return false;
      await ini.disconnect({ portals: [a.portal], iqn: a.iqn, lun: a.lun });
      return true;
    }
    if (ini instanceof KernelIscsiInitiator) {
      const m = KERNEL_SOURCE_RE.exec(source);
      if (!m) return false;
      const iqn = m[1]!;
      return ini.releaseLun(device, iqn, Number(m[2]), { keepSession: used.some((c) => sameIqn(c.iqn, iqn)) });
    }
    return false;
  }

  async condition(ctx: PublishContext, device: string): Promise<DeviceCondition> {
    const c = asIscsi(ctx);
    const ini = await this.get();
    let found: string | undefined;
    let down: string[] = [];
    let expired = false;
    let sessionCount = 0;
    if (ini instanceof KernelIscsiInitiator) {
      const seen = await ini.inspect(targetOf(c)).catch(() => ({ device: undefined, sessions: [] }));
      found = seen.device;
      sessionCount = seen.sessions.length;
      const failed = seen.sessions.filter((s) => s.sessionState !== undefined && s.sessionState !== 'LOGGED_IN');
      // The kernel turns a FAILED session FREE once its replacement_timeout passes (Linux 6.1, recorded): its disks
      // go transport-offline and I/O fails at once instead of waiting.
      expired = failed.some((s) => s.sessionState === 'FREE');
      down = failed.map((s) => `session ${s.sid} at ${s.currentPortal ?? s.persistentPortal ?? '?'} is ${s.sessionState}${s.sessionState === 'FREE' ? ', past its replacement_timeout' : ''}`);
    } else {
      found = await this.find(ctx).catch(() => undefined);
    }
    if (ini instanceof UserspaceIscsiInitiator) {
      // A dead daemon leaves the loop device and the FUSE mount in place, so find() may still see the device; the pids tell.
      // Read after find(): a daemon caught mid-exit by find() is seen dead here, and its death named, not a vanished session.
      let chain = await ini.chainHealth(targetOf(c)).catch(() => undefined);
      // The device gone while both daemons still look alive: one is exiting (its /proc entry outlives its FUSE mount briefly). Look once more.
      if (!found && chain?.qemuNbd && chain.nbdfuse) {
        await new Promise((r) => setTimeout(r, 200));
        chain = await ini.chainHealth(targetOf(c)).catch(() => undefined);
      }
      const restage = 'I/O to the volume fails until it is staged again: delete the pod using it so kubelet unstages and restages the volume';
      if (chain && !chain.qemuNbd)
        return { abnormal: true, attached: true, message: `the user-space iSCSI session to ${c.iqn} LUN ${c.lun} at ${chain.portal} is down (its qemu-nbd process exited; see qemu-nbd.log in the node's iSCSI state directory); ${restage}` };
      if (chain && !chain.nbdfuse)
        return { abnormal: true, attached: true, message: `the user-space iSCSI attachment of ${c.iqn} LUN ${c.lun} is broken (its nbdfuse process exited, the FUSE file behind the loop device is gone); ${restage}` };
    }
    if (!found) return { abnormal: true, attached: false, message: `no iSCSI session serves ${c.iqn} LUN ${c.lun} any more` };
    if (sessionCount > 0 && down.length === sessionCount)
      return {
        abnormal: true,
        attached: true,
        message: `the iSCSI session to ${c.iqn} is down (${down.join('; ')}): ${
          expired ? 'I/O to the volume fails until iscsid\'s retried login succeeds' : 'I/O waits for the session to recover (iscsid retries the login) and fails after its replacement_timeout'
        }; check the network path to the portal and the target`,
      };
    if (down.length > 0)
      return { abnormal: true, attached: true, message: `${down.length} of ${sessionCount} iSCSI sessions to ${c.iqn} are down (${down.join('; ')}); running degraded on the others` };
    // /dev/mapper/<name> and /dev/dm-N are one device.
    const same = found === device || (await realpath(device).catch(() => device)) === (await realpath(found).catch(() => found));
    if (!same) return { abnormal: true, attached: false, message: `${device} no longer belongs to ${c.iqn}` };
    return { abnormal: false, attached: true, message: `attached as ${device}` };
  }
}
