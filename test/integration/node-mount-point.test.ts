import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Executor } from '../../src/exec/run.js';
import { isMountPoint, Mounter } from '../../src/node/mount.js';
import { tempDir } from '../helpers/scratch-fs.js';

// Real mounts (tmpfs, bind mounts, a device-node bind) under a temp directory: the answer that replaces a read of the
// whole mount table for stage and publish must agree with the table on every kind of mount the node makes.
// Only reads are asked of the mounter here; the mounts are made by the test itself.
const NO_EXEC = {} as Executor;

describe('isMountPoint / Mounter.mounted and at: a mount point told from the path itself', () => {
  let t: { dir: string; cleanup(): void };
  const mounted: string[] = [];
  const mounter = new Mounter(NO_EXEC);
  const sh = (cmd: string, args: string[]) => execa(cmd, args);
  const mount = async (args: string[], at: string) => {
    await sh('mount', [...args, at]);
    mounted.push(at);
  };

  beforeEach(() => {
    t = tempDir('sinter-mountpoint-');
  });
  afterEach(async () => {
    for (const m of mounted.reverse()) await sh('umount', ['-l', m]).catch(() => undefined);
    mounted.length = 0;
    t.cleanup();
  });

  /** The mount table's answer, to compare with. */
  const inTable = async (p: string) => (await mounter.snapshot()).at(p) !== undefined;

  it('a plain directory is not one; a tmpfs mounted on it is, and is no longer once unmounted', async () => {
    const d = join(t.dir, 'plain');
    mkdirSync(d);
    expect(await isMountPoint(d)).toBe(false);
    expect(await mounter.mounted(d)).toBe(false);
    expect(await mounter.at(d)).toBeUndefined();
    await mount(['-t', 'tmpfs', 'tmpfs'], d);
    expect(await isMountPoint(d)).toBe(true);
    expect(await mounter.mounted(d)).toBe(await inTable(d));
    expect((await mounter.at(d))?.fsType).toBe('tmpfs');
    await sh('umount', [d]);
    mounted.pop();
    expect(await isMountPoint(d)).toBe(false);
  });

  it('a bind mount of a directory of the same filesystem counts (a device-number check would miss it)', async () => {
    const src = join(t.dir, 'src');
    const dst = join(t.dir, 'dst');
    mkdirSync(src);
    mkdirSync(dst);
    await mount(['--bind', src], dst);
    expect(await isMountPoint(dst)).toBe(true);
    expect(await mounter.mounted(dst)).toBe(true);
    expect((await mounter.at(dst))?.mountPoint).toBe(dst);
    // The source itself is still not a mount point.
    expect(await isMountPoint(src)).toBe(false);
  });

  it('a directory inside a mount is not a mount point; the mount itself is', async () => {
    const top = join(t.dir, 'top');
    mkdirSync(top);
    await mount(['-t', 'tmpfs', 'tmpfs'], top);
    const inner = join(top, 'inner');
    mkdirSync(inner);
    expect(await isMountPoint(inner)).toBe(false);
    expect(await mounter.at(inner)).toBeUndefined();
    expect(await isMountPoint(top)).toBe(true);
  });

  it("a block volume's device-node bind on a file counts, and the device is not opened to tell", async () => {
    const file = join(t.dir, 'vol');
    writeFileSync(file, '');
    // /dev/null stands in for the device node: binding a device node onto a file is what a block stage does.
    await mount(['--bind', '/dev/null'], file);
    expect(await isMountPoint(file)).toBe(true);
    expect(await mounter.mounted(file)).toBe(true);
    expect((await mounter.at(file))?.root).toBe('/null');
  });

  it('a name missing from an existing directory is no mount point (a publish target before it is made); a path under a missing directory, or /, cannot be told that way, and the table answers', async () => {
    expect(await isMountPoint(join(t.dir, 'missing'))).toBe(false);
    expect(await mounter.mounted(join(t.dir, 'missing'))).toBe(false);
    expect(await mounter.at(join(t.dir, 'missing'))).toBeUndefined();
    expect(await isMountPoint(join(t.dir, 'missing', 'deeper'))).toBeUndefined();
    expect(await mounter.mounted(join(t.dir, 'missing', 'deeper'))).toBe(false);
    expect(await isMountPoint('/')).toBeUndefined();
    expect(await mounter.mounted('/')).toBe(true);
  });

  it('a mounter reading another process\'s table (nsenter mode) never asks its own view of the path', async () => {
    const d = join(t.dir, 'ns');
    mkdirSync(d);
    await mount(['-t', 'tmpfs', 'tmpfs'], d);
    // A table without this mount (here: an empty file): the answer must come from that table, not from this process.
    const table = join(t.dir, 'mountinfo');
    writeFileSync(table, '');
    const other = new Mounter(NO_EXEC, table);
    expect(await other.mounted(d)).toBe(false);
    expect(await other.at(d)).toBeUndefined();
  });
});
