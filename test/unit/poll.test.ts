import { describe, expect, it } from 'vitest';
import { Backoff, poll, realClock, type Clock } from '../../src/util/poll.js';

/** A clock that only moves when slept on, recording every pause. */
function fakeClock(start = 1000): Clock & { sleeps: number[]; t: number } {
  const c = {
    t: start,
    sleeps: [] as number[],
    now: () => c.t,
    sleep: async (ms: number) => {
      c.sleeps.push(ms);
      c.t += ms;
    },
  };
  return c;
}

describe('Backoff', () => {
  it('doubles from the first pause up to the cap, and starts over on reset', () => {
    const b = new Backoff({ initialMs: 100, maxMs: 700 });
    expect([b.next(), b.next(), b.next(), b.next(), b.next()]).toEqual([100, 200, 400, 700, 700]);
    expect(b.peek()).toBe(700);
    b.reset();
    expect([b.peek(), b.peek(), b.next()]).toEqual([100, 100, 100]);
  });

  it('grows by the given factor; factor 1 keeps the pause fixed', () => {
    const b = new Backoff({ initialMs: 4, maxMs: 20, factor: 1.5 });
    expect([b.next(), b.next(), b.next(), b.next(), b.next(), b.next()]).toEqual([4, 6, 9, 13.5, 20, 20]);
    const f = new Backoff({ initialMs: 50, maxMs: 50, factor: 1 });
    expect([f.next(), f.next()]).toEqual([50, 50]);
  });

  it('refuses a cap below the first pause or a shrinking factor', () => {
    expect(() => new Backoff({ initialMs: 10, maxMs: 5 })).toThrow(RangeError);
    expect(() => new Backoff({ initialMs: 10, maxMs: 50, factor: 0.5 })).toThrow(RangeError);
  });
});

describe('poll', () => {
  it('stops on the first result and does not pause after it', async () => {
    const clock = fakeClock();
    let calls = 0;
    const r = await poll(async () => (++calls === 3 ? 'found' : undefined), { initialMs: 100, maxMs: 1000, timeoutMs: 10_000, clock });
    expect(r).toBe('found');
    expect(calls).toBe(3);
    expect(clock.sleeps).toEqual([100, 200]);
  });

  it('doubles the pause up to the cap, cuts the last pause to the deadline, then makes one final attempt', async () => {
    const clock = fakeClock();
    const seen: { attempt: number; final: boolean; at: number }[] = [];
    const r = await poll(
      async (a) => {
        seen.push({ ...a, at: clock.t - 1000 });
        return undefined;
      },
      { initialMs: 100, maxMs: 400, timeoutMs: 1500, clock },
    );
    expect(r).toBeUndefined();
    expect(clock.sleeps).toEqual([100, 200, 400, 400, 400]);
    expect(seen.map((s) => s.at)).toEqual([0, 100, 300, 700, 1100, 1500]);
    expect(seen.filter((s) => s.final).map((s) => s.attempt)).toEqual([6]);
  });

  it('takes the earlier of an absolute deadline and a timeout', async () => {
    const clock = fakeClock();
    let calls = 0;
    await poll(async () => void calls++, { initialMs: 100, maxMs: 100, timeoutMs: 10_000, deadline: 1250, clock });
    expect(clock.t).toBe(1250);
    expect(clock.sleeps).toEqual([100, 100, 50]);
    expect(calls).toBe(4);
  });

  it('keeps a minimum pause even at the deadline', async () => {
    const clock = fakeClock();
    const seen: boolean[] = [];
    await poll(
      async (a) => {
        seen.push(a.final);
        clock.t += 45; // an attempt that itself takes time, overrunning the deadline
        return undefined;
      },
      { initialMs: 50, maxMs: 50, timeoutMs: 40, minSleepMs: 1, clock },
    );
    expect(clock.sleeps).toEqual([1]);
    expect(seen).toEqual([false, true]);
  });

  it('ends after maxAttempts without pausing after the last', async () => {
    const clock = fakeClock();
    let calls = 0;
    const r = await poll(async () => void calls++, { initialMs: 250, maxMs: 1000, maxAttempts: 4, clock });
    expect(r).toBeUndefined();
    expect(calls).toBe(4);
    expect(clock.sleeps).toEqual([250, 500, 1000]);
  });

  it('retries only the errors retryOn accepts, and surfaces the last one', async () => {
    const clock = fakeClock();
    let n = 0;
    const busy = (e: unknown) => (e as Error).message.startsWith('busy');
    await expect(
      poll(
        async () => {
          throw new Error(`busy ${++n}`);
        },
        { initialMs: 10, maxMs: 10, maxAttempts: 3, retryOn: busy, clock },
      ),
    ).rejects.toThrow('busy 3');
    expect(clock.sleeps).toEqual([10, 10]);

    n = 0;
    await expect(
      poll(
        async () => {
          if (++n === 2) throw new Error('broken');
          throw new Error('busy');
        },
        { initialMs: 10, maxMs: 10, maxAttempts: 5, retryOn: busy, clock },
      ),
    ).rejects.toThrow('broken');
    expect(n).toBe(2);
  });

  it('returns a result that follows retried errors', async () => {
    const clock = fakeClock();
    let n = 0;
    const r = await poll(
      async () => {
        if (++n < 3) throw new Error('busy');
        return n;
      },
      { initialMs: 10, maxMs: 10, timeoutMs: 1000, retryOn: () => true, clock },
    );
    expect(r).toBe(3);
  });

  it('runs beforeRetry between unfinished attempts only', async () => {
    const clock = fakeClock();
    const hooks: number[] = [];
    let n = 0;
    await poll(async () => (++n === 3 ? true : undefined), { initialMs: 1, maxMs: 1, timeoutMs: 100, beforeRetry: (a) => void hooks.push(a), clock });
    expect(hooks).toEqual([1, 2]);
  });
});

describe('realClock.sleep', () => {
  it('waits its time without a signal or with one that stays quiet', async () => {
    const t0 = performance.now();
    await realClock.sleep(30);
    await realClock.sleep(30, new AbortController().signal);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(55);
  });

  it('ends a long pause as soon as its signal aborts, and does not start one on an aborted signal', async () => {
    const ac = new AbortController();
    const t0 = performance.now();
    const pause = realClock.sleep(60_000, ac.signal);
    setTimeout(() => ac.abort(), 20);
    await pause;
    await realClock.sleep(60_000, ac.signal);
    expect(performance.now() - t0).toBeLessThan(5_000);
  });
});
