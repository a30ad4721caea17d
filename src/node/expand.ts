import { realpath } from 'node:fs/promises';
import type { PublishContext } from '../contracts/publish-context.js';
import { failedPrecondition, notFound } from '../errors/domain-error.js';
import { ExecError, type Executor } from '../exec/run.js';
import { volumeDevice, type NodeDeps } from './context.js';
import { resizeEncrypted } from './encryption.js';
import { hostCommand, toHostError } from './host-errors.js';
import { blockDeviceSize } from './stats.js';

/**
 * Grows a mounted filesystem to fill its (already enlarged) device. ext4 grows
 * through the device, xfs and btrfs through their mount point. Growing to the
 * current size is a no-op for all three, so this is safe to repeat.
 */
export async function growFilesystem(exec: Executor, fsType: string, device: string, mountPoint: string): Promise<void> {
  switch (fsType) {
    case 'ext4':
    case 'ext3':
    case 'ext2':
      try {
        await exec.run('resize2fs', [device], { timeoutMs: 30 * 60_000 });
      } catch (e) {
        // Online ext4 resize needs CAP_SYS_RESOURCE; without it the kernel says EPERM.
        if (e instanceof ExecError && /Permission denied to resize/i.test(e.stderr))
          throw failedPrecondition(
            `growing the ext4 filesystem on ${device} failed: the kernel refused the online resize (resize2fs: Permission denied); the node plugin needs CAP_SYS_RESOURCE (run it privileged)`,
          );
        throw toHostError(`growing the ext4 filesystem on ${device}`, e);
      }
      return;
    case 'xfs':
      await hostCommand(`growing the xfs filesystem at ${mountPoint}`, exec.run('xfs_growfs', [mountPoint], { timeoutMs: 30 * 60_000 }));
      return;
    case 'btrfs':
      await hostCommand(`growing the btrfs filesystem at ${mountPoint}`, exec.run('btrfs', ['filesystem', 'resize', 'max', mountPoint], { timeoutMs: 30 * 60_000 }));
      return;
    default:
      throw failedPrecondition(`cannot grow a ${fsType} filesystem; sinter grows ext4, xfs and btrfs`);
  }
}

export interface ExpandRequest {
  volumeId: string;
  volumePath: string;
  requiredBytes?: number;
  /** Access type from the request's capability, if sent; else the staged one. */
  access?: 'mount' | 'block';
}

/**
 * NodeExpandVolume: make the kernel see the larger backing storage, then grow
 * the filesystem through the staging mount. Returns the device's new size.
 */
export async function expandVolume(d: NodeDeps, req: ExpandRequest, decode: (c: Record<string, string>) => PublishContext): Promise<number> {
  const rec = await d.state.get(req.volumeId);
  if (!rec) throw notFound(`volume ${req.volumeId} is not staged on this node`);
  if (rec.phase !== 'staged' || !rec.device)
    throw failedPrecondition(`volume ${req.volumeId} is not fully staged on this node (${rec.lastError ?? rec.phase}); stage it again before expanding`);
  const ctx = decode(rec.publishContext);
  const connector = d.connectors.for(ctx);
  await connector.rescan(ctx, rec.device);
  // The requested size is the volume's (the connector's device); an encrypted
  // volume's mapping is that less its LUKS header, grown after the device.
  const size = await blockDeviceSize(d.exec, rec.device);
  if (req.requiredBytes && size < req.requiredBytes) {
    // Never grow the filesystem to the old size and call that success.
    const stale = await connector.staleSizeReason?.(ctx);
    throw failedPrecondition(
      `volume ${req.volumeId}'s device ${rec.device} is ${size} bytes, less than the requested ${req.requiredBytes}; ` +
        (stale ?? 'expand the volume on the controller (ControllerExpandVolume) first'),
    );
  }
  if (rec.mapper) await resizeEncrypted(d, rec.mapper);
  const dev = volumeDevice(rec)!;
  if (rec.access === 'block') await d.roBlock.refresh(dev);
  if ((req.access ?? rec.access) === 'block' || rec.access === 'block') return size;
  const staging = await realpath(rec.stagingPath).catch(() => rec.stagingPath);
  const snap = await d.mounter.snapshot();
  if (!snap.at(staging)) throw failedPrecondition(`volume ${req.volumeId} is not mounted at its staging path ${rec.stagingPath}; stage it again before expanding`);
  d.log.info({ volume_id: req.volumeId, device: dev, fsType: rec.fsType, bytes: size }, 'growing filesystem');
  await growFilesystem(d.exec, rec.fsType ?? 'ext4', dev, staging);
  return size;
}
