/**
 * Keyed mutual exclusion: callers with the same key run one after another,
 * different keys run concurrently. This is Cinder's
 * coordination.synchronized('<volume>-lock') inside one process.
 */
export class KeyedLock {
  private readonly tails = new Map<string, Promise<void>>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const tail = prev.then(() => mine);
    this.tails.set(key, tail);
    await prev;
    try {
      return await fn();
    } finally {
      release();
      // Only the last waiter clears the entry, so the map does not grow with
      // every volume ever seen.
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }

  /** Several keys at once, taken in sorted order so two callers cannot deadlock. */
  async runAll<T>(keys: string[], fn: () => Promise<T>): Promise<T> {
    const sorted = [...new Set(keys)].sort();
    const step = (i: number): Promise<T> =>
      i >= sorted.length ? fn() : this.run(sorted[i]!, () => step(i + 1));
    return step(0);
  }

  get size(): number {
    return this.tails.size;
  }
}
