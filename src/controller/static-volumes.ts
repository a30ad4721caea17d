import { VOLUME_ID_RE } from '../backends/ids.js';
import { encodePublishContext } from '../contracts/publish-context.js';
import { aborted, invalidArgument, shown } from '../errors/domain-error.js';
import type { ControllerImpl } from '../csi/messages.js';
import { parseCapabilities, parseCapability } from './capabilities.js';
import { isStaticHandle, mustBeWellFormed, parseStaticAttributes, STATIC_HANDLE_RE } from './static-attributes.js';
import type { StaticVolumes } from './static-records.js';
import type { VolumeManager } from './volumes.js';

export { isStaticHandle, parseStaticAttributes, STATIC_HANDLE_RE, STATIC_PREFIX, type StaticAttributes } from './static-attributes.js';
export { StaticVolumes, type StaticVolumeRecord, type StaticVolumesOptions } from './static-records.js';

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
 *     fsType, mkfsOptions, encrypted   optional, as in a StorageClass
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
 *
 * static-attributes.ts parses the handle and the attributes, static-records.ts
 * keeps the publish records; this file routes the controller service's calls.
 */

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
