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
