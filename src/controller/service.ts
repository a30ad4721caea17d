import type { Backend, SnapshotRecord, VolumeRecord } from '../backends/backend.js';
import { encodePublishContext } from '../contracts/publish-context.js';
import { invalidArgument, notFound } from '../errors/domain-error.js';
import type { ControllerImpl } from '../csi/messages.js';
import { parseCapabilities, parseCapability } from './capabilities.js';
import { parseParameters } from './parameters.js';
import { RBD_ATTACH_KEY } from '../contracts/publish-context.js';
import type { SnapshotManager } from './snapshots.js';
import { recordedFsType, type VolumeManager } from './volumes.js';
import { answersAtOnce } from '../csi/call-context.js';

/** The StorageClass key csi-provisioner reads the filesystem from (and passes on, raw, in GetCapacity's parameters). */
const FSTYPE_KEY = 'csi.storage.k8s.io/fstype';

const CONTROLLER_CAPABILITIES = [
  'CREATE_DELETE_VOLUME',
  'PUBLISH_UNPUBLISH_VOLUME',
  'LIST_VOLUMES',
  'GET_CAPACITY',
  'CREATE_DELETE_SNAPSHOT',
  'LIST_SNAPSHOTS',
  'CLONE_VOLUME',
  'PUBLISH_READONLY',
  'EXPAND_VOLUME',
  'LIST_VOLUMES_PUBLISHED_NODES',
  'VOLUME_CONDITION',
  'GET_VOLUME',
  'SINGLE_NODE_MULTI_WRITER',
  // GET_SNAPSHOT (spec 1.11) is served but not advertised: CO sidecars do not
  // use it yet, and csi-sanity built on spec 1.10 fails on capabilities it
  // does not know.
] as const;

function required(v: string | undefined, field: string): string {
  if (typeof v !== 'string' || v === '') throw invalidArgument(`${field} is required`);
  return v;
}

export function timestamp(iso: string): { seconds: number; nanos: number } {
  const ms = Date.parse(iso);
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 };
}

/** A snapshot on the wire; a group snapshot's member names its group (the CO then deletes it only with the group). */
export const wireSnapshot = (s: SnapshotRecord) => ({
  size_bytes: s.sizeBytes,
  snapshot_id: s.id,
  source_volume_id: s.sourceVolumeId,
  creation_time: timestamp(s.createdAt),
  ready_to_use: s.state === 'available',
  group_snapshot_id: s.groupSnapshotId ?? '',
});

export interface ControllerDeps {
  volumes: VolumeManager;
  snapshots: SnapshotManager;
  backends: Map<string, Backend>;
}

/** Maps csi.v1.Controller messages to the volume and snapshot managers. */
export function controllerService({ volumes, snapshots, backends }: ControllerDeps): ControllerImpl {
  const volumeContext = (v: VolumeRecord): Record<string, string> => {
    const ctx: Record<string, string> = { backend: v.backend };
    const fs = recordedFsType(v);
    // For COs that stage without fs_type (the demo, csi-sanity): the node falls back to it.
    if (fs) ctx.fsType = fs;
    if (v.parameters.mkfsOptions) ctx.mkfsOptions = v.parameters.mkfsOptions;
    if (v.parameters.encrypted === 'true') ctx.encrypted = 'true';
    // The node reads it at NodeStageVolume (src/node/service.ts): the attach mode the class asks for.
    if (v.parameters[RBD_ATTACH_KEY] === 'kernel' || v.parameters[RBD_ATTACH_KEY] === 'userspace') ctx[RBD_ATTACH_KEY] = v.parameters[RBD_ATTACH_KEY];
    return ctx;
  };

  const wireVolume = (v: VolumeRecord) => {
    const b = backends.get(v.backend);
    const topo = b && Object.keys(b.topology).length > 0 ? [{ segments: { ...b.topology } }] : [];
    return {
      volume_id: v.id,
      capacity_bytes: v.sizeBytes,
      volume_context: volumeContext(v),
      content_source: v.source ? (v.source.type === 'snapshot' ? { snapshot: { snapshot_id: v.source.id } } : { volume: { volume_id: v.source.id } }) : undefined,
      accessible_topology: topo,
    };
  };

  const volumeStatus = async (v: VolumeRecord) => {
    const health = await backends.get(v.backend)!.volumeHealth(v.id);
    return { published_node_ids: v.attachments.map((a) => a.nodeId), volume_condition: { abnormal: health.abnormal, message: health.message } };
  };

  return {
    ControllerGetCapabilities: answersAtOnce(async () => ({ capabilities: CONTROLLER_CAPABILITIES.map((type) => ({ rpc: { type } })) })),

    async CreateVolume(req) {
      const name = required(req.name, 'name');
      if (name.length > 255) throw invalidArgument('name must be at most 255 characters');
      const capabilities = parseCapabilities(req.volume_capabilities, 'volume_capabilities');
      const parameters = parseParameters(req.parameters);
      let source: { type: 'snapshot' | 'volume'; id: string } | undefined;
      const cs = req.volume_content_source;
      if (cs) {
        if (cs.snapshot) source = { type: 'snapshot', id: required(cs.snapshot.snapshot_id, 'volume_content_source.snapshot.snapshot_id') };
        else if (cs.volume) source = { type: 'volume', id: required(cs.volume.volume_id, 'volume_content_source.volume.volume_id') };
        else throw invalidArgument('volume_content_source must name a snapshot or a volume');
      }
      const v = await volumes.create({
        name,
        capacity: req.capacity_range,
        capabilities: capabilities.map(({ mountFlags: _m, ...c }) => c),
        parameters,
        source,
        topology: req.accessibility_requirements,
      });
      return { volume: wireVolume(v) };
    },

    async DeleteVolume(req) {
      await volumes.delete(required(req.volume_id, 'volume_id'));
      return {};
    },

    async ControllerPublishVolume(req) {
      const volumeId = required(req.volume_id, 'volume_id');
      const nodeId = required(req.node_id, 'node_id');
      const cap = parseCapability(req.volume_capability, 'volume_capability');
      const ctx = await volumes.publish(volumeId, nodeId, cap, req.readonly === true, req.secrets ?? {});
      return { publish_context: encodePublishContext(ctx) };
    },

    async ControllerUnpublishVolume(req) {
      await volumes.unpublish(required(req.volume_id, 'volume_id'), req.node_id || undefined);
      return {};
    },

    async ValidateVolumeCapabilities(req) {
      const volumeId = required(req.volume_id, 'volume_id');
      if (!req.volume_capabilities || req.volume_capabilities.length === 0) throw invalidArgument('volume_capabilities is required and must not be empty');
      const v = volumes.mustGet(volumeId);
      let caps;
      try {
        caps = parseCapabilities(req.volume_capabilities, 'volume_capabilities');
        if (req.parameters) parseParameters(req.parameters);
      } catch (e) {
        return { message: (e as Error).message };
      }
      const fs = recordedFsType(v);
      const clash = caps.find((c) => c.accessType === 'mount' && c.fsType && fs && c.fsType !== fs);
      if (clash) return { message: `volume ${volumeId} is made for ${fs}, not ${clash.fsType}` };
      return { confirmed: { volume_context: req.volume_context ?? {}, volume_capabilities: req.volume_capabilities, parameters: req.parameters ?? {} } };
    },

    async ListVolumes(req) {
      const page = volumes.list(req.max_entries, req.starting_token);
      const entries = await Promise.all(page.items.map(async (v) => ({ volume: wireVolume(v), status: await volumeStatus(v) })));
      return { entries, next_token: page.nextToken };
    },

    async ControllerGetVolume(req) {
      const v = volumes.mustGet(required(req.volume_id, 'volume_id'));
      return { volume: wireVolume(v), status: await volumeStatus(v) };
    },

    async GetCapacity(req) {
      // Capabilities are optional here (csi-provisioner sends none); parameters are
      // the StorageClass's as they stand, refused exactly as CreateVolume refuses them.
      let capabilities = req.volume_capabilities && req.volume_capabilities.length > 0 ? parseCapabilities(req.volume_capabilities, 'volume_capabilities') : [];
      // Without capabilities, the class's filesystem (which csi-provisioner turns into the
      // capability's fs_type) still sets the smallest volume: an xfs volume is never under 300 MiB.
      const fs = req.parameters?.[FSTYPE_KEY];
      if (capabilities.length === 0 && fs) capabilities = [parseCapability({ mount: { fs_type: fs }, access_mode: { mode: 'SINGLE_NODE_WRITER' } }, `parameters["${FSTYPE_KEY}"]`)];
      const c = await volumes.capacity({ parameters: parseParameters(req.parameters), capabilities, topology: req.accessible_topology ?? undefined });
      return { available_capacity: c.availableBytes, maximum_volume_size: { value: c.maximumBytes }, minimum_volume_size: { value: c.minimumBytes } };
    },

    async ControllerExpandVolume(req) {
      const volumeId = required(req.volume_id, 'volume_id');
      const cap = req.volume_capability ? parseCapability(req.volume_capability, 'volume_capability') : undefined;
      const v = await volumes.expand(volumeId, req.capacity_range);
      // The node must refresh the loop device or LUN size in every case, and grow
      // the filesystem for mounts; only an unpublished block volume needs nothing.
      const nodeExpansion = cap ? cap.accessType === 'mount' || v.attachments.length > 0 : true;
      return { capacity_bytes: v.sizeBytes, node_expansion_required: nodeExpansion };
    },

    async CreateSnapshot(req) {
      const name = required(req.name, 'name');
      const source = required(req.source_volume_id, 'source_volume_id');
      const s = await snapshots.create(name, source, req.parameters);
      return { snapshot: wireSnapshot(s) };
    },

    async DeleteSnapshot(req) {
      await snapshots.delete(required(req.snapshot_id, 'snapshot_id'));
      return {};
    },

    async ListSnapshots(req) {
      const page = snapshots.list({ snapshotId: req.snapshot_id || undefined, sourceVolumeId: req.source_volume_id || undefined }, req.max_entries, req.starting_token);
      return { entries: page.items.map((s) => ({ snapshot: wireSnapshot(s) })), next_token: page.nextToken };
    },

    async GetSnapshot(req) {
      const id = required(req.snapshot_id, 'snapshot_id');
      const s = snapshots.get(id);
      if (!s || s.state !== 'available') throw notFound(`snapshot_id: snapshot "${id.slice(0, 128)}" does not exist`);
      return { snapshot: wireSnapshot(s) };
    },
  };
}

