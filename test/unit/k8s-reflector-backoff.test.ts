import { describe, expect, it } from 'vitest';
import type { Watch } from '@kubernetes/client-node';
import { pino } from 'pino';
import { Reflector, type ListPage, type ResourceKind } from '../../src/k8s/reflector.js';
import type { Clock } from '../../src/util/poll.js';

const log = pino({ level: 'silent' });

/** A clock that only moves when slept on, recording every pause (and whether it was given the stop signal). */
function fakeClock(): Clock & { sleeps: number[]; signals: (AbortSignal | undefined)[] } {
  let t = 1_000_000;
  const c = {
    sleeps: [] as number[],
    signals: [] as (AbortSignal | undefined)[],
    now: () => t,
    sleep: async (ms: number, signal?: AbortSignal) => {
      c.sleeps.push(ms);
      c.signals.push(signal);
      t += ms;
      await new Promise((r) => setImmediate(r));
    },
  };
  return c;
}

/** A list that fails `failures` times (connection refused), then answers an empty page. */
function kind(failures: number): ResourceKind<string> & { calls: number } {
  const k = {
    kind: 'Thing',
    path: '/apis/example/v1/things',
    calls: 0,
    list: async (): Promise<ListPage> => {
      if (++k.calls <= failures) throw Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:6443'), { code: 'ECONNREFUSED' });
      return { items: [], metadata: { resourceVersion: '7' } };
    },
    project: (o: unknown) => String(o),
  };
  return k;
}

/**
 * Watch modelled on client-node 1.4.0 (dist/watch.js, Watch.watch):
 * resolves to the request's AbortController; `done` is called when the stream ends, also on abort.
 * `endAtOnce` watches end without an event (a server that closes every watch right away).
 */
function watcher(endAtOnce: number): Watch & { opened: number } {
  const w = {
    opened: 0,
    watch: async (_path: string, _q: unknown, _onEvent: unknown, done: (err: unknown) => void) => {
      const ac = new AbortController();
      if (++w.opened <= endAtOnce) setImmediate(() => done(undefined));
      else ac.signal.addEventListener('abort', () => done(undefined));
      return ac;
    },
  };
  return w as unknown as Watch & { opened: number };
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 2000 && !cond(); i++) await new Promise((r) => setTimeout(r, 1));
  if (!cond()) throw new Error(`timed out waiting for ${what}`);
}

describe('Reflector pauses come from the one backoff helper (src/util/poll.ts)', () => {
  it('backs off 100, 200, 350, 350 ms over failed lists, starts over after a success, and pauses the first pause after a watch that ends at once', async () => {
    const clock = fakeClock();
    const k = kind(4);
    const w = watcher(1);
    const r = new Reflector(k, w, { log, initialBackoffMs: 100, maxBackoffMs: 350, clock });
    r.start();
    await until(() => w.opened === 2, 'the second watch');
    expect(clock.sleeps).toEqual([100, 200, 350, 350, 100]);
    expect(r.state).toMatchObject({ synced: true, live: true });
    expect(r.counters.failures).toBe(4);
    await r.stop();
    // Every pause was given the reflector's stop signal, so stop() can end it.
    expect(clock.signals.every((s) => s?.aborted === true)).toBe(true);
  });

  it('stop() ends a long pause at once (a 60 s backoff on the real clock)', async () => {
    const k = kind(Infinity);
    const r = new Reflector(k, watcher(0), { log, initialBackoffMs: 60_000, maxBackoffMs: 60_000 });
    r.start();
    await until(() => r.counters.failures === 1, 'the first failure');
    const t0 = performance.now();
    await r.stop();
    expect(performance.now() - t0).toBeLessThan(2_000);
    expect(k.calls).toBe(1);
    expect(r.state).toMatchObject({ live: false, error: 'stopped' });
  });
});
