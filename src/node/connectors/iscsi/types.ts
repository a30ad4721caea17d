import type { ChapCredentials } from '../../../contracts/chap.js';
import { isValidIqn } from '../../../contracts/nodeid.js';
import { isLun, MAX_LUN, parsePortal, type Portal } from '../../../contracts/publish-context.js';
import { invalidArgument } from '../../../errors/domain-error.js';

export type { ChapCredentials } from '../../../contracts/chap.js';
export { parsePortal, type Portal } from '../../../contracts/publish-context.js';

/** Where a volume is: publish_context's iSCSI part (Cinder's connection_info). */
export interface IscsiTarget {
  /** `host:port`, `[v6]:port`, or a host alone (port 3260). */
  portals: string[];
  iqn: string;
  lun: number;
}

export interface IscsiConnectOptions {
  /** This node's initiator name (the one the controller put in the target's ACL). */
  initiatorName: string;
  /** From the node-stage secrets; never logged, never in an error message. */
  chap?: ChapCredentials;
}

/** One path to the LUN. */
export interface IscsiPath {
  portal: string;
  /** Kernel: block device of this path (`/dev/sdX`). User space: the loop device. */
  device: string;
  /** Kernel: iSCSI session id. */
  sid?: number;
  /** Kernel: host:channel:target:lun. */
  hctl?: string;
}

export interface IscsiAttachment {
  initiator: 'kernel' | 'userspace';
  /** The block device to format and mount: `/dev/sdX`, `/dev/dm-N` (multipath) or `/dev/loopN`. */
  devicePath: string;
  paths: IscsiPath[];
  /** The multipath device's name when several paths were merged (`/dev/mapper/<name>`). */
  multipathName?: string;
}

/**
 * A node-side iSCSI initiator (os-brick's ISCSIConnector). connect and
 * disconnect are idempotent: connect returns the existing attachment when the
 * LUN is already attached, disconnect succeeds when nothing is attached.
 */
export interface IscsiInitiator {
  readonly kind: 'kernel' | 'userspace';
  connect(target: IscsiTarget, opts: IscsiConnectOptions): Promise<IscsiAttachment>;
  disconnect(target: IscsiTarget): Promise<void>;
  /** The block device the LUN is attached as now, if it is. */
  find(target: IscsiTarget): Promise<string | undefined>;
  /** Makes an attached LUN's new size visible (a no-op where the initiator cannot: see staleSizeReason). */
  rescan(target: IscsiTarget): Promise<void>;
  /** Why an attached LUN's growth stays invisible until it is attached again; undefined when rescan shows it. */
  staleSizeReason(): string | undefined;
  /** Every LUN this initiator has attached on the node (for the orphan report). */
  attached(): Promise<IscsiAttached[]>;
  /**
   * Detaches one attachment attached() listed, unless a volume with a record
   * (`inUse`) needs it; false when it is not attached like that any more or is in use.
   */
  release(device: string, source: string, inUse: IscsiTarget[]): Promise<boolean>;
  /** What the initiator sees of an attached LUN, for the volume's health condition. */
  health(target: IscsiTarget): Promise<IscsiHealth>;
}

export interface IscsiAttached {
  device: string;
  /** Names the attachment (target, LUN and, for user space, portal); release() takes it back. */
  source: string;
  iqn: string;
}

export interface IscsiHealth {
  /** Set when the attachment is broken beyond a session's recovery: what happened and what to do. */
  broken?: string;
  /** The LUN's block device, when it is attached. */
  device?: string;
  /** Sessions to the target (0 when the initiator has no notion of them). */
  sessions: number;
  /** One line per session not logged in. */
  down: string[];
  /** A failed session is past its replacement_timeout (the kernel shows it FREE): I/O fails at once instead of waiting. */
  expired?: boolean;
}

/** Checks a target from publish_context before any host command sees it; INVALID_ARGUMENT naming what is wrong. */
export function validateTarget(target: IscsiTarget): Portal[] {
  if (!isValidIqn(target.iqn)) throw invalidArgument(`target name "${target.iqn}" is not a valid iSCSI name`);
  if (!isLun(target.lun)) throw invalidArgument(`LUN ${target.lun} is out of range (0 to ${MAX_LUN})`);
  if (target.portals.length === 0) throw invalidArgument('no iSCSI portal given');
  try {
    return target.portals.map((p) => parsePortal(p));
  } catch (e) {
    throw invalidArgument((e as Error).message);
  }
}
