import { readFile, readlink, realpath, stat, statfs } from 'node:fs/promises';
import { basename } from 'node:path';
import type { PublishContext } from '../contracts/publish-context.js';
import { notFound } from '../errors/domain-error.js';
import type { Executor } from '../exec/run.js';
import type { DeviceCondition } from './connectors/connector.js';
import { describeMount, deviceMajMin, showsDevice, stagedAt, volumeDevice, type NodeDeps } from './context.js';
import type { MountEntry, MountSnapshot } from './mount.js';
import type { StageRecord } from './stage-state.js';
import { doing, hostCommand } from './host-errors.js';
import { ReadOnlyBlock } from './readonly-block.js';

export interface Usage {
  unit: 'BYTES' | 'INODES';
  total: number;
  used: number;
  available: number;
}

/** Byte and inode usage of the filesystem mounted at path. Inodes are left out when the filesystem has no fixed count (btrfs reports 0). */
export async function filesystemUsage(path: string): Promise<Usage[]> {
  const s = await statfs(path, { bigint: true });
  const bytes = (n: bigint) => Number(n * s.bsize);
  const out: Usage[] = [
    { unit: 'BYTES', total: bytes(s.blocks), used: bytes(s.blocks - s.bfree), available: bytes(s.bavail) },
  ];
  if (s.files > 0n) out.push({ unit: 'INODES', total: Number(s.files), used: Number(s.files - s.ffree), available: Number(s.ffree) });
  return out;
}

/** Size in bytes of a block device (or a file bind-mounted from one). */
export async function blockDeviceSize(exec: Executor, path: string): Promise<number> {
  const res = await hostCommand(`reading the size of ${path}`, exec.run('blockdev', ['--getsize64', path]));
  const n = Number(res.stdout.trim());
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`blockdev --getsize64 ${path} printed ${JSON.stringify(res.stdout.trim())}`);
  return n;
}

export interface VolumeStats {
  usage: Usage[];
  condition: { abnormal: boolean; message: string };
}

/**
 * NodeGetVolumeStats for a volume_path the caller already checked exists:
 * usage of what is mounted there, and whether the volume looks healthy
 * (device still attached, path still mounted). The path must show this volume.
 */
export async function volumeStats(
  d: NodeDeps,
  req: { volumeId: string; volumePath: string; resolved: string },
  decode: (c: Record<string, string>) => PublishContext,
): Promise<VolumeStats> {
  const rec = await d.state.get(req.volumeId);
  if (!rec) throw notFound(`volume ${req.volumeId} is not staged on this node`);
  const snap = await d.mounter.snapshot();
  const m = snap.at(req.resolved);
  let device: DeviceCondition = { abnormal: true, attached: false, message: 'the volume has no attached device on this node' };
  if (rec.device) {
    const ctx = decode(rec.publishContext);
    device = await d.connectors.for(ctx).condition(ctx, rec.device);
  }
  if (!m) {
    return { usage: [], condition: { abnormal: true, message: `nothing is mounted at ${req.volumePath}; ${device.abnormal ? device.message : 'the volume is not published there'}` } };
  }
  const vdev = volumeDevice(rec);
  const majMin = vdev ? await deviceMajMin(vdev) : undefined;
  const entry = rec.publishes.find((p) => p.targetPath === req.volumePath);
  const ro = entry?.roDevice !== undefined && ReadOnlyBlock.isViewMount(m, entry.roDevice);
  if (vdev && !ro && !showsDevice(m, vdev, majMin))
    throw notFound(`volume_path ${req.volumePath} shows another volume (${describeMount(m)}), not ${req.volumeId}`);
  // A block volume is published as a device node; a directory there is some filesystem's mount, whatever device it shows.
  if (rec.access === 'block' && !(await stat(req.resolved).then((st) => st.isBlockDevice(), () => false)))
    throw notFound(`volume_path ${req.volumePath} is not a block device, and volume ${req.volumeId} is staged for block access`);
  const usage =
    rec.access === 'block'
      ? [{ unit: 'BYTES' as const, total: await blockDeviceSize(d.exec, req.resolved), used: 0, available: 0 }]
      : await doing(`reading usage of ${req.volumePath}`, () => filesystemUsage(req.resolved));
  if (device.abnormal) return { usage, condition: device };
  const fsProblem = await filesystemCondition(rec, snap, m, majMin, entry?.readonly === true);
  if (fsProblem) return { usage, condition: { abnormal: true, message: fsProblem } };
  if (rec.phase !== 'staged') return { usage, condition: { abnormal: true, message: `the volume's last node operation failed: ${rec.lastError ?? rec.phase}` } };
  return { usage, condition: { abnormal: false, message: 'volume is attached and mounted' } };
}

/** The kernel's name of a block device (loop0, dm-3, sdb) from its major:minor, for /sys/fs/<fs>/<name>. */
async function kernelName(majMin: string): Promise<string | undefined> {
  return readlink(`/sys/dev/block/${majMin}`).then((l) => basename(l), () => undefined);
}

const readSys = (path: string) => readFile(path, 'utf8').then((t) => t.trim(), () => undefined);

/** ext4's own error record (/sys/fs/ext4/<dev>/): how many errors since the last fsck, and where the last one was. */
async function ext4Errors(name: string): Promise<{ count: number; last?: string } | undefined> {
  const dir = `/sys/fs/ext4/${name}`;
  const count = Number(await readSys(`${dir}/errors_count`));
  if (!Number.isFinite(count)) return undefined;
  if (count === 0) return { count };
  return { count, last: await readSys(`${dir}/last_error_func`) };
}

/**
 * What is wrong with the staged filesystem beyond its device: the staging
 * mount gone, or the filesystem turned read-only by the kernel after an I/O
 * or metadata error (ext4 errors=remount-ro: the superblock goes read-only
 * while the mounts stay "rw"; newer kernels say emergency_ro), or ext4
 * errors recorded since the last fsck. Read from the mount table already in
 * hand and two small sysfs files: kubelet asks every minute per volume.
 */
async function filesystemCondition(
  rec: StageRecord,
  snap: MountSnapshot,
  published: MountEntry,
  majMin: string | undefined,
  publishedReadOnly: boolean,
): Promise<string | undefined> {
  const stagingResolved = await realpath(rec.stagingPath).catch(() => rec.stagingPath);
  const stagedPath = stagedAt(rec, stagingResolved);
  const staged = snap.at(stagedPath);
  // The staging mount shows the recorded device, or at least what the pod's mount shows (a layer between, e.g. a mapper device).
  const stagedOk =
    staged !== undefined && ((rec.device !== undefined && showsDevice(staged, rec.device, majMin)) || (staged.majMin === published.majMin && staged.root === published.root));
  if (!stagedOk) {
    const now = staged ? `it now shows ${describeMount(staged)}` : 'nothing is mounted there';
    return `the volume's staging mount at ${rec.stagingPath} is gone (${now}; unmounted outside sinter): the pod still reaches the volume through its own mount, but no other pod on this node can mount it. Delete the pods using it on this node so kubelet unstages the volume and stages it again`;
  }
  if (rec.access !== 'mount') return undefined;
  const ref = staged ?? published;
  const superRo = ref.superOptions.includes('ro') || ref.superOptions.includes('emergency_ro');
  // Mounted read-only on purpose (a reader-only access mode) is not a fault.
  const meantRo = ref.options.includes('ro') || (ref === published && publishedReadOnly);
  // The device the filesystem itself sits on (mountinfo's number), whatever layer the record names.
  const name = ref.fsType === 'ext4' ? await kernelName(ref.majMin) : undefined;
  const errors = name ? await ext4Errors(name) : undefined;
  const where = `${ref.fsType} filesystem on ${rec.device ?? ref.source}`;
  const recorded = errors && errors.count > 0 ? `; the filesystem recorded ${errors.count} error${errors.count > 1 ? 's' : ''}${errors.last ? `, the last in ${errors.last}` : ''}` : '';
  if (superRo && !meantRo)
    return `the ${where} turned read-only after an I/O or filesystem error${recorded}: the pod's writes fail with "Read-only file system". Look for the device in this node's kernel log (dmesg), stop the pods using the volume, and run fsck.${ref.fsType} on it before it is used again`;
  if (errors && errors.count > 0)
    return `the ${where} is writable but recorded ${errors.count} error${errors.count > 1 ? 's' : ''} since it was last checked${errors.last ? ` (the last in ${errors.last})` : ''}: data may be damaged. Stop the pods using the volume and run fsck.ext4 on it`;
  return undefined;
}
