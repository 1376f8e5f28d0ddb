import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../util/log.js';
import { UsageError, errorMessage } from '../util/errors.js';
import type { RelayMetrics } from './metrics.js';
import type { Health } from './health.js';

/** Default bound on loop staleness for `/livez`. */
const DEFAULT_LIVE_STALE_MS = 60_000;

export interface HttpDeps {
  metrics: RelayMetrics;
  health: Health;
  log: Logger;
  /** `/livez` fails once a loop has not touched {@link Health} for this long; default 60 s */
  liveStaleMs?: number;
}

export interface HttpServer {
  /** the bound port (the chosen one when `listen` asked for port 0) */
  port: number;
  close(): Promise<void>;
}

/**
 * Splits `[relay] listen` ("host:port", ":port", "[v6]:port") into host and port. An empty
 * host means every interface. Throws a {@link UsageError} for anything else (the config schema
 * already rejects those; this guards direct callers).
 */
export function parseListen(listen: string): { host: string | undefined; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^\s:[\]]*)):(\d{1,5})$/.exec(listen);
  const port = Number(m?.[3]);
  if (!m || !(port <= 65535)) {
    throw new UsageError(`[relay] listen = ${JSON.stringify(listen)} must be "host:port" (e.g. "0.0.0.0:9464", ":9464" or "[::]:9464")`);
  }
  const host = m[1] ?? m[2];
  return { host: host === '' ? undefined : host, port };
}

function display(host: string | undefined, port: number): string {
  if (host === undefined) return `*:${port}`;
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * Serves `/livez`, `/readyz` and `/metrics` (README, "HTTP") on `listen`. Resolves once bound;
 * rejects with a {@link UsageError} naming the address and `[relay] listen` when it cannot bind.
 */
export async function startHttp(listen: string, deps: HttpDeps): Promise<HttpServer> {
  const { metrics, health, log } = deps;
  const liveStaleMs = deps.liveStaleMs ?? DEFAULT_LIVE_STALE_MS;
  const { host, port } = parseListen(listen);

  const send = (req: http.IncomingMessage, res: http.ServerResponse, status: number, type: string, body: string): void => {
    res.writeHead(status, {
      'Content-Type': type,
      'Content-Length': Buffer.byteLength(body),
      'Cache-Control': 'no-store',
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  };
  const json = (req: http.IncomingMessage, res: http.ServerResponse, status: number, body: unknown): void =>
    send(req, res, status, 'application/json; charset=utf-8', JSON.stringify(body));

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    const path = (req.url ?? '/').split('?', 1)[0];
    if (path !== '/livez' && path !== '/readyz' && path !== '/metrics') {
      json(req, res, 404, { status: 'not found', paths: ['/livez', '/readyz', '/metrics'] });
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      json(req, res, 405, { status: 'method not allowed' });
      return;
    }
    if (path === '/livez') {
      const stale = health.stale(liveStaleMs);
      if (Object.keys(stale).length === 0) json(req, res, 200, { status: 'ok' });
      else json(req, res, 503, { status: 'stale', stale_ms: stale });
    } else if (path === '/readyz') {
      const r = health.ready();
      if (r.ready) json(req, res, 200, { status: 'ready' });
      else json(req, res, 503, { status: 'not ready', reasons: r.reasons });
    } else {
      const text = await metrics.text();
      send(req, res, 200, metrics.contentType, text);
    }
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      log.warn({ err: errorMessage(err), path: req.url }, 'http request failed');
      if (!res.headersSent) json(req, res, 500, { status: 'error', error: errorMessage(err) });
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 5_000;

  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      const where = display(host, port);
      const why =
        err.code === 'EADDRINUSE'
          ? 'the address is already in use (another relay or program listens there)'
          : err.code === 'EACCES'
            ? 'permission denied (ports below 1024 need privileges)'
            : err.code === 'EADDRNOTAVAIL'
              ? 'the host is not an address of this machine'
              : errorMessage(err);
      reject(
        new UsageError(
          `[relay] listen = ${JSON.stringify(listen)}: cannot serve HTTP (health and metrics) on ${where}: ${why}; ` +
            'set [relay] listen to a free "host:port" of this machine (e.g. "0.0.0.0:9464", or ":0" for any free port)',
          { cause: err },
        ),
      );
    };
    server.once('error', onError);
    server.listen({ host, port }, () => {
      server.off('error', onError);
      resolve();
    });
  });
  server.on('error', (err) => log.error({ err: errorMessage(err) }, 'http server error'));

  const bound = (server.address() as AddressInfo).port;
  log.info({ listen: display(host, bound) }, `serving /livez, /readyz and /metrics on http://${display(host ?? 'localhost', bound)}`);

  let closing: Promise<void> | null = null;
  return {
    port: bound,
    close(): Promise<void> {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closing;
    },
  };
}
