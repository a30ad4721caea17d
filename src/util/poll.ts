/**
 * The one retry/poll helper (os-brick's `utils.retry` is the model): every
 * loop that waits for a device, a session, a daemon or the API server takes
 * its pauses from here, with one set of option names. Time comes from an
 * injectable clock so tests run without real waiting.
 */

/** Where time comes from; tests pass a fake that advances `now` on `sleep`. */
export interface Clock {
  now(): number;
  /** Resolves after `ms`, or at once when `signal` aborts (a loop being stopped must not sit out its pause). */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export const realClock: Clock = {
  now: () => Date.now(),
  sleep: (ms, signal) => {
    if (!signal) return new Promise<void>((r) => setTimeout(r, ms));
    if (signal.aborted) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener('abort', done, { once: true });
    });
  },
};

export interface BackoffOptions {
  /** First pause. */
  initialMs: number;
  /** Largest pause; the pause grows by `factor` until it reaches this. */
  maxMs: number;
  /** Growth per pause (default 2; 1 keeps the pause fixed). */
  factor?: number;
}

/** The pause sequence initial, initial·factor, … capped at max; `reset` starts it over. */
export class Backoff {
  private delay: number;
  constructor(private readonly o: BackoffOptions) {
    if (!(o.initialMs >= 0) || !(o.maxMs >= o.initialMs) || !((o.factor ?? 2) >= 1)) throw new RangeError('backoff: need 0 <= initialMs <= maxMs and factor >= 1');
    this.delay = o.initialMs;
  }
  /** The next pause, and grows the one after. */
  next(): number {
    const d = this.delay;
    this.delay = Math.min(this.delay * (this.o.factor ?? 2), this.o.maxMs);
    return d;
  }
  /** The next pause, without growing it. */
  peek(): number {
    return this.delay;
  }
  reset(): void {
    this.delay = this.o.initialMs;
  }
}

export interface PollOptions extends BackoffOptions {
  /** How long to keep trying, from the first attempt; without it (and without `deadline`) only `maxAttempts` ends the loop. */
  timeoutMs?: number;
  /** An absolute end (clock time); the earlier of this and `timeoutMs` wins. */
  deadline?: number;
  /** At most this many attempts. */
  maxAttempts?: number;
  /** Which thrown errors mean "not yet" (retried) rather than failure (thrown at once). Default: none. */
  retryOn?: (e: unknown) => boolean;
  /** Called after an unfinished attempt that will be followed by another, before the pause (e.g. a rescan). */
  beforeRetry?: (attempt: number) => Promise<void> | void;
  /** Shortest pause (default 0); the pause is otherwise cut to the time left before the deadline. */
  minSleepMs?: number;
  clock?: Clock;
}

export interface Attempt {
  /** 1 for the first attempt. */
  attempt: number;
  /** This is the last attempt: the deadline has passed or this is attempt `maxAttempts`. */
  final: boolean;
}

/**
 * Calls `fn` until it returns something other than `undefined`, and returns
 * that. An attempt starting at or after the deadline (or attempt
 * `maxAttempts`) is the final one; when it too returns `undefined`, so does
 * `poll`. An error `retryOn` accepts counts as "not yet", except on the final
 * attempt, whose error is thrown (so the caller sees the last error, not the
 * first). The pause between attempts follows `Backoff`, cut to the time left.
 */
export async function poll<T>(fn: (a: Attempt) => Promise<T | undefined>, o: PollOptions): Promise<T | undefined> {
  const clock = o.clock ?? realClock;
  const start = clock.now();
  const ends = [o.deadline, o.timeoutMs === undefined ? undefined : start + o.timeoutMs].filter((x): x is number => x !== undefined);
  const deadline = ends.length > 0 ? Math.min(...ends) : Infinity;
  const backoff = new Backoff(o);
  for (let attempt = 1; ; attempt++) {
    const final = clock.now() >= deadline || (o.maxAttempts !== undefined && attempt >= o.maxAttempts);
    try {
      const r = await fn({ attempt, final });
      if (r !== undefined || final) return r;
    } catch (e) {
      if (final || !o.retryOn?.(e)) throw e;
    }
    await o.beforeRetry?.(attempt);
    const left = deadline - clock.now();
    await clock.sleep(Math.max(o.minSleepMs ?? 0, Math.min(backoff.next(), Math.max(0, left))));
  }
}
