import * as grpc from '@grpc/grpc-js';
import { existsSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { codeName, CsiError, toCsiError } from './errors.js';
import { parseEndpoint, type Endpoint } from './endpoint.js';
import { requestIds } from './logging.js';
import { loadCsi } from './proto.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Handler = (req: any) => Promise<unknown>;
export type ServiceImpl = Record<string, Handler>;

/** Told of every finished RPC (the metrics endpoint counts and times them); must not throw. */
export type RpcObserver = (method: string, code: string, seconds: number) => void;

/** Set after construction: the metrics module is loaded only when it is configured. */
interface RpcHooks {
  observe?: RpcObserver;
}

export interface CsiServices {
  identity?: ServiceImpl;
  controller?: ServiceImpl;
  node?: ServiceImpl;
}

/**
 * Wraps one domain handler as a grpc-js unary handler: one log line per call,
 * typed errors become gRPC statuses, anything else becomes INTERNAL with a
 * one-line message (the stack stays in our log).
 */
function unary(service: string, method: string, fn: Handler | undefined, log: Logger, hooks: RpcHooks): grpc.UntypedHandleCall {
  return (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
    const started = performance.now();
    const ids = requestIds(call.request);
    const done = (err: CsiError | null, res?: unknown) => {
      const elapsed = performance.now() - started;
      const ms = Math.round(elapsed * 100) / 100;
      const code = err ? codeName(err.code) : 'OK';
      try {
        hooks.observe?.(method, code, elapsed / 1000);
      } catch (e) {
        // Counting must never cost the caller its answer.
        log.warn({ rpc: `${service}.${method}`, err: (e as Error).message }, 'metrics: cannot count the RPC');
      }
      const line = { rpc: `${service}.${method}`, ...ids, ms, code };
      if (!err) log.info(line, 'rpc');
      else if (err.code === grpc.status.INTERNAL || err.code === grpc.status.UNKNOWN) log.error({ ...line, err: err.message }, 'rpc');
      else log.info({ ...line, err: err.message }, 'rpc');
      if (err) callback({ code: err.code, details: err.message, metadata: new grpc.Metadata() } as grpc.ServiceError);
      else callback(null, res);
    };
    if (!fn) {
      done(new CsiError(grpc.status.UNIMPLEMENTED, `${method} is not implemented by this plugin`));
      return;
    }
    let p: Promise<unknown>;
    try {
      p = fn(call.request);
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(
      (res) => done(null, res ?? {}),
      (e: unknown) => {
        if (!(e instanceof CsiError)) log.error({ rpc: `${service}.${method}`, ...ids, stack: (e as Error)?.stack }, 'unexpected error');
        done(toCsiError(e));
      },
    );
  };
}

function implement(
  ctor: grpc.ServiceClientConstructor,
  name: string,
  impl: ServiceImpl,
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
    out[key] = unary(name, key, impl[key], log, hooks);
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
    this.server = new grpc.Server({ 'grpc.max_receive_message_length': 4 * 1024 * 1024 });
    if (services.identity) this.server.addService(csi.Identity.service, implement(csi.Identity, 'Identity', services.identity, log, this.hooks));
    if (services.controller) this.server.addService(csi.Controller.service, implement(csi.Controller, 'Controller', services.controller, log, this.hooks));
    if (services.node) this.server.addService(csi.Node.service, implement(csi.Node, 'Node', services.node, log, this.hooks));
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

  /** Stops accepting, lets in-flight calls finish for up to graceMs, then cuts the rest. */
  async shutdown(graceMs = 10_000): Promise<void> {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.log.warn({ graceMs }, 'in-flight RPCs did not finish in time; forcing shutdown');
        this.server.forceShutdown();
        resolve();
      }, graceMs);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
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
  }
}
