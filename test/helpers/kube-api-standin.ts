import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { writeFileSync } from 'node:fs';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';

/**
 * An HTTP stand-in for the Kubernetes API server, just enough of it for what
 * sinter reads and what the capacity tests' models of csi-provisioner and
 * kube-scheduler read and write: list (with limit/continue, labelSelector,
 * per namespace or across all), get one object, watch (`?watch=true`, chunked
 * JSON lines of {type, object}, resumed from a resourceVersion, 410 Gone as an
 * ERROR event or as an HTTP status once the resourceVersion is compacted
 * away), bearer-token auth, and fault injection (drop streams, answer errors,
 * go down and come back on the same port). Writes (create with generateName,
 * update with resourceVersion conflicts, delete) are served for
 * CSIStorageCapacity only, validated as the API server validates them (the
 * part csi-provisioner relies on: its start-up probe creates an object with
 * an invalid name and expects 422 Invalid).
 */

export type Resource =
  | 'volumeattachments'
  | 'csinodes'
  | 'persistentvolumes'
  | 'nodes'
  | 'storageclasses'
  | 'csidrivers'
  | 'csistoragecapacities'
  | 'pods'
  | 'replicasets';
type Obj = { metadata: { name: string; namespace?: string; resourceVersion?: string; [k: string]: unknown }; [k: string]: unknown };

interface ResourceInfo {
  kind: string;
  apiVersion: string;
  /** URL prefix of the group version: /api/v1 or /apis/<group>/v1. */
  prefix: string;
  namespaced: boolean;
  /** The API server accepts create/update/delete (here: only what a test's model writes). */
  writable?: boolean;
}

const RESOURCES: Record<Resource, ResourceInfo> = {
  volumeattachments: { kind: 'VolumeAttachment', apiVersion: 'storage.k8s.io/v1', prefix: '/apis/storage.k8s.io/v1', namespaced: false },
  csinodes: { kind: 'CSINode', apiVersion: 'storage.k8s.io/v1', prefix: '/apis/storage.k8s.io/v1', namespaced: false },
  persistentvolumes: { kind: 'PersistentVolume', apiVersion: 'v1', prefix: '/api/v1', namespaced: false },
  nodes: { kind: 'Node', apiVersion: 'v1', prefix: '/api/v1', namespaced: false },
  storageclasses: { kind: 'StorageClass', apiVersion: 'storage.k8s.io/v1', prefix: '/apis/storage.k8s.io/v1', namespaced: false },
  csidrivers: { kind: 'CSIDriver', apiVersion: 'storage.k8s.io/v1', prefix: '/apis/storage.k8s.io/v1', namespaced: false },
  csistoragecapacities: { kind: 'CSIStorageCapacity', apiVersion: 'storage.k8s.io/v1', prefix: '/apis/storage.k8s.io/v1', namespaced: true, writable: true },
  pods: { kind: 'Pod', apiVersion: 'v1', prefix: '/api/v1', namespaced: true },
  replicasets: { kind: 'ReplicaSet', apiVersion: 'apps/v1', prefix: '/apis/apps/v1', namespaced: true },
};
const KINDS = RESOURCES;
const ALL = Object.keys(RESOURCES) as Resource[];
const PATH_RE = /^(\/api\/v1|\/apis\/[^/]+\/v1)(?:\/namespaces\/([^/]+))?\/([^/]+)(?:\/([^/]+))?$/;

interface Route {
  resource: Resource;
  /** Undefined: every namespace (a list or watch of a namespaced resource across the cluster). */
  namespace?: string;
  name?: string;
}

function routeOf(pathname: string): Route | undefined {
  const m = PATH_RE.exec(pathname);
  if (!m) return undefined;
  const [, prefix, namespace, plural, name] = m;
  const resource = ALL.find((r) => r === plural && RESOURCES[r].prefix === prefix);
  if (!resource) return undefined;
  if (namespace !== undefined && !RESOURCES[resource].namespaced) return undefined;
  if (name !== undefined && RESOURCES[resource].namespaced && namespace === undefined) return undefined;
  return { resource, namespace, name };
}

const keyOf = (resource: Resource, name: string, namespace?: string) => (RESOURCES[resource].namespaced ? `${namespace ?? ''}/${name}` : name);

/** Equality-based label selectors (`a=b,c==d,e!=f`), what the sidecars' informers send. */
function selectorMatches(selector: string | null, labels: Record<string, string> | undefined): boolean {
  if (!selector) return true;
  return selector.split(',').every((term) => {
    const m = /^\s*([^!=\s]+)\s*(!=|==|=)\s*([^\s]*)\s*$/.exec(term);
    if (!m) return false;
    const v = labels?.[m[1]];
    return m[2] === '!=' ? v !== m[3] : v === m[3];
  });
}

const DNS1123_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/** The API server's ValidateCSIStorageCapacity (pkg/apis/storage/validation), the checks a writer can trip. */
function csiStorageCapacityErrors(o: Obj): string[] {
  const errs: string[] = [];
  if (!DNS1123_SUBDOMAIN.test(o.metadata.name)) errs.push(`metadata.name: Invalid value: "${o.metadata.name}": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'`);
  const sc = o.storageClassName;
  if (typeof sc !== 'string' || sc === '') errs.push('storageClassName: Required value');
  else if (!DNS1123_SUBDOMAIN.test(sc)) errs.push(`storageClassName: Invalid value: "${sc}"`);
  for (const f of ['capacity', 'maximumVolumeSize'] as const) {
    const q = o[f];
    if (q !== undefined && q !== null && (typeof q !== 'string' || !/^\d+(\.\d+)?([KMGTPE]i|[kMGTPE]|m)?$/.test(q))) errs.push(`${f}: Invalid value: ${JSON.stringify(q)}: must be a non-negative quantity`);
  }
  const nt = o.nodeTopology as { matchLabels?: unknown; matchExpressions?: unknown } | undefined;
  if (nt !== undefined && nt !== null && (typeof nt !== 'object' || (nt.matchLabels !== undefined && (typeof nt.matchLabels !== 'object' || Object.values(nt.matchLabels as object).some((v) => typeof v !== 'string')))))
    errs.push('nodeTopology: Invalid value: not a label selector');
  return errs;
}

interface OpenWatch {
  resource: Resource;
  namespace?: string;
  labelSelector: string | null;
  res: ServerResponse;
  timer?: NodeJS.Timeout;
}

const status = (code: number, reason: string, message: string) => ({ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code });

export class KubeApiStandIn {
  readonly token = 'standin-token';
  /** Further bearer tokens accepted, one per modelled component, so a test can tell whose requests were whose. */
  readonly extraTokens = new Set<string>();
  port = 0;
  /** How a watch from a compacted resourceVersion is refused. */
  goneAs: 'event' | 'http' = 'event';
  /** When set, every request is answered with this HTTP status (an overloaded or broken server). */
  failWith: number | undefined;
  /** Called before a list request is answered (fault injection between pages). */
  beforeList: ((resource: Resource, continueToken: string | null) => void) | undefined;
  /** Every request seen: method, path and query. */
  readonly requests: { resource?: Resource; watch: boolean; query: URLSearchParams; method?: string; path?: string; namespace?: string; name?: string; token?: string }[] = [];

  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  private rv = 100;
  private compactedBelow = 0;
  private readonly objects = Object.fromEntries(ALL.map((r) => [r, new Map<string, Obj>()])) as Record<Resource, Map<string, Obj>>;
  private readonly log = Object.fromEntries(ALL.map((r) => [r, [] as { rv: number; type: string; object: Obj }[]])) as Record<Resource, { rv: number; type: string; object: Obj }[]>;
  private nameSeq = 0;
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
  writeKubeconfig(dir: string, port = this.port, token = this.token): string {
    const path = join(dir, token === this.token ? 'kubeconfig' : `kubeconfig-${token}`);
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
        `    token: ${token}`,
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

  /** Names of the objects of a resource (namespace/name keys for namespaced ones), as a controller's lister would see them. */
  names(resource: Resource): string[] {
    return [...this.objects[resource].keys()];
  }

  /** One object; a namespaced one by `namespace` (or a `namespace/name` key). */
  get(resource: Resource, name: string, namespace?: string): Obj | undefined {
    return this.objects[resource].get(namespace === undefined ? name : keyOf(resource, name, namespace));
  }

  /** Every object of a resource, in key order. */
  list(resource: Resource): Obj[] {
    return [...this.objects[resource].entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([, o]) => o);
  }

  create(resource: Resource, obj: Obj): Obj {
    const key = keyOf(resource, obj.metadata.name, obj.metadata.namespace);
    if (this.objects[resource].has(key)) throw new Error(`${resource}/${key} exists`);
    const o = structuredClone(obj);
    o.kind = KINDS[resource].kind;
    o.apiVersion = KINDS[resource].apiVersion;
    o.metadata.uid ??= `uid-${resource}-${key.replace('/', '.')}-${++this.nameSeq}`;
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
    const key = keyOf(resource, o.metadata.name, o.metadata.namespace);
    if (type === 'DELETED') this.objects[resource].delete(key);
    else this.objects[resource].set(key, o);
    this.log[resource].push({ rv: this.rv, type, object: o });
    for (const w of this.watches) if (w.resource === resource && this.visible(w, o)) this.send(w, type, o);
    return o;
  }

  private visible(w: { namespace?: string; labelSelector: string | null }, o: Obj): boolean {
    return (w.namespace === undefined || o.metadata.namespace === w.namespace) && selectorMatches(w.labelSelector, o.metadata.labels as Record<string, string> | undefined);
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
    const route = routeOf(url.pathname);
    const resource = route?.resource;
    const watch = url.searchParams.get('watch') === 'true' || url.searchParams.get('watch') === '1';
    const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
    this.requests.push({ resource, watch, query: url.searchParams, method: req.method, path: url.pathname, namespace: route?.namespace, name: route?.name, token });
    const json = (code: number, body: unknown) => {
      res.writeHead(code, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (token !== this.token && !this.extraTokens.has(token ?? '')) return json(401, status(401, 'Unauthorized', 'Unauthorized'));
    if (this.failWith !== undefined) return json(this.failWith, status(this.failWith, 'InternalError', `stand-in fails with ${this.failWith}`));
    if (!route) return json(404, status(404, 'NotFound', `the server could not find the requested resource (${url.pathname})`));
    const method = req.method ?? 'GET';
    if (method === 'GET') {
      if (route.name !== undefined) return this.serveGet(route, json);
      if (watch) return this.serveWatch(route.resource, url.searchParams, res, route.namespace);
      return this.serveList(route.resource, url.searchParams, json, route.namespace);
    }
    if (!RESOURCES[route.resource].writable || !['POST', 'PUT', 'DELETE'].includes(method)) return json(405, status(405, 'MethodNotAllowed', `${method} ${route.resource} is not served`));
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      try {
        this.serveWrite(method, route, chunks.length ? (JSON.parse(Buffer.concat(chunks).toString('utf8')) as Obj) : undefined, json);
      } catch (e) {
        json(400, status(400, 'BadRequest', (e as Error).message));
      }
    });
  }

  private serveGet(route: Route, json: (code: number, body: unknown) => void): void {
    const o = this.objects[route.resource].get(keyOf(route.resource, route.name!, route.namespace));
    if (!o) return json(404, { ...status(404, 'NotFound', `${route.resource} "${route.name}" not found`), details: { name: route.name, kind: route.resource } });
    json(200, o);
  }

  private serveWrite(method: string, route: Route, body: Obj | undefined, json: (code: number, body: unknown) => void): void {
    const { resource, namespace } = route;
    const info = RESOURCES[resource];
    const invalid = (name: string, errs: string[]) =>
      json(422, { ...status(422, 'Invalid', `${info.kind}.${info.apiVersion.split('/')[0]} "${name}" is invalid: ${errs.join(', ')}`), details: { name, kind: info.kind, causes: errs.map((m) => ({ message: m })) } });
    if (method === 'DELETE') {
      const key = keyOf(resource, route.name ?? '', namespace);
      if (route.name === undefined || !this.objects[resource].has(key)) return json(404, status(404, 'NotFound', `${resource} "${route.name}" not found`));
      this.remove(resource, key);
      return json(200, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', details: { name: route.name, kind: resource } });
    }
    if (!body || typeof body !== 'object' || typeof body.metadata !== 'object') return json(400, status(400, 'BadRequest', 'the body is not an object with metadata'));
    if (body.metadata.namespace !== undefined && body.metadata.namespace !== namespace)
      return json(400, status(400, 'BadRequest', 'the namespace of the provided object does not match the namespace sent on the request'));
    if (method === 'POST') {
      if (route.name !== undefined) return json(405, status(405, 'MethodNotAllowed', 'POST to an object'));
      const gen = body.metadata.generateName as string | undefined;
      const name = body.metadata.name || (gen ? `${gen}${(++this.nameSeq).toString(36).padStart(5, 'x')}` : '');
      const o: Obj = { ...body, metadata: { ...body.metadata, name, namespace } };
      delete o.metadata.resourceVersion;
      delete o.metadata.uid;
      const errs = csiStorageCapacityErrors(o);
      if (errs.length) return invalid(name, errs);
      if (this.objects[resource].has(keyOf(resource, name, namespace))) return json(409, status(409, 'AlreadyExists', `${resource} "${name}" already exists`));
      return json(201, this.create(resource, o));
    }
    // PUT: optimistic concurrency on resourceVersion, as every client-go Update relies on.
    const key = keyOf(resource, route.name ?? '', namespace);
    const cur = this.objects[resource].get(key);
    if (!cur || route.name === undefined) return json(404, status(404, 'NotFound', `${resource} "${route.name}" not found`));
    if (body.metadata.name !== route.name) return json(400, status(400, 'BadRequest', 'the name of the object does not match the name on the URL'));
    if (body.metadata.resourceVersion !== cur.metadata.resourceVersion)
      return json(409, status(409, 'Conflict', `Operation cannot be fulfilled on ${resource} "${route.name}": the object has been modified; please apply your changes to the latest version and try again`));
    const errs = csiStorageCapacityErrors(body);
    if (errs.length) return invalid(route.name, errs);
    const o: Obj = { ...body, metadata: { ...body.metadata, namespace, uid: cur.metadata.uid, creationTimestamp: cur.metadata.creationTimestamp } };
    o.kind = info.kind;
    o.apiVersion = info.apiVersion;
    json(200, this.record(resource, 'MODIFIED', o));
  }

  private serveList(resource: Resource, q: URLSearchParams, json: (code: number, body: unknown) => void, namespace?: string): void {
    let offset = 0;
    const token = q.get('continue');
    this.beforeList?.(resource, token);
    if (token) {
      const c = this.continues.get(token);
      if (!c || c.resource !== resource) return json(400, status(400, 'BadRequest', 'invalid continue token'));
      if (c.epoch < this.compactions) return json(410, status(410, 'Expired', 'The provided continue parameter is too old to display a consistent list result.'));
      offset = c.offset;
    }
    const sel = { namespace, labelSelector: q.get('labelSelector') };
    const all = [...this.objects[resource].entries()]
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([, o]) => o)
      .filter((o) => this.visible(sel, o));
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

  private serveWatch(resource: Resource, q: URLSearchParams, res: ServerResponse, namespace?: string): void {
    const rvParam = q.get('resourceVersion') ?? '';
    const from = rvParam === '' || rvParam === '0' ? undefined : Number(rvParam);
    if (from !== undefined && (!Number.isFinite(from) || from < this.compactedBelow) && this.goneAs === 'http') {
      res.writeHead(410, { 'content-type': 'application/json' });
      res.end(JSON.stringify(status(410, 'Expired', `too old resource version: ${rvParam} (${this.compactedBelow})`)));
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    res.flushHeaders();
    const w: OpenWatch = { resource, namespace, labelSelector: q.get('labelSelector'), res };
    if (from !== undefined && (!Number.isFinite(from) || from < this.compactedBelow)) {
      this.send(w, 'ERROR', status(410, 'Expired', `too old resource version: ${rvParam} (${this.compactedBelow})`));
      res.end();
      return;
    }
    this.watches.add(w);
    res.on('close', () => this.endWatch(w, 'gone'));
    const timeout = Number(q.get('timeoutSeconds') ?? 0);
    if (timeout > 0) w.timer = setTimeout(() => this.endWatch(w, 'end'), timeout * 1000);
    if (from === undefined) {
      for (const o of this.objects[resource].values()) if (this.visible(w, o)) this.send(w, 'ADDED', o);
    } else {
      for (const e of this.log[resource]) if (e.rv > from && this.visible(w, e.object)) this.send(w, e.type, e.object);
    }
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
