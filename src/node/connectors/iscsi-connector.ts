import { realpath } from 'node:fs/promises';
import { DEFAULT_IQN_PREFIX } from '../../contracts/nodeid.js';
import type { Logger } from 'pino';
import { chapFromRequestSecrets } from '../../contracts/chap.js';
import type { PublishContext } from '../../contracts/publish-context.js';
import { failedPrecondition } from '../../errors/domain-error.js';
import type { DaemonSpawner, Executor } from '../../exec/run.js';
import type { Connector, DeviceCondition } from './connector.js';
import { createIscsiInitiator, type IscsiInitiator, type IscsiTarget, type InitiatorMode, type KernelInitiatorConfig } from './iscsi/index.js';

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
    return (await this.get()).find(targetOf(asIscsi(ctx)));
  }

  async disconnect(ctx: PublishContext): Promise<void> {
    await (await this.get()).disconnect(targetOf(asIscsi(ctx)));
  }

  async rescan(ctx: PublishContext, _device: string): Promise<void> {
    // The user-space initiator sees a LUN at the size it had at login (see
    // staleSizeReason); the kernel initiator grows online.
    await (await this.get()).rescan(targetOf(asIscsi(ctx)));
  }

  async staleSizeReason(ctx: PublishContext): Promise<string | undefined> {
    asIscsi(ctx);
    return (await this.get()).staleSizeReason();
  }

  /** Every iSCSI attachment on this node, so start-up can report those no staged volume explains. */
  async attached(): Promise<{ device: string; source: string; notReleasable?: string }[]> {
    return (await (await this.get()).attached()).map(({ device, source, iqn }) => (this.ours(iqn) ? { device, source } : { device, source, notReleasable: this.notOurs(iqn) }));
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
    const used = inUse.filter((c): c is IscsiContext => c.transport === 'iscsi').map(targetOf);
    const iqnOfSource = /^(\S+) lun \d+/.exec(source)?.[1];
    if (!iqnOfSource || !this.ours(iqnOfSource)) return false;
    return ini.release(device, source, used);
  }

  async condition(ctx: PublishContext, device: string): Promise<DeviceCondition> {
    const c = asIscsi(ctx);
    const { broken, device: found, sessions: sessionCount, down, expired } = await (await this.get()).health(targetOf(c));
    if (broken) return { abnormal: true, attached: true, message: broken };
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
