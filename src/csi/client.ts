import * as grpc from '@grpc/grpc-js';
import type { CallOptions, ControllerRpcs, GroupControllerRpcs, IdentityRpcs, NodeRpcs } from './messages.js';
import { loadCsi } from './proto.js';

export interface CsiClient {
  identity: IdentityRpcs;
  controller: ControllerRpcs;
  node: NodeRpcs;
  groupController: GroupControllerRpcs;
  close(): void;
}

export type UntypedRpc = (req?: unknown, opts?: CallOptions) => Promise<unknown>;

/**
 * One method by name, taking any request: for fuzzers and table-driven tests
 * that send what the types forbid (the server validates every field). Throws
 * when the service has no such method.
 */
export function rpcByName(side: IdentityRpcs | ControllerRpcs | NodeRpcs | GroupControllerRpcs, method: string): UntypedRpc {
  const fn = (side as unknown as Partial<Record<string, UntypedRpc>>)[method];
  if (!fn) throw new Error(`no CSI method ${method}`);
  return fn;
}

/**
 * One promise per unary method of the service. The typed view (`T`) holds because
 * the loader's client serializes and decodes with the proto the types were generated from.
 */
function promisify<T>(ctor: grpc.ServiceClientConstructor, address: string): { side: T; client: grpc.Client } {
  const client = new ctor(address, grpc.credentials.createInsecure()) as grpc.Client & Record<string, grpc.requestCallback<unknown> & ((...a: unknown[]) => void)>;
  const side: Record<string, UntypedRpc> = {};
  for (const method of Object.keys(ctor.service)) {
    side[method] = (req = {}, opts = {}) =>
      new Promise((resolve, reject) => {
        const deadline = new Date(Date.now() + (opts.deadlineMs ?? 120_000));
        (client[method] as (r: unknown, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, res: unknown) => void) => void).call(
          client,
          req,
          new grpc.Metadata(),
          { deadline },
          (err, res) => (err ? reject(err) : resolve(res)),
        );
      });
  }
  return { side: side as T, client };
}

/**
 * A promise-based CSI client over one channel per service, used by the demo,
 * the benchmarks and the tests: what a CO sidecar does, minus Kubernetes.
 * `address` is `unix:///path.sock` or `host:port`.
 */
export function csiClient(address: string): CsiClient {
  const csi = loadCsi();
  const id = promisify<IdentityRpcs>(csi.Identity, address);
  const ctl = promisify<ControllerRpcs>(csi.Controller, address);
  const node = promisify<NodeRpcs>(csi.Node, address);
  const group = promisify<GroupControllerRpcs>(csi.GroupController, address);
  return {
    identity: id.side,
    controller: ctl.side,
    node: node.side,
    groupController: group.side,
    close() {
      id.client.close();
      ctl.client.close();
      node.client.close();
      group.client.close();
    },
  };
}
