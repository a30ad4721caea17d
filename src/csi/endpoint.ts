import { invalidArgument } from '../errors/domain-error.js';

export type Endpoint = { kind: 'unix'; path: string; address: string } | { kind: 'tcp'; host: string; port: number; address: string };

/** Parses `unix:///abs/path.sock` or `tcp://host:port` into what grpc-js binds. */
export function parseEndpoint(raw: string): Endpoint {
  if (raw.startsWith('unix://')) {
    const path = raw.slice('unix://'.length);
    if (!path.startsWith('/')) throw invalidArgument(`endpoint ${raw}: unix socket path must be absolute (unix:///path.sock)`);
    return { kind: 'unix', path, address: `unix://${path}` };
  }
  if (raw.startsWith('/')) return { kind: 'unix', path: raw, address: `unix://${raw}` };
  const m = /^tcp:\/\/(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(raw);
  if (m) {
    const port = Number(m[2]);
    if (port > 65535) throw invalidArgument(`endpoint ${raw}: port out of range`);
    return { kind: 'tcp', host: m[1]!, port, address: `${m[1]}:${port}` };
  }
  throw invalidArgument(`endpoint ${raw}: expected unix:///path.sock or tcp://host:port`);
}
