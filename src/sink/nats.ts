import { connect, type ConnectionOptions, type NatsConnection } from '@nats-io/transport-node';
import type { Config } from '../config/load.js';
import { natsAuthOptions } from './natsauth.js';
import type { Logger } from '../util/log.js';
import { natsConnectError, redactUrl } from '../util/errors.js';

export interface NatsOptions {
  url: string;
  name?: string;
  log: Logger;
  /** false: fail at once when the first connection is refused (check, status) */
  waitOnFirstConnect?: boolean;
  /** told of each connection state change */
  onStatus?: (up: boolean) => void;
  /** TLS and authentication (natsAuthOptions) */
  auth?: Partial<ConnectionOptions>;
}

/** A NATS connection for a daemon: reconnects forever and logs each state change once. */
export async function connectNats(opts: NatsOptions): Promise<NatsConnection> {
  const servers = opts.url
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const nc = await connect({
    ...opts.auth,
    servers,
    name: opts.name ?? 'fraiseql-relay',
    maxReconnectAttempts: -1,
    reconnectTimeWait: 1000,
    reconnectJitter: 500,
    waitOnFirstConnect: opts.waitOnFirstConnect ?? true,
    pingInterval: 10_000,
    maxPingOut: 3,
  }).catch((err: unknown) => {
    throw natsConnectError(err, servers);
  });
  const log = opts.log;
  log.info({ server: servers.map(redactUrl).join(',') }, 'NATS connected');
  opts.onStatus?.(true);
  void (async () => {
    for await (const s of nc.status()) {
      switch (s.type) {
        case 'disconnect':
          opts.onStatus?.(false);
          log.warn({ server: redactUrl(String(s.server ?? '')) }, 'NATS disconnected');
          break;
        case 'reconnect':
          opts.onStatus?.(true);
          log.info({ server: redactUrl(String(s.server ?? '')) }, 'NATS reconnected');
          break;
        case 'error':
          log.warn({ err: natsConnectError(s.error, servers).message }, 'NATS error');
          break;
        default:
          break;
      }
    }
  })().catch(() => {});
  return nc;
}

/** A short-lived connection for a command (check, status, dlq, replay): fails fast. */
export async function connectOnce(config: Config, name: string): Promise<NatsConnection> {
  const url = config.observers.nats_url;
  if (!url) throw new Error('[observers] nats_url is not set');
  const servers = url.split(',').map((s) => s.trim());
  return connect({
    ...natsAuthOptions(config.relay.nats),
    servers,
    timeout: 5000,
    name: `fraiseql-relay ${name}`,
  }).catch((err: unknown) => {
    throw natsConnectError(err, servers);
  });
}
