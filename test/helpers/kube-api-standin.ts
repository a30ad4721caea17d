import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { writeFileSync } from 'node:fs';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';

/**
 * An HTTP stand-in for the Kubernetes API server, just enough of it for the
 * three cluster-scoped collections sinter reads: list (with limit/continue),
 * watch (`?watch=true`, chunked JSON lines of {type, object}, resumed from a
 * resourceVersion, 410 Gone as an ERROR event or as an HTTP status once the
 * resourceVersion is compacted away), bearer-token auth, and fault injection
 * (drop streams, answer errors, go down and come back on the same port).
 */

export type Resource = 'volumeattachments' | 'csinodes' | 'persistentvolumes';
type Obj = { metadata: { name: string; resourceVersion?: string; [k: string]: unknown }; [k: string]: unknown };

const ROUTES: Record<string, Resource> = {
  '/apis/storage.k8s.io/v1/volumeattachments': 'volumeattachments',
  '/apis/storage.k8s.io/v1/csinodes': 'csinodes',
  '/api/v1/persistentvolumes': 'persistentvolumes',
};
const KINDS: Record<Resource, { kind: string; apiVersion: string }> = {
  volumeattachments: { kind: 'VolumeAttachment', apiVersion: 'storage.k8s.io/v1' },
  csinodes: { kind: 'CSINode', apiVersion: 'storage.k8s.io/v1' },
  persistentvolumes: { kind: 'PersistentVolume', apiVersion: 'v1' },
};

interface OpenWatch {
  resource: Resource;
  res: ServerResponse;
  timer?: NodeJS.Timeout;
}

const status = (code: number, reason: string, message: string) => ({ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code });

export class KubeApiStandIn {
  readonly token = 'standin-token';
  port = 0;
  /** How a watch from a compacted resourceVersion is refused. */
  goneAs: 'event' | 'http' = 'event';
  /** When set, every request is answered with this HTTP status (an overloaded or broken server). */
  failWith: number | undefined;
  /** Called before a list request is answered (fault injection between pages). */
  beforeList: ((resource: Resource, continueToken: string | null) => void) | undefined;
  /** Every request seen: method, path and query. */
  readonly requests: { resource?: Resource; watch: boolean; query: URLSearchParams }[] = [];

  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  private rv = 100;
  private compactedBelow = 0;
  private readonly objects: Record<Resource, Map<string, Obj>> = { volumeattachments: new Map(), csinodes: new Map(), persistentvolumes: new Map() };
  private readonly log: Record<Resource, { rv: number; type: string; object: Obj }[]> = { volumeattachments: [], csinodes: [], persistentvolumes: [] };
  private readonly watches = new Set<OpenWatch>();
  private compactions = 0;
  private continueSeq = 0;
  private readonly continues = new Map<string, { resource: Resource; offset: number; epoch: number }>();

  /** A free port on 127.0.0.1 for a server that is not up yet ("API server down at start"). */
  static async freePort(): Promise<number> {
    const s = createServer();
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const { port } = s.address() as AddressInfo;
    await new Promise<void>((r) => s.close(() => r()));
    return port;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get up(): boolean {
    return this.server !== undefined;
  }

  async start(port = this.port): Promise<void> {
    const server = createServer((req, res) => this.handle(req, res));
    server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    this.server = server;
    this.port = (server.address() as AddressInfo).port;
  }

  /** Goes down hard: every connection, open watches included, is cut. */
  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    for (const w of this.watches) if (w.timer) clearTimeout(w.timer);
    this.watches.clear();
    const closed = new Promise<void>((r) => server.close(() => r()));
    for (const s of this.sockets) s.destroy();
    server.closeAllConnections();
    await closed;
  }

  /** A kubeconfig for this server (plain HTTP, bearer token), written into dir. */
  writeKubeconfig(dir: string, port = this.port): string {
    const path = join(dir, 'kubeconfig');
    writeFileSync(
      path,
      [
        'apiVersion: v1',
        'kind: Config',
        'clusters:',
        '- name: standin',
        '  cluster:',
        `    server: http://127.0.0.1:${port}`,
        '    insecure-skip-tls-verify: true',
        'users:',
        '- name: sinter',
        '  user:',
        `    token: ${this.token}`,
        'contexts:',
        '- name: standin',
        '  context:',
        '    cluster: standin',
        '    user: sinter',
        'current-context: standin',
        '',
      ].join('\n'),
    );
    return path;
  }

  // ---- the cluster's state, changed by the test ----

  get resourceVersion(): number {
    return this.rv;
  }

  /** Names of the objects of a resource, as a controller's lister would see them. */
  names(resource: Resource): string[] {
    return [...this.objects[resource].keys()];
  }

  get(resource: Resource, name: string): Obj | undefined {
    return this.objects[resource].get(name);
  }

  create(resource: Resource, obj: Obj): Obj {
    if (this.objects[resource].has(obj.metadata.name)) throw new Error(`${resource}/${obj.metadata.name} exists`);
    const o = structuredClone(obj);
    o.kind = KINDS[resource].kind;
    o.apiVersion = KINDS[resource].apiVersion;
    o.metadata.uid ??= `uid-${resource}-${o.metadata.name}`;
    o.metadata.creationTimestamp ??= new Date().toISOString();
    return this.record(resource, 'ADDED', o);
  }

  update(resource: Resource, name: string, mutate: (o: Obj) => void): Obj {
    const cur = this.objects[resource].get(name);
    if (!cur) throw new Error(`${resource}/${name} does not exist`);
    const o = structuredClone(cur);
    mutate(o);
    return this.record(resource, 'MODIFIED', o);
  }

  remove(resource: Resource, name: string): void {
    const cur = this.objects[resource].get(name);
    if (!cur) throw new Error(`${resource}/${name} does not exist`);
    this.record(resource, 'DELETED', structuredClone(cur));
  }

  /** Forgets history: watches from older resourceVersions (and older continue tokens) get 410 Gone. */
  compact(): void {
    // Events up to now are forgotten: a watch from the current resourceVersion needs none of them.
    this.compactedBelow = this.rv;
    this.compactions++;
    for (const r of Object.keys(this.log) as Resource[]) this.log[r] = [];
  }

  private record(resource: Resource, type: 'ADDED' | 'MODIFIED' | 'DELETED', o: Obj): Obj {
    o.metadata.resourceVersion = String(++this.rv);
    if (type === 'DELETED') this.objects[resource].delete(o.metadata.name);
    else this.objects[resource].set(o.metadata.name, o);
    this.log[resource].push({ rv: this.rv, type, object: o });
    for (const w of this.watches) if (w.resource === resource) this.send(w, type, o);
    return o;
  }

  // ---- faults ----

  /** Ends every open watch: 'end' closes the stream cleanly, 'destroy' cuts the connection. */
  dropWatches(how: 'end' | 'destroy' = 'destroy'): number {
    const n = this.watches.size;
    for (const w of [...this.watches]) this.endWatch(w, how);
    return n;
  }

  openWatches(resource?: Resource): number {
    return [...this.watches].filter((w) => !resource || w.resource === resource).length;
  }

  lists(resource?: Resource): number {
    return this.requests.filter((r) => !r.watch && (!resource || r.resource === resource)).length;
  }

  watchRequests(resource?: Resource): number {
    return this.requests.filter((r) => r.watch && (!resource || r.resource === resource)).length;
  }

  // ---- protocol ----

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://standin');
    const resource = ROUTES[url.pathname];
    const watch = url.searchParams.get('watch') === 'true' || url.searchParams.get('watch') === '1';
    this.requests.push({ resource, watch, query: url.searchParams });
    const json = (code: number, body: unknown) => {
      res.writeHead(code, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.headers.authorization !== `Bearer ${this.token}`) return json(401, status(401, 'Unauthorized', 'Unauthorized'));
    if (this.failWith !== undefined) return json(this.failWith, status(this.failWith, 'InternalError', `stand-in fails with ${this.failWith}`));
    if (req.method !== 'GET') return json(405, status(405, 'MethodNotAllowed', 'only GET is served'));
    if (!resource) return json(404, status(404, 'NotFound', `the server could not find the requested resource (${url.pathname})`));
    if (watch) return this.serveWatch(resource, url.searchParams, res);
    return this.serveList(resource, url.searchParams, json);
  }

  private serveList(resource: Resource, q: URLSearchParams, json: (code: number, body: unknown) => void): void {
    let offset = 0;
    const token = q.get('continue');
    this.beforeList?.(resource, token);
    if (token) {
      const c = this.continues.get(token);
      if (!c || c.resource !== resource) return json(400, status(400, 'BadRequest', 'invalid continue token'));
      if (c.epoch < this.compactions) return json(410, status(410, 'Expired', 'The provided continue parameter is too old to display a consistent list result.'));
      offset = c.offset;
    }
    const all = [...this.objects[resource].values()].sort((a, b) => (a.metadata.name < b.metadata.name ? -1 : 1));
    const limit = Number(q.get('limit') ?? 0);
    const items = limit > 0 ? all.slice(offset, offset + limit) : all.slice(offset);
    const metadata: Record<string, unknown> = { resourceVersion: String(this.rv) };
    if (limit > 0 && offset + limit < all.length) {
      const next = `c${++this.continueSeq}`;
      this.continues.set(next, { resource, offset: offset + limit, epoch: this.compactions });
      metadata.continue = next;
    }
    json(200, { kind: `${KINDS[resource].kind}List`, apiVersion: KINDS[resource].apiVersion, metadata, items });
  }

  private serveWatch(resource: Resource, q: URLSearchParams, res: ServerResponse): void {
    const rvParam = q.get('resourceVersion') ?? '';
    const from = rvParam === '' || rvParam === '0' ? undefined : Number(rvParam);
    if (from !== undefined && (!Number.isFinite(from) || from < this.compactedBelow) && this.goneAs === 'http') {
      res.writeHead(410, { 'content-type': 'application/json' });
      res.end(JSON.stringify(status(410, 'Expired', `too old resource version: ${rvParam} (${this.compactedBelow})`)));
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    res.flushHeaders();
    const w: OpenWatch = { resource, res };
    if (from !== undefined && (!Number.isFinite(from) || from < this.compactedBelow)) {
      this.send(w, 'ERROR', status(410, 'Expired', `too old resource version: ${rvParam} (${this.compactedBelow})`));
      res.end();
      return;
    }
    this.watches.add(w);
    res.on('close', () => this.endWatch(w, 'gone'));
    const timeout = Number(q.get('timeoutSeconds') ?? 0);
    if (timeout > 0) w.timer = setTimeout(() => this.endWatch(w, 'end'), timeout * 1000);
    if (from === undefined) for (const o of this.objects[resource].values()) this.send(w, 'ADDED', o);
    else for (const e of this.log[resource]) if (e.rv > from) this.send(w, e.type, e.object);
  }

  private send(w: OpenWatch, type: string, object: unknown): void {
    if (!w.res.writableEnded) w.res.write(`${JSON.stringify({ type, object })}\n`);
  }

  private endWatch(w: OpenWatch, how: 'end' | 'destroy' | 'gone'): void {
    if (!this.watches.delete(w)) return;
    if (w.timer) clearTimeout(w.timer);
    if (how === 'end') w.res.end();
    else if (how === 'destroy') w.res.socket?.destroy();
  }
}

// ---- object builders ----

export function volumeAttachment(
  name: string,
  o: { attacher?: string; nodeName: string; pvName?: string; inlineHandle?: string; attached?: boolean; deleting?: boolean },
): Obj {
  return {
    metadata: { name, ...(o.deleting ? { deletionTimestamp: new Date().toISOString(), finalizers: ['external-attacher/sinter-csi-io'] } : {}) },
    spec: {
      attacher: o.attacher ?? 'sinter.csi.io',
      nodeName: o.nodeName,
      source: o.inlineHandle ? { inlineVolumeSpec: { csi: { driver: o.attacher ?? 'sinter.csi.io', volumeHandle: o.inlineHandle } } } : { persistentVolumeName: o.pvName },
    },
    status: { attached: o.attached ?? false },
  };
}

export function csiNode(nodeName: string, drivers: { name: string; nodeID: string }[]): Obj {
  return { metadata: { name: nodeName }, spec: { drivers: drivers.map((d) => ({ ...d, topologyKeys: ['topology.sinter.csi.io/node'] })) } };
}

export function persistentVolume(name: string, volumeHandle: string, driver = 'sinter.csi.io'): Obj {
  return {
    metadata: { name },
    spec: { capacity: { storage: '1Gi' }, accessModes: ['ReadWriteOnce'], persistentVolumeReclaimPolicy: 'Delete', csi: { driver, volumeHandle } },
    status: { phase: 'Bound' },
  };
}

/** Polls until fn returns true (or a non-undefined value); fails with `what` after timeoutMs. */
export async function eventually<T>(fn: () => T | Promise<T>, what: string, timeoutMs = 5000, stepMs = 10): Promise<Exclude<T, false | undefined>> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== false && v !== undefined) return v as Exclude<T, false | undefined>;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, stepMs));
  }
}
