import { promises as fs } from 'node:fs';

/**
 * The size in bytes of a target's backing store: a regular file's length, or
 * a block device's capacity (an LV), which stat reports as 0: read from
 * /sys/dev/block/<major>:<minor>/size (512-byte sectors). Undefined when the
 * path does not exist.
 */
export async function backingSize(path: string, sysfsRoot = '/sys'): Promise<number | undefined> {
  const st = await fs.stat(path).catch(() => undefined);
  if (!st) return undefined;
  if (!st.isBlockDevice()) return st.size;
  const major = Math.floor(st.rdev / 256) & 0xfff;
  const minor = (st.rdev & 0xff) | (Math.floor(st.rdev / 4096) & 0xfff00);
  const sectors = Number((await fs.readFile(`${sysfsRoot}/dev/block/${major}:${minor}/size`, 'utf8')).trim());
  return sectors * 512;
}
