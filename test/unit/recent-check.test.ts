import { describe, expect, it } from 'vitest';
import { RecentCheck } from '../../src/util/recent-check.js';

/** A check whose outcome the test sets, counting calls; each call waits for the test to settle it. */
function controlled() {
  const c = {
    calls: 0,
    pending: [] as { ok: () => void; fail: (e: Error) => void }[],
    fn: () => {
      c.calls++;
      return new Promise<void>((ok, fail) => c.pending.push({ ok, fail }));
    },
  };
  return c;
}
const tick = () => new Promise((r) => setImmediate(r));

describe('RecentCheck (Probe answers from a check at most maxAge old; LVM and an exporting file backend)', () => {
  it('makes the first caller wait; later callers within maxAge get that outcome without a new check', async () => {
    let now = 0;
    const c = controlled();
    const rc = new RecentCheck(c.fn, 5_000, () => now);
    const first = rc.run();
    const second = rc.run();
    expect(c.calls).toBe(1);
    c.pending[0].ok();
    await expect(first).resolves.toBeUndefined();
    await expect(second).resolves.toBeUndefined();
    now = 4_000;
    await rc.run();
    expect(c.calls).toBe(1);
  });

  it('past maxAge starts one check in the background, answers from the last outcome meanwhile, then reports the new one (a failure until a check succeeds)', async () => {
    let now = 0;
    const c = controlled();
    const rc = new RecentCheck(c.fn, 5_000, () => now);
    const first = rc.run();
    c.pending[0].ok();
    await first;
    now = 6_000;
    await expect(rc.run()).resolves.toBeUndefined(); // the old outcome, at once
    await rc.run();
    expect(c.calls).toBe(2); // one background check, not one per call
    c.pending[1].fail(new Error('tgtd does not answer'));
    await tick();
    await expect(rc.run()).rejects.toThrow('tgtd does not answer');
    now = 12_000;
    await expect(rc.run()).rejects.toThrow('tgtd does not answer'); // still the last outcome while the next check runs
    c.pending[2].ok();
    await tick();
    await expect(rc.run()).resolves.toBeUndefined();
  });

  it('a first check that fails rejects the callers waiting for it', async () => {
    const c = controlled();
    const rc = new RecentCheck(c.fn, 5_000, () => 0);
    const p = rc.run();
    c.pending[0].fail(new Error('volume group vg0 does not exist'));
    await expect(p).rejects.toThrow('vg0');
  });
});
