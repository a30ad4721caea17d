import type { GroupSnapshotRecord, SnapshotRecord, VolumeRecord } from '../backend.js';
import { isSnapshotRecord, isVolumeRecord } from '../file/records.js';

// A record is one image-meta key on its own image, so the image and its
// record go together (a removed image takes its record along) and the
// controller holds nothing on local disk: any controller replica reads them back.

export const VOLUME_META_KEY = 'sinter.volume';
export const SNAPSHOT_META_KEY = 'sinter.snapshot';

/** What sinter stores beside the CSI record: the clone chain's depth (ancestors), for the flatten limits. */
export interface RbdExtra {
  cloneDepth: number;
  /**
   * On each member of a group snapshot: the whole group's record. A group
   * snapshot has no image of its own to keep metadata on, so every member
   * carries it and a start rebuilds the group from whichever members exist.
   */
  group?: GroupSnapshotRecord;
  /**
   * Ceph client instances seen watching the image while one node alone held a
   * publish, attributed to that node: fenced when its publish ends, even if
   * their watch has lapsed meanwhile (a partitioned client's watch expires
   * after 30 s, but the client can write again when the partition heals).
   */
  clients?: RbdClient[];
  /** Client instances sinter blocklisted, until Ceph drops the entry or their node gets the volume back. */
  fenced?: RbdFenceEntry[];
}

export interface RbdClient {
  nodeId: string;
  /** The instance's address as `rbd status` reports it (`ip:port/nonce`): what `ceph osd blocklist add` takes. */
  address: string;
  /** Its global id (`client.4117`), for messages. */
  client: string;
  seenAt: string;
}

export interface RbdFenceEntry extends RbdClient {
  /** When Ceph drops the blocklist entry on its own (ISO time). */
  until: string;
}

export type StoredVolume = VolumeRecord & { rbd?: RbdExtra };
export type StoredSnapshot = SnapshotRecord & { rbd?: RbdExtra };

export function parseVolume(text: string | undefined): StoredVolume | undefined {
  if (text === undefined) return undefined;
  try {
    const x: unknown = JSON.parse(text);
    return isVolumeRecord(x) ? x : undefined;
  } catch {
    return undefined;
  }
}

export function parseSnapshot(text: string | undefined): StoredSnapshot | undefined {
  if (text === undefined) return undefined;
  try {
    const x: unknown = JSON.parse(text);
    return isSnapshotRecord(x) ? x : undefined;
  } catch {
    return undefined;
  }
}
