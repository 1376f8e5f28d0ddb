/**
 * `npm run bench`: starts its own PostgreSQL and nats-server, measures fraiseql-relay against
 * the machine's ceilings, a reference minimal loop and two other outbox relays in one run,
 * prints the tables and writes them to BENCHMARKS.md.
 *
 * Environment:
 *   BENCH_N              backlog size for (a), (e), (f)          default 200000
 *   BENCH_REPS           repetitions per figure                  default 3
 *   BENCH_LAT_SECS       duration of one latency step (b)        default 10
 *   BENCH_LAT_CONNS      producer connections for (b)            default 4
 *   BENCH_HANDLER_N      events per handler run (c)              default 50000
 *   BENCH_COMPARE_SECS   time cap of one (f) comparison run      default 25
 *   BENCH_RUN_TIMEOUT    time cap of any other run, seconds      default 120
 *   BENCH_REF_LATENCY    0: no latency steps for the reference   default 1
 *   BENCH_HANDLER_CASES  e.g. "trivial-c8-b32": only these (c) cases  default all
 *   BENCH_ONLY           e.g. "a,e": run only these sections     default all
 *                        ("r": the backends NATS, Redis, PostgreSQL side by side)
 *   BENCH_BACKFILL_N     rows of the backfilled table (g)        default 1000000
 *   BENCH_BACKFILL_CHUNK rows per backfill chunk (g)             default 1000
 *   BENCH_OUT            where to write the report               default BENCHMARKS.md
 *                        ("-" prints only)
 *   BENCH_RELAY_NODE_ARGS node options for the relay process     e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof"
 *
 * Each section runs on fresh servers (lib/setup.ts) and is a module of bench/sections/ that fills
 * in its part of the results; bench/report.ts renders them.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './lib/env.js';
import { fmtInt, nowMs } from './lib/util.js';
import { sysInfo } from './lib/sysinfo.js';
import { Series } from './lib/series.js';
import { N, REPS, T0, log } from './lib/settings.js';
import { section } from './lib/setup.js';
import { SHAPES, newDrainResult, sectionDrain } from './sections/drain.js';
import { sectionPublish } from './sections/publish.js';
import { sectionCompare } from './sections/compare.js';
import { newLatResult, sectionLatency } from './sections/latency.js';
import { HANDLER_SETTINGS, sectionHandlers } from './sections/handlers.js';
import { sectionBackfill } from './sections/backfill.js';
import { newBackendResults, renderBackends, sectionBackends, type BackendResults } from './sections/redis.js';
import { render, type Results } from './report.js';

const ONLY = new Set((process.env['BENCH_ONLY'] ?? 'a,b,c,d,e,f,g,r').split(',').map((s) => s.trim().toLowerCase()));
const OUT = process.env['BENCH_OUT'] ?? join(ROOT, 'BENCHMARKS.md');

const results: Results = {
  drain: new Map(),
  jsJs: new Series(),
  jsCore: new Series(),
  pto: new Series(),
  poll: new Series(),
  lat: null,
  latRef: null,
  handlers: new Map(),
  handlersError: '',
  ceilings: new Map(),
  handlerLat: new Map(),
  template: { bytes: 0, headers: {}, source: '' },
  backfill: null,
};

async function main(): Promise<void> {
  log(`fraiseql-relay benchmark: N = ${fmtInt(N)}, ${REPS} repetitions, sections ${[...ONLY].join(',')}`);
  log('building dist/ (the relay runs compiled, as shipped)');
  execFileSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.build.json')], {
    cwd: ROOT,
    stdio: 'inherit',
  });
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
    await section(
      '(a)',
      (env) => sectionDrain(env, results),
      (e) => {
        for (const shape of SHAPES) {
          if (!results.drain.has(shape.key)) results.drain.set(shape.key, newDrainResult());
          const r = results.drain.get(shape.key)!;
          failAll(e, r.relay, r.ref, r.decode);
        }
      },
    );
  }
  if (ONLY.has('e'))
    await section(
      '(e)',
      (env) => sectionPublish(env, results),
      (e) => failAll(e, results.jsJs, results.jsCore),
    );
  if (ONLY.has('f'))
    await section(
      '(f)',
      (env) => sectionCompare(env, results),
      (e) => failAll(e, results.pto, results.poll),
    );
  if (ONLY.has('b')) {
    await section(
      '(b)',
      (env) => sectionLatency(env, results),
      (e) => {
        results.lat ??= newLatResult();
        results.lat.error = e;
      },
    );
  }

  if (ONLY.has('c'))
    await section(
      '(c)',
      (env) => sectionHandlers(env, results),
      (e) => (results.handlersError = e),
      HANDLER_SETTINGS,
    );
  if (ONLY.has('g'))
    await section(
      '(g)',
      (env) => sectionBackfill(env, results),
      (e) => {
        results.backfill ??= { alone: new Series(), withWrites: new Series(), writesPerSec: [], skipped: [] };
        results.backfill.alone.errors.push(e);
      },
    );
  let backends: BackendResults | null = null;
  if (ONLY.has('r')) {
    const r = (backends = newBackendResults());
    await section(
      '(r)',
      (env) => sectionBackends(env, r),
      (e) => (r.error = e),
    );
  }
  const total = (nowMs() - T0) / 1000;
  const md = render(results, info, total) + renderBackends(backends);
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
