import { describe, expect, it } from 'vitest';
import { KeyedLock } from '../../src/csi/locks.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('KeyedLock', () => {
  it('runs callers with one key one at a time, in order', async () => {
    const lock = new KeyedLock();
    const log: string[] = [];
    await Promise.all(
      [1, 2, 3].map((i) =>
        lock.run('vol', async () => {
          log.push(`start${i}`);
          await sleep(5);
          log.push(`end${i}`);
        }),
      ),
    );
    expect(log).toEqual(['start1', 'end1', 'start2', 'end2', 'start3', 'end3']);
    expect(lock.size).toBe(0);
  });

  it('runs different keys concurrently and survives a throwing holder', async () => {
    const lock = new KeyedLock();
    let inside = 0;
    let most = 0;
    const work = (k: string) =>
      lock.run(k, async () => {
        inside++;
        most = Math.max(most, inside);
        await sleep(5);
        inside--;
      });
    await Promise.all([work('a'), work('b')]);
    expect(most).toBe(2);
    await expect(lock.run('a', async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    await expect(lock.run('a', async () => 7)).resolves.toBe(7);
  });

  it('takes several keys in sorted order so opposite orders do not deadlock', async () => {
    const lock = new KeyedLock();
    const r = await Promise.all([lock.runAll(['x', 'y'], async () => 1), lock.runAll(['y', 'x'], async () => 2)]);
    expect(r).toEqual([1, 2]);
  });
});
