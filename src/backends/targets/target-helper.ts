import type { ChapCredentials } from '../../contracts/chap.js';

export type { ChapCredentials } from '../../contracts/chap.js';

/**
 * An iSCSI target helper: Cinder's `iscsi_helper` (tgtadm, lioadm). A backend
 * that exports its volumes over iSCSI calls it from exportVolume /
 * unexportVolume and from its reconcile loop; the helper knows target
 * daemons, not volumes' records.
 *
 * Every method is idempotent and safe to call again after a crash or after
 * the target daemon restarted with no configuration. Implementations
 * serialize calls per volume themselves.
 */
export interface TargetHelper {
  /** Short name of the implementation (`tgt`, `lio`). */
  readonly kind: string;

  /** The target name a volume is (or would be) exported under. Pure. */
  iqnFor(volumeId: string): string;

  /**
   * One target per volume, its image as LUN 1. Creates what is missing,
   * corrects what differs (LUN backing path while no session uses it,
   * read-only flag), and leaves the rest alone.
   */
  ensureTarget(volumeId: string, imagePath: string, opts?: EnsureTargetOptions): Promise<TargetRef>;

  /**
   * Allows one initiator (by its iSCSI name, not its address) to log in.
   * With `chap`, the target requires CHAP with these credentials (one-way, or
   * mutual when `mutualUser`/`mutualPassword` are set), replacing any CHAP it
   * had; without `chap`, the target's CHAP settings are left as they are.
   * Throws NOT_FOUND when the target does not exist (call ensureTarget first).
   * `seen`: the target as ensureTarget returned it within the same caller's
   * hold of the volume's lock (so nothing of sinter's changed it since); a
   * helper may use it instead of reading the daemon again. Omitted: read.
   */
  allowInitiator(volumeId: string, initiatorIqn: string, chap?: ChapCredentials, seen?: TargetInfo): Promise<void>;

  /**
   * Fences one initiator: removes its ACL entry, then ends every session it
   * has on this target, so it can neither log in again nor keep doing I/O on
   * a session it already had. Idempotent: a missing target, ACL or session is
   * success.
   */
  revokeInitiator(volumeId: string, initiatorIqn: string): Promise<void>;

  /** Removes the target (ending its sessions) and CHAP accounts no other target uses. Idempotent. */
  removeTarget(volumeId: string): Promise<void>;

  /** What the target daemon really has now, read from the daemon, not remembered. */
  listTargets(): Promise<TargetInfo[]>;

  /**
   * Makes LUN 1 report its image's current size after the image grew, while
   * initiators stay logged in: their sessions, the LUN's identity (vendor,
   * product, serial, device id, so multipath and udev see the same disk), its
   * settings and in-flight I/O are kept. Without `force` it touches nothing
   * when the daemon already shows the image's size. `absent`: no target or no
   * LUN 1 (the next ensureTarget adds it at the current size). Idempotent.
   */
  refreshLunSize(volumeId: string, imagePath: string, opts?: { force?: boolean }): Promise<LunRefresh>;

  /**
   * Wraps a reconcile pass that restores every export of one backend: a
   * helper whose daemon must not take logins before that (tgt with listen
   * portals) opens them afterwards. `exported`: the target names the pass
   * restored or found in place, asked once it is done. Absent: the pass runs as it is.
   */
  restoring?<T>(fn: () => Promise<T>, exported: () => string[]): Promise<T>;

  /** Whether the daemon's report of a LUN (`LunInfo.sizeMB`) matches an image of `bytes` bytes. Pure. */
  lunShowsSize(lun: LunInfo, bytes: number): boolean;
}

export type LunRefresh = 'refreshed' | 'current' | 'absent';

export interface EnsureTargetOptions {
  /** Export the LUN read-only (all initiators). Default false. */
  readonly?: boolean;
}

export interface TargetRef {
  iqn: string;
  /** Always 1: LUN 0 is the target's controller LUN. */
  lun: 1;
  /** The daemon's target id; changes when the daemon restarts. */
  tid: number;
  /**
   * What the helper knows of the target as it returned (ACLs, accounts,
   * sessions as read, or empty for one it just made), for allowInitiator's
   * `seen`; absent when the helper does not say.
   */
  seen?: TargetInfo;
}

export interface LunInfo {
  lun: number;
  /** `disk`, `controller`, … as the daemon reports it. */
  type: string;
  /** Absolute backing file or device, undefined for the controller LUN. */
  backingPath?: string;
  backingStoreType?: string;
  /** Size as the daemon prints it (tgt: decimal megabytes, rounded down). */
  sizeMB?: number;
  /** Exact size the LUN serves, where the daemon tells it (LIO fileio: fd_dev_size). */
  sizeBytes?: number;
  blockSize?: number;
  readonly?: boolean;
  online?: boolean;
  /** An initiator sent PREVENT MEDIUM REMOVAL: tgt will not take the LUN offline. */
  preventRemoval?: boolean;
  scsiSerial?: string;
  /** T10 vendor id designator (`IET     00010001`); with the serial, the LUN's identity. */
  scsiId?: string;
}

export interface TargetConnection {
  cid: number;
  address?: string;
}

export interface TargetSession {
  /** Session id (tgt's I_T nexus number; LIO's session id). */
  sid: number;
  initiator: string;
  alias?: string;
  connections: TargetConnection[];
}

export interface TargetAccount {
  user: string;
  /** An outgoing account: the target's own credentials for mutual CHAP. */
  outgoing: boolean;
}

export interface TargetInfo {
  tid: number;
  iqn: string;
  /** The volume this target serves, when its name carries this helper's prefix. */
  volumeId?: string;
  state?: string;
  luns: LunInfo[];
  /** Initiator names (and addresses, if someone bound one) allowed to log in. */
  acls: string[];
  accounts: TargetAccount[];
  sessions: TargetSession[];
}
