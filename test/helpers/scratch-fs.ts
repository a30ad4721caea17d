import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';

export interface ScratchFs {
  dir: string;
  device: string;
  cleanup(): Promise<void>;
}

/**
 * A real filesystem on a loop device, mounted under a temp dir, for tests that
 * need xfs reflinks or a filesystem of a given size. cleanup() always unmounts
 * and detaches, even after a failed test.
 */
export async function scratchFs(type: 'xfs' | 'ext4' | 'btrfs', sizeMiB: number): Promise<ScratchFs> {
  const base = mkdtempSync(join(tmpdir(), `sinter-${type}-`));
  const img = join(base, 'fs.img');
  const dir = join(base, 'mnt');
  writeFileSync(img, '');
  await execa('truncate', ['-s', `${sizeMiB}M`, img]);
  const mkfs = type === 'xfs' ? ['mkfs.xfs', '-q', '-m', 'reflink=1', img] : type === 'btrfs' ? ['mkfs.btrfs', '-q', img] : ['mkfs.ext4', '-q', '-F', img];
  await execa(mkfs[0], mkfs.slice(1));
  const device = (await execa('losetup', ['--find', '--show', img])).stdout.trim();
  await execa('mkdir', ['-p', dir]);
  try {
    await execa('mount', [device, dir]);
  } catch (e) {
    await execa('losetup', ['-d', device]).catch(() => undefined);
    throw e;
  }
  return {
    dir,
    device,
    async cleanup() {
      await execa('umount', ['-l', dir]).catch(() => undefined);
      await execa('losetup', ['-d', device]).catch(() => undefined);
      rmSync(base, { recursive: true, force: true });
    },
  };
}

export function tempDir(prefix = 'sinter-'): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
