/**
 * Parsers for open-iscsi's iscsiadm output (2.0.87x–2.1.x). Tolerant: lines
 * they do not know are skipped, so extra fields or the systemd/iscsid noise
 * iscsiadm prints on some hosts do not break them.
 */

export interface IscsiSessionDevice {
  channel: number;
  id: number;
  lun: number;
  /** Block device name (`sdb`) when the kernel attached a disk for this LUN. */
  disk?: string;
  state?: string;
}

export interface IscsiSessionInfo {
  target: string;
  /** `address:port` of the portal in use (`[v6]:port` for IPv6). */
  currentPortal?: string;
  /** `address:port` the session was created for. */
  persistentPortal?: string;
  tpgt?: number;
  iface?: string;
  initiatorName?: string;
  sid: number;
  connectionState?: string;
  sessionState?: string;
  hostNumber?: number;
  devices: IscsiSessionDevice[];
}

function portalOf(raw: string): { portal: string; tpgt?: number } {
  // "127.0.0.1:3260,1" or "[fd00::1]:3260,1"
  const m = /^(.*:\d+),(-?\d+)$/.exec(raw.trim());
  return m ? { portal: m[1]!, tpgt: Number(m[2]) } : { portal: raw.trim() };
}

/**
 * `iscsiadm -m session -P 3` (also -P 1/2, which print a subset). open-iscsi
 * prints `Target:` only when it changes from the previous session and the
 * portal lines only when they change, so a session inherits both.
 */
export function parseSessionTree(text: string): IscsiSessionInfo[] {
  const out: IscsiSessionInfo[] = [];
  let target: string | undefined;
  let current: string | undefined;
  let persistent: string | undefined;
  let tpgt: number | undefined;
  let pending: Partial<IscsiSessionInfo> = {};
  let s: IscsiSessionInfo | undefined;

  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line) continue;
    let m: RegExpExecArray | null;
    if ((m = /^Target:\s*(\S+)(?:\s+\(.*\))?$/.exec(line))) {
      target = m[1]!;
      s = undefined;
      pending = {};
      continue;
    }
    if ((m = /^Current Portal:\s*(\S+)$/.exec(line))) {
      const p = portalOf(m[1]!);
      current = p.portal;
      tpgt = p.tpgt;
      s = undefined;
      pending = {};
      continue;
    }
    if ((m = /^Persistent Portal:\s*(\S+)$/.exec(line))) {
      persistent = portalOf(m[1]!).portal;
      continue;
    }
    if ((m = /^Iface Name:\s*(\S+)$/.exec(line))) {
      // A new session block starts with its interface (-P 1 and up).
      s = undefined;
      pending = { iface: m[1]! };
      continue;
    }
    if ((m = /^Iface Initiatorname:\s*(\S+)$/.exec(line))) {
      if (s) s.initiatorName = m[1]!;
      else pending.initiatorName = m[1]!;
      continue;
    }
    if ((m = /^SID:\s*(\d+)$/.exec(line))) {
      if (!target) continue;
      s = { target, sid: Number(m[1]), devices: [], ...pending };
      if (current !== undefined) s.currentPortal = current;
      if (persistent !== undefined) s.persistentPortal = persistent;
      if (tpgt !== undefined) s.tpgt = tpgt;
      out.push(s);
      pending = {};
      continue;
    }
    if (!s) continue;
    if ((m = /^iSCSI Connection State:\s*(.+)$/.exec(line))) s.connectionState = m[1]!;
    else if ((m = /^iSCSI Session State:\s*(.+)$/.exec(line))) s.sessionState = m[1]!;
    else if ((m = /^Host Number:\s*(\d+)/.exec(line))) s.hostNumber = Number(m[1]);
    else if ((m = /^scsi(\d+)\s+Channel\s+(\d+)\s+Id\s+(\d+)\s+Lun:\s*(\d+)$/.exec(line))) {
      s.hostNumber ??= Number(m[1]);
      s.devices.push({ channel: Number(m[2]), id: Number(m[3]), lun: Number(m[4]) });
    } else if ((m = /^Attached scsi disk\s+(\S+)(?:\s+State:\s*(\S+))?/.exec(line))) {
      const d = s.devices[s.devices.length - 1];
      if (d) {
        d.disk = m[1]!;
        if (m[2] !== undefined) d.state = m[2];
      }
    }
  }
  return out;
}

/** `iscsiadm -m session` (flat): `tcp: [1] 127.0.0.1:3260,1 iqn… (non-flash)`. */
export function parseSessionFlat(text: string): { transport: string; sid: number; portal: string; tpgt?: number; target: string }[] {
  const out: { transport: string; sid: number; portal: string; tpgt?: number; target: string }[] = [];
  for (const raw of text.split('\n')) {
    const m = /^(\S+):\s+\[(\d+)\]\s+(\S+)\s+(\S+)/.exec(raw.trim());
    if (!m) continue;
    const p = portalOf(m[3]!);
    out.push({ transport: m[1]!, sid: Number(m[2]), portal: p.portal, ...(p.tpgt !== undefined ? { tpgt: p.tpgt } : {}), target: m[4]! });
  }
  return out;
}

/** iscsiadm's exit codes (iscsiadm(8), include/iscsi_err.h) that the connector acts on. */
export const ISCSI_ERR = {
  SUCCESS: 0,
  /** generic error */
  ERR: 1,
  SESS_NOT_FOUND: 2,
  /** connection failure */
  TRANS: 4,
  /** generic login failure */
  LOGIN: 5,
  /** error accessing/managing the node database (/etc/iscsi/nodes) */
  IDBM: 6,
  INVAL: 7,
  TRANS_TIMEOUT: 8,
  /**
   * PDU or connect timeout: what iscsiadm 2.1.8 returns on a real kernel when
   * nothing listens at the portal (its login retries ran out), not TRANS (4).
   */
  PDU_TIMEOUT: 11,
  /** iscsi_tcp (transport) not loaded */
  TRANS_NOT_FOUND: 12,
  /** a session for this node is already logged in */
  SESS_EXISTS: 15,
  /** non-retryable login failure: target not found, initiator not allowed */
  FATAL_LOGIN: 19,
  ISCSID_NOTCONN: 20,
  /** no records / sessions / targets matched */
  NO_OBJS_FOUND: 21,
  /** login failed due to authorization failure (CHAP) */
  LOGIN_AUTH_FAILED: 24,
} as const;
