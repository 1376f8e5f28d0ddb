/**
 * The Redis connection of backend = "redis" (node-redis's `@redis/client`), set up for the
 * relay's promise:
 *
 * - no offline queue: a command issued while the connection is down fails at once, so the
 *   outbound session re-reads from the slot's confirmed position instead of a library re-sending
 *   commands later, behind the relay's back and out of its order;
 * - commands in flight when the connection drops are rejected (node-redis does not re-send them:
 *   the server may have executed them), which the relay treats as "unknown": read again from the
 *   slot and de-duplicated by the append script;
 * - RESP2 replies (plain arrays), which every Redis with streams speaks;
 * - reconnection forever, with a growing pause of at most 2 s.
 */
import type { createClient } from '@redis/client';
import type { Logger } from '../util/log.js';
import { errorMessage } from '../util/errors.js';

/** What the relay uses of a node-redis client. */
export interface RedisLink {
  sendCommand<T = unknown>(args: ReadonlyArray<string | Buffer>): Promise<T>;
  readonly isReady: boolean;
  /** A second connection with the same settings (blocking reads need their own). */
  duplicate(): RedisLink;
  connect(): Promise<unknown>;
  close(): Promise<void>;
  destroy(): void;
  on(event: 'error', listener: (err: Error) => void): unknown;
  on(event: 'ready' | 'end' | 'reconnecting', listener: () => void): unknown;
}

export interface RedisConnectOptions {
  url: string;
  log: Logger;
  /** the connection became usable (true) or was lost (false) */
  onStatus?: (up: boolean) => void;
  /** CLIENT SETNAME, shown by CLIENT LIST */
  name?: string;
  /** one attempt, no reconnection (`check`, `status`): a Redis that is down fails at once */
  once?: boolean;
}

/**
 * node-redis, loaded on first use: it takes ~150 ms to import, which the start-up of a relay with
 * any other backend, and every command (status, check, migrate), would otherwise pay.
 */
let redisLib: { createClient: typeof createClient } | null = null;

/** A client not yet connected: call `connect()`; it reconnects by itself from then on. */
function redisClient(opts: RedisConnectOptions): RedisLink {
  const client = redisLib!.createClient({
    url: opts.url,
    RESP: 2,
    disableOfflineQueue: true,
    name: opts.name ?? 'fraiseql-relay',
    socket: {
      connectTimeout: 5000,
      reconnectStrategy: opts.once
        ? false
        : (retries: number) => Math.min(100 * 2 ** Math.min(retries, 5), 2000) + Math.floor(Math.random() * 100),
    },
  }) as unknown as RedisLink;
  watch(client, opts);
  return client;
}

function watch(client: RedisLink, opts: RedisConnectOptions): void {
  let up = false;
  let lastError = '';
  const set = (now: boolean) => {
    if (now === up) return;
    up = now;
    if (now) opts.log.info('connected to Redis');
    else opts.log.warn({ err: lastError || undefined }, 'Redis connection lost; reconnecting');
    opts.onStatus?.(now);
  };
  // node-redis throws an 'error' event nobody listens to: every socket error passes here
  client.on('error', (err: Error) => {
    const msg = errorMessage(err);
    if (msg !== lastError) opts.log.debug({ err: msg }, 'Redis connection error');
    lastError = msg;
    set(false);
  });
  client.on('ready', () => {
    lastError = '';
    set(true);
  });
  client.on('reconnecting', () => set(false));
  client.on('end', () => set(false));
}

/** Connects a client made by {@link redisClient}, waiting (reconnecting) until Redis answers. */
export async function connectRedis(opts: RedisConnectOptions): Promise<RedisLink> {
  redisLib ??= await import('@redis/client');
  const client = redisClient(opts);
  await client.connect();
  return client;
}

/**
 * For a command (status, replay, reconcile, dlq retry): one attempt, no reconnection, so a Redis
 * that is down fails at once, with an error that names the setting to look at.
 */
export async function connectRedisOnce(url: string, name: string, log: Logger): Promise<RedisLink> {
  return connectRedis({ url, log, name, once: true }).catch((err: unknown) => {
    throw new Error(`cannot connect to Redis ([observers] redis_url): ${errorMessage(err)}`, { cause: err });
  });
}

/** Closes a client at once (pending commands fail); never throws. */
export function closeRedis(client: RedisLink | null): void {
  if (!client) return;
  try {
    client.destroy();
  } catch {
    // closed already
  }
}

/** A Redis error reply's first word (`NOSCRIPT`, `WRONGTYPE`, `OOM`, `NOGROUP`…), or ''. */
export function redisErrorCode(err: unknown): string {
  const m = /^([A-Z]+) /.exec(errorMessage(err));
  return m?.[1] ?? '';
}
