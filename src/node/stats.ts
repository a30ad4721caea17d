import { stat, statfs } from 'node:fs/promises';
import type { PublishContext } from '../contracts/publish-context.js';
import { notFound } from '../csi/errors.js';
import type { Executor } from '../exec/run.js';
import type { DeviceCondition } from './connectors/connector.js';
import { describeMount, deviceMajMin, mountsOfDevice, volumeDevice, type NodeDeps } from './context.js';
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
  if (vdev && !ro && !mountsOfDevice(snap, vdev, majMin).includes(m))
    throw notFound(`volume_path ${req.volumePath} shows another volume (${describeMount(m)}), not ${req.volumeId}`);
  // A block volume is published as a device node; a directory there is some filesystem's mount, whatever device it shows.
  if (rec.access === 'block' && !(await stat(req.resolved).then((st) => st.isBlockDevice(), () => false)))
    throw notFound(`volume_path ${req.volumePath} is not a block device, and volume ${req.volumeId} is staged for block access`);
  const usage =
    rec.access === 'block'
      ? [{ unit: 'BYTES' as const, total: await blockDeviceSize(d.exec, req.resolved), used: 0, available: 0 }]
      : await doing(`reading usage of ${req.volumePath}`, () => filesystemUsage(req.resolved));
  if (device.abnormal) return { usage, condition: device };
  if (rec.phase !== 'staged') return { usage, condition: { abnormal: true, message: `the volume's last node operation failed: ${rec.lastError ?? rec.phase}` } };
  return { usage, condition: { abnormal: false, message: 'volume is attached and mounted' } };
}
