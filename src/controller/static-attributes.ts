import { isValidIqn, normalizeWwpn } from '../contracts/nodeid.js';
import { isLun, MAX_LUN, parsePortal, type PublishContext } from '../contracts/publish-context.js';
import { invalidArgument, notFound, shown } from '../errors/domain-error.js';
import { SUPPORTED_FS } from './capabilities.js';
import { K8S_PREFIX } from './parameters.js';

// Static volumes' handles and volumeAttributes (see static-volumes.ts).

export const STATIC_PREFIX = 'static-';
export const STATIC_HANDLE_RE = /^static-([a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?)$/;
const MAX_LIST = 16;

/** Any id in the static namespace, well-formed or not: backend volume ids never start with "static-". */
export function isStaticHandle(id: string | undefined): boolean {
  return typeof id === 'string' && id.startsWith(STATIC_PREFIX);
}

export interface StaticAttributes {
  context: PublishContext;
  fsType?: string;
  mkfsOptions?: string;
}

const COMMON_KEYS = ['transport', 'lun', 'fsType', 'mkfsOptions', 'encrypted'];
const TRANSPORT_KEYS: Record<'fc' | 'iscsi', string[]> = { fc: ['wwns'], iscsi: ['portals', 'iqn'] };
/** Keys Kubernetes itself may add to volume attributes; they pass through. */
const PASS_PREFIXES = [K8S_PREFIX, 'storage.kubernetes.io/'];
const MKFS_OPTIONS_RE = /^[A-Za-z0-9=,.:_ -]{0,256}$/;

const field = (k: string) => `volume_context.${k}`;

function listOf(raw: string | undefined, key: string, what: string): string[] {
  if (raw === undefined || raw.trim() === '') throw invalidArgument(`${field(key)} is required: ${what}`);
  const items = raw.split(',').map((s) => s.trim());
  if (items.some((s) => s === '')) throw invalidArgument(`${field(key)} has an empty entry; write a comma-separated list without blanks`);
  if (items.length > MAX_LIST) throw invalidArgument(`${field(key)} has ${items.length} entries; at most ${MAX_LIST} are allowed`);
  return items;
}

function lunOf(raw: string | undefined): number {
  if (raw === undefined || raw === '') throw invalidArgument(`${field('lun')} is required: the LUN number the array maps the volume at`);
  if (!/^\d{1,5}$/.test(raw) || !isLun(Number(raw))) throw invalidArgument(`${field('lun')} ${shown(raw)} is not a LUN number from 0 to ${MAX_LUN}`);
  return Number(raw);
}

/** host, host:port, [v6] or [v6]:port; port 1-65535: the portal rule of the publish_context contract. */
function checkPortal(p: string): void {
  try {
    parsePortal(p);
  } catch {
    throw invalidArgument(`${field('portals')} entry ${shown(p)} is not a portal (host, host:port, or [IPv6]:port; port 1-65535)`);
  }
}

/**
 * A static volume's attributes (the PV's volumeAttributes, sent as
 * volume_context) → the publish_context it is reached by. Every mistake is
 * INVALID_ARGUMENT naming the key.
 */
export function parseStaticAttributes(raw: Record<string, string> | undefined): StaticAttributes {
  const a = raw ?? {};
  const transport = a.transport;
  if (transport === undefined || transport === '')
    throw invalidArgument(`${field('transport')} is required for a static volume: fc or iscsi (set it in the PersistentVolume's spec.csi.volumeAttributes)`);
  if (transport !== 'fc' && transport !== 'iscsi') throw invalidArgument(`${field('transport')} ${shown(transport)} is not supported for static volumes (use fc or iscsi)`);
  const allowed = [...COMMON_KEYS, ...TRANSPORT_KEYS[transport]];
  for (const k of Object.keys(a)) {
    if (allowed.includes(k) || PASS_PREFIXES.some((p) => k.startsWith(p))) continue;
    const other = transport === 'fc' ? 'iscsi' : 'fc';
    if (TRANSPORT_KEYS[other].includes(k)) throw invalidArgument(`${field(k)} belongs to transport ${other}, not ${transport}; remove it`);
    throw invalidArgument(`volume_context: unknown key ${shown(k, 64)} for a static ${transport} volume (known: ${allowed.join(', ')})`);
  }
  const lun = lunOf(a.lun);
  let context: PublishContext;
  if (transport === 'fc') {
    const wwns = listOf(a.wwns, 'wwns', 'the target port WWNs the LUN is reached through').map((w) => {
      const n = normalizeWwpn(w);
      if (!/^[0-9a-f]{16}$/.test(n)) throw invalidArgument(`${field('wwns')} entry ${shown(w)} is not a WWN (16 hex digits, optionally 0x-prefixed or colon-separated)`);
      return n;
    });
    if (new Set(wwns).size !== wwns.length) throw invalidArgument(`${field('wwns')} names a WWN twice`);
    context = { transport: 'fc', wwns, lun };
  } else {
    const portals = listOf(a.portals, 'portals', 'the target portals (host[:port], comma-separated)');
    portals.forEach(checkPortal);
    if (new Set(portals).size !== portals.length) throw invalidArgument(`${field('portals')} names a portal twice`);
    const iqn = a.iqn;
    if (iqn === undefined || iqn === '') throw invalidArgument(`${field('iqn')} is required: the target's iSCSI name`);
    if (!isValidIqn(iqn)) throw invalidArgument(`${field('iqn')} ${shown(iqn)} is not a valid iSCSI name (iqn.YYYY-MM.reverse.domain[:id], eui.… or naa.…)`);
    context = { transport: 'iscsi', portals, iqn, lun };
  }
  const out: StaticAttributes = { context };
  if (a.fsType !== undefined && a.fsType !== '') {
    if (!(SUPPORTED_FS as readonly string[]).includes(a.fsType)) throw invalidArgument(`${field('fsType')} ${shown(a.fsType)} is not supported (use ${SUPPORTED_FS.join(', ')})`);
    out.fsType = a.fsType;
  }
  if (a.mkfsOptions !== undefined && a.mkfsOptions !== '') {
    if (!MKFS_OPTIONS_RE.test(a.mkfsOptions)) throw invalidArgument(`${field('mkfsOptions')} may hold only letters, digits, spaces and =,.:_- (at most 256 characters)`);
    out.mkfsOptions = a.mkfsOptions;
  }
  if (a.encrypted !== undefined && a.encrypted !== '' && a.encrypted !== 'true' && a.encrypted !== 'false')
    throw invalidArgument(`${field('encrypted')} must be "true" or "false", not ${shown(a.encrypted, 16)}`);
  return out;
}

export function mustBeWellFormed(id: string): string {
  if (!STATIC_HANDLE_RE.test(id))
    throw notFound(`volume_id ${shown(id, 128)} starts with "${STATIC_PREFIX}" but is not a static volume handle (static-<name>: 1-63 of a-z 0-9 . -, starting and ending with a letter or digit)`);
  return id;
}
