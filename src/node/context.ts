import { lstat, stat } from 'node:fs/promises';
import { basename, posix } from 'node:path';
import type { Logger } from 'pino';
import type { KeyedLock } from '../csi/locks.js';
import type { Executor } from '../exec/run.js';
import type { Connectors } from './connectors/connector.js';
import type { LuksPbkdf } from './encryption.js';
import type { MountEntry, Mounter, MountSnapshot } from './mount.js';
import type { KubeletPaths } from './paths.js';
import type { ReadOnlyBlock } from './readonly-block.js';
import type { StageRecord, StageState } from './stage-state.js';

/** What the node's volume operations share. Built once by NodeService. */
export interface NodeDeps {
  exec: Executor;
  log: Logger;
  mounter: Mounter;
  state: StageState;
  connectors: Connectors;
  paths: KubeletPaths;
  roBlock: ReadOnlyBlock;
  /**
   * One device, one filesystem decision at a time: volumes whose publish_contexts
   * lead to the same device (a CO's mistake, or a retry under another id) must
   * not probe it blank together and then both format it. Keyed by major:minor.
   */
  devices: KeyedLock;
  /** sysfs and /dev as the SAN connectors see them (node config sysfsRoot, devRoot); default /sys and /dev. */
  sysfsRoot?: string;
  devRoot?: string;
  /** Key-derivation cost of new LUKS headers; unset: cryptsetup's defaults. */
  luksPbkdf?: LuksPbkdf;
}

/** "major:minor" of a device node, as /proc/self/mountinfo writes it; undefined if path is not a block device. */
export async function deviceMajMin(path: string): Promise<string | undefined> {
  try {
    const st = await stat(path, { bigint: true });
    if (!st.isBlockDevice()) return undefined;
    const r = st.rdev;
    const major = ((r >> 8n) & 0xfffn) | ((r >> 32n) & ~0xfffn);
    const minor = (r & 0xffn) | ((r >> 12n) & ~0xffn);
    return `${major}:${minor}`;
  } catch {
    return undefined;
  }
}

/**
 * Whether the directory at path (not followed) lies on the filesystem of the
 * block device: its st_dev is the device's number, as mountinfo's
 * major:minor is. Only ever a yes that the table would also give; btrfs
 * (anonymous device numbers) and anything unexpected answer no.
 */
export async function liesOnDevice(path: string, device: string): Promise<boolean> {
  const [t, dev] = await Promise.all([lstat(path, { bigint: true }).catch(() => undefined), stat(device, { bigint: true }).catch(() => undefined)]);
  return t !== undefined && dev !== undefined && t.isDirectory() && dev.isBlockDevice() && t.dev === dev.rdev;
}

/**
 * The device the volume's data is seen through: the dm-crypt mapping of an
 * encrypted volume, else the connector's device. Mounts and binds show this
 * one; the connector's device is only attached, detached and rescanned.
 */
export function volumeDevice(rec: Pick<StageRecord, 'device' | 'mapper'>): string | undefined {
  if (!rec.device) return undefined;
  return rec.mapper ? `/dev/mapper/${rec.mapper}` : rec.device;
}

/** Block access stages the device as a file inside the staging directory, named after the volume. */
export function blockStagingFile(stagingPath: string, volumeId: string): string {
  return posix.join(stagingPath, volumeId);
}

/** Where the staged volume is visible (resolved form of the staging path, plus the device file for block). */
export function stagedAt(rec: Pick<StageRecord, 'access' | 'volumeId'>, resolvedStaging: string): string {
  return rec.access === 'block' ? blockStagingFile(resolvedStaging, rec.volumeId) : resolvedStaging;
}

/**
 * Every mount that shows the device: its filesystem mounted anywhere (same
 * source or device number), bind mounts of those, and bind mounts of the
 * device node itself (block access: root is /loopN on the /dev filesystem).
 * For btrfs the device number in mountinfo is anonymous, so the staging
 * mount's own number is matched too when given.
 */
export function mountsOfDevice(snap: MountSnapshot, device: string, majMin: string | undefined, staged?: MountEntry): MountEntry[] {
  // Every mount this filter keeps has one of these as a field: only their lines are parsed.
  const fields = [device, `/${basename(device)}`];
  if (majMin !== undefined) fields.push(majMin);
  if (staged !== undefined) fields.push(staged.majMin);
  return snap.withAnyField(fields).filter((e) => showsDevice(e, device, majMin, staged));
}

/**
 * Whether one mount is among mountsOfDevice(…) of the same arguments: the
 * same answer as `mountsOfDevice(snap, …).includes(m)` for an entry of that
 * snapshot, without searching the whole table. Asking about the one mount at
 * a path is what most calls do; with hundreds of mounts on a node each search
 * of the table cost a few hundred microseconds of the event loop.
 */
export function showsDevice(m: MountEntry, device: string, majMin: string | undefined, staged?: Pick<MountEntry, 'majMin' | 'root'>): boolean {
  const node = `/${basename(device)}`;
  return (
    m.source === device ||
    (majMin !== undefined && m.majMin === majMin) ||
    (staged !== undefined && m.majMin === staged.majMin && m.root === staged.root) ||
    (m.root === node && (m.fsType === 'devtmpfs' || m.fsType === 'tmpfs'))
  );
}

export function describeMount(m: MountEntry): string {
  return `${m.source} (${m.fsType}${m.root !== '/' ? `, ${m.root}` : ''})`;
}
