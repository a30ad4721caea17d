import { openSync, writeSync, fsyncSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { FileBackend } from '../../src/backends/file/backend.js';
import { newVolumeId } from '../../src/backends/ids.js';
import { HostExecutor } from '../../src/exec/run.js';
import { fileBackendConfig } from '../helpers/backend-config.js';
import { tempDir } from '../helpers/scratch-fs.js';

const MiB = 1024 * 1024;
const log = pino({ level: 'silent' });
const t = tempDir('sinter-used-');
afterAll(() => t.cleanup());

/** Writes real blocks into a sparse image, as a node writing through its loop device would. */
function fill(path: string, bytes: number): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, Buffer.alloc(bytes, 0xab), 0, bytes, 0);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

describe('file backend used bytes (sinter_backend_used_bytes)', () => {
  it('counts allocated blocks, not sizes; a scrape right after a write gets the last count, a later one the new', async () => {
    const b = new FileBackend(fileBackendConfig('used', join(t.dir, 'data')), new HostExecutor({ mode: 'direct', defaultTimeoutMs: 30_000 }, log), log);
    await b.start();
    const caps = [{ accessType: 'block' as const, accessMode: 'SINGLE_NODE_WRITER' }];
    const a = await b.createVolume({ id: newVolumeId('used'), name: 'a', sizeBytes: 64 * MiB, parameters: {}, capabilities: caps });
    await b.createVolume({ id: newVolumeId('used'), name: 'b', sizeBytes: 64 * MiB, parameters: {}, capabilities: caps });
    // Two 64 MiB sparse images: promised 128 MiB, using next to nothing.
    expect((await b.capacity()).provisionedBytes).toBe(128 * MiB);
    expect(await b.usedBytes()).toBeLessThan(MiB);

    fill(b.imagePath(a.id), 4 * MiB);
    // Counted a moment ago: answered from memory, no new stat of every image.
    const stat = vi.spyOn((await import('node:fs')).promises, 'stat');
    expect(await b.usedBytes()).toBeLessThan(MiB);
    expect(stat).not.toHaveBeenCalled();
    // After the count's age limit (1 s for a few volumes) the next call starts a recount in the background.
    await new Promise((r) => setTimeout(r, 1100));
    await b.usedBytes();
    await expect.poll(() => b.usedBytes(), { timeout: 5000 }).toBeGreaterThanOrEqual(4 * MiB);
    // The recount is what stat-ed the images (so the check above could see a stat).
    expect(stat).toHaveBeenCalledWith(b.imagePath(a.id));
    stat.mockRestore();
    expect(await b.usedBytes()).toBeLessThan(5 * MiB);
  });
});
