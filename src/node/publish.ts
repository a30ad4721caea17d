import { lstat, mkdir, open, rmdir, stat, unlink } from 'node:fs/promises';
import { alreadyExists, failedPrecondition, invalidArgument } from '../errors/domain-error.js';
import { describeMount, deviceMajMin, showsDevice, stagedAt, volumeDevice, type NodeDeps } from './context.js';
import { isReadOnlyMode, type Capability } from '../csi/capability.js';
import { doing } from './host-errors.js';
import { ReadOnlyBlock } from './readonly-block.js';
import { isReadOnly, type MountEntry, type MountSnapshot } from './mount.js';
import type { PublishRecord, StageRecord } from './stage-state.js';
import { shown } from '../errors/domain-error.js';

export interface PublishRequest {
  volumeId: string;
  stagingPath: string;
  stagingResolved: string;
  targetPath: string;
  targetResolved: string;
  capability: Capability;
  readonly: boolean;
}

/** Whether one of two resolved paths is the other or lies inside it. */
const overlaps = (a: string, b: string) => a === b || a.startsWith(b.endsWith('/') ? b : `${b}/`) || b.startsWith(a.endsWith('/') ? a : `${a}/`);

function stagedMount(snap: MountSnapshot, rec: StageRecord, stagingResolved: string): MountEntry | undefined {
  return snap.at(stagedAt(rec, stagingResolved));
}

async function isOurs(snap: MountSnapshot, rec: StageRecord, stagingResolved: string, m: MountEntry, entry?: PublishRecord): Promise<boolean> {
  if (entry?.roDevice && ReadOnlyBlock.isViewMount(m, entry.roDevice)) return true;
  const staged = stagedMount(snap, rec, stagingResolved);
  const dev = volumeDevice(rec);
  if (!dev) return staged !== undefined && m.majMin === staged.majMin && m.root === staged.root;
  return showsDevice(m, dev, await deviceMajMin(dev), staged);
}

/**
 * Which other volume of this node claims path: its staging path (the path itself, a path inside it, or one
 * holding it) or, with `publishes`, a target it is published at. Two volume ids whose publish_contexts
 * lead to one device (a CO's mistake, a forged request) each see the other's mounts as their own; without
 * this, one id's unpublish took down the other's stage, under a record that still said staged.
 * The staging paths come from memory; the publishes mean reading every record, so only the rare callers
 * that find a mount of their device they did not record ask for them.
 */
async function claimedByAnother(d: NodeDeps, volumeId: string, path: string, resolved: string, publishes: boolean): Promise<string | undefined> {
  for (const [other, staging] of await d.state.stagingPaths()) {
    if (other !== volumeId && (overlaps(path, staging) || overlaps(resolved, staging))) return `volume ${other}'s staging path (or lies inside or holds it)`;
  }
  if (!publishes) return undefined;
  for (const rec of (await d.state.list()).records) {
    if (rec.volumeId !== volumeId && rec.publishes.some((p) => p.targetPath === path)) return `where volume ${rec.volumeId} is published`;
  }
  return undefined;
}

const bigStat = (p: string, follow: boolean) => (follow ? stat(p, { bigint: true }) : lstat(p, { bigint: true })).catch(() => undefined);

/**
 * Whether the mount at target (a mount point) shows this volume, told by the kernel's identities alone: for mount
 * access the directory there lies on the volume device's filesystem (its st_dev is the device's number, as
 * mountinfo's major:minor is); for block access the file there is the device node itself or the publish's recorded
 * read-only view. Only ever a yes that showsDevice/isOurs would also give; a no (btrfs's anonymous device numbers,
 * anything unexpected) sends the caller to the mount table.
 */
async function showsVolumeAt(rec: StageRecord, entry: PublishRecord, target: string): Promise<boolean> {
  const dev = volumeDevice(rec);
  if (!dev) return false;
  const [t, d] = await Promise.all([bigStat(target, false), bigStat(dev, true)]);
  if (!t || !d?.isBlockDevice()) return false;
  if (rec.access === 'mount') return t.isDirectory() && t.dev === d.rdev;
  if (!t.isBlockDevice()) return false;
  if (t.rdev === d.rdev) return true;
  if (!entry.roDevice) return false;
  const ro = await bigStat(entry.roDevice, true);
  return ro !== undefined && ro.isBlockDevice() && t.rdev === ro.rdev;
}

/**
 * NodePublishVolume: bind the staged volume (the staging mount, or the
 * staged device file for block access) onto target_path, read-only when
 * asked. The target is recorded before it is mounted, so unpublish after a
 * crash knows what sinter created.
 */
export async function publishVolume(d: NodeDeps, req: PublishRequest): Promise<void> {
  const { volumeId, capability: cap } = req;
  const rec = await d.state.get(volumeId);
  if (!rec || rec.phase !== 'staged') {
    const why = !rec ? 'is not staged on this node' : rec.phase === 'error' ? `failed to stage (${rec.lastError ?? 'unknown error'})` : `is still being ${rec.phase === 'staging' ? 'staged' : 'unstaged'}`;
    throw failedPrecondition(`volume ${volumeId} ${why}; call NodeStageVolume with staging_target_path ${req.stagingPath} first`);
  }
  if (rec.stagingPath !== req.stagingPath)
    throw failedPrecondition(`volume ${volumeId} is staged at ${rec.stagingPath}, not at ${shown(req.stagingPath, 200)}; publish it from there`);
  // The staging mount itself (or a path inside the volume's filesystem, or one holding it) is no place for a
  // publish: its unpublish would unmount the stage under every other publish, and a target inside the
  // staging mount would be made in the user's data.
  if (overlaps(req.targetResolved, req.stagingResolved))
    throw invalidArgument(`target_path ${shown(req.targetPath, 200)} is, contains or lies inside staging_target_path ${shown(req.stagingPath, 200)}; give each its own directory`);
  const claim = await claimedByAnother(d, volumeId, req.targetPath, req.targetResolved, false);
  if (claim) throw failedPrecondition(`target_path ${shown(req.targetPath, 200)} is ${claim}; publish volume ${volumeId} at a path of its own`);
  if (rec.access !== cap.access)
    throw failedPrecondition(`volume ${volumeId} was staged for ${rec.access} access and cannot be published for ${cap.access} access; unstage and stage it again to change that`);
  if (cap.access === 'mount' && cap.fsType !== undefined && cap.fsType !== rec.fsType)
    throw failedPrecondition(`volume ${volumeId} is staged with a ${rec.fsType} filesystem, not ${cap.fsType}`);

  // A reader-only access mode makes the publish read-only even if the CO did not say so.
  const readonly = req.readonly || isReadOnlyMode(cap.mode) || isReadOnlyMode(rec.accessMode);
  const source = stagedAt(rec, req.stagingResolved);
  // Whether each path is a mount point is asked of the path itself; the table is read only when the target already has a mount.
  if (!(await d.mounter.mounted(source)))
    throw failedPrecondition(`volume ${volumeId} is recorded as staged but nothing is mounted at ${source}; call NodeStageVolume again to repair it`);

  const entry: PublishRecord = rec.publishes.find((p) => p.targetPath === req.targetPath) ?? { targetPath: req.targetPath, readonly, created: null };
  const snap = (await d.mounter.mounted(req.targetResolved)) ? await d.mounter.snapshot() : undefined;
  const existing = snap?.at(req.targetResolved);
  if (snap && existing) {
    if (!(await isOurs(snap, rec, req.stagingResolved, existing, entry)))
      throw alreadyExists(`target_path ${req.targetPath} already has another volume mounted (${describeMount(existing)})`);
    // A read-only publish cut short between its bind and its read-only remount (a crash) left a
    // read-write bind that the record already calls read-only: the kubelet never heard it succeed,
    // so no pod uses it. Take the bind down and publish again; anything else keeps its mode.
    const unfinished = readonly && !isReadOnly(existing) && rec.publishes.includes(entry) && entry.readonly;
    if (unfinished) await d.mounter.umount(req.targetResolved);
    else {
      if (isReadOnly(existing) !== readonly)
        throw alreadyExists(
          `volume ${volumeId} is already published at ${req.targetPath} ${isReadOnly(existing) ? 'read-only' : 'read-write'}; unpublish it first to publish it ${readonly ? 'read-only' : 'read-write'}`,
        );
      if (!rec.publishes.includes(entry)) {
        // A mount of this volume's device that its record does not list may be another id's publish of the same device.
        const theirs = await claimedByAnother(d, volumeId, req.targetPath, req.targetResolved, true);
        if (theirs) throw alreadyExists(`target_path ${shown(req.targetPath, 200)} is ${theirs}; publish volume ${volumeId} at a path of its own`);
        rec.publishes.push(entry);
        await d.state.put(rec);
      }
      return;
    }
  }

  await doing(`preparing target_path ${req.targetPath}`, async () => {
    const st = await lstat(req.targetResolved).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined;
      throw e;
    });
    if (cap.access === 'mount') {
      if (!st) {
        await mkdir(req.targetResolved, { recursive: true, mode: 0o750 });
        entry.created ??= 'dir';
      } else if (!st.isDirectory()) throw failedPrecondition(`target_path ${req.targetPath} exists and is not a directory; a mount volume is published on a directory`);
    } else {
      if (!st) {
        await mkdir(req.targetResolved.slice(0, req.targetResolved.lastIndexOf('/')) || '/', { recursive: true, mode: 0o750 });
        const fh = await open(req.targetResolved, 'a', 0o600);
        await fh.close();
        entry.created ??= 'file';
      } else if (st.isDirectory()) throw failedPrecondition(`target_path ${req.targetPath} is a directory; a block volume is published on a file`);
    }
  });
  entry.readonly = readonly;
  if (!rec.publishes.includes(entry)) rec.publishes.push(entry);
  await d.state.put(rec);
  let from = source;
  const dev = volumeDevice(rec);
  if (cap.access === 'block' && readonly && dev) {
    // The record names the read-only view before anything is bound to it.
    const ro = await d.roBlock.attach(dev);
    if (entry.roDevice !== ro) {
      entry.roDevice = ro;
      await d.state.put(rec);
    }
    from = ro;
  }
  try {
    await d.mounter.bind(from, req.targetResolved, readonly);
  } catch (e) {
    // The locks keep sinter's own calls off the staging path meanwhile; something outside sinter (a person, another
    // tool) took the stage away. That is the CSI spec's "not staged" (FAILED_PRECONDITION), not a fault of this node.
    const now = await d.mounter.snapshot().catch(() => undefined);
    if (now && !now.at(source))
      throw failedPrecondition(`volume ${volumeId} is no longer mounted at its staging path ${rec.stagingPath} (it went away during this publish); call NodeStageVolume again, then retry`);
    throw e;
  }
}

export interface UnpublishRequest {
  volumeId: string;
  targetPath: string;
  targetResolved: string;
  targetExists: boolean;
}

/**
 * NodeUnpublishVolume: unmount target_path and delete it (the spec makes the
 * plugin delete it). Gone already → success. A mount there that is not this
 * volume is left alone.
 */
export async function unpublishVolume(d: NodeDeps, req: UnpublishRequest, stagingResolved: (rec: StageRecord) => Promise<string>): Promise<void> {
  const { volumeId } = req;
  const rec = await d.state.get(volumeId);
  const entry = rec?.publishes.find((p) => p.targetPath === req.targetPath);
  const forget = async () => {
    if (rec && rec.publishes.some((p) => p.targetPath === req.targetPath)) {
      rec.publishes = rec.publishes.filter((p) => p.targetPath !== req.targetPath);
      await d.state.put(rec);
    }
  };
  if (!req.targetExists) {
    if (rec?.access === 'block' && rec.device) await d.roBlock.release(volumeDevice(rec)!, await d.mounter.snapshot());
    return forget();
  }

  // Unpublish never takes down the stage: the staging path is NodeUnstageVolume's.
  if (rec && overlaps(req.targetResolved, await stagingResolved(rec)))
    throw failedPrecondition(`target_path ${shown(req.targetPath, 200)} is volume ${volumeId}'s staging path (or holds it); NodeUnstageVolume tears that down, not NodeUnpublishVolume`);
  // Nor another volume's stage: not its mount, not its directory.
  const staged = await claimedByAnother(d, volumeId, req.targetPath, req.targetResolved, false);
  if (staged) throw failedPrecondition(`target_path ${shown(req.targetPath, 200)} is ${staged}, not a publish of volume ${volumeId}; sinter leaves it alone`);
  // Nothing mounted at the target, or a recorded publish the kernel shows as this volume's device (the identity of
  // the mounted directory or device node): no need to read the whole mount table. Anything else is judged from it.
  const here = await d.mounter.mountPoint(req.targetResolved);
  if (here === true && rec && entry && (await showsVolumeAt(rec, entry, req.targetResolved))) {
    await d.mounter.umountStack(req.targetResolved);
  } else if (here !== false) {
    const snap = await d.mounter.snapshot();
    const m = snap.at(req.targetResolved);
    if (m) {
      if (!rec)
        throw failedPrecondition(
          `target_path ${req.targetPath} has a mount (${describeMount(m)}) but this node has no record of volume ${volumeId}; sinter will not unmount it: check it and unmount it by hand if it is stale`,
        );
      if (!(await isOurs(snap, rec, await stagingResolved(rec), m, entry)))
        throw failedPrecondition(`target_path ${req.targetPath} has another volume mounted (${describeMount(m)}), not ${volumeId}; sinter leaves it alone`);
      // A mount of this volume's device that its record does not list may be another id's publish of the same device.
      const theirs = entry ? undefined : await claimedByAnother(d, volumeId, req.targetPath, req.targetResolved, true);
      if (theirs) throw failedPrecondition(`target_path ${shown(req.targetPath, 200)} is ${theirs}, not a publish of volume ${volumeId}; sinter leaves it alone`);
      await d.mounter.umountAll(req.targetResolved, snap);
    }
  }
  if (rec?.access === 'block' && rec.device) await d.roBlock.release(volumeDevice(rec)!, await d.mounter.snapshot());
  await doing(`removing target_path ${req.targetPath}`, async () => {
    const st = await lstat(req.targetResolved).catch(() => undefined);
    if (!st) return;
    if (st.isDirectory()) {
      try {
        await rmdir(req.targetResolved);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOTEMPTY')
          throw failedPrecondition(`target_path ${req.targetPath} is unmounted but still holds files (written while the volume was not mounted); sinter does not delete them: move them away and retry`);
        throw e;
      }
    } else if (st.isFile() && st.size === 0) {
      await unlink(req.targetResolved);
    } else if (st.isBlockDevice()) {
      await unlink(req.targetResolved);
    } else {
      throw failedPrecondition(`target_path ${req.targetPath} is unmounted but is a non-empty file; sinter does not delete it`);
    }
  });
  await forget();
}

