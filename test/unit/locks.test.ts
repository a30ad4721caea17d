import { describe, expect, it } from 'vitest';
import { KeyedLock } from '../../src/csi/locks.js';
import { runInCall } from '../../src/csi/call-context.js';

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

describe('KeyedLock.exclusive (busy volumes answer ABORTED) and the call deadline', () => {
  const call = (deadline: number, ac = new AbortController()) => ({
    deadline,
    get cancelled() {
      return ac.signal.aborted;
    },
    onCancel(cb: () => void) {
      ac.signal.addEventListener('abort', cb, { once: true });
      return () => ac.signal.removeEventListener('abort', cb);
    },
  });

  it('answers ABORTED at once while another call holds any of the keys, and runs when they are free', async () => {
    const lock = new KeyedLock();
    let release!: () => void;
    const holder = lock.exclusive(['volume:v1', 'path:/a'], () => new Promise<void>((r) => (release = r)));
    await expect(lock.exclusive(['volume:v1'], async () => 'ran', (k) => `volume ${k.slice(7)}`)).rejects.toMatchObject({
      code: 'aborted',
      message: 'an operation on volume v1 is already in progress; retry later',
    });
    await expect(lock.exclusive(['volume:v2', 'path:/a'], async () => 'ran')).rejects.toMatchObject({ code: 'aborted' });
    expect(await lock.exclusive(['volume:v2', 'path:/b'], async () => 'ran')).toBe('ran');
    release();
    await holder;
    expect(await lock.exclusive('volume:v1', async () => 'ran')).toBe('ran');
    expect(lock.size).toBe(0);
  });

  it('a waiter queues behind an exclusive holder (the second lock an RPC takes in order waits)', async () => {
    const lock = new KeyedLock();
    const order: string[] = [];
    const a = lock.exclusive('vol:x', async () => {
      await sleep(10);
      order.push('exclusive');
    });
    const b = lock.run('vol:x', async () => void order.push('waiter'));
    await Promise.all([a, b]);
    expect(order).toEqual(['exclusive', 'waiter']);
  });

  it("an RPC waits for sinter's own work on the key (reconciliation) instead of answering ABORTED", async () => {
    const lock = new KeyedLock();
    const order: string[] = [];
    const background = lock.run('vol:x', async () => {
      await sleep(20);
      order.push('reconcile');
    });
    const rpc = lock.exclusive('vol:x', async () => void order.push('rpc'));
    // While that RPC waits, a second RPC on the key is refused.
    await expect(lock.exclusive('vol:x', async () => 'ran')).rejects.toMatchObject({ code: 'aborted' });
    await Promise.all([background, rpc]);
    expect(order).toEqual(['reconcile', 'rpc']);
    expect(lock.size).toBe(0);
  });

  it('a call whose deadline passes while it waits gives up with DEADLINE_EXCEEDED, runs nothing, and the queue moves on', async () => {
    const lock = new KeyedLock();
    const ran: string[] = [];
    const holder = lock.run('k', async () => {
      await sleep(60);
      ran.push('holder');
    });
    const late = runInCall(call(Date.now() + 15), () => lock.run('k', async () => void ran.push('late')));
    const next = lock.run('k', async () => void ran.push('next'));
    await expect(late).rejects.toMatchObject({ code: 'deadline-exceeded' });
    await Promise.all([holder, next]);
    expect(ran).toEqual(['holder', 'next']);
    expect(lock.size).toBe(0);
  });

  it('a cancelled call stops waiting; an expired call starts no work at all', async () => {
    const lock = new KeyedLock();
    const ac = new AbortController();
    let release!: () => void;
    const holder = lock.run('k', () => new Promise<void>((r) => (release = r)));
    const waiting = runInCall(call(Infinity, ac), () => lock.run('k', async () => 'ran'));
    ac.abort();
    await expect(waiting).rejects.toMatchObject({ code: 'cancelled' });
    let started = false;
    await expect(runInCall(call(Date.now() - 1), () => lock.run('free', async () => void (started = true)))).rejects.toMatchObject({ code: 'deadline-exceeded' });
    await expect(runInCall(call(Date.now() - 1), () => lock.exclusive('free', async () => void (started = true)))).rejects.toMatchObject({ code: 'deadline-exceeded' });
    expect(started).toBe(false);
    release();
    await holder;
    await sleep(0); // the waiter that gave up hands its turn on once the holder's ends
    expect(lock.size).toBe(0);
  });
});
