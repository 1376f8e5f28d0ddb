import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { Logger } from '../log.js';
import { redactUrl } from '../errors.js';

export interface NatsOptions {
  url: string;
  name?: string;
  log: Logger;
  /** false: fail at once when the first connection is refused (check, status) */
  waitOnFirstConnect?: boolean;
  /** told of each connection state change */
  onStatus?: (up: boolean) => void;
}

/** A NATS connection for a daemon: reconnects forever and logs each state change once. */
export async function connectNats(opts: NatsOptions): Promise<NatsConnection> {
  const servers = opts.url.split(',').map((s) => s.trim()).filter(Boolean);
  const nc = await connect({
    servers,
    name: opts.name ?? 'fraiseql-relay',
    maxReconnectAttempts: -1,
    reconnectTimeWait: 1000,
    reconnectJitter: 500,
    waitOnFirstConnect: opts.waitOnFirstConnect ?? true,
    pingInterval: 10_000,
    maxPingOut: 3,
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
          log.warn({ err: String(s.error?.message ?? s.error) }, 'NATS error');
          break;
        default:
          break;
      }
    }
  })().catch(() => {});
  return nc;
}
