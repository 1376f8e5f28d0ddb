/**
 * (r) The other backends, beside NATS in the same run and on the same servers:
 *
 * - Drain: N single-row transactions committed while nothing runs, then the relay started with
 *   `backend = "nats"` and with `backend = "redis"`, each on a slot created before the backlog:
 *   events/s from spawn until the last one is stored (JetStream's message count, XLEN).
 * - Handler throughput: HANDLER_N events already stored (a JetStream stream, a Redis Stream), then a
 *   subscriber-only relay applies them through the inbox with the trivial handler, concurrency 8,
 *   batch 100: events/s from spawn until the last inbox row.
 * - `backend = "postgres"` (no broker): a backlog of events on a subscribed subject in the outbox,
 *   applied by the relay straight from its slot, in commit order, in batches of the subscription's
 *   `batch` (100) per transaction.
 *
 * A throwaway redis-server (src/local/redis.ts: append-only file, fsynced on every write) is
 * started for the section. Enabled by BENCH_ONLY containing "r"; its table is appended to the report.
 */
import { LocalRedis } from '../../src/local/redis.js';
import { connectRedis, type RedisLink } from '../../src/sink/redis-client.js';
import { createLogger } from '../../src/util/log.js';
import { relayToml, SUBJECT, STREAM, type BenchEnv } from '../lib/env.js';
import { fmtInt, fmtMB, nowMs, sleep, type Child } from '../lib/util.js';
import { Series } from '../lib/series.js';
import { BACKLOG_CONNS, HANDLER_N, N, REPS, RUN_TIMEOUT_S, WINDOW, log } from '../lib/settings.js';
import { CorePublisher } from '../lib/corepub.js';
import { attempt, spawnRelay, splitN, streamRun } from '../lib/runs.js';

/** events of the `backend = "postgres"` runs */
const PG_BACKEND_N = HANDLER_N;

export interface BackendResults {
  natsDrain: Series;
  redisDrain: Series;
  natsHandlers: Series;
  redisHandlers: Series;
  pgHandlers: Series;
  redisVersion: string;
  error: string;
}

export function newBackendResults(): BackendResults {
  return {
    natsDrain: new Series(),
    redisDrain: new Series(),
    natsHandlers: new Series(),
    redisHandlers: new Series(),
    pgHandlers: new Series(),
    redisVersion: '',
    error: '',
  };
}

const redisToml = (url: string, opts: { slot?: string; extra?: string }): string =>
  relayToml(opts).replace('backend = "nats"\nnats_url = "${NATS_URL}"', `backend = "redis"\nredis_url = "${url}"`);

function subscription(subject: string, consumer: string): string {
  return `
[[observers.subscribe]]
subject = "${subject}"
handler = "bench.fn_trivial"
consumer = "${consumer}"
concurrency = 8
batch = 100
`;
}

async function countInbox(env: BenchEnv): Promise<number> {
  return Number((await env.sql<{ n: string }>(`SELECT count(*)::text AS n FROM fraiseql_relay.inbox`))[0]!.n);
}

/**
 * Polls `count()` every 20 ms until it reaches `n`: events/s from spawn to the last increase
 * (and from the first event seen), start-up, peak RSS.
 */
async function measure(s: Series, n: number, child: Child, count: () => Promise<number>): Promise<void> {
  const deadline = nowMs() + RUN_TIMEOUT_S * 1000;
  let first = 0;
  let firstCount = 0;
  let last = 0;
  let done = 0;
  try {
    while (done < n) {
      if (!child.alive) throw new Error(`relay exited: ${child.tail()}`);
      if (nowMs() > deadline) throw new Error(`only ${fmtInt(done)} of ${fmtInt(n)} within ${RUN_TIMEOUT_S} s`);
      await sleep(20);
      const c = await count();
      const t = nowMs();
      if (c > 0 && first === 0) {
        first = t;
        firstCount = c;
      }
      if (c > done) last = t;
      done = c;
    }
    const rss = await child.stop();
    s.values.push(n / ((last - child.spawnedAt) / 1000));
    if (last > first) s.excl.push((n - firstCount) / ((last - first) / 1000));
    s.startup.push((first - child.spawnedAt) / 1000);
    s.rss.push(rss);
  } finally {
    child.kill();
    await child.exited;
  }
}

/** N events committed by BACKLOG_CONNS connections, one per transaction, on `subject`. */
async function backlog(env: BenchEnv, n: number, subject: string): Promise<void> {
  await env.sql(`TRUNCATE fraiseql_relay.outbox`);
  let first = 1;
  await Promise.all(
    splitN(n, BACKLOG_CONNS, 1).map((k) => {
      const from = first;
      first += k;
      return env.sqlOwn(`CALL bench.backlog($1, $2, $3, $4)`, [k, 1, subject, from]);
    }),
  );
}

async function drain(env: BenchEnv, redis: RedisLink, url: string, res: BackendResults): Promise<void> {
  const slots: string[] = [];
  for (let rep = 1; rep <= REPS; rep++) slots.push(`r_nats_${rep}`, `r_redis_${rep}`);
  for (const s of slots) await env.createSlot(s);
  try {
    log(`(r) drain: committing ${fmtInt(N)} single-row transactions`);
    await backlog(env, N, SUBJECT);
    for (let rep = 1; rep <= REPS; rep++) {
      const natsSlot = `r_nats_${rep}`;
      await attempt(res.natsDrain, `backend = "nats" drain rep ${rep}`, async () => {
        const cfg = await env.writeConfig(`r-nats-${rep}`, relayToml({ slot: natsSlot }));
        await streamRun(env, res.natsDrain, N, () => spawnRelay(env, cfg), { slot: natsSlot });
      });
      await env.dropSlot(natsSlot).catch(() => {});
      await env.deleteStream(STREAM).catch(() => {});
      const redisSlot = `r_redis_${rep}`;
      await attempt(res.redisDrain, `backend = "redis" drain rep ${rep}`, async () => {
        await redis.sendCommand(['FLUSHALL']);
        const cfg = await env.writeConfig(`r-redis-${rep}`, redisToml(url, { slot: redisSlot }));
        await measure(res.redisDrain, N, spawnRelay(env, cfg), () => redis.sendCommand<number>(['XLEN', SUBJECT]));
      });
      await env.dropSlot(redisSlot).catch(() => {});
    }
  } finally {
    await env.dropSlotsLike('r_').catch(() => {});
  }
}

/** An event's body, as a handler receives it. */
const body = (i: number): string => JSON.stringify({ n: i, customer: `customer-${i % 997}`, amount: i * 1.5, note: 'x'.repeat(120) });

/** HANDLER_N events in a JetStream stream (async acks, window WINDOW). */
async function natsBacklog(env: BenchEnv, subject: string, tag: string): Promise<void> {
  const pub = new CorePublisher(env.nc);
  await new Promise<void>((resolve, reject) => {
    let sent = 0;
    let acked = 0;
    const pump = (): void => {
      while (pub.inFlight < WINDOW && sent < HANDLER_N) {
        const i = sent++;
        const id = `${tag}-${i}`;
        pub.publishWith(subject, body(i), id, [['Fraiseql-Event-Id', id]], (err) => {
          if (err) return reject(err);
          if (++acked === HANDLER_N) resolve();
          else pump();
        });
      }
    };
    pump();
  });
}

/** HANDLER_N entries in a Redis Stream, as the relay appends them (fields body and Fraiseql-Event-Id), pipelined. */
async function redisBacklog(redis: RedisLink, key: string, tag: string): Promise<void> {
  for (let from = 0; from < HANDLER_N; from += WINDOW) {
    const batch: Promise<unknown>[] = [];
    for (let i = from; i < Math.min(HANDLER_N, from + WINDOW); i++)
      batch.push(redis.sendCommand(['XADD', key, '*', 'body', body(i), 'Fraiseql-Event-Id', `${tag}-${i}`]));
    await Promise.all(batch);
  }
}

async function handlers(env: BenchEnv, redis: RedisLink, url: string, res: BackendResults): Promise<void> {
  for (let rep = 1; rep <= REPS; rep++) {
    const subject = `bench_in.r${rep}`;
    await attempt(res.natsHandlers, `backend = "nats" handlers rep ${rep}`, async () => {
      await env.freshStream('BENCH_IN', ['bench_in.>']);
      await env.sql(`TRUNCATE bench.seen, fraiseql_relay.inbox`);
      await natsBacklog(env, subject, `n${rep}`);
      const cfg = await env.writeConfig(`r-nats-h-${rep}`, relayToml({ extra: subscription(subject, `bench-nats-${rep}`) }));
      await measure(res.natsHandlers, HANDLER_N, spawnRelay(env, cfg), () => countInbox(env));
    });
    await env.deleteStream('BENCH_IN').catch(() => {});
    await attempt(res.redisHandlers, `backend = "redis" handlers rep ${rep}`, async () => {
      await redis.sendCommand(['FLUSHALL']);
      await env.sql(`TRUNCATE bench.seen, fraiseql_relay.inbox`);
      await redisBacklog(redis, subject, `r${rep}`);
      const cfg = await env.writeConfig(`r-redis-h-${rep}`, redisToml(url, { extra: subscription(subject, `bench-redis-${rep}`) }));
      await measure(res.redisHandlers, HANDLER_N, spawnRelay(env, cfg), () => countInbox(env));
    });
  }
}

/** backend = "postgres": the outbox's events applied straight from the slot by a subscription. */
async function pgBackend(env: BenchEnv, res: BackendResults): Promise<void> {
  for (let rep = 1; rep <= REPS; rep++) {
    const slot = `r_pg_${rep}`;
    await attempt(res.pgHandlers, `backend = "postgres" handlers rep ${rep}`, async () => {
      await env.createSlot(slot);
      await env.sql(`TRUNCATE bench.seen, fraiseql_relay.inbox`);
      await backlog(env, PG_BACKEND_N, SUBJECT);
      const toml = relayToml({ slot, extra: subscription(SUBJECT, `bench-pg-${rep}`) }).replace(
        'backend = "nats"\nnats_url = "${NATS_URL}"',
        'backend = "postgres"',
      );
      const cfg = await env.writeConfig(`r-pg-${rep}`, toml);
      await measure(res.pgHandlers, PG_BACKEND_N, spawnRelay(env, cfg), () => countInbox(env));
    });
    await env.dropSlot(slot).catch(() => {});
  }
}

export async function sectionBackends(env: BenchEnv, res: BackendResults): Promise<void> {
  const server = await LocalRedis.start();
  const redis = await connectRedis({ url: server.url, log: createLogger('silent'), name: 'bench' });
  try {
    const info = await redis.sendCommand<string>(['INFO', 'server']);
    res.redisVersion = /redis_version:(\S+)/.exec(info)?.[1] ?? '';
    log(`(r) redis-server ${res.redisVersion} at ${server.url} (appendonly yes, appendfsync always)`);
    await drain(env, redis, server.url, res);
    await handlers(env, redis, server.url, res);
    await pgBackend(env, res);
  } finally {
    redis.destroy();
    await server.destroy();
  }
}

function row(label: string, s: Series): string {
  if (!s.ok()) return `| ${label} | failed: ${s.errors[0] ?? 'not run'} | | | |`;
  return `| ${label} | ${fmtInt(s.med())} | ${fmtInt(s.medExcl())} | ${Math.min(...s.startup).toFixed(2)} s | ${fmtMB(Math.max(...s.rss))} |`;
}

/** The section's table, appended to the report (empty when the section did not run). */
export function renderBackends(res: BackendResults | null): string {
  if (res === null) return '';
  if (res.error && !res.natsDrain.ok() && !res.redisDrain.ok())
    return `\n## (r) Backends: NATS, Redis, PostgreSQL\n\nfailed: ${res.error}\n`;
  return [
    '',
    '## (r) Backends: NATS, Redis, PostgreSQL',
    '',
    `The same relay with each \`backend\`, on the same PostgreSQL in the same run, median of ${REPS}. Drain: ${fmtInt(N)} single-row transactions committed before the relay starts, until the last is stored (JetStream's message count; Redis ${res.redisVersion}, append-only file fsynced on every write: XLEN). Handlers: ${fmtInt(HANDLER_N)} events already stored, applied through the inbox by the trivial handler (\`concurrency = 8\`, \`batch = 100\`). \`backend = "postgres"\`: ${fmtInt(PG_BACKEND_N)} outbox events applied straight from the slot, in commit order, \`batch = 100\` per transaction.`,
    '',
    '| run | events/s | excl. start-up | start-up | peak RSS |',
    '| --- | ---: | ---: | ---: | ---: |',
    row('drain, `backend = "nats"`', res.natsDrain),
    row('drain, `backend = "redis"`', res.redisDrain),
    row('handlers, `backend = "nats"`', res.natsHandlers),
    row('handlers, `backend = "redis"`', res.redisHandlers),
    row('handlers, `backend = "postgres"` (from the slot)', res.pgHandlers),
    '',
  ].join('\n');
}
