import { AsyncLocalStorage } from 'node:async_hooks';

/**
 * What the caller of the RPC in progress allows: its deadline and whether it
 * gave up. Carried implicitly so a lock wait deep in a backend can honour it
 * without every layer passing it along. Host commands already running are
 * never killed on it (a half-made filesystem is worse than a late answer);
 * it only stops work that has not started.
 */
export interface CallContext {
  /** Epoch ms; Infinity when the caller set none. */
  deadline: number;
  /** Whether the caller has given up; a plain read (no signal is made to answer it). */
  readonly cancelled: boolean;
  /** Made on first use by the server: only a call that waits in a lock queue needs it. */
  readonly signal: AbortSignal;
  /**
   * The request's CSI `secrets` (absent when it has none): a backend whose credentials come with the
   * requests (rbd `keyFrom: secrets`) reads them here, however deep the call that needs them.
   * Never logged, never put in an error message.
   */
  readonly secrets?: Readonly<Record<string, string>>;
}

const storage = new AsyncLocalStorage<CallContext>();

export function runInCall<T>(ctx: CallContext, fn: () => T): T {
  return storage.run(ctx, fn);
}

export function currentCall(): CallContext | undefined {
  return storage.getStore();
}

/** Why the current call must not start more work, or undefined while it may. */
export function callStopped(ctx = currentCall()): 'deadline' | 'cancelled' | undefined {
  if (!ctx) return undefined;
  if (Date.now() >= ctx.deadline) return 'deadline';
  // Not ctx.signal.aborted: asking the signal makes it (an AbortController and a
  // 'cancelled' listener, whose DOMException grpc-js's end-of-call cancel then
  // builds), and every lock entry asks this.
  if (ctx.cancelled) return 'cancelled';
  return undefined;
}
