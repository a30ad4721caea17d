import type { LunInfo, TargetAccount, TargetInfo, TargetSession } from './target-helper.js';

/**
 * Parsers for tgtadm's text output (tgt 1.0.x). The format is indentation
 * based; these parsers key on the section and field names instead of exact
 * column counts, ignore lines they do not know, and never throw on unexpected
 * text (a field they cannot read stays undefined).
 */

type Section = 'none' | 'system' | 'nexus' | 'lun' | 'account' | 'acl' | 'other';

const TARGET_RE = /^Target\s+(\d+):\s*(\S+)\s*$/;

function yes(v: string): boolean {
  return /^yes$/i.test(v.trim());
}

/** `tgtadm --op show --mode target`: every target with its LUNs, sessions, ACLs and accounts. */
export function parseTgtTargets(text: string): TargetInfo[] {
  const out: TargetInfo[] = [];
  let t: TargetInfo | undefined;
  let section: Section = 'none';
  let lun: LunInfo | undefined;
  let sess: TargetSession | undefined;

  for (const raw of text.split('\n')) {
    const line = raw.replace(/\s+$/, '');
    if (!line.trim()) continue;
    const m = TARGET_RE.exec(line);
    if (m && !/^\s/.test(line)) {
      t = { tid: Number(m[1]), iqn: m[2]!, luns: [], acls: [], accounts: [], sessions: [] };
      out.push(t);
      section = 'none';
      lun = undefined;
      sess = undefined;
      continue;
    }
    if (!t) continue;
    const s = line.trim();

    switch (s) {
      case 'System information:':
        section = 'system';
        continue;
      case 'I_T nexus information:':
        section = 'nexus';
        continue;
      case 'LUN information:':
        section = 'lun';
        continue;
      case 'Account information:':
        section = 'account';
        continue;
      case 'ACL information:':
        section = 'acl';
        continue;
    }
    if (/^[A-Za-z ]+ information:$/.test(s)) {
      section = 'other';
      continue;
    }

    switch (section) {
      case 'system': {
        const kv = /^State:\s*(.*)$/.exec(s);
        if (kv) t.state = kv[1]!;
        break;
      }
      case 'nexus': {
        let mm: RegExpExecArray | null;
        if ((mm = /^I_T nexus:\s*(\d+)$/.exec(s))) {
          sess = { sid: Number(mm[1]), initiator: '', connections: [] };
          t.sessions.push(sess);
        } else if (sess && (mm = /^Initiator:\s*(\S+)(?:\s+alias:\s*(.*))?$/.exec(s))) {
          sess.initiator = mm[1]!;
          const alias = mm[2]?.trim();
          if (alias && alias !== 'none') sess.alias = alias;
        } else if (sess && (mm = /^Connection:\s*(\d+)$/.exec(s))) {
          sess.connections.push({ cid: Number(mm[1]) });
        } else if (sess && (mm = /^IP Address:\s*(\S+)$/.exec(s))) {
          const c = sess.connections[sess.connections.length - 1];
          if (c) c.address = mm[1]!;
        }
        break;
      }
      case 'lun': {
        let mm: RegExpExecArray | null;
        if ((mm = /^LUN:\s*(\d+)$/.exec(s))) {
          lun = { lun: Number(mm[1]), type: '' };
          t.luns.push(lun);
          break;
        }
        if (!lun) break;
        const kv = /^([A-Za-z_ -]+?):\s*(.*)$/.exec(s);
        if (!kv) break;
        const key = kv[1]!;
        const val = kv[2]!;
        switch (key) {
          case 'Type':
            lun.type = val;
            break;
          case 'SCSI SN':
            lun.scsiSerial = val;
            break;
          case 'SCSI ID':
            lun.scsiId = val;
            break;
          case 'Prevent removal':
            lun.preventRemoval = yes(val);
            break;
          case 'Size': {
            // "67 MB, Block size: 4096": tgt prints decimal megabytes.
            const sz = /^(\d+)\s*MB(?:,\s*Block size:\s*(\d+))?/.exec(val);
            if (sz) {
              lun.sizeMB = Number(sz[1]);
              if (sz[2] !== undefined) lun.blockSize = Number(sz[2]);
            }
            break;
          }
          case 'Online':
            lun.online = yes(val);
            break;
          case 'Readonly':
            lun.readonly = yes(val);
            break;
          case 'Backing store type':
            lun.backingStoreType = val;
            break;
          case 'Backing store path':
            if (val && val !== 'None') lun.backingPath = val;
            break;
        }
        break;
      }
      case 'account': {
        const mm = /^(\S+)(\s+\(outgoing\))?$/.exec(s);
        if (mm) t.accounts.push({ user: mm[1]!, outgoing: Boolean(mm[2]) } satisfies TargetAccount);
        break;
      }
      case 'acl':
        if (/^\S+$/.test(s)) t.acls.push(s);
        break;
      default:
        break;
    }
  }
  return out;
}

/** `tgtadm --op show --mode account`: the daemon-wide account names. */
export function parseTgtAccounts(text: string): string[] {
  const out: string[] = [];
  let inList = false;
  for (const raw of text.split('\n')) {
    const s = raw.trim();
    if (!s) continue;
    if (s === 'Account list:') {
      inList = true;
      continue;
    }
    if (inList && /^\S+$/.test(s)) out.push(s);
  }
  return out;
}

/**
 * The "Size: N MB" tgtadm shows for a LUN of `bytes` bytes: tgt's
 * print_disksize (usr/target.c), about decimal megabytes rounded to nearest.
 * Integer arithmetic as in C; the unsigned wrap-around there gives the same
 * result as signed arithmetic here for every size.
 */
export function tgtShownMB(bytes: number): number {
  const sectors = Math.floor(bytes / 512);
  return Math.floor((sectors - (Math.floor(sectors / 625) - 974)) / 1950);
}

/**
 * tgtadm's failures are one exit code (22, or 107 when the daemon cannot be
 * reached) with a sentence on stderr; this names the sentences that idempotent
 * callers treat as "already done".
 */
export type TgtErrorKind =
  | 'target-exists'
  | 'target-not-found'
  | 'lun-exists'
  | 'lun-not-found'
  | 'acl-exists'
  | 'acl-not-found'
  | 'account-exists'
  | 'account-not-found'
  | 'outgoing-account-exists'
  | 'session-not-found'
  | 'lun-active'
  | 'prevent-removal'
  | 'daemon-unreachable'
  | 'other';

export function classifyTgtError(stderr: string, exitCode?: number): TgtErrorKind {
  const s = stderr.toLowerCase();
  if (exitCode === 107 || /tgt daemon|can't connect|connection refused|transport endpoint is not connected/.test(s)) return 'daemon-unreachable';
  if (s.includes('this target already exists')) return 'target-exists';
  if (s.includes("can't find the target")) return 'target-not-found';
  if (s.includes('this logical unit number already exists')) return 'lun-exists';
  if (s.includes("can't find the logical unit")) return 'lun-not-found';
  if (s.includes('this access control rule already exists')) return 'acl-exists';
  if (s.includes('this access control rule does not exist')) return 'acl-not-found';
  if (s.includes('this account already exists')) return 'account-exists';
  if (s.includes("can't find the account")) return 'account-not-found';
  if (s.includes('already has an outgoing account')) return 'outgoing-account-exists';
  if (s.includes('this logical unit is still active')) return 'lun-active';
  if (s.includes('prevent removal set')) return 'prevent-removal';
  if (s.includes("can't find the session") || s.includes("can't find the connection")) return 'session-not-found';
  return 'other';
}

/** One listening portal as `tgtadm --op show --mode portal` prints it (usr/iscsi/target.c iscsi_target_show_portals). */
export interface TgtPortal {
  /** The bound address as inet_ntop printed it, without IPv6 brackets. */
  host: string;
  port: number;
}

/** `Portal: 127.0.0.1:3260,1` and `Portal: [::1]:3260,1` lines; others are ignored. */
export function parseTgtPortals(text: string): TgtPortal[] {
  const out: TgtPortal[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*Portal:\s*(?:\[([^\]]+)\]|([^:\s]+)):(\d+)(?:,\d+)?\s*$/.exec(line);
    if (m) out.push({ host: (m[1] ?? m[2])!.toLowerCase(), port: Number(m[3]) });
  }
  return out;
}
