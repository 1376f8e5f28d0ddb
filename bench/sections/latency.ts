/**
 * (b) Commit → JetStream latency at offered rates: paced producers commit single-row transactions
 * carrying their `clock_timestamp()`, a core NATS subscription records when each reaches the
 * stream. The relay and the reference loop take turns on the same servers; after its last
 * repetition, the relay climbs a ladder of rates for the highest one it sustains.
 */
import pg from 'pg';
import type { Subscription } from '@nats-io/transport-node';
import { PUBLICATION, STREAM, relayToml, type BenchEnv } from '../lib/env.js';
import { type Child, cpuSeconds, errMsg, fmtInt, fmtMs, fmtPct, median, nowMs, percentileSorted, sleep } from '../lib/util.js';
import { LAT_CONNS, LAT_SECS, REF_LATENCY, REPS, WINDOW, log } from '../lib/settings.js';
import { spawnContender, spawnRelay, walsenderPid } from '../lib/runs.js';

const LAT_RATES = [1_000, 5_000, 20_000];
const LADDER = [1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 25_000, 30_000, 40_000, 50_000, 60_000, 80_000];
export const LAT_P99_LIMIT_MS = 50;
export const LAT_WARMUP_MS = 1000;
const MAX_LADDER_STEPS = 3;

export interface LatRun {
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

export interface LatResult {
  byRate: Map<number, { runs: LatRun[]; errors: string[] }>;
  ladder: { run?: LatRun; rate: number; error?: string; pass: boolean; why: string }[];
  sustained: string;
  rss: number;
  error?: string;
}

export function newLatResult(): LatResult {
  return { byRate: new Map(), ladder: [], sustained: '–', rss: 0 };
}

export interface LatencyResults {
  lat: LatResult | null;
  latRef: LatResult | null;
}

/**
 * Offset to add to performance.now() for wall-clock ms (comparable with PostgreSQL's
 * clock_timestamp()), taken where Date.now() turns to the next millisecond. A preemption between
 * the two clock reads can only make a sample too small: the largest of several is kept.
 */
function wallOffset(samples = 7): number {
  let best = -Infinity;
  for (let i = 0; i < samples; i++) {
    const start = Date.now();
    let d: number;
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
    .sql<{ v: string; a: string }>(
      `SELECT autovacuum_count::text AS v, autoanalyze_count::text AS a FROM pg_stat_user_tables WHERE schemaname = 'fraiseql_relay' AND relname = 'outbox'`,
    )
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
 * One repetition of the latency steps (every offered rate) against one long-running consumer,
 * the relay or the reference loop; with `ladder`, then single steps up (or down) the ladder for
 * the highest sustained rate.
 */
async function latencyRuns(env: BenchEnv, who: 'relay' | 'ref', rep: number, ladder: boolean, res: LatResult): Promise<LatResult> {
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
      await env.sql(
        `SELECT fraiseql_relay.emit('bench.lat', jsonb_build_object('bench_t', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint))`,
      );
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
        log(
          `  ladder offered ${fmtInt(rate)} ev/s: achieved ${fmtInt(run.achieved)}, p99 ${fmtMs(run.p99)} ms → ${p.pass ? 'sustained' : `not sustained (${p.why})`}`,
        );
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
    res.sustained =
      best > 0
        ? `${fmtInt(best)} ev/s${limitedBy ? ` (next step: ${limitedBy})` : ''}`
        : `none of the offered rates${limitedBy ? ` (${limitedBy})` : ''}`;
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

export async function sectionLatency(env: BenchEnv, res: LatencyResults): Promise<void> {
  // the relay and the reference take turns, one repetition each, on the same servers: this
  // shared machine's speed drifts, and both should meet the same conditions
  const relay = newLatResult();
  const ref = newLatResult();
  res.lat = relay;
  if (REF_LATENCY) res.latRef = ref;
  for (let rep = 1; rep <= REPS; rep++) {
    await latencyRuns(env, 'relay', rep, rep === REPS, relay);
    if (REF_LATENCY) await latencyRuns(env, 'ref', rep, false, ref);
  }
}
