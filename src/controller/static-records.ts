import { join } from 'node:path';
import * as v from 'valibot';
import type { Logger } from 'pino';
import type { Attachment } from '../backends/backend.js';
import { sameStringMap } from '../contracts/string-map.js';
import type { NodeIdentity } from '../contracts/nodeid.js';
import { encodePublishContext, type PublishContext } from '../contracts/publish-context.js';
import { alreadyExists, failedPrecondition, notFound, shown } from '../errors/domain-error.js';
import { KeyedLock } from '../csi/locks.js';
import { RecordStore } from '../store/record-store.js';
import { checkNewPublish, checkRepublish, newAttachment } from './attachment-rules.js';
import type { ParsedCapability } from './capabilities.js';
import type { NodeRegistry } from './node-registry.js';
import { mustBeWellFormed, parseStaticAttributes, STATIC_HANDLE_RE } from './static-attributes.js';
import type { UnpublishOptions } from './volumes.js';

// Static volumes' publish records (see static-volumes.ts).

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

const staticRecordSchema = v.object({
  id: v.pipe(v.string(), v.regex(STATIC_HANDLE_RE)),
  context: v.custom<object>((c) => typeof c === 'object' && c !== null),
  attachments: v.array(v.object({ nodeId: v.string() })),
});

const isRecord = (x: unknown): x is StaticVolumeRecord => v.is(staticRecordSchema, x);

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
