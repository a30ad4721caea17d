import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { MetricsAddress } from '../config/types.js';
import { buildRegistry, type MetricsSources } from './collectors.js';

export interface MetricsEndpoint {
  /** Where it listens, `host:port` (the port the kernel picked when 0 was asked). */
  address: string;
  close(): Promise<void>;
}

/**
 * Serves GET /metrics in Prometheus' text format on its own HTTP port. Loaded
 * (with prom-client) only when --metrics-address is set, so a plugin without
 * it opens no port and pays nothing at start.
 */
export async function startMetrics(at: MetricsAddress, src: MetricsSources): Promise<MetricsEndpoint> {
  const register = buildRegistry(src);
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: metrics are at /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('only GET\n');
      return;
    }
    register.metrics().then(
      (text) => {
        res.writeHead(200, { 'content-type': register.contentType });
        res.end(req.method === 'HEAD' ? undefined : text);
      },
      (e: unknown) => {
        src.log.error({ err: (e as Error).message }, 'metrics: scrape failed');
        res.writeHead(500, { 'content-type': 'text/plain' }).end('scrape failed; see the plugin log\n');
      },
    );
  });
  // Scrapers keep connections open; they must not hold up shutdown.
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(new Error(`metrics: cannot listen on ${at.raw}: ${e.code ?? e.message}`)));
    if (at.host === '') server.listen(at.port, resolve);
    else server.listen(at.port, at.host, resolve);
  });
  const a = server.address() as AddressInfo;
  const address = `${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
  src.log.info({ address, path: '/metrics' }, 'metrics endpoint listening');
  return {
    address,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
