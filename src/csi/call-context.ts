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
  /**
   * Calls `cb` once if the caller gives up from now on (at once, in a microtask, if it already has);
   * answers the function that stops listening. Only a call that waits in a lock queue asks.
   */
  onCancel(cb: () => void): () => void;
  /**
   * The request's CSI `secrets` (absent when it has none): a backend whose credentials come with the
   * requests (rbd `keyFrom: secrets`) reads them here, however deep the call that needs them.
   * Never logged, never put in an error message.
   */
  readonly secrets?: Readonly<Record<string, string>>;
}

const storage = new AsyncLocalStorage<CallContext>();
/** Calls inside runInCall whose promise has not settled yet. */
let inFlight = 0;

/**
 * Runs `fn` as the call `ctx`: locks it reaches through any number of awaits
 * see the call's deadline and cancellation.
 *
 * On Node 20 an AsyncLocalStorage that has ever run installs a promise hook
 * that every promise of the process then pays, RPC or not (it was a sixth of
 * NodeGetCapabilities' CPU). So the store is switched off again whenever no
 * call is in flight: what a finished call left running is the server's own work
 * by then, which has no caller to answer and waits for locks without a deadline.
 */
export function runInCall<T>(ctx: CallContext, fn: () => T): T {
  inFlight++;
  let out: T;
  try {
    out = storage.run(ctx, fn);
  } catch (e) {
    callEnded();
    throw e;
  }
  if (out instanceof Promise) {
    out.then(callEnded, callEnded);
  } else {
    callEnded();
  }
  return out;
}

/** Marks a handler that answers without waiting for any lock (capabilities, info, Probe). */
const ANSWERS_AT_ONCE = Symbol('sinter.answersAtOnce');

/**
 * Marks `fn` as a handler that never waits for a lock: the server runs it
 * outside any call context, so it never switches the store on (kubelet and the
 * sidecars call these every few seconds).
 */
export function answersAtOnce<F extends (...args: never[]) => unknown>(fn: F): F {
  return Object.assign(fn, { [ANSWERS_AT_ONCE]: true });
}

export function needsCallContext(fn: unknown): boolean {
  return !(typeof fn === 'function' && (fn as { [ANSWERS_AT_ONCE]?: boolean })[ANSWERS_AT_ONCE] === true);
}

function callEnded(): void {
  if (--inFlight === 0) storage.disable();
}

export function currentCall(): CallContext | undefined {
  return storage.getStore();
}

/** Why the current call must not start more work, or undefined while it may. */
export function callStopped(ctx = currentCall()): 'deadline' | 'cancelled' | undefined {
  if (!ctx) return undefined;
  if (Date.now() >= ctx.deadline) return 'deadline';
  // A plain read of the call's flag: every lock entry asks this.
  if (ctx.cancelled) return 'cancelled';
  return undefined;
}
