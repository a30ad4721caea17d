import * as grpc from '@grpc/grpc-js';
import { loadCsi } from './proto.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Rpc = (req?: any, opts?: { deadlineMs?: number }) => Promise<any>;
export type CsiClientSide = Record<string, Rpc>;

export interface CsiClient {
  identity: CsiClientSide;
  controller: CsiClientSide;
  node: CsiClientSide;
  close(): void;
}

function promisify(ctor: grpc.ServiceClientConstructor, address: string): { side: CsiClientSide; client: grpc.Client } {
  const client = new ctor(address, grpc.credentials.createInsecure()) as grpc.Client & Record<string, grpc.requestCallback<unknown> & ((...a: unknown[]) => void)>;
  const side: CsiClientSide = {};
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
  return { side, client };
}

/**
 * A promise-based CSI client over one channel per service, used by the demo,
 * the benchmarks and the tests: what a CO sidecar does, minus Kubernetes.
 * `address` is `unix:///path.sock` or `host:port`.
 */
export function csiClient(address: string): CsiClient {
  const csi = loadCsi();
  const id = promisify(csi.Identity, address);
  const ctl = promisify(csi.Controller, address);
  const node = promisify(csi.Node, address);
  return {
    identity: id.side,
    controller: ctl.side,
    node: node.side,
    close() {
      id.client.close();
      ctl.client.close();
      node.client.close();
    },
  };
}
