/**
 * Integration-test fixture for backend = "redis": a real PostgreSQL and a real redis-server (on a
 * free port, append-only file fsynced always), a database migrated for the relay, and the relay
 * in-process or as a child process that can be SIGKILLed.
 */
import pg from 'pg';
import assert from 'node:assert/strict';
import type { LocalPostgres } from '../src/local/postgres.js';
import { LocalRedis, type LocalRedisOptions } from '../src/local/redis.js';
import { createLogger } from '../src/util/log.js';
import { connectRedis, type RedisLink } from '../src/sink/redis-client.js';
import { ServiceEnv, sleep } from './fixture.js';

export const REDIS_TOML = `
[project]
name = "test-service"

[database]
type = "postgresql"
url = "\${DATABASE_URL}"

[observers]
backend = "redis"
redis_url = "\${REDIS_URL}"

[[observers.publish]]
mutation = "create_order"
subject = "fraiseql.order.created"

[relay]
listen = "127.0.0.1:0"
`;

export interface RedisEntry {
  id: string;
  fields: Record<string, string>;
  body: Record<string, unknown>;
}

/** PostgreSQL and a redis-server (append-only file fsynced always, unless `persistence: false`). */
export class RedisEnv extends ServiceEnv {
  private clients: RedisLink[] = [];

  private constructor(
    pg: LocalPostgres,
    readonly redis: LocalRedis,
    dir: string,
    dbUrl: string,
    configFile: string,
  ) {
    super(pg, dir, dbUrl, configFile);
  }

  static async create(opts: { toml?: string; redis?: LocalRedisOptions } = {}): Promise<RedisEnv> {
    const p = await ServiceEnv.prepare(opts.toml ?? REDIS_TOML, undefined, () => LocalRedis.start(opts.redis));
    return new RedisEnv(p.pgs, p.broker, p.dir, p.dbUrl, p.configFile);
  }

  protected brokerEnv(): Record<string, string> {
    return { REDIS_URL: this.redis.url };
  }

  protected async destroyBroker(): Promise<void> {
    for (const c of this.clients) c.destroy();
    await this.redis.destroy();
  }

  /** A connected client (closed by destroy()). */
  async client(): Promise<RedisLink> {
    const c = await connectRedis({ url: this.redis.url, log: createLogger('silent'), name: 'test' });
    this.clients.push(c);
    return c;
  }

  /** Entries in a stream (0 when it does not exist, or Redis does not answer). */
  async length(key: string): Promise<number> {
    try {
      const c = this.clients[0] ?? (await this.client());
      return await c.sendCommand<number>(['XLEN', key]);
    } catch {
      return 0;
    }
  }

  async waitForLength(key: string, n: number, timeoutMs = 60_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    let c = 0;
    while (Date.now() < deadline) {
      c = await this.length(key);
      if (c >= n) return c;
      await sleep(100);
    }
    throw new Error(`timed out: stream ${key} holds ${c} of ${n} entries`);
  }

  /** Every entry of a stream, in stream order. */
  async read(key: string): Promise<RedisEntry[]> {
    const c = this.clients[0] ?? (await this.client());
    const out: RedisEntry[] = [];
    let from = '-';
    for (;;) {
      const page = await c.sendCommand<[string, string[]][]>(['XRANGE', key, from, '+', 'COUNT', '5000']);
      for (const [id, flat] of page) {
        const fields: Record<string, string> = {};
        for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!;
        out.push({ id, fields, body: JSON.parse(fields['body'] ?? 'null') as Record<string, unknown> });
      }
      if (page.length < 5000) return out;
      from = '(' + page.at(-1)![0];
    }
  }
}

/** The subject of the load scenarios' events. */
export const LOAD = 'fraiseql.order.load';

/** Commits `txns` transactions of `perTxn` emit() events each. */
export async function produce(url: string, first: number, txns: number, perTxn: number, pauseMs = 0): Promise<number> {
  const c = new pg.Client({ connectionString: url });
  c.on('error', () => {});
  await c.connect();
  try {
    for (let t = 0; t < txns; t++) {
      const from = first + t * perTxn;
      await c.query(`SELECT fraiseql_relay.emit('${LOAD}', jsonb_build_object('n', g)) FROM generate_series($1::int, $2::int) g`, [
        from,
        from + perTxn - 1,
      ]);
      if (pauseMs > 0) await sleep(pauseMs);
    }
  } finally {
    await c.end();
  }
  return txns * perTxn;
}

/** Every event 0..expected-1 once, no event id twice. */
export function assertExactlyOnce(entries: RedisEntry[], expected: number): void {
  const ids = new Set(entries.map((e) => e.body['event_id'] as string));
  assert.equal(ids.size, entries.length, 'no event id twice in the stream');
  const ns = entries.map((e) => (e.body['entity'] as { n: number }).n).sort((a, b) => a - b);
  assert.equal(ns.length, expected, 'every committed event is in the stream');
  for (let i = 0; i < ns.length; i++) assert.equal(ns[i], i, `event ${i} present once`);
}
