/**
 * The node id is the node's Cinder "connector properties", carried through
 * Kubernetes (CSINode) to the controller: `host;iqn;wwpn,wwpn[;nqn]`.
 * Empty fields are allowed except host; the NVMe host NQN, when the node has
 * one, is a fourth field (left out otherwise, so ids recorded before it
 * existed still parse and compare equal); the whole id is at most 256 bytes.
 * Example: `worker-1;iqn.1993-08.org.debian:01:abc;` or `worker-2;;21000024ff3a1b2c`
 * or `worker-3;;;nqn.2014-08.org.nvmexpress:uuid:…`.
 */
export interface NodeIdentity {
  host: string;
  iqn?: string;
  wwpns: string[];
  /** NVMe host NQN (/etc/nvme/hostnqn): what nvmet's allowed_hosts names. */
  nqn?: string;
}

export const MAX_NODE_ID_BYTES = 256;

/**
 * The topology segment every node plugin reports in NodeGetInfo's
 * accessible_topology, valued with the node id's host. Because the value is
 * in the id itself, the controller knows this segment of any node without
 * asking Kubernetes; other segments (a zone) it learns from the node's
 * registration (see src/controller/node-topology.ts).
 */
export const NODE_TOPOLOGY_KEY = 'topology.sinter.csi.io/node';
const HOST_RE = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$/;
const IQN_RE = /^(?:iqn\.\d{4}-\d{2}\.[A-Za-z0-9][A-Za-z0-9.:_-]*|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16}(?:[0-9A-Fa-f]{16})?)$/;
const WWPN_RE = /^[0-9a-f]{16}$/;

export class NodeIdError extends Error {}

/** The target name prefix sinter's own exports use unless a backend names another. */
export const DEFAULT_IQN_PREFIX = 'iqn.2026-11.io.sinter:';

/** iSCSI names compare case-insensitively (RFC 3720 3.2.6.1: they are normalized to lower case). */
export const sameIqn = (a: string, b: string): boolean => a.toLowerCase() === b.toLowerCase();

export function isValidIqn(iqn: string): boolean {
  return iqn.length <= 223 && IQN_RE.test(iqn);
}

/** NVMe names (NVMe Base Spec 4.5, "NVMe Qualified Names"): at most 223 bytes of UTF-8. */
export const MAX_NQN_BYTES = 223;
const NQN_RE = /^nqn\.\d{4}-\d{2}\.[A-Za-z0-9][A-Za-z0-9.-]*:[\x21-\x3a\x3c-\x7e]+$/;
/** The well-known discovery controller's NQN: never a volume's subsystem or a host. */
export const DISCOVERY_NQN = 'nqn.2014-08.org.nvmexpress.discovery';

/**
 * An NQN sinter accepts: `nqn.yyyy-mm.reversed.domain:anything` (which covers
 * the UUID form `nqn.2014-08.org.nvmexpress:uuid:…` nvme-cli generates), at
 * most 223 bytes, printable ASCII without spaces or ';' (the node id's
 * separator) — the kernel takes an NQN as a configfs directory name and a
 * sysfs attribute, so nothing that needs quoting is let through.
 */
export function isValidNqn(nqn: string): boolean {
  return typeof nqn === 'string' && Buffer.byteLength(nqn) <= MAX_NQN_BYTES && NQN_RE.test(nqn) && nqn !== DISCOVERY_NQN && !nqn.includes('/');
}

/** The subsystem NQN prefix sinter's own nvmet exports use unless a backend names another. */
export const DEFAULT_NQN_PREFIX = 'nqn.2026-11.io.sinter:';

/** A subsystem NQN prefix: `nqn.yyyy-mm.reversed.domain:` (lower case; a volume id is appended). Throws naming it. */
export function validateNqnPrefix(prefix: string): void {
  if (prefix !== prefix.toLowerCase() || !/^nqn\.\d{4}-\d{2}\.[a-z0-9][a-z0-9.-]*:([a-z0-9.:-]*[:.-])?$/.test(prefix))
    throw new Error(`"${prefix}" must be a lower-case NQN prefix such as nqn.2026-11.io.sinter: (nqn.yyyy-mm.reversed.domain: then, optionally, more ending in ':', '.' or '-')`);
}

export function normalizeWwpn(w: string): string {
  return w.trim().toLowerCase().replace(/^0x/, '').replace(/:/g, '');
}

export function encodeNodeId(n: NodeIdentity): string {
  if (!HOST_RE.test(n.host)) throw new NodeIdError(`node name "${n.host}" is not a valid host name`);
  if (n.iqn !== undefined && n.iqn !== '' && !isValidIqn(n.iqn)) throw new NodeIdError(`initiator name "${n.iqn}" is not a valid iSCSI name`);
  const wwpns = n.wwpns.map(normalizeWwpn);
  for (const w of wwpns) if (!WWPN_RE.test(w)) throw new NodeIdError(`WWPN "${w}" is not 16 hex digits`);
  if (n.nqn !== undefined && n.nqn !== '' && !isValidNqn(n.nqn)) throw new NodeIdError(`NVMe host NQN "${n.nqn}" is not a valid NQN (nqn.yyyy-mm.domain:name, at most ${MAX_NQN_BYTES} bytes)`);
  const id = `${n.host};${n.iqn ?? ''};${wwpns.join(',')}${n.nqn ? `;${n.nqn}` : ''}`;
  if (Buffer.byteLength(id) > MAX_NODE_ID_BYTES) throw new NodeIdError(`node id is ${Buffer.byteLength(id)} bytes; at most ${MAX_NODE_ID_BYTES} are allowed`);
  return id;
}

/** Returns undefined for anything that is not a well-formed sinter node id. */
export function parseNodeId(id: string): NodeIdentity | undefined {
  if (typeof id !== 'string' || id.length === 0 || Buffer.byteLength(id) > MAX_NODE_ID_BYTES) return undefined;
  const parts = id.split(';');
  if (parts.length !== 3 && parts.length !== 4) return undefined;
  const [host, iqn, wwpnList, nqn] = parts as [string, string, string, string | undefined];
  // A fourth field is there only to carry an NQN: `h;;;` is not an id encodeNodeId makes.
  if (nqn !== undefined && !isValidNqn(nqn)) return undefined;
  if (!HOST_RE.test(host)) return undefined;
  if (iqn !== '' && !isValidIqn(iqn)) return undefined;
  const wwpns = wwpnList === '' ? [] : wwpnList.split(',');
  if (!wwpns.every((w) => WWPN_RE.test(w))) return undefined;
  return nqn === undefined ? { host, iqn: iqn || undefined, wwpns } : { host, iqn: iqn || undefined, wwpns, nqn };
}
