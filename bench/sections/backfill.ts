/**
 * (g) Backfill: a table of BENCH_BACKFILL_N rows (default 1,000,000) that exist before the slot,
 * published as READ events by `fraiseql-relay backfill` (requested through the backfill table, as
 * the command does) while the relay runs: alone, and with single-row UPDATEs of random rows
 * committed at a steady rate meanwhile. Rows/s from the relay picking the request up to its last
 * chunk being durable (the backfill row's started_at and finished_at, PostgreSQL's clock).
 */
import pg from 'pg';
import { loadConfig } from '../../src/config/load.js';
import { migrate } from '../../src/schema/migrate.js';
import { createLogger } from '../../src/util/log.js';
import { relayToml, type BenchEnv } from '../lib/env.js';
import { errMsg, fmtInt, nowMs, sleep } from '../lib/util.js';
import { Series } from '../lib/series.js';
import { REPS, RUN_TIMEOUT_S, log } from '../lib/settings.js';
import { spawnRelay } from '../lib/runs.js';

export const BACKFILL_N = Number(process.env['BENCH_BACKFILL_N'] ?? 1_000_000);
/** UPDATEs per second committed during the "with writes" runs */
export const BACKFILL_WRITE_RATE = 2000;
const CHUNK = Number(process.env['BENCH_BACKFILL_CHUNK'] ?? 1000);

interface BackfillResult {
  /** rows/s */
  alone: Series;
  withWrites: Series;
  /** UPDATEs committed per second during each "with writes" run */
  writesPerSec: number[];
  /** rows left out because they changed inside their chunk's window, per "with writes" run */
  skipped: number[];
}

export interface BackfillResults {
  backfill: BackfillResult | null;
}

const RULES = `
[[observers.rules]]
table = "bf_item"
event = "INSERT"
subject = "bench.bf.changed"

[[observers.rules]]
table = "bf_item"
event = "UPDATE"
subject = "bench.bf.changed"
`;

export async function sectionBackfill(env: BenchEnv, res: BackfillResults): Promise<void> {
  const r: BackfillResult = { alone: new Series(), withWrites: new Series(), writesPerSec: [], skipped: [] };
  res.backfill = r;
  log(`(g) backfill: a table of ${fmtInt(BACKFILL_N)} rows`);
  await env.sql(`CREATE TABLE public.bf_item (id int PRIMARY KEY, v int NOT NULL, note text, at timestamptz NOT NULL DEFAULT now())`);
  await env.sql(`INSERT INTO public.bf_item (id, v, note) SELECT g, g % 1000, 'row ' || g FROM generate_series(1, ${BACKFILL_N}) g`);
  await env.sql('VACUUM ANALYZE public.bf_item');
  // the rules publication, made by migrate from a configuration with the rules
  const migrateFile = await env.writeConfig('bf-migrate', relayToml({ slot: 'bf_migrate', extra: RULES }));
  await migrate(loadConfig(migrateFile, env.env), createLogger('silent'));
  await env.dropSlot('bf_migrate');
  for (let rep = 1; rep <= REPS; rep++) {
    for (const writes of [false, true]) {
      const s = writes ? r.withWrites : r.alone;
      const slot = `bf_${writes ? 'w' : 'a'}_${rep}`;
      try {
        const run = await oneRun(env, slot, writes);
        s.values.push(run.rowsPerSec);
        s.rss.push(run.rssKb);
        if (writes) {
          r.writesPerSec.push(run.writesPerSec);
          r.skipped.push(run.skipped);
        }
        log(
          `  ${writes ? 'with writes' : 'alone'} rep ${rep}: ${fmtInt(run.rowsPerSec)} rows/s` +
            (writes ? `, ${fmtInt(run.writesPerSec)} updates/s, ${fmtInt(run.skipped)} rows skipped` : ''),
        );
      } catch (err) {
        s.errors.push(errMsg(err));
        log(`  ${writes ? 'with writes' : 'alone'} rep ${rep}: failed: ${errMsg(err)}`);
      } finally {
        await env.dropSlot(slot).catch(() => {});
      }
    }
  }
}

async function oneRun(
  env: BenchEnv,
  slot: string,
  writes: boolean,
): Promise<{ rowsPerSec: number; writesPerSec: number; skipped: number; rssKb: number }> {
  await env.createSlot(slot);
  await env.freshStream();
  const cfg = await env.writeConfig(slot, relayToml({ slot, extra: RULES }));
  const child = spawnRelay(env, cfg);
  const writer = new pg.Client({ connectionString: env.dbUrl });
  let stopWriting = false;
  let written = 0;
  let writing: Promise<void> = Promise.resolve();
  try {
    const deadline = nowMs() + RUN_TIMEOUT_S * 1000;
    while ((await env.sql(`SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active`, [slot])).length === 0) {
      if (!child.alive) throw new Error(`relay exited: ${child.tail()}`);
      if (nowMs() > deadline) throw new Error('the relay did not start streaming');
      await sleep(50);
    }
    if (writes) {
      await writer.connect();
      const t0 = nowMs();
      writing = (async () => {
        while (!stopWriting) {
          const due = ((nowMs() - t0) / 1000) * BACKFILL_WRITE_RATE;
          if (written >= due) {
            await sleep(2);
            continue;
          }
          const id = 1 + Math.floor(Math.random() * BACKFILL_N);
          await writer.query(`UPDATE public.bf_item SET v = v + 1, at = now() WHERE id = $1`, [id]);
          written++;
        }
      })();
    }
    const wStart = nowMs();
    const id = (
      await env.sql<{ id: string }>(
        `INSERT INTO fraiseql_relay.backfill (table_schema, table_name, chunk_size, requested_by) VALUES ('public', 'bf_item', $1, 'bench') RETURNING id`,
        [CHUNK],
      )
    )[0]!.id;
    const cap = nowMs() + Math.max(RUN_TIMEOUT_S, 600) * 1000;
    for (;;) {
      const row = (
        await env.sql<{ state: string; secs: number | null; published: string; skipped: string; error: string | null }>(
          `SELECT state, extract(epoch FROM finished_at - started_at)::float8 AS secs, rows_published AS published,
                  rows_skipped AS skipped, error FROM fraiseql_relay.backfill WHERE id = $1`,
          [id],
        )
      )[0]!;
      if (row.state === 'done') {
        stopWriting = true;
        await writing;
        const wSecs = (nowMs() - wStart) / 1000;
        const rows = Number(row.published) + Number(row.skipped);
        if (rows < BACKFILL_N) throw new Error(`only ${rows} of ${BACKFILL_N} rows`);
        const stored = await env.streamCount();
        if (stored < Number(row.published)) throw new Error(`${stored} messages stored for ${row.published} rows published`);
        const rssKb = await child.stop(15_000);
        return { rowsPerSec: rows / row.secs!, writesPerSec: written / wSecs, skipped: Number(row.skipped), rssKb };
      }
      if (row.state === 'failed' || row.state === 'cancelled') throw new Error(`backfill ${row.state}: ${row.error}`);
      if (!child.alive) throw new Error(`relay exited: ${child.tail()}`);
      if (nowMs() > cap) throw new Error(`backfill not done within ${Math.max(RUN_TIMEOUT_S, 600)} s`);
      await sleep(100);
    }
  } finally {
    stopWriting = true;
    await writing.catch(() => {});
    await writer.end().catch(() => {});
    child.kill();
    await child.exited;
  }
}
