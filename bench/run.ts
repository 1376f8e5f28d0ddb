/**
 * `npm run bench`: starts its own PostgreSQL and nats-server, measures fraiseql-relay against
 * the machine's ceilings, a reference minimal loop and two other outbox relays in one run,
 * prints the tables and writes them to BENCHMARKS.md (see issue 6).
 *
 * Environment:
 *   BENCH_N              backlog size for (a), (e), (f)          default 200000
 *   BENCH_REPS           repetitions per figure                  default 3
 *   BENCH_LAT_SECS       duration of one latency step (b)        default 10
 *   BENCH_LAT_CONNS      producer connections for (b)            default 4
 *   BENCH_HANDLER_N      events per handler run (c)              default 20000
 *   BENCH_COMPARE_SECS   time cap of one (f) comparison run      default 25
 *   BENCH_RUN_TIMEOUT    time cap of any other run, seconds      default 120
 *   BENCH_REF_LATENCY    0: no latency steps for the reference   default 1
 *   BENCH_ONLY           e.g. "a,e": run only these sections     default all
 *   BENCH_OUT            where to write the report               default BENCHMARKS.md
 *   BENCH_RELAY_NODE_ARGS node options for the relay process     e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof"
 *                        ("-" prints only)
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import type { Subscription } from '@nats-io/transport-node';
import { DatabaseSetup } from 'pg-transactional-outbox';
import { BenchEnv, PUBLICATION, ROOT, STREAM, SUBJECT, relayToml } from './lib/env.js';
import { Child, cpuSeconds, errMsg, fmtInt, fmtMB, fmtMs, fmtSpread, median, nowMs, percentileSorted, sleep } from './lib/util.js';
import { sysInfo, type SysInfo } from './lib/sysinfo.js';
import { CorePublisher } from './lib/corepub.js';

// ---------------------------------------------------------------------------------------------
// settings

function intEnv(name: string, def: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return def;
  const n = Number(v.replace(/_/g, ''));
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number, got ${v}`);
  return Math.round(n);
}

function numEnv(name: string, def: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return def;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number, got ${v}`);
  return n;
}

const N = intEnv('BENCH_N', 200_000);
const REPS = intEnv('BENCH_REPS', 3);
const LAT_SECS = numEnv('BENCH_LAT_SECS', 10);
const LAT_CONNS = intEnv('BENCH_LAT_CONNS', 4);
const HANDLER_N = intEnv('BENCH_HANDLER_N', 20_000);
const COMPARE_SECS = numEnv('BENCH_COMPARE_SECS', 25);
const RUN_TIMEOUT_S = numEnv('BENCH_RUN_TIMEOUT', 120);
const ONLY = new Set((process.env['BENCH_ONLY'] ?? 'a,b,c,d,e,f').split(',').map((s) => s.trim().toLowerCase()));
const OUT = process.env['BENCH_OUT'] ?? join(ROOT, 'BENCHMARKS.md');
const WINDOW = 1024;
/** connections committing a backlog of single-row or 10-row transactions */
const BACKLOG_CONNS = 2;
const LAT_RATES = [1_000, 5_000, 20_000];
const LADDER = [1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 25_000, 30_000, 40_000, 50_000, 60_000, 80_000];
const LAT_P99_LIMIT_MS = 50;
const LAT_WARMUP_MS = 1000;
const MAX_LADDER_STEPS = 3;
const REF_LATENCY = process.env['BENCH_REF_LATENCY'] !== '0';
/** extra node options for the relay process, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof" */
const RELAY_NODE_ARGS = (process.env['BENCH_RELAY_NODE_ARGS'] ?? '').split(' ').filter(Boolean);

const T0 = nowMs();
function log(msg: string): void {
  process.stdout.write(`[${((nowMs() - T0) / 1000).toFixed(1).padStart(6)} s] ${msg}\n`);
}

// ---------------------------------------------------------------------------------------------
// results

/** The repetitions of one figure. */
class Series {
  /** events/s from process start to the last event */
  values: number[] = [];
  /** events/s from the first event seen to the last */
  excl: number[] = [];
  /** seconds from process start to the first event */
  startup: number[] = [];
  /** peak RSS, kB */
  rss: number[] = [];
  /** average stored message size, bytes */
  msgBytes: number[] = [];
  /** CPU seconds per run: the contender process, its walsender, nats-server; wall = spawn → last event */
  cpu: { wall: number; proc: number; ws: number; nats: number }[] = [];
  errors: string[] = [];
  notes: string[] = [];
  partial = 0;

  ok(): boolean {
    return this.values.length > 0;
  }

  med(): number {
    return median(this.values);
  }

  medExcl(): number {
    return median(this.excl);
  }
}

function esc(s: string): string {
  return s.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

function failures(s: Series): string {
  if (s.errors.length === 0) return '';
  const distinct = [...new Set(s.errors)];
  return ` (${s.errors.length} of ${s.errors.length + s.values.length} failed: ${esc(distinct[0]!)})`;
}

function cell(s: Series | undefined, pick: (s: Series) => number[] = (x) => x.values, f: (x: number) => string = fmtInt): string {
  if (!s) return 'not run';
  const xs = pick(s);
  if (xs.length === 0) return s.errors.length > 0 ? `failed: ${esc(s.errors[0]!)}` : 'not run';
  return fmtSpread(xs, f) + failures(s);
}

function rssCell(s: Series | undefined): string {
  if (!s || s.rss.length === 0) return '–';
  return fmtSpread(s.rss, fmtMB);
}

function fmtPct(x: number): string {
  return Number.isFinite(x) ? `${Math.round(x)} %` : '–';
}

/** "4.2 s (85 %)": median CPU seconds of a process over the runs, and that as % of the run's wall time. */
function cpuCell(s: Series | undefined, pick: (c: Series['cpu'][number]) => number): string {
  if (!s || s.cpu.length === 0) return '–';
  const xs = s.cpu.map(pick).filter((x) => Number.isFinite(x));
  if (xs.length === 0) return '–';
  const pct = median(s.cpu.filter((c) => Number.isFinite(pick(c))).map((c) => (pick(c) / c.wall) * 100));
  return `${median(xs).toFixed(1)} s (${Math.round(pct)} %)`;
}

function ratio(a: number, b: number): string {
  if (!Number.isFinite(a) || !Number.isFinite(b) || b <= 0) return '–';
  const r = a / b;
  return r >= 10 ? `${r.toFixed(0)}×` : r >= 1.995 ? `${r.toFixed(1)}×` : `${(r * 100).toFixed(0)} %`;
}

type Shape = 'single' | 'tx10' | 'one';
const SHAPES: { key: Shape; label: string; perTx: (n: number) => number }[] = [
  { key: 'single', label: 'single-row transactions', perTx: () => 1 },
  { key: 'tx10', label: '10-row transactions', perTx: () => 10 },
  { key: 'one', label: `one transaction of N rows`, perTx: (n) => n },
];

interface DrainResult {
  backlogSecs: number;
  relay: Series;
  ref: Series;
  decode: Series;
}

interface LatRun {
  /** CPU of the consumer process and of its walsender over the step, % of one core */
  cpuProc: number;
  cpuWs: number;
  rate: number;
  achieved: number;
  produced: number;
  received: number;
  p50: number;
  p99: number;
  p999: number;
  max: number;
}

interface LatResult {
  byRate: Map<number, { runs: LatRun[]; errors: string[] }>;
  ladder: { run?: LatRun; rate: number; error?: string; pass: boolean; why: string }[];
  sustained: string;
  rss: number;
  error?: string;
}

const results = {
  drain: new Map<Shape, DrainResult>(),
  jsJs: new Series(),
  jsCore: new Series(),
  pto: new Series(),
  poll: new Series(),
  lat: null as LatResult | null,
  latRef: null as LatResult | null,
  handlers: new Map<number, Series>(),
  handlersError: '',
  template: { bytes: 0, headers: {} as Record<string, string>, source: '' },
};

// ---------------------------------------------------------------------------------------------
// processes

const TSX = ['--import', 'tsx'];

/** The relay runs as shipped: compiled to dist/ (built afresh by main()). */
function spawnRelay(env: BenchEnv, configFile: string): Child {
  return new Child({
    args: [...RELAY_NODE_ARGS, join(ROOT, 'dist', 'cli.js'), 'run', '-c', configFile],
    cwd: ROOT,
    env: { ...env.env, LOG_LEVEL: 'warn', NO_PRETTY: '1' },
  });
}

function spawnContender(name: string, args: Record<string, unknown>): Child {
  return new Child({
    args: [...TSX, join(ROOT, 'bench', 'contenders', `${name}.ts`)],
    cwd: ROOT,
    env: { ...process.env, BENCH_ARGS: JSON.stringify(args) },
  });
}

interface RunOptions {
  /** the replication slot it reads (to find its walsender) */
  slot?: string;
  /** time cap, seconds */
  capS?: number;
  /** a capped run counts, measured on what it stored in time */
  allowPartial?: boolean;
  /** SIGTERM → SIGKILL grace */
  stopGraceMs?: number;
}

async function walsenderPid(env: BenchEnv, slot: string | undefined): Promise<number | undefined> {
  if (!slot) return undefined;
  const rows = await env.sql<{ active_pid: number | null }>(`SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, [slot]).catch(() => []);
  return rows[0]?.active_pid ?? undefined;
}

/** CPU seconds of the contender, its walsender and nats-server over one run. */
function recordCpu(s: Series, env: BenchEnv, child: Child, wsPid: number | undefined, nats0: number | undefined, wallS: number): void {
  const nats1 = cpuSeconds(env.nats.pid);
  s.cpu.push({
    wall: wallS,
    proc: cpuSeconds(child.pid) ?? Number.NaN,
    ws: wsPid === undefined ? Number.NaN : (cpuSeconds(wsPid) ?? Number.NaN),
    nats: nats0 === undefined || nats1 === undefined ? Number.NaN : nats1 - nats0,
  });
}

/**
 * Runs a contender that publishes into STREAM until `n` messages are stored (or the cap);
 * records events/s from spawn to the last message, excluding start-up, start-up, peak RSS, CPU.
 */
async function streamRun(env: BenchEnv, s: Series, n: number, start: () => Child, o: RunOptions = {}): Promise<void> {
  const capS = o.capS ?? RUN_TIMEOUT_S;
  await env.freshStream();
  const nats0 = cpuSeconds(env.nats.pid);
  const child = start();
  try {
    const w = await env.watchStream(n, {
      timeoutMs: capS * 1000,
      abort: () => (child.alive ? null : `exited: ${child.tail()}`),
    });
    const st = await env.streamState();
    const wsPid = await walsenderPid(env, o.slot);
    const wallS = (w.lastAt - child.spawnedAt) / 1000;
    recordCpu(s, env, child, wsPid, nats0, wallS);
    const rss = await child.stop(o.stopGraceMs ?? 15_000);
    if (w.abort) throw new Error(w.abort);
    if (w.count === 0) throw new Error(`no event reached the stream within ${capS} s (${child.tail()})`);
    if (!w.complete) {
      if (!o.allowPartial) throw new Error(`only ${w.count} of ${n} events within ${capS} s`);
      s.partial++;
    }
    s.values.push(w.count / wallS);
    if (w.lastAt > w.firstAt) s.excl.push((w.count - w.firstCount) / ((w.lastAt - w.firstAt) / 1000));
    s.startup.push((w.firstAt - child.spawnedAt) / 1000);
    s.rss.push(rss);
    if (st && st.messages > 0) s.msgBytes.push(st.bytes / st.messages);
    if (!w.complete) s.notes.push(`${fmtInt(w.count)} of ${fmtInt(n)} in ${capS} s`);
  } finally {
    child.kill();
    await child.exited;
  }
}

/** Runs a contender that reports `DONE {firstAt,lastAt,…}` itself (and waits for SIGTERM). */
async function doneRun(
  env: BenchEnv,
  s: Series,
  n: number,
  start: () => Child,
  count: (d: Record<string, number>) => number,
  o: RunOptions = {},
): Promise<Record<string, number>> {
  const nats0 = cpuSeconds(env.nats.pid);
  const child = start();
  try {
    await child.waitFor(/^READY/, RUN_TIMEOUT_S * 1000);
    const wsPid = await walsenderPid(env, o.slot);
    const m = await child.waitFor(/^DONE (.*)$/, (o.capS ?? RUN_TIMEOUT_S) * 1000);
    const d = JSON.parse(m[1]!) as Record<string, number>;
    const wallS = (d['lastAt']! - child.spawnedAt) / 1000;
    recordCpu(s, env, child, wsPid, nats0, wallS);
    const rss = child.peakKb();
    await child.stop(o.stopGraceMs ?? 15_000);
    const got = count(d);
    if (got < n) throw new Error(`only ${got} of ${n}`);
    const first = d['firstAt'] ?? d['startAt']!;
    s.values.push(got / wallS);
    s.excl.push(got / ((d['lastAt']! - first) / 1000));
    s.startup.push((first - child.spawnedAt) / 1000);
    s.rss.push(rss);
    return d;
  } finally {
    child.kill();
    await child.exited;
  }
}

/** `n` split into `k` parts, each a multiple of `unit` (the last takes the rest). */
function splitN(n: number, k: number, unit: number): number[] {
  const per = Math.max(unit, Math.floor(n / k / unit) * unit);
  const out: number[] = [];
  let left = n;
  while (left > 0) {
    const take = out.length === k - 1 ? left : Math.min(per, left);
    out.push(take);
    left -= take;
  }
  return out;
}

async function attempt(s: Series, what: string, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
    const i = s.values.length - 1;
    log(`  ${what}: ${fmtInt(s.values[i]!)} ev/s (excl. start-up ${fmtInt(s.excl[i] ?? Number.NaN)}, start-up ${(s.startup[i] ?? 0).toFixed(2)} s, peak RSS ${fmtMB(s.rss[i] ?? 0)})`);
  } catch (err) {
    s.errors.push(errMsg(err));
    log(`  ${what}: failed: ${errMsg(err)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// setup SQL

const SETUP_SQL = `
CREATE SCHEMA IF NOT EXISTS bench;
CREATE OR REPLACE FUNCTION bench.payload(i bigint) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_object('n', i, 'customer', 'customer-' || i, 'items', jsonb_build_array('SKU-1', 'SKU-2'),
                            'amount', i * 1.5, 'note', repeat('x', 120)) $$;
CREATE OR REPLACE PROCEDURE bench.backlog(n int, per_tx int, p_subject text, first int DEFAULT 1) LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN first..first + n - 1 LOOP
    PERFORM fraiseql_relay.emit(p_subject, bench.payload(i));
    IF i % per_tx = 0 THEN COMMIT; END IF;
  END LOOP;
  COMMIT;
END $$;
CREATE OR REPLACE PROCEDURE bench.produce(rate float8, secs float8, INOUT produced bigint DEFAULT 0) LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
  el float8;
  ahead float8;
BEGIN
  produced := 0;
  LOOP
    el := extract(epoch FROM clock_timestamp() - t0);
    EXIT WHEN el >= secs;
    ahead := produced / rate - el;
    IF ahead > 0.002 THEN PERFORM pg_sleep(ahead); END IF;
    PERFORM fraiseql_relay.emit('bench.lat', jsonb_build_object(
      'bench_t', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, 'n', produced, 'note', repeat('x', 120)));
    COMMIT;
    produced := produced + 1;
  END LOOP;
END $$;
CREATE TABLE IF NOT EXISTS bench.seen (n int);
CREATE OR REPLACE FUNCTION bench.fn_trivial(p jsonb) RETURNS void LANGUAGE sql AS $$ INSERT INTO bench.seen VALUES ((p->>'n')::int) $$;
`;

// ---------------------------------------------------------------------------------------------
// (a) backlog drain, with (e) decode ceiling and the reference loop on the same backlog

async function sectionDrain(env: BenchEnv): Promise<void> {
  for (const shape of SHAPES) {
    const r: DrainResult = { backlogSecs: 0, relay: new Series(), ref: new Series(), decode: new Series() };
    results.drain.set(shape.key, r);
    try {
      log(`(a) ${shape.label}: preparing the backlog of ${fmtInt(N)} events`);
      await env.sql(`TRUNCATE fraiseql_relay.outbox`);
      await env.sql('CHECKPOINT');
      // one slot per consumer and repetition, all created before the backlog: every one of
      // them streams exactly the same N events
      const slots: string[] = [];
      for (let rep = 1; rep <= REPS; rep++) for (const who of ['relay', 'ref', 'dec']) slots.push(`b_${shape.key}_${who}_${rep}`);
      for (const s of slots) await env.createSlot(s);
      const t = nowMs();
      const perTx = shape.perTx(N);
      // committed by BACKLOG_CONNS connections at once, except the single transaction
      const parts = perTx >= N ? [N] : splitN(N, BACKLOG_CONNS, perTx);
      let first = 1;
      await Promise.all(
        parts.map((n) => {
          const from = first;
          first += n;
          return env.sqlOwn(`CALL bench.backlog($1, $2, $3, $4)`, [n, perTx, SUBJECT, from]);
        }),
      );
      r.backlogSecs = (nowMs() - t) / 1000;
      log(`  backlog committed in ${r.backlogSecs.toFixed(1)} s (${fmtInt(N / r.backlogSecs)} rows/s)`);
      for (let rep = 1; rep <= REPS; rep++) {
        const relaySlot = `b_${shape.key}_relay_${rep}`;
        await attempt(r.relay, `relay rep ${rep}`, async () => {
          const cfgFile = await env.writeConfig(`relay-${shape.key}-${rep}`, relayToml({ slot: relaySlot }));
          await streamRun(env, r.relay, N, () => spawnRelay(env, cfgFile), { slot: relaySlot });
          if (!results.template.source) await captureTemplate(env);
        });
        await env.dropSlot(relaySlot).catch(() => {});
        const refSlot = `b_${shape.key}_ref_${rep}`;
        await attempt(r.ref, `reference loop rep ${rep}`, () =>
          streamRun(
            env,
            r.ref,
            N,
            () => spawnContender('refloop', { dbUrl: env.dbUrl, natsUrl: env.nats.url, slot: refSlot, publication: PUBLICATION, window: WINDOW }),
            { slot: refSlot },
          ),
        );
        await env.dropSlot(refSlot).catch(() => {});
        const decSlot = `b_${shape.key}_dec_${rep}`;
        await attempt(r.decode, `decode only rep ${rep}`, async () => {
          await doneRun(env, r.decode, N, () => spawnContender('decode', { dbUrl: env.dbUrl, slot: decSlot, publication: PUBLICATION, n: N }), (d) => d['inserts']!, {
            slot: decSlot,
          });
        });
        await env.dropSlot(decSlot).catch(() => {});
      }
    } catch (err) {
      const e = errMsg(err);
      log(`  failed: ${e}`);
      for (const s of [r.relay, r.ref, r.decode]) if (s.values.length === 0 && s.errors.length === 0) s.errors.push(e);
    } finally {
      await env.dropSlotsLike(`b_${shape.key}_`).catch(() => {});
      await env.deleteStream(STREAM).catch(() => {});
    }
  }
}

/** The first message the relay stored: payload and headers for the publish ceilings. */
async function captureTemplate(env: BenchEnv): Promise<void> {
  try {
    const m = await env.jsm.streams.getMessage(STREAM, { seq: 1 });
    if (!m) return;
    const headers: Record<string, string> = {};
    if (m.header) for (const [k] of m.header) if (k !== 'Nats-Msg-Id') headers[k] = m.header.get(k);
    results.template = { bytes: m.data.length, headers, source: Buffer.from(m.data).toString('base64') };
  } catch {
    // the ceilings fall back to a synthetic payload
  }
}

// ---------------------------------------------------------------------------------------------
// (e) raw JetStream publishing

async function sectionPublish(env: BenchEnv): Promise<void> {
  let payloadB64 = results.template.source;
  let headers = results.template.headers;
  if (!payloadB64) {
    const body = JSON.stringify({ event_id: '00000000-0000-0000-0000-000000000000', data: { note: 'x'.repeat(560) } });
    payloadB64 = Buffer.from(body).toString('base64');
    headers = { 'Fraiseql-Event-Id': '00000000-0000-0000-0000-000000000000' };
    results.template = { bytes: Buffer.byteLength(body), headers, source: payloadB64 };
  }
  for (let rep = 1; rep <= REPS; rep++) {
    for (const [mode, s] of [['js', results.jsJs], ['core', results.jsCore]] as const) {
      await attempt(s, `(e) JetStream publish (${mode}) rep ${rep}`, async () => {
        await env.freshStream();
        await doneRun(
          env,
          s,
          N,
          () => spawnContender('jspub', { natsUrl: env.nats.url, n: N, subject: SUBJECT, payloadB64, headers, mode, window: WINDOW }),
          (d) => d['n']!,
        );
        const st = await env.streamState();
        if (st && st.messages < N) throw new Error(`stream holds ${st.messages} of ${N}`);
      });
    }
  }
  await env.deleteStream(STREAM).catch(() => {});
}

// ---------------------------------------------------------------------------------------------
// (f) pg-transactional-outbox and a polling relay

async function sectionCompare(env: BenchEnv): Promise<void> {
  // pg-transactional-outbox: its own table, publication and slots (one per repetition,
  // created before its backlog of N single-row transactions)
  try {
    log(`(f) pg-transactional-outbox: preparing its outbox and a backlog of ${fmtInt(N)} single-row transactions`);
    const cfg = { outboxOrInbox: 'outbox' as const, database: 'bench', schema: 'pto', table: 'outbox', listenerRole: 'postgres', publication: 'pto_pub', replicationSlot: 'pto_unused' };
    await env.sql(DatabaseSetup.dropAndCreateTable(cfg));
    await env.sql(DatabaseSetup.setupReplicationCore(cfg));
    await env.sql(`CREATE OR REPLACE PROCEDURE bench.pto_backlog(n int) LANGUAGE plpgsql AS $$
      BEGIN
        FOR i IN 1..n LOOP
          INSERT INTO pto.outbox (id, aggregate_type, aggregate_id, message_type, payload, metadata)
          VALUES (gen_random_uuid(), 'order', i::text, 'order_created', bench.payload(i), '{}');
          COMMIT;
        END LOOP;
      END $$`);
    for (let rep = 1; rep <= REPS; rep++) await env.createSlot(`pto_${rep}`);
    const t = nowMs();
    await Promise.all(splitN(N, BACKLOG_CONNS, 1).map((n) => env.sqlOwn(`CALL bench.pto_backlog($1)`, [n])));
    log(`  backlog committed in ${((nowMs() - t) / 1000).toFixed(1)} s`);
    for (let rep = 1; rep <= REPS; rep++) {
      // the listener marks rows processed (UPDATEs, not published): undo that between repetitions
      await env.sql(`UPDATE pto.outbox SET processed_at = NULL, abandoned_at = NULL, started_attempts = 0, finished_attempts = 0 WHERE started_attempts > 0 OR processed_at IS NOT NULL`);
      await attempt(results.pto, `pg-transactional-outbox rep ${rep}`, () =>
        streamRun(
          env,
          results.pto,
          N,
          () =>
            spawnContender('pto', {
              dbUrl: env.dbUrl,
              natsUrl: env.nats.url,
              slot: `pto_${rep}`,
              publication: 'pto_pub',
              schema: 'pto',
              table: 'outbox',
              subject: 'bench.pto',
            }),
          // its shutdown waits for the queued backlog: not part of the measurement
          { slot: `pto_${rep}`, capS: COMPARE_SECS, allowPartial: true, stopGraceMs: 2_000 },
        ),
      );
      await env.dropSlot(`pto_${rep}`).catch(() => {});
    }
  } catch (err) {
    log(`  failed: ${errMsg(err)}`);
    if (results.pto.values.length === 0) results.pto.errors.push(errMsg(err));
  } finally {
    await env.dropSlotsLike('pto_').catch(() => {});
    await env.sql(`DROP SCHEMA IF EXISTS pto CASCADE`).catch(() => {});
    await env.sql(`DROP PUBLICATION IF EXISTS pto_pub`).catch(() => {});
  }

  // polling relay: the same N rows in its own table (transaction shape does not matter to it)
  try {
    await env.sql(`CREATE SCHEMA IF NOT EXISTS poll;
      CREATE TABLE IF NOT EXISTS poll.outbox (id bigserial PRIMARY KEY, subject text NOT NULL, payload jsonb NOT NULL,
                                              created_at timestamptz NOT NULL DEFAULT clock_timestamp())`);
    for (let rep = 1; rep <= REPS; rep++) {
      await env.sql(`TRUNCATE poll.outbox RESTART IDENTITY`);
      await env.sql(`INSERT INTO poll.outbox (subject, payload) SELECT 'bench.poll', bench.payload(i) FROM generate_series(1, $1::bigint) i`, [N]);
      await env.sql(`VACUUM ANALYZE poll.outbox`);
      await attempt(results.poll, `polling relay rep ${rep}`, () =>
        streamRun(
          env,
          results.poll,
          N,
          () => spawnContender('poll', { dbUrl: env.dbUrl, natsUrl: env.nats.url, table: 'poll.outbox', batch: 500, workers: 1, idleMs: 100 }),
          { capS: COMPARE_SECS, allowPartial: true },
        ),
      );
    }
  } catch (err) {
    log(`  failed: ${errMsg(err)}`);
    if (results.poll.values.length === 0) results.poll.errors.push(errMsg(err));
  } finally {
    await env.sql(`DROP SCHEMA IF EXISTS poll CASCADE`).catch(() => {});
    await env.deleteStream(STREAM).catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// (b) commit → JetStream latency at offered rates

/**
 * Offset to add to performance.now() for wall-clock ms (comparable with PostgreSQL's
 * clock_timestamp()), taken where Date.now() turns to the next millisecond. A preemption between
 * the two clock reads can only make a sample too small: the largest of several is kept.
 */
function wallOffset(samples = 7): number {
  let best = -Infinity;
  for (let i = 0; i < samples; i++) {
    const start = Date.now();
    let d = start;
    while ((d = Date.now()) === start) {
      // spin until the millisecond turns (≤ 1 ms)
    }
    best = Math.max(best, d - performance.now());
  }
  return best;
}

const T_KEY = Buffer.from('"bench_t"');

/** The producer's clock_timestamp() (µs since the epoch) carried in the payload. */
function parseT(data: Uint8Array): number {
  const b = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  let i = b.indexOf(T_KEY);
  if (i < 0) return Number.NaN;
  i += T_KEY.length;
  while (b[i] === 0x3a || b[i] === 0x20) i++;
  let v = 0;
  let digits = 0;
  for (let c = b[i]; c !== undefined && c >= 0x30 && c <= 0x39; c = b[++i]) {
    v = v * 10 + (c - 0x30);
    digits++;
  }
  return digits > 0 ? v : Number.NaN;
}

/**
 * Latencies of one step. Every event counts as seen; only those committed after the warm-up
 * (the first LAT_WARMUP_MS of the step: new producer connections, a stream just purged) enter the
 * percentiles.
 */
class LatencyCollector {
  lat: Float64Array;
  /** events seen */
  count = 0;
  /** latencies recorded */
  n = 0;
  offset = wallOffset();
  warmupUntilMicros = (this.offset + performance.now() + LAT_WARMUP_MS) * 1000;
  constructor(capacity: number) {
    this.lat = new Float64Array(capacity);
  }
  add(tMicros: number): void {
    const now = this.offset + performance.now();
    this.count++;
    if (tMicros >= this.warmupUntilMicros && this.n < this.lat.length) this.lat[this.n++] = now - tMicros / 1000;
  }
}

async function produce(env: BenchEnv, rate: number, secs: number): Promise<number> {
  const clients: pg.Client[] = [];
  try {
    for (let i = 0; i < LAT_CONNS; i++) {
      const c = new pg.Client({ connectionString: env.dbUrl });
      c.on('error', () => {});
      await c.connect();
      clients.push(c);
    }
    const per = rate / LAT_CONNS;
    const res = await Promise.all(clients.map((c) => c.query<{ produced: string }>(`CALL bench.produce($1, $2)`, [per, secs])));
    return res.reduce((a, r) => a + Number(r.rows[0]?.produced ?? 0), 0);
  } finally {
    await Promise.all(clients.map((c) => c.end().catch(() => {})));
  }
}

async function latencyStep(env: BenchEnv, sink: { c: LatencyCollector | null }, rate: number, relay: Child, slot: string): Promise<LatRun> {
  await env.jsm.streams.purge(STREAM);
  await sleep(500);
  const wsPid = await walsenderPid(env, slot);
  const c = new LatencyCollector(Math.ceil(rate * LAT_SECS * 1.5) + 1000);
  sink.c = c;
  try {
    const t0 = nowMs();
    const proc0 = cpuSeconds(relay.pid) ?? Number.NaN;
    const ws0 = cpuSeconds(wsPid) ?? Number.NaN;
    const produced = await produce(env, rate, LAT_SECS);
    const cpuProc = (((cpuSeconds(relay.pid) ?? Number.NaN) - proc0) / ((nowMs() - t0) / 1000)) * 100;
    const cpuWs = (((cpuSeconds(wsPid) ?? Number.NaN) - ws0) / ((nowMs() - t0) / 1000)) * 100;
    const deadline = nowMs() + 10_000;
    while (c.count < produced && nowMs() < deadline && relay.alive) await sleep(20);
    if (!relay.alive) throw new Error(`relay exited: ${relay.tail()}`);
    const n = c.n;
    if (n === 0) throw new Error('no event after the warm-up was seen');
    const sorted = c.lat.slice(0, n).sort();
    return {
      cpuProc,
      cpuWs,
      rate,
      achieved: produced / LAT_SECS,
      produced,
      received: c.count,
      p50: percentileSorted(sorted, 50),
      p99: percentileSorted(sorted, 99),
      p999: percentileSorted(sorted, 99.9),
      max: sorted[n - 1] ?? Number.NaN,
    };
  } finally {
    sink.c = null;
  }
}

/** Autovacuum runs on the outbox so far (they compete for the 2 cores during a step). */
async function vacuumNote(env: BenchEnv): Promise<string> {
  const r = await env
    .sql<{ v: string; a: string }>(`SELECT autovacuum_count::text AS v, autoanalyze_count::text AS a FROM pg_stat_user_tables WHERE schemaname = 'fraiseql_relay' AND relname = 'outbox'`)
    .catch(() => []);
  return r[0] ? `, outbox autovacuums ${r[0].v}, autoanalyzes ${r[0].a}` : '';
}

function latPasses(run: LatRun): { pass: boolean; why: string } {
  if (run.received < run.produced) return { pass: false, why: `${run.produced - run.received} events not seen within 10 s` };
  if (run.achieved < run.rate * 0.95) return { pass: false, why: `producer reached only ${fmtInt(run.achieved)} ev/s` };
  if (!(run.p99 < LAT_P99_LIMIT_MS)) return { pass: false, why: `p99 ${fmtMs(run.p99)} ms` };
  return { pass: true, why: '' };
}

/**
 * Latency steps against one long-running consumer: the relay (REPS repetitions, then the ladder
 * for the highest sustained rate) or the reference loop (`reps` repetitions, no ladder).
 */
async function sectionLatency(env: BenchEnv, who: 'relay' | 'ref', rep: number, ladder: boolean, res: LatResult): Promise<LatResult> {
  for (const r of LAT_RATES) if (!res.byRate.has(r)) res.byRate.set(r, { runs: [], errors: [] });
  const slot = `lat_${who}`;
  let relay: Child | null = null;
  let sub: Subscription | null = null;
  try {
    log(`(b) latency of the ${who === 'relay' ? 'relay' : 'reference loop'}: ${LAT_CONNS} producer connections, ${LAT_SECS} s per step`);
    await env.createSlot(slot);
    await env.freshStream();
    const sink: { c: LatencyCollector | null } = { c: null };
    let probe = false;
    sub = env.nc.subscribe('bench.lat', {
      callback: (_err, msg) => {
        const t = parseT(msg.data);
        if (Number.isNaN(t)) return;
        if (sink.c) sink.c.add(t);
        else probe = true;
      },
    });
    const cfgFile = await env.writeConfig('relay-latency', relayToml({ slot }));
    const child =
      who === 'relay'
        ? spawnRelay(env, cfgFile)
        : spawnContender('refloop', { dbUrl: env.dbUrl, natsUrl: env.nats.url, slot, publication: PUBLICATION, window: WINDOW });
    relay = child;
    // warm-up: one event end to end
    const deadline = nowMs() + 60_000;
    while (!probe) {
      if (!child.alive) throw new Error(`relay exited: ${child.tail()}`);
      if (nowMs() > deadline) throw new Error(`no event came through within 60 s: ${child.tail()}`);
      await env.sql(`SELECT fraiseql_relay.emit('bench.lat', jsonb_build_object('bench_t', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint))`);
      await sleep(200);
    }
    await sleep(500);
    {
      for (const rate of LAT_RATES) {
        const slotRes = res.byRate.get(rate)!;
        try {
          const run = await latencyStep(env, sink, rate, child, slot);
          slotRes.runs.push(run);
          log(
            `  rep ${rep} offered ${fmtInt(rate)} ev/s: achieved ${fmtInt(run.achieved)}, p50 ${fmtMs(run.p50)} ms, p99 ${fmtMs(run.p99)} ms, p99.9 ${fmtMs(run.p999)} ms, ` +
              `seen ${run.received}/${run.produced}, CPU ${fmtPct(run.cpuProc)} (walsender ${fmtPct(run.cpuWs)})${await vacuumNote(env)}`,
          );
        } catch (err) {
          slotRes.errors.push(errMsg(err));
          log(`  rep ${rep} offered ${fmtInt(rate)} ev/s: failed: ${errMsg(err)}`);
          if (!child.alive) throw err;
        }
      }
    }
    if (!ladder) return res;
    // highest offered rate sustained with p99 under the limit: from the repetitions above, then
    // single steps up (or down) the ladder
    const passAt = new Map<number, boolean>();
    for (const [rate, r] of res.byRate) {
      if (r.runs.length === 0) continue;
      const med: LatRun = {
        cpuProc: Number.NaN,
        cpuWs: Number.NaN,
        rate,
        achieved: median(r.runs.map((x) => x.achieved)),
        produced: Math.min(...r.runs.map((x) => x.produced)),
        received: Math.min(...r.runs.map((x) => x.received - x.produced)) + Math.min(...r.runs.map((x) => x.produced)),
        p50: median(r.runs.map((x) => x.p50)),
        p99: median(r.runs.map((x) => x.p99)),
        p999: median(r.runs.map((x) => x.p999)),
        max: Math.max(...r.runs.map((x) => x.max)),
      };
      passAt.set(rate, latPasses(med).pass && r.errors.length === 0);
    }
    let best = 0;
    for (const rate of LAT_RATES) {
      if (passAt.get(rate)) best = rate;
      else break;
    }
    const next = LADDER.filter((x) => x > best && !LAT_RATES.includes(x) && (best !== 0 || x < LAT_RATES[0]!));
    let steps = 0;
    let limitedBy = '';
    for (const rate of next) {
      if (steps >= MAX_LADDER_STEPS) {
        limitedBy = `ladder stopped after ${MAX_LADDER_STEPS} extra steps`;
        break;
      }
      // do not jump over a known failure
      if ([...passAt].some(([r, ok]) => !ok && r < rate)) break;
      steps++;
      try {
        const run = await latencyStep(env, sink, rate, child, slot);
        const p = latPasses(run);
        res.ladder.push({ run, rate, pass: p.pass, why: p.why });
        log(`  ladder offered ${fmtInt(rate)} ev/s: achieved ${fmtInt(run.achieved)}, p99 ${fmtMs(run.p99)} ms → ${p.pass ? 'sustained' : `not sustained (${p.why})`}`);
        passAt.set(rate, p.pass);
        if (!p.pass) {
          limitedBy = p.why;
          break;
        }
        best = rate;
      } catch (err) {
        res.ladder.push({ rate, error: errMsg(err), pass: false, why: errMsg(err) });
        limitedBy = errMsg(err);
        break;
      }
    }
    res.sustained = best > 0 ? `${fmtInt(best)} ev/s${limitedBy ? ` (next step: ${limitedBy})` : ''}` : `none of the offered rates${limitedBy ? ` (${limitedBy})` : ''}`;
  } catch (err) {
    res.error = errMsg(err);
    log(`  failed: ${res.error}`);
  } finally {
    sub?.unsubscribe();
    if (relay) res.rss = Math.max(res.rss, await relay.stop());
    await env.dropSlot(slot).catch(() => {});
    await env.deleteStream(STREAM).catch(() => {});
  }
  return res;
}

// ---------------------------------------------------------------------------------------------
// (c) inbound handler throughput

async function sectionHandlers(env: BenchEnv): Promise<void> {
  const stream = 'BENCH_IN';
  const body = (i: number) => JSON.stringify({ n: i, entity: { id: i, name: 'x'.repeat(100) } });
  for (const c of [1, 8]) results.handlers.set(c, new Series());
  try {
    for (let rep = 1; rep <= REPS; rep++) {
      for (const c of [1, 8]) {
        const s = results.handlers.get(c)!;
        await attempt(s, `(c) handlers concurrency ${c} rep ${rep}`, async () => {
          const subject = `bench_in.c${c}`;
          await env.freshStream(stream, ['bench_in.>']);
          await env.sql(`TRUNCATE bench.seen, fraiseql_relay.inbox`);
          const pub = new CorePublisher(env.nc);
          await new Promise<void>((resolve, reject) => {
            let sent = 0;
            let acked = 0;
            const pump = (): void => {
              while (pub.inFlight < WINDOW && sent < HANDLER_N) {
                const i = sent++;
                pub.publishWith(subject, body(i), `h-${c}-${rep}-${i}`, [['Fraiseql-Event-Id', `h-${c}-${rep}-${i}`]], (err) => {
                  if (err) return reject(err);
                  if (++acked === HANDLER_N) resolve();
                  else pump();
                });
              }
            };
            pump();
          });
          const toml = relayToml({
            stream,
            subjects: ['bench_in.>'],
            extra: `
[[observers.subscribe]]
subject = "${subject}"
handler = "bench.fn_trivial"
consumer = "bench-c${c}"
concurrency = ${c}
`,
          });
          const cfgFile = await env.writeConfig(`relay-handlers-${c}-${rep}`, toml);
          const child = spawnRelay(env, cfgFile);
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
              const n = Number((await env.sql<{ n: string }>(`SELECT count(*)::text AS n FROM bench.seen`))[0]!.n);
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
          }
        });
      }
    }
  } catch (err) {
    results.handlersError = errMsg(err);
    log(`  failed: ${results.handlersError}`);
  } finally {
    await env.deleteStream(stream).catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// report

function render(info: SysInfo, totalSecs: number): string {
  const L: string[] = [];
  const single = results.drain.get('single');
  L.push('# Benchmarks');
  L.push('');
  L.push('Written by `npm run bench` (bench/run.ts); every figure below comes from one run of it. Do not edit by hand: run it again.');
  L.push('');
  L.push(`- **Date**: ${info.date} — run took ${(totalSecs / 60).toFixed(1)} min`);
  L.push(`- **Machine**: ${info.cpu}, ${info.cores} cores, ${info.ramGiB} GiB RAM, ${info.kernel}; PostgreSQL, nats-server, the relay and the load generators all share these cores`);
  L.push(`- **Versions**: Node ${info.node}; ${info.postgres}; nats-server ${info.natsServer}`);
  L.push(`- **Packages**: ${Object.entries(info.packages).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  L.push(`- **Source**: commit ${info.commit}; the relay runs compiled from dist/ as shipped (\`node dist/cli.js run\`, built from this commit at the start of the run), as a child process; the contenders run through tsx (\`node --import tsx bench/contenders/<name>.ts\`)`);
  L.push(`- **Settings**: N = ${fmtInt(N)} events, ${REPS} repetitions per figure (median, then min–max in parentheses), publish window ${WINDOW}, payload: a ~240-byte jsonb object per event (the relay publishes it in its envelope: ${results.template.bytes || '?'} bytes of body)`);
  L.push(`- **Servers**: a throwaway PostgreSQL (wal_level=logical, fsync=off, full_page_writes=off) and nats-server with JetStream (file storage, R1), started fresh for each section; within a section every repetition gets its own replication slot (created before the backlog, dropped after) and a freshly created stream`);
  L.push('');

  // (a)
  L.push(`## (a) Backlog drain: N = ${fmtInt(N)} events committed while nothing runs, then the consumer started`);
  L.push('');
  L.push('Events/s from starting the process to the last event stored in the stream (stream message count polled every 20 ms); "excl. start-up" counts from the first stored event instead. (d) peak RSS of the relay process (VmHWM).');
  L.push('');
  L.push('| transaction shape | backlog commit | fraiseql-relay | excl. start-up | start-up | relay peak RSS | reference loop | reference excl. start-up | relay ÷ reference | relay ÷ reference, excl. start-up |');
  L.push('|---|---|---|---|---|---|---|---|---|---|');
  for (const shape of SHAPES) {
    const r = results.drain.get(shape.key);
    if (!r) {
      L.push(`| ${shape.label} | not run | | | | | | | | |`);
      continue;
    }
    L.push(
      `| ${shape.label} | ${r.backlogSecs ? `${r.backlogSecs.toFixed(1)} s` : '–'} | ${cell(r.relay)} | ${cell(r.relay, (s) => s.excl)} | ${cell(r.relay, (s) => s.startup, (x) => `${x.toFixed(2)} s`)} | ${rssCell(r.relay)} | ${cell(r.ref)} | ${cell(r.ref, (s) => s.excl)} | ${ratio(r.relay.med(), r.ref.med())} | ${ratio(r.relay.medExcl(), r.ref.medExcl())} |`,
    );
  }
  L.push('');
  if (single) {
    L.push(`fraiseql-relay ÷ pg-transactional-outbox (single-row transactions): **${ratio(single.relay.med(), results.pto.med())}** (excl. start-up ${ratio(single.relay.medExcl(), results.pto.medExcl())}); ÷ polling relay: ${ratio(single.relay.med(), results.poll.med())}.`);
    L.push('');
  }

  // (b)
  L.push('## (b) Steady-state latency, commit → stored in JetStream (fraiseql-relay)');
  L.push('');
  L.push(
    `${LAT_CONNS} connections commit single-row transactions (a PL/pgSQL loop calling \`emit()\` and COMMIT, paced to the offered rate) for ${LAT_SECS} s; the payload carries the producer's \`clock_timestamp()\`; a core NATS subscription on the subject receives each message when nats-server hands it to the stream (the PubAck to the relay follows once it is stored) and records now − that time. Percentiles over every event of a step committed after its first ${LAT_WARMUP_MS / 1000} s (warm-up), then the median over the repetitions (min–max). The relay and the reference loop take turns, one repetition each (all three rates), on the same servers. "events seen" counts every event of the step. The producers share the 2 cores with everything else: at high offered rates they take the CPU the relay needs.`,
  );
  L.push('');
  const lat = results.lat;
  if (!lat) {
    L.push('not run');
  } else {
    L.push('| consumer | offered ev/s | achieved ev/s | p50 ms | p99 ms | p99.9 ms | max ms | events seen | consumer CPU | walsender CPU |');
    L.push('|---|---|---|---|---|---|---|---|---|---|');
    const rows = (who: string, res: LatResult): void => {
      for (const [rate, r] of res.byRate) {
        if (r.runs.length === 0) {
          L.push(`| ${who} | ${fmtInt(rate)} | failed: ${esc(r.errors[0] ?? res.error ?? 'not run')} | | | | | | | |`);
          continue;
        }
        const pick = (f: (x: LatRun) => number) => r.runs.map(f);
        const fail = r.errors.length > 0 ? ` (${r.errors.length} failed: ${esc(r.errors[0]!)})` : '';
        L.push(
          `| ${who} | ${fmtInt(rate)} | ${fmtSpread(pick((x) => x.achieved))} | ${fmtSpread(pick((x) => x.p50), fmtMs)} | ${fmtSpread(pick((x) => x.p99), fmtMs)} | ${fmtSpread(pick((x) => x.p999), fmtMs)} | ${fmtMs(Math.max(...pick((x) => x.max)))} | ${r.runs.map((x) => `${x.received}/${x.produced}`).join(', ')}${fail} | ${fmtPct(median(pick((x) => x.cpuProc)))} | ${fmtPct(median(pick((x) => x.cpuWs)))} |`,
        );
      }
      for (const st of res.ladder) {
        if (!st.run) {
          L.push(`| ${who} | ${fmtInt(st.rate)} (ladder, 1 run) | failed: ${esc(st.error ?? '')} | | | | | | | |`);
          continue;
        }
        const x = st.run;
        L.push(`| ${who} | ${fmtInt(st.rate)} (ladder, 1 run) | ${fmtInt(x.achieved)} | ${fmtMs(x.p50)} | ${fmtMs(x.p99)} | ${fmtMs(x.p999)} | ${fmtMs(x.max)} | ${x.received}/${x.produced} | ${fmtPct(x.cpuProc)} | ${fmtPct(x.cpuWs)} |`);
      }
    };
    rows('fraiseql-relay', lat);
    if (results.latRef) rows('reference loop', results.latRef);
    L.push('');
    L.push(
      `Highest offered rate the relay sustained (achieved ≥ 95 % of offered, every event seen within 10 s after the step, p99 < ${LAT_P99_LIMIT_MS} ms): **${lat.sustained}**. Relay peak RSS during (b): ${fmtMB(lat.rss)}` +
        `${results.latRef ? `; reference loop: ${fmtMB(results.latRef.rss)}` : ''}.${lat.error ? ` Failed: ${esc(lat.error)}` : ''}${results.latRef?.error ? ` Reference loop failed: ${esc(results.latRef.error)}` : ''}`,
    );
  }
  L.push('');

  // (c)
  L.push(`## (c) Inbound handler throughput (JetStream → SQL handler), ${fmtInt(HANDLER_N)} events`);
  L.push('');
  L.push('Events already stored in the stream; the relay (subscriber only) starts, and each event runs a trivial SQL handler (one INSERT) in its exactly-once transaction with the inbox row. Events/s from starting the process to the last handled event (handled rows polled every 20 ms).');
  L.push('');
  L.push('| concurrency | events/s | excl. start-up | relay peak RSS |');
  L.push('|---|---|---|---|');
  for (const c of [1, 8]) {
    const s = results.handlers.get(c);
    L.push(`| ${c} | ${s ? cell(s) : results.handlersError ? `failed: ${esc(results.handlersError)}` : 'not run'} | ${cell(s, (x) => x.excl)} | ${rssCell(s)} |`);
  }
  L.push('');

  // (e)
  L.push('## (e) Ceilings on this machine, same run');
  L.push('');
  L.push('| ceiling | events/s | excl. start-up | peak RSS | note |');
  L.push('|---|---|---|---|---|');
  for (const shape of SHAPES) {
    const r = results.drain.get(shape.key);
    L.push(`| pgoutput decode only, ${shape.label} | ${cell(r?.decode)} | ${cell(r?.decode, (s) => s.excl)} | ${rssCell(r?.decode)} | ReplicationConnection + PgoutputDecoder, no publishing, slot confirmed at the end |`);
  }
  L.push(`| JetStream publish, \`js.publish()\` | ${cell(results.jsJs)} | ${cell(results.jsJs, (s) => s.excl)} | ${rssCell(results.jsJs)} | @nats-io/jetstream, msgID per message, window ${WINDOW}, the relay's message (${results.template.bytes} B body + its headers), no PostgreSQL |`);
  L.push(`| JetStream publish, core connection + shared reply subscription | ${cell(results.jsCore)} | ${cell(results.jsCore, (s) => s.excl)} | ${rssCell(results.jsCore)} | \`nc.publish(subject, data, { headers: Nats-Msg-Id, reply: <inbox>.<n> })\`, one \`<inbox>.*\` subscription, acks parsed from the replies, window ${WINDOW} |`);
  for (const shape of SHAPES) {
    const r = results.drain.get(shape.key);
    L.push(`| reference minimal loop, ${shape.label} | ${cell(r?.ref)} | ${cell(r?.ref, (s) => s.excl)} | ${rssCell(r?.ref)} | pgoutput → core-connection JetStream publish (as above) → standby status with the commit end LSN once all acks of the transaction (and earlier ones) are in; minimal envelope (${r && r.ref.msgBytes.length ? fmtInt(median(r.ref.msgBytes)) : '?'} B stored per message vs ${r && r.relay.msgBytes.length ? fmtInt(median(r.relay.msgBytes)) : '?'} B for the relay) |`);
  }
  L.push('');

  // CPU
  L.push('## Where the CPU goes');
  L.push('');
  L.push('Median CPU seconds per run of the process measured, of the walsender serving its slot and of nats-server, with the share of the run\'s wall time (spawn → last event; 100 % = one of the 2 cores).');
  L.push('');
  L.push('| run | wall | process | walsender | nats-server |');
  L.push('|---|---|---|---|---|');
  const cpuRow = (label: string, s: Series | undefined): void => {
    if (!s || s.cpu.length === 0) return;
    L.push(`| ${label} | ${median(s.cpu.map((c) => c.wall)).toFixed(1)} s | ${cpuCell(s, (c) => c.proc)} | ${cpuCell(s, (c) => c.ws)} | ${cpuCell(s, (c) => c.nats)} |`);
  };
  for (const shape of SHAPES) {
    const r = results.drain.get(shape.key);
    cpuRow(`fraiseql-relay, ${shape.label}`, r?.relay);
    cpuRow(`reference loop, ${shape.label}`, r?.ref);
    cpuRow(`decode only, ${shape.label}`, r?.decode);
  }
  cpuRow('JetStream publish, `js.publish()`', results.jsJs);
  cpuRow('JetStream publish, core connection', results.jsCore);
  cpuRow('pg-transactional-outbox', results.pto);
  cpuRow('polling relay', results.poll);
  L.push('');

  // (f)
  L.push(`## (f) Other outbox relays doing the same job, same run (N = ${fmtInt(N)}, single-row transactions)`);
  L.push('');
  L.push(`Each runs at most ${COMPARE_SECS} s; a relay that has not drained N by then is measured on the events it stored in that time (noted).`);
  L.push('');
  L.push('| relay | events/s | excl. start-up | peak RSS | fraiseql-relay ÷ this | how |');
  L.push('|---|---|---|---|---|---|');
  const relayMed = single?.relay.med() ?? Number.NaN;
  const part = (s: Series) => (s.notes.length > 0 ? ` (partial: ${esc(s.notes[0]!)})` : '');
  L.push(`| fraiseql-relay | ${cell(single?.relay)} | ${cell(single?.relay, (s) => s.excl)} | ${rssCell(single?.relay)} | 1 | from (a) |`);
  L.push(`| reference minimal loop | ${cell(single?.ref)} | ${cell(single?.ref, (s) => s.excl)} | ${rssCell(single?.ref)} | ${ratio(relayMed, single?.ref.med() ?? Number.NaN)} | from (a), (e) |`);
  L.push(`| pg-transactional-outbox ${info.packages['pg-transactional-outbox']} (logical replication) | ${cell(results.pto)}${part(results.pto)} | ${cell(results.pto, (s) => s.excl)} | ${rssCell(results.pto)} | ${ratio(relayMed, results.pto.med())} | its own outbox table, publication and slot; default strategies (mutex concurrency: one message at a time, in order; each message locked and marked processed in its own transaction); handler awaits \`js.publish()\` with msgID |`);
  L.push(`| polling outbox relay | ${cell(results.poll)}${part(results.poll)} | ${cell(results.poll, (s) => s.excl)} | ${rssCell(results.poll)} | ${ratio(relayMed, results.poll.med())} | one worker: BEGIN; \`SELECT … ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED\`; \`js.publish()\` ×500 pipelined with msgID; DELETE; COMMIT (the N rows inserted at once: the transaction shape does not matter to it) |`);
  L.push('');
  L.push('Published figures for other relays (different, larger hardware; vendor numbers, for orientation only): Sequin > 50,000 ops/s, p99 253 ms (32-vCPU RDS → MSK); Debezium Server ~20,000–23,000 ops/s, p99 440 ms.');
  L.push('');

  // notes drawn from this run's figures
  const notes: string[] = [];
  if (single && single.decode.ok() && single.ref.ok() && single.decode.med() < single.ref.med()) {
    const ws = median(single.decode.cpu.map((c) => (c.ws / c.wall) * 100));
    const pr = median(single.decode.cpu.map((c) => (c.proc / c.wall) * 100));
    notes.push(
      `Decode-only is slower than the reference loop on single-row transactions (${fmtInt(single.decode.med())} vs ${fmtInt(single.ref.med())} ev/s): a reader that keeps up gets each small message in its own socket read while the walsender writes each on its own, so both sides spend their CPU on wake-ups (walsender ${Math.round(ws)} %, reader ${Math.round(pr)} % of a core); a reader that lags lets messages queue and reads them in batches. The walsender decoding one transaction at a time is the ceiling for this shape on this machine.`,
    );
  }
  const r5 = lat?.byRate.get(5_000)?.runs ?? [];
  if (r5.length > 1) {
    const p99s = r5.map((x) => x.p99);
    const refP99s = (results.latRef?.byRate.get(5_000)?.runs ?? []).map((x) => x.p99);
    notes.push(
      `Tail latency on this 2-core machine is noisy: p99 at 5,000 ev/s ranged ${fmtMs(Math.min(...p99s))}–${fmtMs(Math.max(...p99s))} ms over the repetitions while p50 stayed ≤ ${fmtMs(Math.max(...r5.map((x) => x.p50)))} ms${refP99s.length > 0 ? `; the reference loop's p99 ranged ${fmtMs(Math.min(...refP99s))}–${fmtMs(Math.max(...refP99s))} ms in the repetitions between them` : ''}. A stretch of a few hundred ms in which the walsender falls behind (the producers, the walsender, the consumer and nats-server share 2 cores) sets the p99 of a whole step. Compare medians across runs, not single steps.`,
    );
  }
  const r20 = lat?.byRate.get(20_000)?.runs ?? [];
  if (r20.length > 0 && median(r20.map((x) => x.p50)) > LAT_P99_LIMIT_MS) {
    notes.push(
      `At 20,000 ev/s offered, the ${LAT_CONNS} producer backends, the walsender, the relay and nats-server compete for 2 cores: the relay gets ${fmtPct(median(r20.map((x) => x.cpuProc)))} of a core and its walsender ${fmtPct(median(r20.map((x) => x.cpuWs)))} (their fair share, neither saturated) and events queue; the reference loop falls behind the same way. This rate measures the machine more than the relay.`,
    );
  }
  if (results.pto.ok()) {
    notes.push(
      `pg-transactional-outbox reads the whole backlog into memory (peak RSS ${fmtMB(median(results.pto.rss))}) and, with its default mutex strategy, handles one message at a time: a transaction that locks the row, the handler's awaited PubAck, the update that marks it processed.`,
    );
  }
  if (notes.length > 0) {
    L.push('## Notes on this run');
    L.push('');
    for (const n of notes) L.push(`- ${n}`);
    L.push('');
  }

  // targets
  L.push('## Targets of issue 6');
  L.push('');
  const tgt = (ok: boolean | null) => (ok === null ? 'not measured' : ok ? '**met**' : '**not met**');
  const refRatio = single && single.relay.ok() && single.ref.ok() ? single.relay.med() / single.ref.med() : null;
  const refRatioX = single && single.relay.excl.length && single.ref.excl.length ? single.relay.medExcl() / single.ref.medExcl() : null;
  const ptoRatio = single && single.relay.ok() && results.pto.ok() ? single.relay.med() / results.pto.med() : null;
  const p99at5k = lat?.byRate.get(5_000)?.runs.length ? median(lat.byRate.get(5_000)!.runs.map((x) => x.p99)) : null;
  L.push(`- Single-row backlog drain ≥ 90 % of the reference loop: ${refRatio === null ? 'not measured' : `${(refRatio * 100).toFixed(0)} % (excl. start-up ${refRatioX === null ? '–' : `${(refRatioX * 100).toFixed(0)} %`})`} → ${tgt(refRatio === null ? null : refRatio >= 0.9)}`);
  L.push(`- Single-row backlog drain ≥ 3× pg-transactional-outbox: ${ptoRatio === null ? 'not measured' : `${ptoRatio.toFixed(1)}×`} → ${tgt(ptoRatio === null ? null : ptoRatio >= 3)}`);
  L.push(`- p99 commit → ack at 5,000 events/s < 10 ms: ${p99at5k === null ? 'not measured' : `${fmtMs(p99at5k)} ms`} → ${tgt(p99at5k === null ? null : p99at5k < 10)}`);
  const big = results.drain.get('one');
  const bigRss = big && big.relay.rss.length ? Math.max(...big.relay.rss) : null;
  const singleRss = single && single.relay.rss.length ? median(single.relay.rss) : null;
  L.push(
    `- Peak RSS draining one ${fmtInt(N)}-row transaction < 200 MB: ${bigRss === null ? 'not measured' : `${fmtMB(bigRss)} (highest of the repetitions; single-row transactions: ${singleRss === null ? '–' : fmtMB(singleRss)})`} → ${tgt(bigRss === null ? null : bigRss < 200 * 1024)}`,
  );
  L.push('');
  L.push('## How to run');
  L.push('');
  L.push('`npm run bench` (PostgreSQL ≥ 14 server binaries and nats-server must be installed, as for the tests). `BENCH_N=20000 BENCH_REPS=1 npm run bench` for a quick run; `BENCH_ONLY=a,e` runs some sections only; `BENCH_OUT=-` does not write this file. See the header of bench/run.ts for every setting.');
  L.push('');
  return L.join('\n');
}

// ---------------------------------------------------------------------------------------------
// main

/** Fresh servers for one section: the relay's schema migrated, the benchmark's functions created. */
async function freshEnv(): Promise<BenchEnv> {
  const env = await BenchEnv.create();
  try {
    await env.migrateRelay();
    await env.dropSlot('fraiseql_relay'); // created by migrate; every run uses its own slot
    await env.sql(SETUP_SQL);
    return env;
  } catch (err) {
    await env.destroy().catch(() => {});
    throw err;
  }
}

/** Runs a section on fresh servers; a failure to set them up is reported by `onError`. */
async function section(name: string, fn: (env: BenchEnv) => Promise<void>, onError: (e: string) => void): Promise<void> {
  let env: BenchEnv | null = null;
  try {
    env = await freshEnv();
    await fn(env);
  } catch (err) {
    log(`${name}: failed: ${errMsg(err)}`);
    onError(errMsg(err));
  } finally {
    await env?.destroy().catch(() => {});
  }
}

async function main(): Promise<void> {
  log(`fraiseql-relay benchmark: N = ${fmtInt(N)}, ${REPS} repetitions, sections ${[...ONLY].join(',')}`);
  log('building dist/ (the relay runs compiled, as shipped)');
  execFileSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.build.json')], { cwd: ROOT, stdio: 'inherit' });
  let pgVersion = 'PostgreSQL (unknown version)';
  await section(
    'servers',
    async (env) => {
      pgVersion = (await env.sql<{ v: string }>(`SELECT split_part(version(), ' on ', 1) AS v`))[0]!.v;
      log(`servers start: ${pgVersion}, nats-server at ${env.nats.url}`);
    },
    (e) => {
      throw new Error(`cannot start the servers: ${e}`);
    },
  );
  const info = sysInfo(ROOT, pgVersion);
  const failAll = (e: string, ...series: Series[]): void => {
    for (const s of series) if (s.values.length === 0 && s.errors.length === 0) s.errors.push(e);
  };
  if (ONLY.has('a') || ONLY.has('e') || ONLY.has('d')) {
    await section('(a)', sectionDrain, (e) => {
      for (const shape of SHAPES) {
        if (!results.drain.has(shape.key)) results.drain.set(shape.key, { backlogSecs: 0, relay: new Series(), ref: new Series(), decode: new Series() });
        const r = results.drain.get(shape.key)!;
        failAll(e, r.relay, r.ref, r.decode);
      }
    });
  }
  if (ONLY.has('e')) await section('(e)', sectionPublish, (e) => failAll(e, results.jsJs, results.jsCore));
  if (ONLY.has('f')) await section('(f)', sectionCompare, (e) => failAll(e, results.pto, results.poll));
  if (ONLY.has('b')) {
    // the relay and the reference take turns, one repetition each, on the same servers: this
    // shared machine's speed drifts, and both should meet the same conditions
    await section(
      '(b)',
      async (env) => {
        const relay: LatResult = { byRate: new Map(), ladder: [], sustained: '–', rss: 0 };
        const ref: LatResult = { byRate: new Map(), ladder: [], sustained: '–', rss: 0 };
        results.lat = relay;
        if (REF_LATENCY) results.latRef = ref;
        for (let rep = 1; rep <= REPS; rep++) {
          await sectionLatency(env, 'relay', rep, rep === REPS, relay);
          if (REF_LATENCY) await sectionLatency(env, 'ref', rep, false, ref);
        }
      },
      (e) => {
        results.lat ??= { byRate: new Map(), ladder: [], sustained: '–', rss: 0 };
        results.lat.error = e;
      },
    );
  }

  if (ONLY.has('c')) await section('(c)', sectionHandlers, (e) => (results.handlersError = e));
  const total = (nowMs() - T0) / 1000;
  const md = render(info, total);
  process.stdout.write(`\n${md}\n`);
  if (OUT !== '-') {
    writeFileSync(OUT, md);
    log(`wrote ${OUT}`);
  }
  log(`total ${(total / 60).toFixed(1)} min`);
}

main().catch((err: unknown) => {
  process.stderr.write(`benchmark failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
