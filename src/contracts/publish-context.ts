import { isValidNqn } from './nodeid.js';

/**
 * publish_context: Cinder's connection_info, flat string keys, never a secret
 * (VolumeAttachment status is readable cluster-wide).
 */
export type PublishContext =
  | { transport: 'local'; path: string }
  | { transport: 'iscsi'; portals: string[]; iqn: string; lun: number }
  | { transport: 'fc'; wwns: string[]; lun: number }
  /**
   * Ceph RBD: the node reaches the image with its own cephx key (node config), never one in here.
   * `attach`: the attach mode the StorageClass asked for (parameter rbdAttach, set on the node from
   * volume_context at NodeStageVolume and kept in the stage record); absent: the node's own setting.
   */
  | { transport: 'rbd'; pool: string; image: string; monitors: string[]; attach?: RbdAttach }
  /** NVMe over TCP: the subsystem's NQN, its portals (`traddr:trsvcid`) and the namespace id. */
  | { transport: 'nvmeof'; nqn: string; portals: string[]; nsid: number };

/** A pool or image name safe in an `rbd` image spec and a qemu option: no '/', '@', ',', '=' or spaces. */
export const RBD_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$/;
/** A monitor address: `host`, `host:port`, `[v6]:port`, optionally `v1:`/`v2:`. */
export const RBD_MONITOR_RE = /^(?:v[12]:)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::\d{1,5})?$/;

/** NVMe/TCP's IANA port (what `nvme connect` assumes without -s). */
export const NVME_TCP_PORT = 4420;
/** Namespace ids run from 1 to 0xFFFFFFFE (0 and 0xFFFFFFFF are reserved: NVMe Base Spec 3.2.1). */
export const MAX_NSID = 0xfffffffe;

export function isNsid(n: number): boolean {
  return Number.isInteger(n) && n >= 1 && n <= MAX_NSID;
}

export class PublishContextError extends Error {}

/** The attach modes a StorageClass may ask for (parameter rbdAttach); `auto` leaves it to the node. */
export type RbdAttach = 'kernel' | 'userspace';
export const RBD_ATTACH_KEY = 'rbdAttach';
export const RBD_ATTACH_VALUES = ['kernel', 'userspace', 'auto'] as const;

/** The mode a rbdAttach value asks for; undefined for auto or absent; throws fail(message) for anything else. */
export function parseRbdAttach(v: string | undefined, field: string, fail: (msg: string) => Error): RbdAttach | undefined {
  if (v === undefined || v === '' || v === 'auto') return undefined;
  if (v === 'kernel' || v === 'userspace') return v;
  throw fail(`${field} must be one of ${RBD_ATTACH_VALUES.join(', ')}, not ${JSON.stringify(v.slice(0, 32))}`);
}

/** The highest LUN sinter addresses (SAM flat space, what udev's path_id and the kernel's scan take). */
export const MAX_LUN = 16383;

/** One iSCSI/NVMe-oF portal: host (name, IPv4 or IPv6) and TCP port. */
export interface Portal {
  host: string;
  port: number;
  /** Canonical `host:port` / `[v6]:port`, as iscsiadm and libiscsi take it. */
  text: string;
}

const HOSTNAME_RE = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const IPV4_RE = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;
const IPV6_RE = /^[0-9A-Fa-f:.]{2,45}$/;

/**
 * Parses `host`, `host:port`, `[v6]` or `[v6]:port` (port 1-65535, default
 * `defaultPort`); throws PublishContextError naming the portal otherwise. The
 * one portal rule: configuration, static volumes' attributes and the node's
 * publish_context all call it, so what one side accepts the other can use.
 */
export function parsePortal(raw: string, defaultPort = 3260): Portal {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+))(?::(\d{1,5}))?$/.exec(raw.trim());
  const v6 = m?.[1];
  const host = v6 ?? m?.[2];
  const okHost = host !== undefined && (v6 !== undefined ? IPV6_RE.test(host) && host.includes(':') : IPV4_RE.test(host) || HOSTNAME_RE.test(host));
  const port = m?.[3] === undefined ? defaultPort : Number(m[3]);
  if (!okHost || port < 1 || port > 65535)
    throw new PublishContextError(`portal "${raw}" is not a portal (host, host:port, [IPv6] or [IPv6]:port; port 1-65535)`);
  return { host, port, text: v6 !== undefined ? `[${host}]:${port}` : `${host}:${port}` };
}

/** Whether `n` is a LUN sinter can address: an integer from 0 to MAX_LUN. */
export function isLun(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= MAX_LUN;
}

export function encodePublishContext(c: PublishContext): Record<string, string> {
  switch (c.transport) {
    case 'local':
      return { transport: 'local', path: c.path };
    case 'iscsi':
      return { transport: 'iscsi', portals: c.portals.join(','), iqn: c.iqn, lun: String(c.lun) };
    case 'fc':
      return { transport: 'fc', wwns: c.wwns.join(','), lun: String(c.lun) };
    case 'rbd':
      return { transport: 'rbd', pool: c.pool, image: c.image, monitors: c.monitors.join(','), ...(c.attach ? { attach: c.attach } : {}) };
    case 'nvmeof':
      return { transport: 'nvmeof', nqn: c.nqn, portals: c.portals.join(','), nsid: String(c.nsid) };
  }
}

function lunOf(raw: string | undefined): number {
  if (raw === undefined || !/^\d{1,5}$/.test(raw) || !isLun(Number(raw)))
    throw new PublishContextError(`publish_context.lun "${raw ?? ''}" is not a LUN number from 0 to ${MAX_LUN}`);
  return Number(raw);
}

function listOf(raw: string | undefined, key: string): string[] {
  const items = (raw ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  if (items.length === 0) throw new PublishContextError(`publish_context.${key} is missing or empty`);
  return items;
}

export function decodePublishContext(ctx: Record<string, string> | undefined): PublishContext {
  const c = ctx ?? {};
  switch (c.transport) {
    case 'local': {
      if (!c.path || !c.path.startsWith('/')) throw new PublishContextError('publish_context.path must be an absolute path');
      return { transport: 'local', path: c.path };
    }
    case 'iscsi':
      if (!c.iqn) throw new PublishContextError('publish_context.iqn is missing');
      return { transport: 'iscsi', portals: listOf(c.portals, 'portals'), iqn: c.iqn, lun: lunOf(c.lun) };
    case 'fc':
      return { transport: 'fc', wwns: listOf(c.wwns, 'wwns').map((w) => w.toLowerCase().replace(/^0x/, '')), lun: lunOf(c.lun) };
    case 'rbd': {
      for (const k of ['pool', 'image'] as const)
        if (!c[k] || !RBD_NAME_RE.test(c[k])) throw new PublishContextError(`publish_context.${k} "${(c[k] ?? '').slice(0, 100)}" is not an RBD ${k} name (letters, digits, '.', '_', '-')`);
      const monitors = listOf(c.monitors, 'monitors');
      const bad = monitors.find((m) => !RBD_MONITOR_RE.test(m));
      if (bad !== undefined) throw new PublishContextError(`publish_context.monitors: "${bad.slice(0, 100)}" is not a monitor address (host:port)`);
      const attach = parseRbdAttach(c.attach, 'publish_context.attach', (m) => new PublishContextError(m));
      return { transport: 'rbd', pool: c.pool!, image: c.image!, monitors, ...(attach ? { attach } : {}) };
    }
    case 'nvmeof': {
      if (!c.nqn || !isValidNqn(c.nqn)) throw new PublishContextError(`publish_context.nqn "${c.nqn ?? ''}" is not a subsystem NQN (nqn.yyyy-mm.domain:name, at most 223 bytes)`);
      // Each portal is checked here, so nothing that reaches `nvme connect -a/-s` was not a host and a port.
      const portals = listOf(c.portals, 'portals').map((p) => {
        try {
          return parsePortal(p, NVME_TCP_PORT).text;
        } catch (e) {
          throw new PublishContextError(`publish_context.portals: ${(e as Error).message}`);
        }
      });
      if (c.nsid === undefined || !/^\d{1,10}$/.test(c.nsid) || !isNsid(Number(c.nsid)))
        throw new PublishContextError(`publish_context.nsid "${c.nsid ?? ''}" is not a namespace id from 1 to ${MAX_NSID}`);
      return { transport: 'nvmeof', nqn: c.nqn, portals, nsid: Number(c.nsid) };
    }
    default:
      throw new PublishContextError(`publish_context.transport "${c.transport ?? ''}" is not one of local, iscsi, fc, rbd, nvmeof`);
  }
}
