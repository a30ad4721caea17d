import { constants } from 'node:fs';
import { open } from 'node:fs/promises';

/**
 * Whether anything still holds a block device exclusively, asked of the
 * device itself: an O_EXCL open of a block device (without O_CREAT) fails
 * with EBUSY while a mounted filesystem (in any mount namespace), a
 * device-mapper table or another exclusive opener holds it. Constant cost,
 * where finding every mount of a filesystem means the whole mount table,
 * which the kernel writes line by line for every mount on the node.
 *
 * 'free': nothing holds it (the open succeeded and was closed at once; read
 * only, so no udev change event follows), or the device is gone. O_NONBLOCK:
 * a path that is no longer a block device (a FIFO put there) must not hang.
 * Symbolic links are followed: /dev/mapper names are links to dm-N. 'held':
 * EBUSY. 'unknown': any other failure (no permission, not a block device
 * any more): the caller asks the mount table instead.
 */
export async function exclusiveClaim(device: string): Promise<'free' | 'held' | 'unknown'> {
  try {
    const fh = await open(device, constants.O_RDONLY | constants.O_EXCL | constants.O_NONBLOCK);
    try {
      const st = await fh.stat();
      if (!st.isBlockDevice()) return 'unknown';
    } finally {
      await fh.close();
    }
    return 'free';
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EBUSY') return 'held';
    if (code === 'ENOENT' || code === 'ENXIO' || code === 'ENODEV') return 'free';
    return 'unknown';
  }
}
