import * as grpc from '@grpc/grpc-js';
import { existsSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { DomainError } from '../errors/domain-error.js';
import { grpcFailureOf } from './errors.js';
import { parseEndpoint, type Endpoint } from './endpoint.js';
import { requestIds } from './logging.js';
import { needsCallContext, runInCall, type CallContext } from './call-context.js';
import type { ControllerImpl, GroupControllerImpl, IdentityImpl, NodeImpl } from './messages.js';
import { loadCsi } from './proto.js';

/**
 * One handler as the dispatcher sees it: every method of a typed service
 * (src/csi/messages.ts) fits here, since the loader decoded the request from
 * the same proto the handler's type was generated from.
 */
type AnyHandler = (req: never) => Promise<unknown>;
type AnyService = IdentityImpl | ControllerImpl | NodeImpl | GroupControllerImpl;

/** Told of every finished RPC (the metrics endpoint counts and times them); must not throw. */
export type RpcObserver = (method: string, code: string, seconds: number) => void;

/** Set after construction: the metrics module is loaded only when it is configured. */
interface RpcHooks {
  observe?: RpcObserver;
}

export interface CsiServices {
  identity?: IdentityImpl;
  controller?: ControllerImpl;
  node?: NodeImpl;
  groupController?: GroupControllerImpl;
}

/**
 * Wraps one domain handler as a grpc-js unary handler: one log line per call,
 * typed errors become gRPC statuses, anything else becomes INTERNAL with a
 * one-line message (the stack stays in our log).
 */
function unary(service: string, method: string, fn: AnyHandler | undefined, log: Logger, hooks: RpcHooks): grpc.UntypedHandleCall {
  const rpc = `${service}.${method}`;
  return (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
    const started = performance.now();
    const ids = requestIds(call.request);
    let release: (() => void) | undefined;
    const done = (err: unknown, res?: unknown) => {
      release?.();
      const elapsed = performance.now() - started;
      const ms = Math.round(elapsed * 100) / 100;
      const f = err === undefined ? undefined : grpcFailureOf(err);
      const code = f?.name ?? 'OK';
      try {
        hooks.observe?.(method, code, elapsed / 1000);
      } catch (e) {
        // Counting must never cost the caller its answer.
        log.warn({ rpc, err: (e as Error).message }, 'metrics: cannot count the RPC');
      }
      if (f === undefined) {
        log.info({ rpc, ...ids, ms, code }, 'rpc');
        callback(null, res);
        return;
      }
      const line = { rpc, ...ids, ms, code };
      if (f.ref !== undefined) log.error({ ...line, ref: f.ref, err: (err as Error)?.message, stack: (err as Error)?.stack }, 'rpc');
      else if (f.code === grpc.status.INTERNAL) log.error({ ...line, err: f.message }, 'rpc');
      else log.info({ ...line, err: f.message }, 'rpc');
      callback({ code: f.code, details: f.message, metadata: new grpc.Metadata() });
    };
    if (!fn) {
      done(new DomainError('unimplemented', `${method} is not implemented by this plugin`));
      return;
    }
    const deadline = deadlineOf(call);
    const why = Date.now() >= deadline ? 'deadline' : call.cancelled ? 'cancelled' : undefined;
    if (why) {
      // A call that arrives already expired starts no work.
      done(new DomainError(why === 'deadline' ? 'deadline-exceeded' : 'cancelled', `the call's ${why === 'deadline' ? 'deadline had passed' : 'caller had cancelled'} before it started; nothing was changed`));
      return;
    }
    let p: Promise<unknown>;
    try {
      if (needsCallContext(fn)) {
        const c = callContextOf(call, deadline);
        release = c.release;
        p = runInCall(c.ctx, () => fn(call.request as never));
      } else p = fn(call.request as never);
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(
      (res) => done(undefined, res ?? {}),
      (e: unknown) => done(e),
    );
  };
}

/**
 * The call's deadline, read once, and its cancellation for whoever waits on
 * it (a lock queue): a listener on the call itself, not an AbortController,
 * whose EventTarget machinery every waiting call paid for.
 */
function callContextOf(call: grpc.ServerUnaryCall<unknown, unknown>, deadline: number): { ctx: CallContext; release: () => void } {
  const listening = new Set<() => void>();
  let answered = false;
  const secrets = (call.request as { secrets?: Record<string, string> } | null)?.secrets;
  const ctx: CallContext = {
    deadline,
    secrets: secrets && Object.keys(secrets).length > 0 ? secrets : undefined,
    get cancelled() {
      return call.cancelled;
    },
    onCancel(cb) {
      if (answered) return () => undefined;
      if (call.cancelled) {
        queueMicrotask(cb);
        return () => undefined;
      }
      const once = () => {
        listening.delete(once);
        cb();
      };
      listening.add(once);
      call.once('cancelled', once);
      return () => {
        listening.delete(once);
        call.removeListener('cancelled', once);
      };
    },
  };
  // Once answered, the call's stream closing is not a cancellation, though grpc-js reports one: nothing of
  // this call still waits, and what it left running is the server's own work.
  const release = () => {
    answered = true;
    for (const l of listening) call.removeListener('cancelled', l);
    listening.clear();
  };
  return { ctx, release };
}

/** Epoch ms; Infinity when the caller set none. */
function deadlineOf(call: grpc.ServerUnaryCall<unknown, unknown>): number {
  const d = call.getDeadline();
  const ms = d instanceof Date ? d.getTime() : Number(d);
  return Number.isFinite(ms) ? ms : Infinity;
}

function implement(
  ctor: grpc.ServiceClientConstructor,
  name: string,
  impl: AnyService,
  log: Logger,
  hooks: RpcHooks,
): grpc.UntypedServiceImplementation {
  const out: grpc.UntypedServiceImplementation = {};
  for (const [key, def] of Object.entries(ctor.service)) {
    if (def.requestStream || def.responseStream) {
      // Streaming RPCs (snapshot metadata) are not offered; answer UNIMPLEMENTED.
      out[key] = ((call: grpc.ServerWritableStream<unknown, unknown>) =>
        call.destroy(Object.assign(new Error(`${key} is not implemented`), { code: grpc.status.UNIMPLEMENTED }))) as grpc.UntypedHandleCall;
      continue;
    }
    out[key] = unary(name, key, (impl as Partial<Record<string, AnyHandler>>)[key], log, hooks);
  }
  return out;
}

export class CsiServer {
  private readonly server: grpc.Server;
  private endpoint?: Endpoint;
  private readonly hooks: RpcHooks = {};

  constructor(
    services: CsiServices,
    private readonly log: Logger,
  ) {
    const csi = loadCsi();
    // Channelz (grpc-js's introspection) is on unless switched off; sinter serves no channelz service, so its
    // per-call and per-session bookkeeping bought nothing (2% of the node plugin's CPU over an attach cycle).
    this.server = new grpc.Server({ 'grpc.max_receive_message_length': 4 * 1024 * 1024, 'grpc.enable_channelz': 0 });
    if (services.identity) this.server.addService(csi.Identity.service, implement(csi.Identity, 'Identity', services.identity, log, this.hooks));
    if (services.controller) this.server.addService(csi.Controller.service, implement(csi.Controller, 'Controller', services.controller, log, this.hooks));
    if (services.node) this.server.addService(csi.Node.service, implement(csi.Node, 'Node', services.node, log, this.hooks));
    if (services.groupController)
      this.server.addService(csi.GroupController.service, implement(csi.GroupController, 'GroupController', services.groupController, log, this.hooks));
  }

  /** Every unary RPC (served or UNIMPLEMENTED) is reported here once, where its log line is written. */
  set rpcObserver(fn: RpcObserver | undefined) {
    this.hooks.observe = fn;
  }

  async listen(rawEndpoint: string): Promise<string> {
    const ep = parseEndpoint(rawEndpoint);
    this.endpoint = ep;
    if (ep.kind === 'unix') {
      mkdirSync(dirname(ep.path), { recursive: true });
      // A socket left by a crashed run would make bind fail with EADDRINUSE.
      if (existsSync(ep.path) && lstatSync(ep.path).isSocket()) unlinkSync(ep.path);
    }
    const port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync(ep.address, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    this.log.info({ endpoint: rawEndpoint, port }, 'listening');
    return ep.kind === 'unix' ? `unix://${ep.path}` : `${ep.host}:${port}`;
  }

  /** Stops accepting, lets in-flight calls finish for up to graceMs, then cuts the rest; true when every call finished. */
  async shutdown(graceMs = 10_000): Promise<boolean> {
    const drained = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        this.log.warn({ graceMs }, 'in-flight RPCs did not finish in time; forcing shutdown');
        this.server.forceShutdown();
        resolve(false);
      }, graceMs);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
    const ep = this.endpoint;
    if (ep?.kind === 'unix' && existsSync(ep.path)) {
      try {
        unlinkSync(ep.path);
      } catch {
        /* already gone */
      }
    }
    return drained;
  }
}
