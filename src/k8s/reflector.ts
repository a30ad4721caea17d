import type { Watch } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { Backoff, realClock, type Clock } from '../util/poll.js';

/** One page of a list call, as the typed client returns it (V1…List). */
export interface ListPage {
  items: unknown[];
  metadata?: { resourceVersion?: string; _continue?: string };
}

/** A cluster-scoped resource kind the reflector mirrors, reduced to what we use of it. */
export interface ResourceKind<V> {
  /** For logs: `VolumeAttachment`. */
  kind: string;
  /** The collection's URL path, e.g. `/apis/storage.k8s.io/v1/volumeattachments`. */
  path: string;
  /** One list call (a page of at most `limit` items). */
  list(req: { limit: number; continueToken?: string; signal: AbortSignal }): Promise<ListPage>;
  /** The part of an object we keep, or undefined when the object is not ours (another driver's). */
  project(obj: unknown): V | undefined;
}

export type ReflectorEvent = 'added' | 'modified' | 'deleted';

export interface ReflectorOptions {
  log: Logger;
  /** First retry delay after a failure; doubles up to maxBackoffMs. */
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** A list request that takes longer than this is aborted and retried. */
  listTimeoutMs?: number;
  /** Page size of list calls. */
  pageSize?: number;
  /** Server-side watch timeout (the API server ends the watch after it; we reconnect). */
  watchTimeoutSeconds?: () => number;
  /** Where the pauses between attempts come from (tests pass a fake). */
  clock?: Clock;
}

export interface ReflectorState {
  /** A list has completed at least once: the store is a real picture of the cluster. */
  synced: boolean;
  /** The last request to the API server succeeded and a watch is (being re)established. */
  live: boolean;
  /** Why the reflector is not live. */
  error?: string;
}

const nameOf = (obj: unknown): string => {
  const md = (obj as { metadata?: { name?: unknown } } | null)?.metadata;
  return typeof md?.name === 'string' ? md.name : '';
};

const rvOf = (obj: unknown): string | undefined => {
  const md = (obj as { metadata?: { resourceVersion?: unknown } } | null)?.metadata;
  return typeof md?.resourceVersion === 'string' ? md.resourceVersion : undefined;
};

/** 410 Gone: the resourceVersion (or continue token) is too old; only a fresh list helps. */
export function isGone(e: unknown): boolean {
  const o = e as { code?: unknown; statusCode?: unknown; body?: unknown } | null;
  if (!o || typeof o !== 'object') return false;
  if (o.code === 410 || o.statusCode === 410) return true;
  const body = typeof o.body === 'string' ? safeJson(o.body) : o.body;
  return (body as { code?: unknown } | undefined)?.code === 410;
}

function safeJson(s: string): unknown {
  try {
    return JSON.parse(s);
  } catch {
    return undefined;
  }
}

/** A short, secret-free description of an API error for logs and state: `HTTP 403: <Status message>`, `… ECONNREFUSED …`. */
export function describeError(e: unknown): string {
  const o = e as { code?: unknown; statusCode?: unknown; message?: unknown; body?: unknown; cause?: { code?: unknown } } | null;
  const status = typeof o?.code === 'number' ? o.code : typeof o?.statusCode === 'number' ? o.statusCode : undefined;
  const firstLine = typeof o?.message === 'string' ? o.message.split('\n')[0]!.slice(0, 200) : String(e).slice(0, 200);
  if (status !== undefined) {
    // ApiException: the API server's Status object is in the body; its message says what is wrong (RBAC, …).
    const body = typeof o?.body === 'string' ? safeJson(o.body) : o?.body;
    const statusMsg = (body as { message?: unknown } | undefined)?.message;
    const detail = typeof statusMsg === 'string' ? statusMsg : firstLine.startsWith('HTTP-Code') ? '' : firstLine;
    return `HTTP ${status}${detail ? `: ${detail.slice(0, 200)}` : ''}`;
  }
  const cause = typeof o?.cause?.code === 'string' ? o.cause.code : '';
  return cause && !firstLine.includes(cause) ? `${firstLine} (${cause})` : firstLine;
}

class StatusError extends Error {
  constructor(
    readonly code: number | undefined,
    message: string,
  ) {
    super(message);
  }
}

interface WatchEnd {
  events: number;
  gone: boolean;
}

/**
 * A list+watch mirror of one cluster-scoped resource, in the style of
 * client-go's reflector, built on @kubernetes/client-node's typed list calls and
 * its Watch. It keeps going on its own, whatever the API server does:
 *
 * - the server ends the watch (its timeout, a restart, a dropped connection):
 *   reconnect at once from the last resourceVersion seen;
 * - 410 Gone (HTTP status or an ERROR event in the stream, or an expired
 *   continue token): list again from scratch, emitting deletes for what vanished;
 * - any other failure (refused, 5xx, 403, timeout): retry with exponential
 *   backoff, keeping the last known objects and reporting `live: false`.
 *
 * - a watch the server should have ended (its timeoutSeconds) but did not, a
 *   connection that died silently: ended by a watchdog and reopened.
 *
 * client-node's own ListWatch stops for good on the first error, cannot abort
 * a watch that is still connecting, and (in 1.x) its Watch has no inactivity
 * timeout; hence this loop.
 */
export class Reflector<V> {
  private store = new Map<string, V>();
  private rv = '';
  private running: Promise<void> | undefined;
  private stopper = new AbortController();
  private currentWatch: AbortController | undefined;
  private _state: ReflectorState = { synced: false, live: false };
  private readonly listeners = new Set<(ev: ReflectorEvent, name: string, view: V | undefined) => void>();
  private readonly stateListeners = new Set<(s: ReflectorState) => void>();
  private readonly initialBackoffMs: number;
  private readonly backoff: Backoff;
  private readonly listTimeoutMs: number;
  private readonly pageSize: number;
  private readonly watchTimeoutSeconds: () => number;
  private readonly clock: Clock;
  /** For tests and metrics: how many list calls (pages) and watch connections were made. */
  readonly counters = { lists: 0, watches: 0, relists: 0, gone: 0, failures: 0 };

  constructor(
    readonly kind: ResourceKind<V>,
    private readonly watcher: Watch,
    private readonly opts: ReflectorOptions,
  ) {
    this.initialBackoffMs = opts.initialBackoffMs ?? 500;
    this.backoff = new Backoff({ initialMs: this.initialBackoffMs, maxMs: opts.maxBackoffMs ?? 30_000 });
    this.clock = opts.clock ?? realClock;
    this.listTimeoutMs = opts.listTimeoutMs ?? 60_000;
    this.pageSize = opts.pageSize ?? 500;
    // Like client-go: spread watch renewals between 5 and 10 minutes.
    this.watchTimeoutSeconds = opts.watchTimeoutSeconds ?? (() => 300 + Math.floor(Math.random() * 300));
  }

  get state(): ReflectorState {
    return this._state;
  }

  get(name: string): V | undefined {
    return this.store.get(name);
  }

  values(): IterableIterator<V> {
    return this.store.values();
  }

  entries(): IterableIterator<[string, V]> {
    return this.store.entries();
  }

  get size(): number {
    return this.store.size;
  }

  /** Called after every change to the store (by a watch event or a relist). */
  onChange(cb: (ev: ReflectorEvent, name: string, view: V | undefined) => void): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }

  onState(cb: (s: ReflectorState) => void): () => void {
    this.stateListeners.add(cb);
    return () => this.stateListeners.delete(cb);
  }

  start(): void {
    if (this.running) return;
    this.stopper = new AbortController();
    this.running = this.loop().catch((e: unknown) => {
      // The loop catches everything; this is a bug guard, not a code path.
      this.opts.log.error({ err: describeError(e), kind: this.kind.kind }, 'reflector loop ended unexpectedly');
    });
  }

  /** Ends the watch and any pending request; resolves when the loop has stopped. */
  async stop(): Promise<void> {
    this.stopper.abort();
    this.currentWatch?.abort();
    const r = this.running;
    this.running = undefined;
    await r;
  }

  private get stopped(): boolean {
    return this.stopper.signal.aborted;
  }

  private setState(s: ReflectorState): void {
    const prev = this._state;
    this._state = s;
    if (prev.synced !== s.synced || prev.live !== s.live || prev.error !== s.error) for (const cb of this.stateListeners) cb(s);
  }

  private emit(ev: ReflectorEvent, name: string, view: V | undefined): void {
    for (const cb of this.listeners) {
      try {
        cb(ev, name, view);
      } catch (e) {
        this.opts.log.error({ err: describeError(e), kind: this.kind.kind }, 'cache listener failed');
      }
    }
  }

  /** The pause between attempts; stop() ends it at once. */
  private sleep(ms: number): Promise<void> {
    return this.clock.sleep(ms, this.stopper.signal);
  }

  private async loop(): Promise<void> {
    const backoff = this.backoff;
    backoff.reset();
    let gones = 0;
    const relistAfterGone = async () => {
      this.counters.gone++;
      this.rv = '';
      // One 410 is routine; a server answering 410 to fresh lists must not make us spin.
      if (++gones > 2) await this.sleep(backoff.peek());
    };
    while (!this.stopped) {
      try {
        if (!this.rv) await this.relist();
        if (this.stopped) break;
        const started = this.clock.now();
        const end = await this.watchOnce();
        if (this.stopped) break;
        backoff.reset();
        if (end.gone) {
          this.opts.log.debug({ kind: this.kind.kind }, 'watch: resourceVersion too old (410); listing again');
          await relistAfterGone();
          continue;
        }
        gones = 0;
        // A server that ends every watch at once, without a word, must not make us spin.
        if (end.events === 0 && this.clock.now() - started < 1000) await this.sleep(this.initialBackoffMs);
      } catch (e) {
        if (this.stopped) break;
        if (isGone(e)) {
          await relistAfterGone();
          continue;
        }
        this.counters.failures++;
        const error = describeError(e);
        const retryInMs = backoff.next();
        this.opts.log.debug({ kind: this.kind.kind, err: error, retryInMs }, 'Kubernetes API request failed; retrying');
        this.setState({ synced: this._state.synced, live: false, error });
        await this.sleep(retryInMs);
      }
    }
    this.setState({ synced: this._state.synced, live: false, error: 'stopped' });
  }

  private async relist(): Promise<void> {
    const fresh = new Map<string, V>();
    let continueToken: string | undefined;
    let rv = '';
    this.counters.relists++;
    do {
      const signal = AbortSignal.any([this.stopper.signal, AbortSignal.timeout(this.listTimeoutMs)]);
      this.counters.lists++;
      const page = await this.kind.list({ limit: this.pageSize, continueToken, signal });
      for (const obj of page.items ?? []) {
        const name = nameOf(obj);
        const view = name ? this.kind.project(obj) : undefined;
        if (view !== undefined) fresh.set(name, view);
      }
      continueToken = page.metadata?._continue || undefined;
      rv = page.metadata?.resourceVersion ?? '';
    } while (continueToken && !this.stopped);
    if (this.stopped) return;

    const old = this.store;
    this.store = fresh;
    this.rv = rv;
    for (const [name, view] of old) if (!fresh.has(name)) this.emit('deleted', name, view);
    for (const [name, view] of fresh) if (!old.has(name)) this.emit('added', name, view);
    for (const [name, view] of fresh) if (old.has(name)) this.emit('modified', name, view);
    this.setState({ synced: true, live: true });
  }

  private watchOnce(): Promise<WatchEnd> {
    return new Promise<WatchEnd>((resolve, reject) => {
      let events = 0;
      let gone = false;
      let failure: StatusError | undefined;
      let finished = false;
      let ctrl: AbortController | undefined;
      let abortWhenReady = false;
      let watchdogFired = false;
      const timeoutSeconds = this.watchTimeoutSeconds();
      const watchdog = setTimeout(() => {
        watchdogFired = true;
        endStream();
      }, (timeoutSeconds + 30) * 1000);
      watchdog.unref();

      const finish = (err: unknown) => {
        if (finished) return;
        finished = true;
        clearTimeout(watchdog);
        this.stopper.signal.removeEventListener('abort', onStop);
        if (this.currentWatch === ctrl) this.currentWatch = undefined;
        if (this.stopped || gone || watchdogFired) return resolve({ events, gone });
        if (failure) return reject(failure);
        // The client's inactivity timeout: a quiet watch, not a broken server.
        if (err && (err as { name?: unknown }).name === 'TimeoutError') return resolve({ events, gone: false });
        // The watch request rejects with an Error (from the client or its fetch), passed on as it is.
        if (err) return reject(err instanceof Error ? err : new Error(`watch failed: ${describe(err)}`));
        resolve({ events, gone: false });
      };
      const onStop = () => {
        ctrl?.abort();
        finish(undefined);
      };
      this.stopper.signal.addEventListener('abort', onStop);

      const endStream = () => {
        if (ctrl) ctrl.abort();
        else abortWhenReady = true;
      };

      const onEvent = (type: string, obj: unknown) => {
        if (finished) return;
        switch (type) {
          case 'ADDED':
          case 'MODIFIED':
          case 'DELETED': {
            events++;
            const name = nameOf(obj);
            const rv = rvOf(obj);
            if (rv) this.rv = rv;
            if (!name) return;
            const view = type === 'DELETED' ? undefined : this.kind.project(obj);
            const had = this.store.get(name);
            if (view === undefined) {
              // Deleted, or changed so that it is no longer ours.
              if (had !== undefined) {
                this.store.delete(name);
                this.emit('deleted', name, had);
              }
            } else {
              this.store.set(name, view);
              this.emit(had === undefined ? 'added' : 'modified', name, view);
            }
            return;
          }
          case 'BOOKMARK': {
            events++;
            const rv = rvOf(obj);
            if (rv) this.rv = rv;
            return;
          }
          case 'ERROR': {
            const st = obj as { code?: unknown; reason?: unknown; message?: unknown } | null;
            if (st?.code === 410 || st?.reason === 'Expired' || st?.reason === 'Gone') gone = true;
            else failure = new StatusError(typeof st?.code === 'number' ? st.code : undefined, `watch ERROR event: ${describe(st?.message ?? st?.reason ?? 'unknown')}`);
            endStream();
            return;
          }
          default:
            return;
        }
      };

      this.counters.watches++;
      this.watcher
        .watch(this.kind.path, { resourceVersion: this.rv, allowWatchBookmarks: true, timeoutSeconds }, onEvent, finish)
        .then(
          (c) => {
            ctrl = c;
            if (finished || this.stopped || abortWhenReady) {
              c.abort();
              return;
            }
            this.currentWatch = c;
            if (!this._state.live) this.setState({ synced: this._state.synced, live: true });
          },
          (e: unknown) => finish(e),
        );
    });
  }
}

/** A watch status field as text: strings as they are, anything else as JSON. */
function describe(v: unknown): string {
  return typeof v === 'string' ? v : JSON.stringify(v);
}
