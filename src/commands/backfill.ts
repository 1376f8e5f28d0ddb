/**
 * `fraiseql-relay backfill`: asks the active relay, through the `backfill` table, to publish a
 * table's existing rows as READ events, then follows its progress (a bar on a terminal). The
 * work happens in the relay (run), so this works from `kubectl exec` or a Job as well as from a
 * laptop; `--detach` only asks. `--status` lists backfills, `--cancel` stops one within a chunk.
 */
import { hostname, userInfo } from 'node:os';
import type pg from 'pg';
import type { Config } from '../config/load.js';
import { quoteQualified, withClient } from '../util/db.js';
import { UsageError } from '../util/errors.js';
import { sleep } from '../util/sleep.js';
import { formatTable } from '../util/table.js';
import { resolveRuleTables } from '../schema/tables.js';
import { describeTable, whereProblem } from '../backfill/chunk.js';
import { BackfillStore, type Backfill } from '../backfill/store.js';
import { DEFAULT_CHUNK_SIZE } from '../backfill/runner.js';

export interface BackfillOptions {
  table?: string;
  subject?: string;
  where?: string;
  chunkSize?: number;
  rate?: number;
  detach: boolean;
  json: boolean;
  /** how often progress is read (ms) */
  pollMs?: number;
}

const TERMINAL = new Set(['done', 'cancelled', 'failed']);

/** The backfill as `--json` prints it: snake_case keys. */
function backfillJson(b: Backfill): Record<string, unknown> {
  return {
    id: b.id,
    table: `${b.schema}.${b.table}`,
    subject: b.subject,
    where: b.where,
    chunk_size: b.chunkSize,
    max_rate: b.maxRate,
    state: b.state,
    rows_total: b.rowsTotal,
    rows_published: b.rowsPublished,
    rows_skipped: b.rowsSkipped,
    chunks: b.chunks,
    last_key: b.lastKey,
    error: b.error,
    requested_by: b.requestedBy,
    requested_at: b.requestedAt.toISOString(),
    started_at: b.startedAt?.toISOString() ?? null,
    updated_at: b.updatedAt.toISOString(),
    finished_at: b.finishedAt?.toISOString() ?? null,
  };
}

async function assertBackfillTable(c: pg.Client, config: Config): Promise<void> {
  const r = await c.query<{ t: string | null }>('SELECT to_regclass($1)::text AS t', [`${quoteQualified(config.relay.schema)}.backfill`]);
  if (r.rows[0]?.t === null) {
    throw new UsageError(`${config.relay.schema}.backfill does not exist: run \`fraiseql-relay migrate\` (this version adds it) first`);
  }
}

export async function runBackfill(config: Config, opts: BackfillOptions): Promise<number> {
  if (opts.table === undefined)
    throw new UsageError('backfill: name the table to backfill (one of the [[observers.rules]] tables), or use --status / --cancel');
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
  if (!Number.isInteger(chunkSize) || chunkSize < 1 || chunkSize > 100_000)
    throw new UsageError(`--chunk-size must be an integer from 1 to 100000 (got ${opts.chunkSize})`);
  if (opts.rate !== undefined && (!Number.isInteger(opts.rate) || opts.rate < 1))
    throw new UsageError(`--rate must be a positive integer, rows per second (got ${opts.rate})`);
  const store = new BackfillStore(config.relay.schema);
  const table = opts.table;
  const requested = await withClient(config.database.url, async (c) => {
    await assertBackfillTable(c, config);
    const r = await c.query<{ nspname: string; relname: string }>(
      `SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)`,
      [quoteQualified(table)],
    );
    const t = r.rows[0];
    if (!t) throw new UsageError(`backfill: table ${table} does not exist`);
    const { perRule } = await resolveRuleTables(c, config);
    const rules = config.observers.rules.filter((_, i) => perRule[i]!.schema === t.nspname && perRule[i]!.name === t.relname);
    const qualified = `${t.nspname}.${t.relname}`;
    if (rules.length === 0) {
      const known = [...new Set(perRule.map((p) => `${p.schema}.${p.name}`))];
      throw new UsageError(
        `backfill: no [[observers.rules]] watches ${qualified}, so its rows have nowhere to go` +
          (known.length > 0 ? ` (rule tables: ${known.join(', ')})` : ' (the configuration has no table rules)'),
      );
    }
    if (opts.subject !== undefined && !rules.some((rule) => rule.subject === opts.subject)) {
      const subjects = [...new Set(rules.map((rule) => rule.subject).filter((s) => s !== undefined))];
      throw new UsageError(
        `backfill: no rule of ${qualified} publishes to ${opts.subject} (its subjects: ${subjects.join(', ') || 'none'})`,
      );
    }
    // a table the relay could not backfill is refused now, with the reason, rather than failed later
    await describeTable(c, t.nspname, t.relname, '');
    if (opts.where !== undefined) {
      const p = await whereProblem(c, t.nspname, t.relname, opts.where);
      if (p) throw new UsageError(p);
    }
    return store.request(c, {
      schema: t.nspname,
      table: t.relname,
      subject: opts.subject ?? null,
      where: opts.where ?? null,
      chunkSize,
      maxRate: opts.rate ?? null,
      requestedBy: `${safeUser()}@${hostname()}`,
    });
  });
  process.stderr.write(`backfill ${requested.id} of ${requested.schema}.${requested.table} requested; the active relay works on it\n`);
  if (opts.detach) {
    if (opts.json) process.stdout.write(JSON.stringify(backfillJson(requested), null, 2) + '\n');
    else process.stdout.write(`${requested.id}\n`);
    return 0;
  }
  return follow(config, store, requested.id, opts);
}

/** Follows a backfill until it ends: a progress bar on a terminal, a line every 10 s otherwise. */
async function follow(config: Config, store: BackfillStore, id: number, opts: BackfillOptions): Promise<number> {
  const tty = process.stderr.isTTY === true;
  const started = Date.now();
  let hinted = false;
  let lastLine = 0;
  let detached = false;
  const onSigint = () => {
    detached = true;
  };
  process.once('SIGINT', onSigint);
  try {
    return await withClient(config.database.url, async (c) => {
      for (;;) {
        const b = await store.get(c, id);
        if (b === null) throw new Error(`backfill ${id} disappeared from ${config.relay.schema}.backfill`);
        if (TERMINAL.has(b.state)) {
          if (tty) process.stderr.write('\r\x1b[2K');
          return finished(b, opts.json, Date.now() - started);
        }
        if (detached) {
          if (tty) process.stderr.write('\r\x1b[2K');
          process.stderr.write(
            `backfill ${id} goes on in the relay; follow it with \`backfill --status\`, stop it with \`backfill --cancel ${id}\`\n`,
          );
          return 0;
        }
        if (b.state === 'pending' && !hinted && Date.now() - started > 15_000) {
          hinted = true;
          process.stderr.write(
            `backfill ${id} is still pending: no active relay has picked it up. Is \`fraiseql-relay run\` running for this database, with a rule on ${b.schema}.${b.table}?\n`,
          );
        }
        if (tty) process.stderr.write('\r\x1b[2K' + progressLine(b, started));
        else if (Date.now() - lastLine >= 10_000 && b.state === 'running') {
          lastLine = Date.now();
          process.stderr.write(progressLine(b, started) + '\n');
        }
        await sleep(opts.pollMs ?? 500);
      }
    });
  } finally {
    process.removeListener('SIGINT', onSigint);
  }
}

/** `[#####.....]  45%  45,000 / 100,000 rows  12,000 rows/s` */
function progressLine(b: Backfill, sinceMs: number): string {
  const done = b.rowsPublished + b.rowsSkipped;
  const total = b.rowsTotal;
  const n = (x: number) => x.toLocaleString('en-US');
  const secs = Math.max(0.001, (Date.now() - (b.startedAt?.getTime() ?? sinceMs)) / 1000);
  const rate = b.state === 'running' ? `  ${n(Math.round(done / secs))} rows/s` : '';
  if (total === null || total === 0) return `backfill ${b.id} ${b.schema}.${b.table}: ${b.state}, ${n(done)} rows${rate}`;
  const ratio = Math.min(1, done / total);
  const width = 30;
  const fill = Math.round(ratio * width);
  return (
    `backfill ${b.id} ${b.schema}.${b.table} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ` +
    `${String(Math.floor(ratio * 100)).padStart(3)}%  ${n(done)} / ${n(total)} rows${rate}`
  );
}

function finished(b: Backfill, json: boolean, ms: number): number {
  if (json) process.stdout.write(JSON.stringify(backfillJson(b), null, 2) + '\n');
  else if (b.state === 'done') {
    process.stdout.write(
      `backfill ${b.id} of ${b.schema}.${b.table} done: ${b.rowsPublished} rows published as READ events` +
        (b.rowsSkipped > 0 ? `, ${b.rowsSkipped} skipped (they changed while read; their change was published instead)` : '') +
        ` in ${(ms / 1000).toFixed(1)} s\n`,
    );
  } else {
    process.stdout.write(`backfill ${b.id} of ${b.schema}.${b.table} ${b.state}${b.error ? `: ${b.error}` : ''}\n`);
  }
  if (b.state === 'done') return 0;
  if (b.state === 'failed') return 1;
  process.stderr.write(`backfill ${b.id} was cancelled after ${b.rowsPublished} rows\n`);
  return 1;
}

export async function backfillStatus(config: Config, opts: { json: boolean }): Promise<number> {
  const store = new BackfillStore(config.relay.schema);
  const rows = await withClient(config.database.url, async (c) => {
    await assertBackfillTable(c, config);
    return store.list(c);
  });
  if (opts.json) {
    process.stdout.write(JSON.stringify({ backfills: rows.map(backfillJson) }, null, 2) + '\n');
    return 0;
  }
  if (rows.length === 0) {
    process.stdout.write('no backfills\n');
    return 0;
  }
  const cols = ['id', 'table', 'state', 'done', 'total', 'skipped', 'requested', 'error'];
  const data = rows.map((b) => [
    String(b.id),
    `${b.schema}.${b.table}${b.subject ? ` ▶ ${b.subject}` : ''}`,
    b.state,
    String(b.rowsPublished + b.rowsSkipped),
    b.rowsTotal === null ? '' : String(b.rowsTotal),
    String(b.rowsSkipped),
    b.requestedAt.toISOString(),
    (b.error ?? '').replace(/\s+/g, ' ').slice(0, 100),
  ]);
  process.stdout.write(formatTable(cols, data));
  return 0;
}

export async function backfillCancel(config: Config, id: number | null, opts: { json: boolean }): Promise<number> {
  const store = new BackfillStore(config.relay.schema);
  const ids = await withClient(config.database.url, async (c) => {
    await assertBackfillTable(c, config);
    return store.cancel(c, id);
  });
  if (opts.json) process.stdout.write(JSON.stringify({ cancelled: ids }, null, 2) + '\n');
  else if (ids.length === 0)
    process.stdout.write(
      id === null ? 'no open backfill to cancel\n' : `backfill ${id} is not open (done, failed, cancelled, or unknown)\n`,
    );
  else process.stdout.write(`cancelled backfill ${ids.join(', ')}; the relay stops within one chunk\n`);
  return id !== null && ids.length === 0 ? 1 : 0;
}

function safeUser(): string {
  try {
    return userInfo().username;
  } catch {
    return 'unknown';
  }
}
