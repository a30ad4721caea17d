import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureGuest, GuestError, runInGuest } from '../vm/harness.mjs';

/**
 * A guest whose boot sticks is killed and booted again, not waited on for the
 * whole run (CI once lost 40 min to one that never printed a line). A boot
 * here takes 12-20 s, so a 1.5 s boot limit sticks on every attempt: what the
 * caller then sees is one retry logged, a GuestError that says so, and no qemu
 * left behind.
 */
describe('VM harness boot watchdog (qemu TCG guest, test/vm/harness.mjs)', () => {
  // On a fresh machine the first guest-driven file builds the guest (minutes, under a lock): not this test's time.
  beforeAll(() => void ensureGuest(), 25 * 60_000);

  it('kills a boot that does not reach its command, boots again, and gives up after the attempts', async () => {
    const logs: string[] = [];
    // Its own temp root: other guest-driven files boot guests of their own meanwhile.
    const root = mkdtempSync(join(tmpdir(), 'sinter-vm-boot-test-'));
    const t0 = Date.now();
    const err = await runInGuest({
      command: 'echo never',
      timeoutMs: 120_000,
      bootTimeoutMs: 1500,
      bootAttempts: 2,
      services: [],
      tmpDir: root,
      log: (m) => logs.push(m),
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(GuestError);
    expect((err as GuestError).bootTimedOut).toBe(true);
    expect((err as Error).message).toMatch(/did not finish booting within 1\.5 s/);
    expect(logs.filter((l) => /boot attempt 1 of 2 stuck/.test(l))).toHaveLength(1);
    expect(logs.some((l) => /attempt 2/.test(l))).toBe(false);
    // Two 1.5 s boots, not the 120 s run limit.
    expect(Date.now() - t0).toBeLessThan(30_000);
    expect(spawnSync('pgrep', ['-f', root], { encoding: 'utf8' }).stdout.trim()).toBe('');
    expect(readdirSync(root)).toEqual([]);
    rmSync(root, { recursive: true, force: true });
  }, 60_000);
});
