import type { KubeApis } from './client.js';
import { abortable } from './client.js';
import type { ResourceKind } from './reflector.js';

/*
 * What sinter keeps of the three kinds it mirrors. Objects arrive both from the
 * typed list calls (deserialized: dates are Date objects) and from the watch
 * stream (raw JSON), so everything is read defensively and reduced to plain
 * strings and booleans.
 */

/** A VolumeAttachment whose spec.attacher is our driver. */
export interface VolumeAttachmentInfo {
  name: string;
  nodeName: string;
  /** spec.source.persistentVolumeName */
  pvName?: string;
  /** spec.source.inlineVolumeSpec.csi.volumeHandle (migrated in-tree inline volumes) */
  inlineVolumeHandle?: string;
  /** status.attached */
  attached: boolean;
  /** metadata.deletionTimestamp is set: Kubernetes has decided to detach. */
  deleting: boolean;
}

/** Our driver's entry in a CSINode's spec.drivers: the node id the node plugin reported. */
export interface CsiNodeInfo {
  nodeName: string;
  nodeId: string;
  /** The topology keys the kubelet recorded from our NodeGetInfo (their values are the Node's labels). */
  topologyKeys: string[];
}

/** A PersistentVolume of our driver: its name → spec.csi.volumeHandle. */
export interface PersistentVolumeInfo {
  name: string;
  volumeHandle: string;
}

type Json = Record<string, unknown>;
const obj = (v: unknown): Json | undefined => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Json) : undefined);
const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);

export function projectVolumeAttachment(driverName: string, o: unknown): VolumeAttachmentInfo | undefined {
  const md = obj(obj(o)?.metadata);
  const spec = obj(obj(o)?.spec);
  const name = str(md?.name);
  if (!name || !spec || spec.attacher !== driverName) return undefined;
  const source = obj(spec.source);
  const inlineCsi = obj(obj(source?.inlineVolumeSpec)?.csi);
  const status = obj(obj(o)?.status);
  return {
    name,
    nodeName: str(spec.nodeName) ?? '',
    pvName: str(source?.persistentVolumeName),
    inlineVolumeHandle: inlineCsi && (inlineCsi.driver === undefined || inlineCsi.driver === driverName) ? str(inlineCsi.volumeHandle) : undefined,
    attached: status?.attached === true,
    deleting: md?.deletionTimestamp !== undefined && md.deletionTimestamp !== null && md.deletionTimestamp !== '',
  };
}

export function projectCsiNode(driverName: string, o: unknown): CsiNodeInfo | undefined {
  const name = str(obj(obj(o)?.metadata)?.name);
  const drivers = obj(obj(o)?.spec)?.drivers;
  if (!name || !Array.isArray(drivers)) return undefined;
  const mine = drivers.map(obj).find((d) => d?.name === driverName);
  const nodeId = str(mine?.nodeID);
  const keys = Array.isArray(mine?.topologyKeys) ? (mine.topologyKeys as unknown[]).filter((k): k is string => typeof k === 'string' && k !== '') : [];
  return nodeId ? { nodeName: name, nodeId, topologyKeys: keys } : undefined;
}

export function projectPersistentVolume(driverName: string, o: unknown): PersistentVolumeInfo | undefined {
  const name = str(obj(obj(o)?.metadata)?.name);
  const csi = obj(obj(obj(o)?.spec)?.csi);
  if (!name || !csi || csi.driver !== driverName) return undefined;
  const volumeHandle = str(csi.volumeHandle);
  return volumeHandle ? { name, volumeHandle } : undefined;
}

export const VOLUME_ATTACHMENTS_PATH = '/apis/storage.k8s.io/v1/volumeattachments';
export const CSI_NODES_PATH = '/apis/storage.k8s.io/v1/csinodes';
export const PERSISTENT_VOLUMES_PATH = '/api/v1/persistentvolumes';

export function volumeAttachmentKind(apis: KubeApis, driverName: string): ResourceKind<VolumeAttachmentInfo> {
  return {
    kind: 'VolumeAttachment',
    path: VOLUME_ATTACHMENTS_PATH,
    list: ({ limit, continueToken, signal }) => apis.storage.listVolumeAttachment({ limit, _continue: continueToken }, abortable(signal)),
    project: (o) => projectVolumeAttachment(driverName, o),
  };
}

export function csiNodeKind(apis: KubeApis, driverName: string): ResourceKind<CsiNodeInfo> {
  return {
    kind: 'CSINode',
    path: CSI_NODES_PATH,
    list: ({ limit, continueToken, signal }) => apis.storage.listCSINode({ limit, _continue: continueToken }, abortable(signal)),
    project: (o) => projectCsiNode(driverName, o),
  };
}

export function persistentVolumeKind(apis: KubeApis, driverName: string): ResourceKind<PersistentVolumeInfo> {
  return {
    kind: 'PersistentVolume',
    path: PERSISTENT_VOLUMES_PATH,
    list: ({ limit, continueToken, signal }) => apis.core.listPersistentVolume({ limit, _continue: continueToken }, abortable(signal)),
    project: (o) => projectPersistentVolume(driverName, o),
  };
}
