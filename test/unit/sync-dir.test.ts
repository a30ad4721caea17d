import { fsync, mkdtempSync, readdirSync, readFileSync, rmSync, mkdirSync, existsSync } from 'node:fs';
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
  it('concurrent syncs share fsyncs, and none returns on an fsync that started before it was called (group commit)', async () => {
    // Each fsync is real, held 30 ms longer so that callers pile up behind it.
    const started: number[] = [];
    const dir = new SyncDir(base, (fd, cb) => {
      started.push(performance.now());
      fsync(fd, (e) => setTimeout(() => cb(e), 30));
    });
    const calls = Array.from({ length: 64 }, async (_, i) => {
      await new Promise((r) => setTimeout(r, (i % 8) * 10));
      const at = performance.now();
      await dir.sync();
      return at;
    });
    const ats = await Promise.all(calls);
    // 64 callers over ~70 ms, each fsync ~30 ms+: a handful of fsyncs, not 64.
    expect(started.length).toBeLessThanOrEqual(6);
    expect(started.length).toBeGreaterThanOrEqual(2);
    // Every caller's answer came from an fsync that began at or after its call: the last fsync began after the last call.
    expect(started[started.length - 1]).toBeGreaterThanOrEqual(Math.max(...ats));
    await dir.close();
  });

  it('a failed fsync fails the callers it served; the next caller gets a new one', async () => {
    let n = 0;
    const dir = new SyncDir(base, (fd, cb) => {
      n++;
      if (n === 1) setTimeout(() => cb(Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' })), 20);
      else fsync(fd, cb);
    });
    const first = dir.sync();
    const second = dir.sync(); // arrived while the first ran: waits for a fsync of its own
    await expect(first).rejects.toMatchObject({ code: 'EIO' });
    await expect(second).resolves.toBeUndefined();
    expect(n).toBe(2);
    await dir.close();
  });
});
