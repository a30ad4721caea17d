import { mkdtempSync, readdirSync, readFileSync, rmSync, mkdirSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { removeFileDurable, SyncDir, writeFileAtomic } from '../../src/store/atomic-file.js';

const openFds = () => readdirSync('/proc/self/fd').length;

describe('SyncDir: a directory held open for fsync', () => {
  let base: string;
  beforeEach(() => {
    base = mkdtempSync(join(tmpdir(), 'sinter-syncdir-'));
  });
  afterEach(() => rmSync(base, { recursive: true, force: true }));

  it('writes and removes records through one descriptor, and close() lets it go', async () => {
    const dir = new SyncDir(base);
    const before = openFds();
    await writeFileAtomic(join(base, 'a.json'), '{"a":1}\n', dir);
    await writeFileAtomic(join(base, 'a.json'), '{"a":2}\n', dir);
    await writeFileAtomic(join(base, 'b.json'), '{"b":1}\n', dir);
    expect(openFds()).toBe(before + 1);
    expect(readFileSync(join(base, 'a.json'), 'utf8')).toBe('{"a":2}\n');
    expect(await removeFileDurable(join(base, 'b.json'), dir)).toBe(true);
    expect(await removeFileDurable(join(base, 'b.json'), dir)).toBe(false);
    expect(readdirSync(base)).toEqual(['a.json']);
    await dir.close();
    expect(openFds()).toBe(before);
    // Usable again after close: it reopens.
    await writeFileAtomic(join(base, 'c.json'), '{}\n', dir);
    await dir.close();
    expect(openFds()).toBe(before);
  });

  it('refuses a file outside its directory', async () => {
    const dir = new SyncDir(base);
    mkdirSync(join(base, 'sub'));
    await expect(writeFileAtomic(join(base, 'sub', 'x.json'), '{}', dir)).rejects.toThrow(/is not in/);
    await dir.close();
  });

  it('does not cache a failed open: a directory that appears later works', async () => {
    const later = join(base, 'later');
    const dir = new SyncDir(later);
    await expect(dir.sync()).rejects.toMatchObject({ code: 'ENOENT' });
    mkdirSync(later);
    await writeFileAtomic(join(later, 'x.json'), '{}', dir);
    expect(existsSync(join(later, 'x.json'))).toBe(true);
    await dir.close();
  });
});
