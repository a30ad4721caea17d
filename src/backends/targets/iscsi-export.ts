import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { ChapCredentials } from '../../contracts/chap.js';
import { parseNodeId, type NodeIdentity } from '../../contracts/nodeid.js';
import type { PublishContext } from '../../contracts/publish-context.js';
import { failedPrecondition } from '../../errors/domain-error.js';
import { RecordStore } from '../../store/record-store.js';
import { backingSize } from '../../util/backing-size.js';
import type { VolumeHealth, VolumeRecord } from '../backend.js';
import type { LunRefresh, TargetHelper, TargetInfo } from './target-helper.js';

interface ChapRecord {
  id: string;
  chap: ChapCredentials;
}

const sameChap = (a: ChapCredentials | undefined, b: ChapCredentials): boolean =>
  !!a && a.user === b.user && a.password === b.password && a.mutualUser === b.mutualUser && a.mutualPassword === b.mutualPassword;

const isChapRecord = (v: unknown): v is ChapRecord =>
  typeof v === 'object' && v !== null && typeof (v as ChapRecord).id === 'string' && typeof (v as ChapRecord).chap?.user === 'string';

export interface ReconcileReport {
  targetsCreated: string[];
  aclsRestored: string[];
  aclsRevoked: string[];
  targetsRemoved: string[];
  /** LUNs that showed less than their image (an expand interrupted before its refresh) and were reopened. */
  lunsRefreshed: string[];
  errors: string[];
}

/**
 * Cinder's iSCSI export for one backend: a target per published volume, an
 * ACL (and CHAP) per publishing node, nothing else. tgtd keeps no state across
 * its own restart, so the records are the truth and reconcile() makes the
 * daemon match them — including removing what no record explains (the fence).
 *
 * CHAP credentials are the only secret sinter keeps: reconcile needs them to
 * restore a CHAP-protected export after tgtd restarts, and the CO sends them
 * only with ControllerPublishVolume. They live in 0600 files in a 0700
 * directory beside the records, never in a record, a log line or an error.
 * A node's CHAP record is durable before any record names its publish and is
 * dropped only once none does (reconcile, or the volume's removal), so a
 * restore never finds a CHAP publish without its CHAP and opens it wider.
 */
export class IscsiExport {
  private readonly chapStore: RecordStore<ChapRecord>;
  private readonly chaps = new Map<string, ChapCredentials>();

  constructor(
    private readonly helper: TargetHelper,
    private readonly portals: string[],
    secretsDir: string,
    private readonly log: Logger,
    /** Whether a target's volume belongs to this backend: several backends may share one tgtd. */
    private readonly owns: (volumeId: string) => boolean,
  ) {
    this.chapStore = new RecordStore<ChapRecord>(secretsDir, '.chap');
  }

  async init(): Promise<void> {
    await this.chapStore.init();
    for (const r of (await this.chapStore.load(isChapRecord)).records) this.chaps.set(r.id, r.chap);
  }

  private chapKey(volumeId: string, iqn: string): string {
    return `${volumeId}.${createHash('sha256').update(iqn).digest('hex').slice(0, 16)}`;
  }

  static initiatorOf(node: NodeIdentity): string {
    if (!node.iqn)
      throw failedPrecondition(
        `node_id: node "${node.host}" reported no iSCSI initiator name; install open-iscsi there (/etc/iscsi/initiatorname.iscsi) or set node.iscsiInitiatorName`,
      );
    return node.iqn;
  }

  /**
   * The node's CHAP record, durable before anything (the volume's record, the
   * ACL) can name the publish: reconcile restores an ACL with the CHAP record
   * it finds, so it must never find the publish without it.
   */
  async rememberChap(volumeId: string, node: NodeIdentity, chap: ChapCredentials | undefined): Promise<void> {
    const iqn = IscsiExport.initiatorOf(node);
    if (!chap) return;
    const key = this.chapKey(volumeId, iqn);
    if (sameChap(this.chaps.get(key), chap)) return;
    await this.chapStore.put({ id: key, chap });
    this.chaps.set(key, chap);
  }

  /**
   * A new publish (no record names the node yet): its CHAP record becomes
   * this publish's. One an earlier publish of the node left (unpublished, not
   * yet reconciled) must not protect a publish that asked for no CHAP with
   * credentials its node no longer has.
   */
  async prepare(volumeId: string, node: NodeIdentity, chap: ChapCredentials | undefined): Promise<void> {
    if (chap) return this.rememberChap(volumeId, node, chap);
    const key = this.chapKey(volumeId, IscsiExport.initiatorOf(node));
    if (!this.chaps.has(key)) return;
    await this.chapStore.remove(key);
    this.chaps.delete(key);
  }

  async export(volumeId: string, imagePath: string, node: NodeIdentity, chap: ChapCredentials | undefined): Promise<PublishContext> {
    const iqn = IscsiExport.initiatorOf(node);
    const key = this.chapKey(volumeId, iqn);
    await this.rememberChap(volumeId, node, chap);
    const ref = await this.helper.ensureTarget(volumeId, imagePath);
    // The publish holds the volume's lock from ensureTarget to here: what ensureTarget saw is still what sinter made.
    await this.helper.allowInitiator(volumeId, iqn, chap ?? this.chaps.get(key), ref.seen);
    return { transport: 'iscsi', portals: this.portals, iqn: ref.iqn, lun: ref.lun };
  }

  /**
   * Fences one node: its ACL goes, its sessions end. The target stays for
   * other nodes. Its CHAP record stays too: the volume's record still names
   * the publish until the unpublish writes it, and a crash before that write
   * is durable leaves a record that reconcile restores, which must then come
   * back with its CHAP, not open. reconcile drops the CHAP record once the
   * volume's record no longer names the node.
   */
  async unexport(volumeId: string, node: NodeIdentity): Promise<void> {
    if (!node.iqn) return;
    await this.helper.revokeInitiator(volumeId, node.iqn);
  }

  /** The last node leaving: the target goes (its sessions with it); the CHAP records stay, as for unexport. */
  async removeTarget(volumeId: string): Promise<void> {
    await this.helper.removeTarget(volumeId);
  }

  /** The volume is being deleted (no publish left to restore): its target and every CHAP record go. */
  async remove(volumeId: string): Promise<void> {
    await this.helper.removeTarget(volumeId);
    await this.forgetChaps(volumeId, undefined);
  }

  private chapVolume(key: string): string {
    return key.slice(0, key.lastIndexOf('.'));
  }

  /**
   * Drops the CHAP records of `volumeId` that no attachment of `v` (the record
   * as it is durable, read under the volume's lock) explains: what an
   * unpublish left for its record write to settle, or a crash left behind.
   */
  private async forgetChaps(volumeId: string, v: VolumeRecord | undefined): Promise<void> {
    const keep = new Set<string>();
    for (const a of v?.attachments ?? []) {
      const iqn = parseNodeId(a.nodeId)?.iqn;
      if (iqn) keep.add(this.chapKey(volumeId, iqn));
    }
    for (const key of [...this.chaps.keys()]) {
      if (this.chapVolume(key) !== volumeId || keep.has(key)) continue;
      await this.chapStore.remove(key);
      this.chaps.delete(key);
    }
  }

  /**
   * After the image grew: makes the exported LUN (if any) show the new size
   * to the logged-in initiators. `force` reopens it even when the daemon's
   * coarse size report (whole MB) already matches.
   */
  async refreshSize(volumeId: string, imagePath: string, force: boolean): Promise<LunRefresh> {
    const r = await this.helper.refreshLunSize(volumeId, imagePath, { force });
    if (r === 'refreshed') this.log.info({ volume_id: volumeId }, 'iSCSI LUN refreshed to the grown image');
    return r;
  }

  /** The daemon's view; throws when tgtd does not answer (Probe uses it). */
  async targets(): Promise<TargetInfo[]> {
    return this.helper.listTargets();
  }

  async health(v: VolumeRecord, imagePath: string): Promise<VolumeHealth | undefined> {
    if (v.attachments.length === 0) return undefined;
    let t: TargetInfo | undefined;
    try {
      t = (await this.helper.listTargets()).find((x) => x.volumeId === v.id);
    } catch (e) {
      return { abnormal: true, message: `cannot read the iSCSI target daemon: ${(e as Error).message}` };
    }
    if (!t) return { abnormal: true, message: `published, but its iSCSI target ${this.helper.iqnFor(v.id)} is missing (reconcile restores it)` };
    const lun = t.luns.find((l) => l.lun === 1 && l.backingPath === imagePath);
    if (!lun) return { abnormal: true, message: `iSCSI target ${t.iqn} does not serve this volume's image as LUN 1` };
    const bytes = (await backingSize(imagePath).catch(() => undefined));
    if (bytes !== undefined && !this.helper.lunShowsSize(lun, bytes))
      return { abnormal: true, message: `iSCSI LUN 1 of ${t.iqn} shows ${lun.sizeBytes !== undefined ? `${lun.sizeBytes} bytes` : `${lun.sizeMB ?? '?'} MB`}, not the image's ${bytes} bytes (an interrupted expand; reconcile refreshes it)` };
    for (const a of v.attachments) {
      const iqn = parseNodeId(a.nodeId)?.iqn;
      if (iqn && !t.acls.includes(iqn)) return { abnormal: true, message: `published to ${a.nodeId}, but its initiator ${iqn} is not in the target's ACL (reconcile restores it)` };
    }
    return undefined;
  }

  /**
   * Makes the daemon match the records: every published volume has its
   * target, LUN and one ACL per publishing node (with its CHAP); targets of
   * volumes that are not published or no longer exist are removed, and ACLs
   * no publish explains are revoked.
   */
  async reconcile(
    volumes: () => Iterable<VolumeRecord>,
    imagePathOf: (id: string) => string,
    withVolumeLock: <T>(volumeId: string, fn: () => Promise<T>) => Promise<T>,
  ): Promise<ReconcileReport> {
    const exported: string[] = [];
    const pass = () => this.reconcileNow(volumes, imagePathOf, withVolumeLock, exported);
    return this.helper.restoring ? this.helper.restoring(pass, () => exported.map((id) => this.helper.iqnFor(id))) : pass();
  }

  /** `exported` gets the id of every published volume whose export this pass settled. */
  private async reconcileNow(
    volumes: () => Iterable<VolumeRecord>,
    imagePathOf: (id: string) => string,
    withVolumeLock: <T>(volumeId: string, fn: () => Promise<T>) => Promise<T>,
    exported: string[],
  ): Promise<ReconcileReport> {
    const report: ReconcileReport = { targetsCreated: [], aclsRestored: [], aclsRevoked: [], targetsRemoved: [], lunsRefreshed: [], errors: [] };
    const daemon = new Map((await this.helper.listTargets()).filter((t) => t.volumeId && this.owns(t.volumeId)).map((t) => [t.volumeId!, t]));
    const published = (v: VolumeRecord | undefined) => !!v && v.attachments.length > 0 && (v.state === 'in-use' || v.state === 'available');
    const ids = new Set<string>(daemon.keys());
    for (const v of volumes()) if (published(v)) ids.add(v.id);
    // Volumes with CHAP records too: an unpublish leaves its node's until the record no longer names it.
    for (const key of this.chaps.keys()) if (this.owns(this.chapVolume(key))) ids.add(this.chapVolume(key));

    // Each volume is settled under its lock, re-reading its record there, so a
    // publish or unpublish running meanwhile is never undone.
    for (const id of ids) {
      await withVolumeLock(id, async () => {
        const v = [...volumes()].find((x) => x.id === id);
        try {
          if (published(v)) {
            await this.settle(v!, daemon.get(id), imagePathOf(id), report);
            exported.push(id);
          } else if (daemon.has(id)) {
            await this.helper.removeTarget(id);
            report.targetsRemoved.push(id);
            // Its ACLs went with it: each was an export no publish explained.
            for (const acl of daemon.get(id)!.acls) report.aclsRevoked.push(`${id} → ${acl}`);
          }
          await this.forgetChaps(id, v);
        } catch (e) {
          report.errors.push(`${id}: ${(e as Error).message}`);
        }
      });
    }
    const changed = report.targetsCreated.length + report.aclsRestored.length + report.aclsRevoked.length + report.targetsRemoved.length + report.lunsRefreshed.length;
    if (changed > 0 || report.errors.length > 0) this.log.warn({ ...report }, 'iSCSI exports reconciled with the records');
    return report;
  }

  private async settle(v: VolumeRecord, have: TargetInfo | undefined, imagePath: string, report: ReconcileReport): Promise<void> {
    const id = v.id;
    if (!have) report.targetsCreated.push(id);
    await this.helper.ensureTarget(id, imagePath);
    // A LUN that shows less than its image (an expand that crashed between
    // growing the image and reopening the LUN) is reopened; the helper checks again under its lock.
    const lun = have?.luns.find((l) => l.lun === 1 && l.backingPath === imagePath);
    const bytes = lun && (await backingSize(imagePath).catch(() => undefined));
    if (lun && bytes !== undefined && !this.helper.lunShowsSize(lun, bytes) && (await this.helper.refreshLunSize(id, imagePath)) === 'refreshed')
      report.lunsRefreshed.push(id);
    const iqns = new Set<string>();
    for (const a of v.attachments) {
      const node = parseNodeId(a.nodeId);
      if (!node?.iqn) continue;
      iqns.add(node.iqn);
      if (!have?.acls.includes(node.iqn)) {
        await this.helper.allowInitiator(id, node.iqn, this.chaps.get(this.chapKey(id, node.iqn)));
        report.aclsRestored.push(`${id} → ${node.iqn}`);
      }
    }
    for (const acl of have?.acls ?? []) {
      if (iqns.has(acl)) continue;
      await this.helper.revokeInitiator(id, acl);
      report.aclsRevoked.push(`${id} → ${acl}`);
    }
  }
}
