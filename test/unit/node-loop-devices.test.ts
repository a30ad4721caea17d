import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Executor } from '../../src/exec/run.js';
import { LoopDevices } from '../../src/node/loop-device.js';

// A sysfs tree shaped like the kernel's /sys/block (loopN/loop/backing_file, loopN/ro), so the
// lookups that replaced `losetup --list` (one process per stage, ~50 ms with 256 loop devices)
// are checked against the same answers losetup gives: by path, and by inode for another path
// to the same file; a deleted (re-created) file is a different one.
let dir: string;
const noExec: Executor = { run: () => Promise.reject(new Error('no host command expected')) };

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'sinter-loops-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function loop(n: number, back: string | undefined, ro = false): Promise<void> {
  const d = join(dir, 'sys', `loop${n}`);
  await mkdir(d, { recursive: true });
  await writeFile(join(d, 'ro'), ro ? '1\n' : '0\n');
  if (back === undefined) return; // an unbound device has no loop/ directory
  await mkdir(join(d, 'loop'));
  await writeFile(join(d, 'loop', 'backing_file'), `${back}\n`);
}

describe('LoopDevices from sysfs', () => {
  it('finds the devices over a file by path and by inode, never a deleted namesake or another file of the same name, in device order', async () => {
    await mkdir(join(dir, 'images'));
    await mkdir(join(dir, 'other'));
    const img = join(dir, 'images', 'file-1.img');
    await writeFile(img, '');
    await writeFile(join(dir, 'other', 'file-1.img'), '');
    await symlink(join(dir, 'images'), join(dir, 'alias'));
    await loop(10, img, true);
    await loop(2, join(dir, 'alias', 'file-1.img')); // another way to the same inode
    await loop(3, `${img} (deleted)`); // the image that was there before
    await loop(4, join(dir, 'other', 'file-1.img')); // same name, other file
    await loop(5, undefined);
    await mkdir(join(dir, 'sys', 'sda'));
    const loops = new LoopDevices(noExec, join(dir, 'sys'));
    expect(await loops.associated(img)).toEqual([
      { device: '/dev/loop2', readOnly: false },
      { device: '/dev/loop10', readOnly: true },
    ]);
    expect(await loops.associated(join(dir, 'images', 'nothing.img'))).toEqual([]);
    expect(await loops.backedBy(img)).toBe('/dev/loop10');
    expect(await loops.list()).toEqual([
      { device: '/dev/loop2', backingFile: join(dir, 'alias', 'file-1.img') },
      { device: '/dev/loop3', backingFile: img },
      { device: '/dev/loop4', backingFile: join(dir, 'other', 'file-1.img') },
      { device: '/dev/loop10', backingFile: img },
    ]);
  });

  it('every scan answers from sysfs as it is now: a device detached, re-bound to another file or newly bound since the last scan is seen so', async () => {
    await mkdir(join(dir, 'images'));
    const a = join(dir, 'images', 'a.img');
    const b = join(dir, 'images', 'b.img');
    await writeFile(a, '');
    await writeFile(b, '');
    await loop(1, a);
    await loop(2, undefined);
    const loops = new LoopDevices(noExec, join(dir, 'sys'));
    expect(await loops.associated(a)).toEqual([{ device: '/dev/loop1', readOnly: false }]);
    // loop1 detached (its loop/ directory goes), loop2 bound to a.
    await rm(join(dir, 'sys', 'loop1', 'loop'), { recursive: true });
    await loop(2, a);
    expect(await loops.associated(a)).toEqual([{ device: '/dev/loop2', readOnly: false }]);
    // loop2 re-bound to b, loop1 bound to a again.
    await rm(join(dir, 'sys', 'loop2', 'loop'), { recursive: true });
    await loop(2, b);
    await loop(1, a);
    expect(await loops.associated(a)).toEqual([{ device: '/dev/loop1', readOnly: false }]);
    expect(await loops.associated(b)).toEqual([{ device: '/dev/loop2', readOnly: false }]);
    expect(await loops.list()).toEqual([
      { device: '/dev/loop1', backingFile: a },
      { device: '/dev/loop2', backingFile: b },
    ]);
  });

  it('a host without sysfs block devices has none', async () => {
    expect(await new LoopDevices(noExec, join(dir, 'missing')).list()).toEqual([]);
  });
});
