import { constants, promises as fs } from 'node:fs';
import type { Executor } from '../../exec/run.js';

const NO_REFLINK = new Set(['ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'EINVAL', 'ENOSYS', 'ENOTTY', 'EBADF']);

/**
 * Copies an image for a snapshot or a clone. A reflink shares every block
 * copy-on-write (xfs with reflink=1, btrfs) and costs nothing up front; where the
 * filesystem cannot, `cp --sparse=always` copies only the written extents so a
 * thin volume stays thin.
 */
export async function copyImage(src: string, dst: string, exec: Executor): Promise<'reflink' | 'sparse-copy'> {
  try {
    await fs.copyFile(src, dst, constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE_FORCE);
    return 'reflink';
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? '';
    if (!NO_REFLINK.has(code)) throw e;
    await fs.rm(dst, { force: true });
  }
  await exec.run('cp', ['--sparse=always', '--reflink=never', '--no-preserve=all', '--', src, dst]);
  return 'sparse-copy';
}
