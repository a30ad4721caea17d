import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Backend } from '../../src/backends/backend.js';
import { FileBackend } from '../../src/backends/file/backend.js';
import { NODE_TOPOLOGY_KEY } from '../../src/contracts/nodeid.js';
import { KubeNodeRegistry } from '../../src/controller/kube-node-registry.js';
import { KubeNodeSegments } from '../../src/controller/node-topology.js';
import { parseParameters } from '../../src/controller/parameters.js';
import { VolumeManager } from '../../src/controller/volumes.js';
import { DomainError } from '../../src/errors/domain-error.js';
import { loadKubeConfig } from '../../src/k8s/client.js';
import { KubeCache } from '../../src/k8s/cache.js';
import { HostExecutor } from '../../src/exec/run.js';
import { fileBackendConfig } from '../helpers/backend-config.js';
import { eventually } from '../helpers/kube-api-standin.js';
import { DRIVER, KubeFixture } from '../helpers/kube-fixture.js';

// With Kubernetes, a node's topology segments beyond topology.sinter.csi.io/node
// (which its node id carries) are what the kubelet recorded from NodeGetInfo:
// our driver's CSINode topologyKeys, valued by the Node's labels. The HTTP
// stand-in serves the CSINodes; Node objects (read with one GET per publish
// that needs them) come from a small front that passes everything else on.

const ZONE = 'topology.sinter.csi.io/zone';
const W = (n: number) => `worker-${n};;`;
const block = { accessType: 'block' as const, accessMode: 'SINGLE_NODE_WRITER', mountFlags: [] as string[] };
const MiB = 1024 * 1024;

describe('publish topology with Kubernetes: CSINode topologyKeys and Node labels (HTTP stand-in behind a Node-serving front)', () => {
  let fx: KubeFixture;
  let front: Server;
  const nodes = new Map<string, Record<string, string>>();
  let nodesDown = false;
  let nodeGets = 0;

  beforeEach(async () => {
    fx = new KubeFixture();
    await fx.setUp();
    nodes.clear();
    nodesDown = false;
    nodeGets = 0;
    front = createServer((req, res) => {
      const m = /^\/api\/v1\/nodes\/([^/?]+)$/.exec(req.url?.split('?')[0] ?? '');
      if (m && req.method === 'GET') {
        nodeGets++;
        const labels = nodes.get(m[1]);
        const [code, body] = nodesDown
          ? [503, { kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'ServiceUnavailable', code: 503 }]
          : labels
            ? [200, { kind: 'Node', apiVersion: 'v1', metadata: { name: m[1], labels } }]
            : [404, { kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'NotFound', code: 404 }];
        res.writeHead(code, { 'content-type': 'application/json' }).end(JSON.stringify(body));
        return;
      }
      const up = request({ host: '127.0.0.1', port: fx.standin.port, path: req.url, method: req.method, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    });
    await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
    fx.onCleanup(() => new Promise<void>((r) => front.close(() => r())));
    fx.onCleanup(() => front.closeAllConnections());
  });
  afterEach(async () => fx.cleanup());

  it('publishes only where the Node labels our CSINode vouches for match; a label it does not vouch for, or an API it cannot ask, counts as missing', async () => {
    const log = fx.logs.log;
    const exec = new HostExecutor({ mode: 'direct', hostRoot: '/', defaultTimeoutMs: 30_000 });
    const zoned = new FileBackend(fileBackendConfig('zoned', join(fx.dir, 'zoned'), { topology: { [ZONE]: 'a' } }), exec, log);
    const pinned = new FileBackend(fileBackendConfig('pinned', join(fx.dir, 'pinned'), { topology: { [NODE_TOPOLOGY_KEY]: 'worker-1' } }), exec, log);
    for (const b of [zoned, pinned]) await b.start();
    const backends = new Map<string, Backend>([
      ['zoned', zoned],
      ['pinned', pinned],
    ]);
    const cache = new KubeCache({
      driverName: DRIVER,
      kubeConfig: loadKubeConfig({ kubeconfig: fx.standin.writeKubeconfig(fx.dir, (front.address() as AddressInfo).port) }),
      log,
      reflector: { initialBackoffMs: 20, maxBackoffMs: 200, listTimeoutMs: 5000 },
    });
    fx.onCleanup(() => cache.stop());
    const volumes = new VolumeManager(backends, new KubeNodeRegistry(cache.nodeDirectory()), log, { nodeSegments: new KubeNodeSegments(cache) });
    volumes.index();

    const csiNode = (n: number, keys: string[]) => ({ metadata: { name: `worker-${n}` }, spec: { drivers: [{ name: DRIVER, nodeID: W(n), topologyKeys: keys }] } });
    fx.standin.create('csinodes', csiNode(1, [NODE_TOPOLOGY_KEY, ZONE]));
    fx.standin.create('csinodes', csiNode(2, [NODE_TOPOLOGY_KEY, ZONE]));
    fx.standin.create('csinodes', csiNode(3, [NODE_TOPOLOGY_KEY]));
    nodes.set('worker-1', { [ZONE]: 'a', [NODE_TOPOLOGY_KEY]: 'worker-1' });
    nodes.set('worker-2', { [ZONE]: 'b', [NODE_TOPOLOGY_KEY]: 'worker-2' });
    // Labelled zone a by hand, but our node plugin did not report a zone there.
    nodes.set('worker-3', { [ZONE]: 'a', [NODE_TOPOLOGY_KEY]: 'worker-3' });
    cache.start();
    await eventually(() => cache.live && cache.csiNodes.size === 3, 'the cache to sync');

    const code = async (p: Promise<unknown>) => p.then(() => 'OK', (e: unknown) => (e instanceof DomainError ? `${e.code}:${e.message}` : String(e)));
    const v = await volumes.create({ name: 'in-zone-a', capacity: { required_bytes: 4 * MiB }, capabilities: [block], parameters: parseParameters({ backend: 'zoned' }) });
    expect(await code(volumes.publish(v.id, W(2), block, false))).toMatch(/^failed-precondition:.*node worker-2 is in topology\.sinter\.csi\.io\/zone=b/);
    expect(await code(volumes.publish(v.id, W(3), block, false))).toMatch(/^failed-precondition:.*node worker-3 reports no topology\.sinter\.csi\.io\/zone segment/);
    expect(await code(volumes.publish(v.id, W(1), block, false))).toBe('OK');
    await volumes.unpublish(v.id, W(1));

    // The API cannot be asked: unproven, so refused (the attacher retries).
    nodesDown = true;
    expect(await code(volumes.publish(v.id, W(1), block, false))).toMatch(/^failed-precondition:.*node worker-1 reports no topology\.sinter\.csi\.io\/zone segment/);
    nodesDown = false;

    // A volume pinned by the node segment alone needs no Node read: the node id carries it.
    const gets = nodeGets;
    const p = await volumes.create({ name: 'on-worker-1', capacity: { required_bytes: 4 * MiB }, capabilities: [block], parameters: parseParameters({ backend: 'pinned' }) });
    expect(await code(volumes.publish(p.id, W(2), block, false))).toMatch(/^failed-precondition:.*reachable only from topology topology\.sinter\.csi\.io\/node=worker-1, and node worker-2 is in topology\.sinter\.csi\.io\/node=worker-2/);
    expect(await code(volumes.publish(p.id, W(1), block, false))).toBe('OK');
    expect(nodeGets).toBe(gets);
    expect(volumes.get(p.id)?.attachments.map((a) => a.nodeId)).toEqual([W(1)]);
  });
});
