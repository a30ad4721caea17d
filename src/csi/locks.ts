import { aborted, DomainError } from '../errors/domain-error.js';
import { callStopped, currentCall } from './call-context.js';

/**
 * Keyed mutual exclusion: callers with the same key run one after another,
 * different keys run concurrently. This is Cinder's
 * coordination.synchronized('<volume>-lock') inside one process.
 *
 * Two ways in. `run` waits its turn: for work sinter starts itself and for a
 * second lock an RPC takes in order. `exclusive` is the RPC's own lock on its
 * volume, name or path: when another call already holds it, the answer is
 * ABORTED at once (CSI: "an operation is already pending for the volume"; the
 * sidecars retry with backoff), so retries cannot pile up behind a slow
 * operation (ceph-csi's idlocker, aws-ebs-csi-driver's inflight).
 * Both stop waiting when the RPC's deadline passes or its caller cancels.
 */
export class KeyedLock {
  private readonly tails = new Map<string, Promise<void>>();
  /** Keys an RPC holds or waits for through exclusive(). */
  private readonly rpcHeld = new Set<string>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    checkCall();
    const prev = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const tail = prev.then(() => mine);
    this.tails.set(key, tail);
    const done = () => {
      release();
      // Only the last waiter clears the entry, so the map does not grow with
      // every volume ever seen.
      if (this.tails.get(key) === tail) this.tails.delete(key);
    };
    try {
      await waitFor(prev);
    } catch (e) {
      // Gave up waiting: hand the turn on as soon as it would have come.
      void prev.then(done);
      throw e;
    }
    try {
      checkCall();
      return await fn();
    } finally {
      done();
    }
  }

  /** Several keys at once, taken in sorted order so two callers cannot deadlock. */
  async runAll<T>(keys: string[], fn: () => Promise<T>): Promise<T> {
    const sorted = [...new Set(keys)].sort();
    const step = (i: number): Promise<T> => (i >= sorted.length ? fn() : this.run(sorted[i]!, () => step(i + 1)));
    return step(0);
  }

  /**
   * The RPC's own locks: ABORTED at once, naming what is busy, while another
   * RPC holds (or waits for) any of the keys (`describe` turns a key into
   * words for the caller). Work sinter does by itself (reconciliation), which
   * holds its locks briefly, is waited for instead: a retry would find it
   * again, and the sidecars would log a failure nobody caused.
   */
  async exclusive<T>(keys: string | string[], fn: () => Promise<T>, describe: (key: string) => string = (k) => k): Promise<T> {
    checkCall();
    const all = [...new Set(typeof keys === 'string' ? [keys] : keys)];
    const busy = all.find((k) => this.rpcHeld.has(k));
    if (busy !== undefined) throw aborted(`an operation on ${describe(busy)} is already in progress; retry later`);
    for (const k of all) this.rpcHeld.add(k);
    try {
      return await this.runAll(all, fn);
    } finally {
      for (const k of all) this.rpcHeld.delete(k);
    }
  }

  get size(): number {
    return this.tails.size;
  }
}

function stoppedError(why: 'deadline' | 'cancelled'): DomainError {
  return why === 'deadline'
    ? new DomainError('deadline-exceeded', 'the call\'s deadline passed before the work could start; nothing was changed')
    : new DomainError('cancelled', 'the caller cancelled the call before the work could start; nothing was changed');
}

const MAX_TIMER_MS = 2 ** 31 - 1;

function checkCall(): void {
  const why = callStopped();
  if (why) throw stoppedError(why);
}

/** Waits for `p`, or rejects when the current call's deadline passes or it is cancelled. */
function waitFor(p: Promise<void>): Promise<void> {
  const ctx = currentCall();
  if (!ctx) return p;
  return new Promise<void>((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    const stop = (why: 'deadline' | 'cancelled') => {
      cleanup();
      reject(stoppedError(why));
    };
    // grpc-js cancels a call whose deadline passed: name the deadline then.
    const onAbort = () => stop(Date.now() >= ctx.deadline ? 'deadline' : 'cancelled');
    // Called only from callbacks (timer, cancellation, p), never before `off` below is set.
    const cleanup = () => {
      if (timer) clearTimeout(timer);
      off();
    };
    const left = ctx.deadline - Date.now();
    // setTimeout fires at once past 2^31-1 ms; a deadline that far away is none.
    if (left < MAX_TIMER_MS) timer = setTimeout(() => stop('deadline'), Math.max(0, left));
    const off = ctx.onCancel(onAbort);
    p.then(() => {
      cleanup();
      resolve();
    }, reject);
  });
}
