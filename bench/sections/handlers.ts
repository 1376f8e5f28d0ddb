/**
 * (c) Inbound: JetStream → SQL handler, exactly once through the inbox.
 *
 * - Throughput: HANDLER_N events already stored in a stream, then the relay (subscriber only)
 *   starts and applies them, for each case of HANDLER_CASES (trivial or upsert handler,
 *   `concurrency` 1 or 8, `batch` 1 or the default, with or without `order_by` on 1,000 keys).
 * - Latency: events published at LAT_RATE/s into a running relay; latency is the handler's commit
 *   time (track_commit_timestamp) minus the publish time written in the event.
 * - The database's own ceiling in the same run: single-row INSERT commits/s from 1 and 16
 *   connections, and the same INSERTs 100 to a transaction.
 */
import pg from 'pg';
import { relayToml, type BenchEnv } from '../lib/env.js';
import { errMsg, fmtInt, nowMs, sleep } from '../lib/util.js';
import { Series } from '../lib/series.js';
import { HANDLER_N, LAT_SECS, REPS, RUN_TIMEOUT_S, WINDOW, log } from '../lib/settings.js';
import { CorePublisher } from '../lib/corepub.js';
import { attempt, spawnRelay } from '../lib/runs.js';

export interface HandlerCase {
  key: string;
  handler: 'trivial' | 'upsert';
  concurrency: number;
  batch: number;
  orderBy: boolean;
}

/** the default `batch` of a subscription (config/schema-observers.ts) */
export const BATCH_DEFAULT = 100;
const BATCH = BATCH_DEFAULT;
/** distinct `order_by` keys */
export const ORDER_KEYS = 1000;
/** events/s offered in the latency runs */
export const LAT_RATE = 2000;

const cases: HandlerCase[] = [];
for (const handler of ['trivial', 'upsert'] as const) {
  for (const concurrency of [1, 8]) {
    for (const batch of [1, BATCH])
      cases.push({ key: `${handler}-c${concurrency}-b${batch}`, handler, concurrency, batch, orderBy: false });
  }
  cases.push({ key: `${handler}-c8-b${BATCH}-ordered`, handler, concurrency: 8, batch: BATCH, orderBy: true });
}
/** BENCH_HANDLER_CASES="trivial-c8-b32,…": only these cases (for profiling) */
const only = process.env['BENCH_HANDLER_CASES']?.split(',').map((k) => k.trim());
export const HANDLER_CASES: readonly HandlerCase[] = only ? cases.filter((c) => only.includes(c.key)) : cases;

/** the latency runs: trivial handler, concurrency 8, batched; unordered and ordered */
export const LAT_CASES: readonly HandlerCase[] = [
  { key: 'lat', handler: 'trivial', concurrency: 8, batch: BATCH, orderBy: false },
  { key: 'lat-ordered', handler: 'trivial', concurrency: 8, batch: BATCH, orderBy: true },
];

interface HandlerLatency {
  offered: number;
  achieved: number;
  count: number;
  p50: number;
  p99: number;
  p999: number;
  max: number;
}

export interface HandlerResults {
  handlers: Map<string, Series>;
  handlersError: string;
  /** rows/s committed by plain INSERTs: '1', '16' connections single-row; '1x100', '16x100' 100 rows a transaction */
  ceilings: Map<string, Series>;
  handlerLat: Map<string, HandlerLatency | string>;
}

/** PostgreSQL settings section (c) needs: commit timestamps for the latency runs */
export const HANDLER_SETTINGS = { track_commit_timestamp: 'on' };

const HANDLER_SQL = `
CREATE TABLE IF NOT EXISTS bench.orders (
  id bigint PRIMARY KEY, customer text NOT NULL, amount numeric NOT NULL, status text NOT NULL,
  updates int NOT NULL DEFAULT 1, updated_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS orders_customer ON bench.orders (customer, updated_at);
CREATE OR REPLACE FUNCTION bench.fn_upsert(p jsonb) RETURNS void LANGUAGE sql AS $$
  INSERT INTO bench.orders AS o (id, customer, amount, status)
  VALUES ((p->>'order_id')::bigint, p->>'customer', (p->>'amount')::numeric, p->>'status')
  ON CONFLICT (id) DO UPDATE SET customer = EXCLUDED.customer, amount = EXCLUDED.amount, status = EXCLUDED.status,
                                 updates = o.updates + 1, updated_at = now() $$;
CREATE TABLE IF NOT EXISTS bench.lat (t_pub bigint NOT NULL);
CREATE OR REPLACE FUNCTION bench.fn_lat(p jsonb) RETURNS void LANGUAGE sql AS $$ INSERT INTO bench.lat VALUES ((p->>'t')::bigint) $$;
CREATE TABLE IF NOT EXISTS bench.ceiling (n int);
`;

/** an event's body: an order (10,000 distinct: each upserted several times) and its ordering key */
function body(i: number, t = 0): string {
  return JSON.stringify({
    n: i,
    t,
    key: i % ORDER_KEYS,
    order_id: i % 10_000,
    customer: `customer-${i % 997}`,
    amount: i * 1.5,
    status: 'paid',
    entity: { id: i, name: 'x'.repeat(100) },
  });
}

function subscriptionToml(c: HandlerCase, subject: string, consumer: string, handler: string): string {
  return `
[[observers.subscribe]]
subject = "${subject}"
handler = "${handler}"
consumer = "${consumer}"
concurrency = ${c.concurrency}
batch = ${c.batch}
${c.orderBy ? 'order_by = "$.key"' : ''}
`;
}

/** a relay process with one subscription (and the outbox its configuration brings, on a slot of its own) */
async function startRelay(env: BenchEnv, c: HandlerCase, name: string, stream: string, subject: string, handler: string) {
  const slot = `bench_${name.replace(/[^a-z0-9]/g, '_')}`;
  await env.createSlot(slot);
  const toml = relayToml({ slot, stream, subjects: ['bench_in.>'], extra: subscriptionToml(c, subject, `bench-${name}`, handler) });
  const cfgFile = await env.writeConfig(`relay-${name}`, toml);
  return { child: spawnRelay(env, cfgFile), slot };
}

/** microseconds since the epoch (PostgreSQL's commit timestamps are on the same clock) */
const now = (): number => Math.round((performance.timeOrigin + performance.now()) * 1000);

/** Publishes n events (async acks, window WINDOW) and waits for every PubAck. */
async function publishBacklog(env: BenchEnv, subject: string, n: number, tag: string): Promise<void> {
  const pub = new CorePublisher(env.nc);
  await new Promise<void>((resolve, reject) => {
    let sent = 0;
    let acked = 0;
    const pump = (): void => {
      while (pub.inFlight < WINDOW && sent < n) {
        const i = sent++;
        const id = `${tag}-${i}`;
        pub.publishWith(subject, body(i), id, [['Fraiseql-Event-Id', id]], (err) => {
          if (err) return reject(err);
          if (++acked === n) resolve();
          else pump();
        });
      }
    };
    pump();
  });
}

async function countHandled(env: BenchEnv): Promise<number> {
  return Number((await env.sql<{ n: string }>(`SELECT count(*)::text AS n FROM fraiseql_relay.inbox`))[0]!.n);
}

async function throughputRun(env: BenchEnv, c: HandlerCase, rep: number, s: Series): Promise<void> {
  const stream = 'BENCH_IN';
  const subject = `bench_in.${c.key}`;
  await env.freshStream(stream, ['bench_in.>']);
  await env.sql(`TRUNCATE bench.seen, bench.orders, fraiseql_relay.inbox`);
  await publishBacklog(env, subject, HANDLER_N, `h-${c.key}-${rep}`);
  const { child, slot } = await startRelay(
    env,
    c,
    `${c.key}-${rep}`,
    stream,
    subject,
    c.handler === 'trivial' ? 'bench.fn_trivial' : 'bench.fn_upsert',
  );
  try {
    const deadline = nowMs() + RUN_TIMEOUT_S * 1000;
    let first = 0;
    let firstCount = 0;
    let last = 0;
    let done = 0;
    while (done < HANDLER_N) {
      if (!child.alive) throw new Error(`relay exited: ${child.tail()}`);
      if (nowMs() > deadline) throw new Error(`only ${done} of ${HANDLER_N} handled within ${RUN_TIMEOUT_S} s`);
      await sleep(20);
      const n = await countHandled(env);
      const t = nowMs();
      if (n > 0 && first === 0) {
        first = t;
        firstCount = n;
      }
      if (n > done) last = t;
      done = n;
    }
    const rss = await child.stop();
    s.values.push(HANDLER_N / ((last - child.spawnedAt) / 1000));
    if (last > first) s.excl.push((HANDLER_N - firstCount) / ((last - first) / 1000));
    s.startup.push((first - child.spawnedAt) / 1000);
    s.rss.push(rss);
  } finally {
    child.kill();
    await child.exited;
    await env.dropSlot(slot);
  }
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
}

/** Events at LAT_RATE/s for LAT_SECS into a running relay: publish → handler committed. */
async function latencyRun(env: BenchEnv, c: HandlerCase): Promise<HandlerLatency> {
  const stream = 'BENCH_IN';
  const subject = `bench_in.${c.key}`;
  await env.freshStream(stream, ['bench_in.>']);
  await env.sql(`TRUNCATE bench.lat, fraiseql_relay.inbox`);
  const { child, slot } = await startRelay(env, c, c.key, stream, subject, 'bench.fn_lat');
  const pub = new CorePublisher(env.nc);
  const publish: { failed: Error | null } = { failed: null };
  const send = (i: number, t: number): void =>
    pub.publishWith(subject, body(i, t), `${c.key}-${i}`, [['Fraiseql-Event-Id', `${c.key}-${i}`]], (err) => {
      publish.failed ??= err ?? null;
    });
  try {
    // warm-up (t = 0, not measured): until the relay handles events
    const warmDeadline = nowMs() + RUN_TIMEOUT_S * 1000;
    let i = 0;
    while ((await countHandled(env)) === 0) {
      if (!child.alive) throw new Error(`relay exited: ${child.tail()}`);
      if (nowMs() > warmDeadline) throw new Error('the relay handled no event');
      send(i++, 0);
      await sleep(50);
    }
    const warm = i;
    while ((await countHandled(env)) < warm) await sleep(20);
    // paced: LAT_RATE/s for LAT_SECS
    const total = Math.round(LAT_RATE * LAT_SECS);
    const t0 = nowMs();
    let sent = 0;
    while (sent < total) {
      const due = Math.min(total, Math.floor(((nowMs() - t0) / 1000) * LAT_RATE));
      while (sent < due) {
        send(warm + sent, now());
        sent++;
      }
      await sleep(2);
    }
    const achievedWindow = (nowMs() - t0) / 1000;
    const deadline = nowMs() + 30_000;
    while ((await countHandled(env)) < warm + total) {
      if (publish.failed) throw publish.failed;
      if (nowMs() > deadline) throw new Error(`only ${(await countHandled(env)) - warm} of ${total} handled 30 s after the last`);
      await sleep(50);
    }
    await child.stop();
    const rows = await env.sql<{ us: string }>(
      `SELECT ((extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)::bigint - t_pub)::text AS us FROM bench.lat WHERE t_pub > 0`,
    );
    const lat = rows.map((r) => Number(r.us) / 1000).sort((a, b) => a - b);
    return {
      offered: LAT_RATE,
      achieved: total / achievedWindow,
      count: lat.length,
      p50: pct(lat, 0.5),
      p99: pct(lat, 0.99),
      p999: pct(lat, 0.999),
      max: lat[lat.length - 1]!,
    };
  } finally {
    child.kill();
    await child.exited;
    await env.dropSlot(slot);
  }
}

/** rows/s that `conns` connections commit in `secs` with `perTx` single-row INSERTs to a transaction */
async function ceiling(env: BenchEnv, conns: number, perTx: number, secs: number): Promise<number> {
  const clients = await Promise.all(
    Array.from({ length: conns }, async () => {
      const c = new pg.Client({ connectionString: env.dbUrl });
      await c.connect();
      return c;
    }),
  );
  const stmt =
    perTx === 1 ? 'INSERT INTO bench.ceiling VALUES (1)' : `BEGIN; ${'INSERT INTO bench.ceiling VALUES (1); '.repeat(perTx)}COMMIT;`;
  try {
    let rows = 0;
    const end = nowMs() + secs * 1000;
    const t0 = nowMs();
    await Promise.all(
      clients.map(async (c) => {
        while (nowMs() < end) {
          await c.query(stmt);
          rows += perTx;
        }
      }),
    );
    return rows / ((nowMs() - t0) / 1000);
  } finally {
    await Promise.all(clients.map((c) => c.end()));
  }
}

export const CEILINGS: readonly { key: string; conns: number; perTx: number }[] = [
  { key: '1', conns: 1, perTx: 1 },
  { key: '16', conns: 16, perTx: 1 },
  { key: '1x100', conns: 1, perTx: 100 },
  { key: '16x100', conns: 16, perTx: 100 },
];

export async function sectionHandlers(env: BenchEnv, res: HandlerResults): Promise<void> {
  for (const c of HANDLER_CASES) res.handlers.set(c.key, new Series());
  for (const c of CEILINGS) res.ceilings.set(c.key, new Series());
  try {
    await env.sql(HANDLER_SQL);
    for (let rep = 1; rep <= REPS; rep++) {
      for (const c of CEILINGS) {
        const s = res.ceilings.get(c.key)!;
        const what = `(c) ceiling: ${c.conns} connection(s), ${c.perTx} row(s) a transaction, rep ${rep}`;
        try {
          await env.sql('TRUNCATE bench.ceiling');
          s.values.push(await ceiling(env, c.conns, c.perTx, 3));
          log(`  ${what}: ${fmtInt(s.values[s.values.length - 1]!)} rows/s`);
        } catch (err) {
          s.errors.push(errMsg(err));
          log(`  ${what}: failed: ${errMsg(err)}`);
        }
      }
      for (const c of HANDLER_CASES) {
        await attempt(res.handlers.get(c.key)!, `(c) ${c.key} rep ${rep}`, () => throughputRun(env, c, rep, res.handlers.get(c.key)!));
      }
    }
    for (const c of LAT_CASES) {
      log(`(c) latency ${c.key}: ${LAT_RATE} events/s for ${LAT_SECS} s`);
      try {
        const r = await latencyRun(env, c);
        res.handlerLat.set(c.key, r);
        log(`  p50 ${r.p50.toFixed(1)} ms, p99 ${r.p99.toFixed(1)} ms, max ${r.max.toFixed(1)} ms over ${r.count} events`);
      } catch (err) {
        res.handlerLat.set(c.key, errMsg(err));
        log(`  failed: ${errMsg(err)}`);
      }
    }
  } catch (err) {
    res.handlersError = errMsg(err);
    log(`  failed: ${errMsg(err)}`);
  } finally {
    await env.deleteStream('BENCH_IN').catch(() => {});
  }
}
