import type { PublishContext } from '../../contracts/publish-context.js';
import { failedPrecondition } from '../../errors/domain-error.js';

export interface DeviceCondition {
  abnormal: boolean;
  message: string;
  /** The device still belongs to this connection (it may be unhealthy, e.g. its backing file deleted). False after a reboot re-used the device name. */
  attached: boolean;
}

/**
 * A node connector (Cinder's os-brick connector): turns connection info
 * (publish_context) into a local block device and back. It knows nothing of
 * volumes, staging or filesystems. Every method is idempotent.
 *
 * Adding a transport (iscsi, fc) means implementing this interface and
 * registering it in Connectors; the node service does not change.
 */
export interface Connector {
  readonly transport: PublishContext['transport'];
  /** Checks that this node may use the connection; touches nothing. Throws DomainError. */
  validate(ctx: PublishContext): Promise<void>;
  /** Attaches, or finds the existing attachment; returns the block device path (/dev/…). */
  connect(ctx: PublishContext, secrets: Record<string, string>): Promise<string>;
  /**
   * connect(), also telling whether this call made the attachment (false: it
   * found one). Saves the caller a find() before connect() to learn that;
   * connectors without it are asked find() first.
   */
  attach?(ctx: PublishContext, secrets: Record<string, string>): Promise<{ device: string; attached: boolean }>;
  /** The device of an existing attachment, without attaching. */
  find(ctx: PublishContext): Promise<string | undefined>;
  /** Detaches; success when already detached. `device` is the one recorded at connect, if known. */
  disconnect(ctx: PublishContext, device?: string): Promise<void>;
  /** Makes the kernel re-read the size of the backing storage (after a controller expand). */
  rescan(ctx: PublishContext, device: string): Promise<void>;
  /**
   * Why an attached device cannot show its volume's new size, with what to do
   * about it; undefined when rescan is enough. Asked only when the device is
   * smaller than the size the CO expects.
   */
  staleSizeReason?(ctx: PublishContext): Promise<string | undefined>;
  /** Whether device is still attached to what ctx names. */
  condition(ctx: PublishContext, device: string): Promise<DeviceCondition>;
  /** Devices this connector's transport has attached on the node (for orphan reports), if it can tell. */
  attached?(): Promise<{ device: string; source: string; /** Why release() will not take this one, when it will not (e.g. not sinter's target). */ notReleasable?: string }[]>;
  /**
   * Detaches a device attached() listed, that no volume record claims and
   * nothing uses (the caller checked): start-up clean-up of a lost record.
   * Checks again that device is still attached to source; true if it detached it.
   * `inUse`: the connections of every volume this node has a stage record
   * for; what they share (an iSCSI session) is never torn down.
   */
  release?(device: string, source: string, inUse: PublishContext[]): Promise<boolean>;
  /**
   * This transport's leftovers cannot be told from an administrator's (an
   * iSCSI session no record explains may be someone's): start-up releases
   * them only when the node config asks for it (`node.orphanSessions: clean`).
   */
  readonly releaseOptIn?: boolean;
}

export class Connectors {
  private readonly byTransport = new Map<string, Connector>();

  constructor(list: Connector[]) {
    for (const c of list) this.byTransport.set(c.transport, c);
  }

  all(): Connector[] {
    return [...this.byTransport.values()];
  }

  for(ctx: PublishContext): Connector {
    const c = this.byTransport.get(ctx.transport);
    if (!c)
      throw failedPrecondition(
        `publish_context.transport "${ctx.transport}" is not supported by this node plugin (supported: ${[...this.byTransport.keys()].join(', ')})`,
      );
    return c;
  }
}
