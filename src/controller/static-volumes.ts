import { join } from 'node:path';
import { sameStringMap } from '../contracts/string-map.js';
import type { Logger } from 'pino';
import type { Attachment } from '../backends/backend.js';
import { VOLUME_ID_RE } from '../backends/ids.js';
import { isValidIqn, normalizeWwpn, type NodeIdentity } from '../contracts/nodeid.js';
import { encodePublishContext, isLun, MAX_LUN, parsePortal, type PublishContext } from '../contracts/publish-context.js';
import { aborted, alreadyExists, failedPrecondition, invalidArgument, notFound, shown } from '../errors/domain-error.js';
import { KeyedLock } from '../csi/locks.js';
import type { ControllerImpl } from '../csi/messages.js';
import { RecordStore } from '../store/record-store.js';
import { checkNewPublish, checkRepublish, newAttachment } from './attachment-rules.js';
import { parseCapabilities, parseCapability, SUPPORTED_FS, type ParsedCapability } from './capabilities.js';
import type { NodeRegistry } from './node-registry.js';
import { K8S_PREFIX } from './parameters.js';
import type { UnpublishOptions, VolumeManager } from './volumes.js';

/**
 * Static (pre-provisioned) volumes: LUNs on an FC or iSCSI array that the
 * array team carved and sinter did not create. A PersistentVolume written by
 * hand names one by its volume handle and volumeAttributes:
 *
 *   volumeHandle: static-<name>        <name>: 1-63 of a-z 0-9 . -, starting
 *                                      and ending with a letter or digit
 *   volumeAttributes:
 *     transport: fc                    wwns: target port WWNs (comma list), lun
 *     transport: iscsi                 portals (comma list of host[:port]), iqn, lun
 *     fsType, mkfsOptions              optional, as in a StorageClass
 *
 * No backend holds them. ControllerPublishVolume validates the attributes
 * (the CO sends them as volume_context), records the publish and returns them
 * as publish_context; DeleteVolume never touches the LUN. The publish records
 * (one JSON file per published static volume under
 * <controller.stateDir>/static-volumes/, replaced atomically) keep the
 * single-node-writer rule and the per-node attach limit across nodes and
 * restarts, list the volumes' published nodes for the attacher, and let the
 * reconciler drop publishes no VolumeAttachment holds.
 *
 * Backend names "static" and "static-…" are refused by the configuration, so a
 * handle starting with "static-" is never a backend's volume id.
 */
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

const COMMON_KEYS = ['transport', 'lun', 'fsType', 'mkfsOptions'];
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
  return out;
}

/** The publish record of one static volume; it exists while the volume is published somewhere. */
export interface StaticVolumeRecord {
  id: string;
  /** The encoded publish_context every publish of this handle returns. */
  context: Record<string, string>;
  /** fsType and mkfsOptions from the attributes, returned as volume_context. */
  extra: Record<string, string>;
  attachments: Attachment[];
  createdAt: string;
  updatedAt: string;
}

function isRecord(v: unknown): v is StaticVolumeRecord {
  const r = v as StaticVolumeRecord;
  return (
    typeof r === 'object' && r !== null && typeof r.id === 'string' && STATIC_HANDLE_RE.test(r.id) && typeof r.context === 'object' && r.context !== null &&
    Array.isArray(r.attachments) && r.attachments.every((a) => typeof a?.nodeId === 'string')
  );
}


function mustBeWellFormed(id: string): string {
  if (!STATIC_HANDLE_RE.test(id))
    throw notFound(`volume_id ${shown(id, 128)} starts with "${STATIC_PREFIX}" but is not a static volume handle (static-<name>: 1-63 of a-z 0-9 . -, starting and ending with a letter or digit)`);
  return id;
}

export interface StaticVolumesOptions {
  /** The controller's state directory; records go to <stateDir>/static-volumes. */
  stateDir: string;
  nodes: NodeRegistry;
  log: Logger;
  /** Per-node attach limit (0 / undefined = none). */
  maxVolumesPerNode?: (nodeId: string) => number | undefined;
  /** Publishes of backend volumes on a node, counted against the same limit. */
  otherPublishedTo?: (nodeId: string) => number;
}

/** The controller's record of static volumes' publishes. */
export class StaticVolumes {
  private readonly store: RecordStore<StaticVolumeRecord>;
  private readonly recs = new Map<string, StaticVolumeRecord>();
  private readonly locks = new KeyedLock();

  constructor(private readonly opts: StaticVolumesOptions) {
    this.store = new RecordStore(join(opts.stateDir, 'static-volumes'));
  }

  get dir(): string {
    return this.store.dir;
  }

  /** Loads the records (unreadable files are kept and reported, half-written temps removed). */
  async start(): Promise<{ records: number; corrupt: string[] }> {
    await this.store.init();
    const report = await this.store.load(isRecord);
    this.recs.clear();
    for (const r of report.records) {
      if (r.attachments.length === 0) {
        await this.store.remove(r.id);
        continue;
      }
      this.recs.set(r.id, { ...r, extra: r.extra ?? {} });
    }
    if (report.corrupt.length) this.opts.log.error({ dir: this.store.dir, files: report.corrupt }, 'unreadable static volume records left in place');
    return { records: this.recs.size, corrupt: report.corrupt };
  }

  get(id: string): StaticVolumeRecord | undefined {
    return this.recs.get(id);
  }

  /** Published static volumes, sorted by id. */
  sorted(): StaticVolumeRecord[] {
    return [...this.recs.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  publishedTo(nodeId: string): number {
    let n = 0;
    for (const r of this.recs.values()) if (r.attachments.some((a) => a.nodeId === nodeId)) n++;
    return n;
  }

  private async save(rec: StaticVolumeRecord): Promise<void> {
    if (rec.attachments.length === 0) {
      await this.store.remove(rec.id);
      this.recs.delete(rec.id);
      return;
    }
    await this.store.put(rec);
    this.recs.set(rec.id, rec);
  }

  /**
   * ControllerPublishVolume of a static volume: validates the attributes and
   * the node, applies Cinder's attachment rules, records the publish (before
   * answering, so a crash leaves a publish the retry finds) and returns the
   * attributes as publish_context. No backend is called.
   */
  async publish(id: string, nodeId: string, cap: ParsedCapability, readonly: boolean, volumeContext: Record<string, string> | undefined): Promise<PublishContext> {
    mustBeWellFormed(id);
    const attrs = parseStaticAttributes(volumeContext);
    const node = this.opts.nodes.lookup(nodeId);
    if (!node) throw notFound(`node_id: node ${shown(nodeId, 128)} is not known to this controller`);
    checkNodeReaches(node, attrs.context, id);
    const context = encodePublishContext(attrs.context);
    const extra: Record<string, string> = {};
    if (attrs.fsType) extra.fsType = attrs.fsType;
    if (attrs.mkfsOptions) extra.mkfsOptions = attrs.mkfsOptions;
    return this.lock(id, false, async () => {
      const rec = this.recs.get(id);
      const mine = rec?.attachments.find((a) => a.nodeId === nodeId);
      if (rec && !sameStringMap(rec.context, context)) {
        const where = rec.attachments.map((a) => a.nodeId).join(', ');
        if (mine) throw alreadyExists(`static volume ${id} is already published to this node with other volumeAttributes (${describeContext(rec.context)}); unpublish it first`);
        throw failedPrecondition(`static volume ${id} is published to ${where} with other volumeAttributes (${describeContext(rec.context)}); one handle must always name the same LUN`);
      }
      if (mine) {
        checkRepublish(`static volume ${id}`, mine, cap, readonly);
        return attrs.context;
      }
      const others = rec?.attachments.filter((a) => a.nodeId !== nodeId) ?? [];
      checkNewPublish(`static volume ${id}`, others, nodeId, cap, this.publishedTo(nodeId) + (this.opts.otherPublishedTo?.(nodeId) ?? 0), this.opts.maxVolumesPerNode?.(nodeId));
      const now = new Date().toISOString();
      const att = newAttachment(nodeId, cap, readonly, now);
      await this.save({ id, context, extra: rec?.extra ?? extra, attachments: [...(rec?.attachments ?? []), att], createdAt: rec?.createdAt ?? now, updatedAt: now });
      this.opts.log.info({ volume_id: id, node_id: nodeId, transport: attrs.context.transport }, 'static volume published');
      return attrs.context;
    });
  }

  /** An RPC answers ABORTED while another holds the handle; sinter's reconciler waits its turn. */
  private lock<T>(id: string, wait: boolean, fn: () => Promise<T>): Promise<T> {
    return wait ? this.locks.run(id, fn) : this.locks.exclusive(id, fn, (k) => `static volume ${k}`);
  }

  /** Forgets publishes (all nodes when nodeId is undefined); there is nothing to revoke on an array sinter does not manage. */
  async unpublish(id: string, nodeId: string | undefined, opts: UnpublishOptions = {}): Promise<void> {
    if (!STATIC_HANDLE_RE.test(id)) return;
    await this.lock(id, opts.wait === true, async () => {
      const rec = this.recs.get(id);
      if (!rec) return;
      if (opts.onlyIf && !opts.onlyIf()) return;
      const kept = rec.attachments.filter((a) => nodeId !== undefined && a.nodeId !== nodeId);
      if (kept.length === rec.attachments.length) return;
      await this.save({ ...rec, attachments: kept, updatedAt: new Date().toISOString() });
    });
  }
}

function describeContext(c: Record<string, string>): string {
  return Object.entries(c)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ');
}

/** A node that cannot reach the LUN at all is refused up front, with the reason. */
function checkNodeReaches(node: NodeIdentity, ctx: PublishContext, id: string): void {
  if (ctx.transport === 'fc' && node.wwpns.length === 0)
    throw failedPrecondition(
      `static volume ${id} is an FC LUN, but node ${node.host} reported no online FC initiator port (its node id lists no WWPN); check its HBAs, then restart its node plugin so it reports them`,
    );
  if (ctx.transport === 'iscsi' && !node.iqn)
    throw failedPrecondition(`static volume ${id} is an iSCSI LUN, but node ${node.host} reported no iSCSI initiator name; install open-iscsi there (/etc/iscsi/initiatorname.iscsi) or set node.iscsiInitiatorName`);
}

export interface StaticControllerDeps {
  statics: StaticVolumes;
  volumes: VolumeManager;
}

function required(v: string | undefined, f: string): string {
  if (typeof v !== 'string' || v === '') throw invalidArgument(`${f} is required`);
  return v;
}

const STATIC_CONDITION = {
  abnormal: false,
  message: 'static volume: the LUN belongs to the array, not to a sinter backend; the node reports its paths\' health',
};

/**
 * The controller service with static volume handles routed here; every other
 * id goes to the backends' service unchanged.
 */
export function withStaticVolumes(base: ControllerImpl, { statics, volumes }: StaticControllerDeps): ControllerImpl {
  const wire = (id: string) => {
    const rec = statics.get(id);
    return {
      volume: { volume_id: id, capacity_bytes: 0, volume_context: rec ? { ...rec.context, ...rec.extra } : {}, accessible_topology: [] },
      status: { published_node_ids: rec?.attachments.map((a) => a.nodeId) ?? [], volume_condition: STATIC_CONDITION },
    };
  };
  const refuseSource = (id: string, f: string) => {
    if (isStaticHandle(id))
      throw invalidArgument(`${f} ${shown(id, 128)} is a static volume: sinter copies and snapshots only volumes it provisioned; use the array's own tools for this LUN`);
  };

  return {
    ...base,

    async CreateVolume(req) {
      const src = req.volume_content_source?.volume?.volume_id;
      if (src) refuseSource(src, 'volume_content_source.volume.volume_id');
      return base.CreateVolume!(req);
    },

    async DeleteVolume(req) {
      const id = required(req.volume_id, 'volume_id');
      if (!isStaticHandle(id)) return base.DeleteVolume!(req);
      // The LUN is the array's: deleting the PersistentVolume deletes nothing there.
      return {};
    },

    async ControllerPublishVolume(req) {
      const id = required(req.volume_id, 'volume_id');
      if (!isStaticHandle(id)) return base.ControllerPublishVolume!(req);
      const nodeId = required(req.node_id, 'node_id');
      const cap = parseCapability(req.volume_capability, 'volume_capability');
      const ctx = await statics.publish(id, nodeId, cap, req.readonly === true, req.volume_context);
      return { publish_context: encodePublishContext(ctx) };
    },

    async ControllerUnpublishVolume(req) {
      const id = required(req.volume_id, 'volume_id');
      if (!isStaticHandle(id)) return base.ControllerUnpublishVolume!(req);
      await statics.unpublish(id, req.node_id || undefined);
      return {};
    },

    async ValidateVolumeCapabilities(req) {
      const id = required(req.volume_id, 'volume_id');
      if (!isStaticHandle(id)) return base.ValidateVolumeCapabilities!(req);
      if (!req.volume_capabilities || req.volume_capabilities.length === 0) throw invalidArgument('volume_capabilities is required and must not be empty');
      mustBeWellFormed(id);
      if (req.volume_context && Object.keys(req.volume_context).length > 0) parseStaticAttributes(req.volume_context);
      try {
        parseCapabilities(req.volume_capabilities, 'volume_capabilities');
      } catch (e) {
        return { message: (e as Error).message };
      }
      // A LUN serves every capability sinter supports; whether several nodes
      // may write it at once is the access mode's business, checked at publish.
      return { confirmed: { volume_context: req.volume_context ?? {}, volume_capabilities: req.volume_capabilities, parameters: {} } };
    },

    async ControllerGetVolume(req) {
      const id = required(req.volume_id, 'volume_id');
      if (!isStaticHandle(id)) return base.ControllerGetVolume!(req);
      return wire(mustBeWellFormed(id));
    },

    async ControllerExpandVolume(req) {
      const id = required(req.volume_id, 'volume_id');
      if (!isStaticHandle(id)) return base.ControllerExpandVolume!(req);
      mustBeWellFormed(id);
      const bytes = Number(req.capacity_range?.required_bytes || req.capacity_range?.limit_bytes || 0);
      if (!Number.isSafeInteger(bytes) || bytes <= 0) throw invalidArgument('capacity_range is required');
      // The array team grows the LUN; the node then rescans its paths and
      // grows the filesystem, and refuses if the LUN is still smaller.
      return { capacity_bytes: bytes, node_expansion_required: true };
    },

    async CreateSnapshot(req) {
      if (req.source_volume_id) refuseSource(req.source_volume_id, 'source_volume_id');
      return base.CreateSnapshot!(req);
    },

    /**
     * Backend volumes and published static volumes in one id-sorted listing,
     * so the attacher sees static volumes' published nodes too. The token is
     * the last id handed out, as for backend volumes.
     */
    async ListVolumes(req) {
      const max = req.max_entries ?? 0;
      if (!Number.isInteger(max) || max < 0) throw invalidArgument('max_entries must not be negative');
      const token = req.starting_token || undefined;
      let innerToken = token;
      if (token && isStaticHandle(token)) {
        if (!STATIC_HANDLE_RE.test(token)) throw aborted(`starting_token "${token.slice(0, 64)}" was not issued by this plugin; list again without it`);
        // The backends' lister accepts only its own ids: start it after the
        // last backend id that sorts before the token.
        innerToken = undefined;
        for (const v of volumes.sorted()) {
          if (v.id > token) break;
          if (VOLUME_ID_RE.test(v.id)) innerToken = v.id;
        }
      }
      const inner = await base.ListVolumes!({ max_entries: max, starting_token: innerToken ?? '' });
      // The backends' lister always answers with entries and a token (empty at the end).
      const innerEntries = (inner?.entries ?? []).map((e) => ({ volume: { ...e.volume, volume_id: e.volume?.volume_id ?? '' }, status: e.status }));
      const fromBackends = token ? innerEntries.filter((e) => e.volume.volume_id > token) : innerEntries;
      const fromStatics = statics
        .sorted()
        .filter((r) => !token || r.id > token)
        .map((r) => wire(r.id));
      const merged = [...fromBackends, ...fromStatics].sort((a, b) => (a.volume.volume_id < b.volume.volume_id ? -1 : 1));
      const page = max > 0 ? merged.slice(0, max) : merged;
      const more = merged.length > page.length || (inner?.next_token ?? '') !== '';
      return { entries: page, next_token: more && page.length > 0 ? page[page.length - 1]!.volume.volume_id : '' };
    },
  };
}
