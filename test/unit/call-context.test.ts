import { describe, expect, it } from 'vitest';
import { answersAtOnce, currentCall, needsCallContext, runInCall, type CallContext } from '../../src/csi/call-context.js';

const ctx = (deadline: number): CallContext => ({ deadline, cancelled: false, onCancel: () => () => undefined });
const tick = () => new Promise<void>((r) => setTimeout(r, 1));

describe('call context (the store is switched off while no call is in flight)', () => {
  it('follows a call through its awaits, and is gone once the call has ended', async () => {
    const a = ctx(1);
    const seen: (CallContext | undefined)[] = [];
    await runInCall(a, async () => {
      seen.push(currentCall());
      await tick();
      seen.push(currentCall());
    });
    expect(seen).toEqual([a, a]);
    expect(currentCall()).toBeUndefined();
  });

  it('a call that ends first does not take the context from one still running', async () => {
    const a = ctx(1);
    const b = ctx(2);
    let releaseB!: () => void;
    const gateB = new Promise<void>((r) => (releaseB = r));
    const seenB: (CallContext | undefined)[] = [];
    const callB = runInCall(b, async () => {
      seenB.push(currentCall());
      await gateB;
      await tick();
      seenB.push(currentCall());
    });
    await runInCall(a, async () => {
      await tick();
      expect(currentCall()).toBe(a);
    });
    // A has ended (and with it one of the two calls in flight): B still sees its own deadline.
    releaseB();
    await callB;
    expect(seenB).toEqual([b, b]);
    expect(currentCall()).toBeUndefined();
  });

  it('a call that throws at once or rejects later still ends', async () => {
    expect(() =>
      runInCall(ctx(1), () => {
        throw new Error('sync');
      }),
    ).toThrow('sync');
    await expect(runInCall(ctx(1), async () => Promise.reject(new Error('async')))).rejects.toThrow('async');
    expect(currentCall()).toBeUndefined();
    // The store comes back for the next call.
    const c = ctx(3);
    await runInCall(c, async () => {
      await tick();
      expect(currentCall()).toBe(c);
    });
  });

  it('handlers marked as answering at once run outside any call context; every other handler runs in one', () => {
    expect(needsCallContext(async () => ({}))).toBe(true);
    expect(needsCallContext(answersAtOnce(async () => ({})))).toBe(false);
    expect(needsCallContext(undefined)).toBe(true);
  });
});
