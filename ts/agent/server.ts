/**
 * The agent's HTTP endpoint (node:http): `GET /metrics` in Prometheus's
 * text format, `GET /healthz` (200 only while the programs are attached and
 * the reader runs, else 503). Nothing else: 404, or 405 for another method.
 * @internal
 * @module
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';

/** A listening metrics server. */
export interface MetricsServer {
  /** Where it listens (the port chosen, when the config said 0). */
  readonly address: AddressInfo;
  /** Stops listening and ends open connections; resolves once closed. */
  close(): Promise<void>;
}

/**
 * Listens on `host`:`port`.
 * @param healthy Whether `/healthz` answers 200, asked on each request.
 * @throws The listen error (`EADDRINUSE`, `EACCES`, `EADDRNOTAVAIL`, ...) as node:net raises it.
 */
export async function serveMetrics(host: string, port: number, registry: Registry, healthy: () => boolean): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics' && path !== '/healthz') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics or /healthz\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    if (path === '/healthz') {
      const ok = healthy();
      res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' }).end(ok ? 'ok\n' : 'not attached\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (err: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`collecting metrics failed: ${String(err)}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    address: server.address() as AddressInfo,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Keep-alive connections (Prometheus keeps one) would hold close().
        server.closeAllConnections();
      }),
  };
}
