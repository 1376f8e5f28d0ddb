/**
 * The backfill worker of the active relay: it takes the oldest open request from the `backfill`
 * table and reads the table chunk by chunk in key order, each chunk between a low and a high
 * watermark (see windows.ts), while the replication session keeps streaming. After each chunk's
 * READ events are durable (JetStream acknowledged them and the slot may pass them), it records
 * the chunk's last key: a relay that restarts, or a standby that takes over, resumes there.
 * Cancelling (state = 'cancelled') is seen before the next chunk.
 */
import { createHash, randomUUID } from 'node:crypto';
import pg from 'pg';
import { connectionConfig } from '../util/db.js';
import type { Logger } from '../util/log.js';
import { errorMessage, UsageError } from '../util/errors.js';
import { sleep } from '../util/sleep.js';
import { backoffDelay } from '../util/backoff.js';
import type { Relation, Tuple } from '../source/types.js';
import type { OutboundMessage } from '../sink/sink.js';
import { uuidV8, type MessageKeys } from '../sink/signing.js';
import { BACKFILL_PREFIX, markerContent, WindowLostError, type BackfillWindows, type ChunkOutcome, type MarkerPoint } from './windows.js';
import { countRows, describeTable, readChunk, type BackfillTable } from './chunk.js';
import { BackfillStore, type Backfill } from './store.js';

/** What turns a backfilled row into READ messages (the table router). */
interface ReadRouter {
  read(rel: Relation, row: Tuple, eventId: string, at: MarkerPoint, subject: string | null, backfillId: number): OutboundMessage[];
  readSubjects(schema: string, name: string, subject?: string | null): string[];
  prepare(rel: Relation): Promise<void> | undefined;
}

export interface BackfillRunnerDeps {
  url: string;
  /** the relay's schema (`[relay] schema`) */
  schema: string;
  /** the publication that streams the rule tables */
  publication: string;
  database: string;
  windows: BackfillWindows;
  router: ReadRouter;
  /** each rule table's row filter (`where`), by "schema.name" */
  ruleWhere: ReadonlyMap<string, string | null>;
  keys: MessageKeys | null;
  log: Logger;
  /** how often the table is looked at for a new request while idle */
  pollMs?: number;
  /** a chunk of `b` is durable */
  onChunk?: (b: Backfill, outcome: ChunkOutcome) => void;
  /** a backfill started, finished, failed or was cancelled */
  onState?: (b: Backfill) => void;
}

/** Rows of a chunk; the CLI's default. */
export const DEFAULT_CHUNK_SIZE = 1000;

export class BackfillRunner {
  private readonly store: BackfillStore;
  private readonly pool: pg.Pool;
  private abort: AbortController | null = null;
  private loop: Promise<void> | null = null;
  /** the backfill being worked on, with its progress as recorded */
  current: Backfill | null = null;

  constructor(private readonly deps: BackfillRunnerDeps) {
    this.store = new BackfillStore(deps.schema);
    this.pool = new pg.Pool({ ...connectionConfig(deps.url, { application_name: 'fraiseql-relay backfill' }), max: 2 });
    this.pool.on('error', () => {});
  }

  /** This relay became the active one: work on open requests. */
  start(): void {
    if (this.loop) return;
    const abort = new AbortController();
    this.abort = abort;
    this.loop = this.run(abort.signal).finally(() => {
      this.loop = null;
    });
  }

  /** Stop working (leadership lost, shutdown); a chunk in flight is read again by whoever resumes. */
  async pause(): Promise<void> {
    this.abort?.abort();
    await this.loop;
  }

  async close(): Promise<void> {
    await this.pause();
    await this.pool.end().catch(() => {});
  }

  private async run(signal: AbortSignal): Promise<void> {
    const { log } = this.deps;
    let attempt = 0;
    while (!signal.aborted) {
      try {
        const next = await this.store.nextOpen(this.pool);
        if (next === null) {
          await sleep(this.deps.pollMs ?? 1000, signal);
          continue;
        }
        await this.work(next, signal);
        attempt = 0;
      } catch (err) {
        if (signal.aborted) break;
        log.warn({ err: errorMessage(err) }, 'backfill interrupted; resuming from its last durable chunk');
        await sleep(backoffDelay(attempt++, 500, 30_000), signal);
      }
    }
  }

  /** Works on one backfill until it is done, cancelled, failed, or the runner stops. */
  private async work(b: Backfill, signal: AbortSignal): Promise<void> {
    const { log, windows } = this.deps;
    const where = `${b.schema}.${b.table}`;
    let table: BackfillTable;
    let filters: string[];
    const client = await this.pool.connect();
    try {
      try {
        table = await describeTable(client, b.schema, b.table, this.deps.publication);
        const subjects = this.deps.router.readSubjects(b.schema, b.table, b.subject);
        if (subjects.length === 0) {
          throw new UsageError(
            b.subject === null
              ? `no INSERT or UPDATE rule of table ${where} publishes anywhere: nothing to backfill it to (name a subject with --subject)`
              : `no rule of table ${where} publishes to subject ${b.subject}`,
          );
        }
        const rule = this.deps.ruleWhere.get(where) ?? null;
        filters = [rule, b.where].filter((f): f is string => f !== null);
        const total = b.rowsTotal ?? (await countRows(client, table, filters));
        await this.store.started(client, b.id, total);
      } catch (err) {
        if (!permanent(err)) throw err;
        await this.fail(client, b, errorMessage(err));
        return;
      }
      const started = (await this.store.get(client, b.id)) ?? b;
      if (started.state !== 'running') return; // cancelled meanwhile
      this.current = started;
      this.deps.onState?.(started);
      log.info(
        { backfill: b.id, table: where, rows: started.rowsTotal, resume: b.lastKey !== null, chunk_size: b.chunkSize },
        b.lastKey === null ? 'backfill started' : 'backfill resumed',
      );
      windows.track(b.schema, b.table, table.keyColumns);
      try {
        await this.chunks(client, started, table, filters, signal);
      } catch (err) {
        // a --where that only fails on some rows (a division by zero, a bad cast)
        if (!permanent(err)) throw err;
        await this.fail(client, started, errorMessage(err));
      } finally {
        windows.untrack(b.schema, b.table);
        this.current = null;
      }
    } finally {
      client.release();
    }
  }

  private async chunks(c: pg.Client, b: Backfill, table: BackfillTable, filters: string[], signal: AbortSignal): Promise<void> {
    const { log, windows, router } = this.deps;
    let lastKey = b.lastKey;
    const since = Date.now();
    let sinceRows = 0;
    let retries = 0;
    for (;;) {
      if (signal.aborted) return;
      const state = await this.store.state(c, b.id);
      if (state !== 'running') {
        log.info({ backfill: b.id, state }, state === 'cancelled' ? 'backfill cancelled' : 'backfill stopped');
        this.deps.onState?.({ ...b, state: state ?? 'cancelled' });
        return;
      }
      const w = windows.open(randomUUID(), b.schema, b.table);
      let outcome: ChunkOutcome;
      let rows: Awaited<ReturnType<typeof readChunk>>['rows'];
      try {
        await this.mark(c, 'low', w.id);
        const chunk = await readChunk(c, table, filters, lastKey, b.chunkSize);
        rows = chunk.rows;
        if (rows.length === 0) {
          w.drop();
          await this.finishDone(c, b);
          return;
        }
        await router.prepare(table.relation);
        w.attach({
          rows,
          running: chunk.running,
          build: (survivors, at) => {
            const out: OutboundMessage[] = [];
            for (const r of survivors) out.push(...router.read(table.relation, r.tuple, this.eventId(b, r.key), at, b.subject, b.id));
            return out;
          },
        });
        await this.mark(c, 'high', w.id);
        outcome = await abortable(w.settled, signal);
      } catch (err) {
        w.drop();
        if (!(err instanceof WindowLostError)) throw err;
        if (signal.aborted) return;
        // the stream was interrupted while the chunk was on its way: read it again in a new window
        log.info({ backfill: b.id, err: err.message }, 'backfill chunk read again');
        await sleep(backoffDelay(retries++, 200, 10_000), signal);
        continue;
      }
      retries = 0;
      lastKey = JSON.parse(rows[rows.length - 1]!.key) as (string | null)[];
      if (!(await this.store.progress(c, b.id, lastKey, outcome.published, outcome.skipped))) continue; // cancelled: said next turn
      sinceRows += rows.length;
      const cur = this.current ?? b;
      this.current = {
        ...cur,
        lastKey,
        rowsPublished: cur.rowsPublished + outcome.published,
        rowsSkipped: cur.rowsSkipped + outcome.skipped,
        chunks: cur.chunks + 1,
      };
      this.deps.onChunk?.(this.current, outcome);
      if (rows.length < b.chunkSize) {
        await this.finishDone(c, b);
        return;
      }
      if (b.maxRate !== null) {
        // `max_rate` rows per second on average since this relay started on it
        const due = since + (sinceRows / b.maxRate) * 1000;
        const wait = due - Date.now();
        if (wait > 0) await sleep(wait, signal);
      }
    }
  }

  private async finishDone(c: pg.PoolClient | pg.Client, b: Backfill): Promise<void> {
    await this.store.finish(c, b.id, 'done');
    const final = (await this.store.get(c, b.id)) ?? { ...b, state: 'done' as const };
    this.deps.log.info(
      { backfill: b.id, table: `${b.schema}.${b.table}`, published: final.rowsPublished, skipped: final.rowsSkipped },
      'backfill done',
    );
    this.deps.onState?.(final);
  }

  private async fail(c: pg.PoolClient, b: Backfill, reason: string): Promise<void> {
    this.deps.log.error({ backfill: b.id, table: `${b.schema}.${b.table}`, err: reason }, 'backfill failed');
    await this.store.finish(c, b.id, 'failed', reason);
    this.deps.onState?.({ ...b, state: 'failed', error: reason });
  }

  /** A watermark: a transactional logical message, committed before this returns. */
  private async mark(c: pg.Client, kind: 'low' | 'high', window: string): Promise<void> {
    await c.query('SELECT pg_logical_emit_message(true, $1, $2)', [BACKFILL_PREFIX, markerContent(kind, window)]);
  }

  /** The same row of the same backfill always gets the same id: a chunk read again is de-duplicated by JetStream. */
  private eventId(b: Backfill, key: string): string {
    const text = `backfill/${this.deps.database}/${b.schema}.${b.table}/${b.id}/${key}`;
    return this.deps.keys !== null ? this.deps.keys.uuidOf(text) : uuidV8(createHash('sha256').update(text).digest());
  }
}

/** A problem that retrying will not fix: the request is marked failed. */
function permanent(err: unknown): boolean {
  if (err instanceof UsageError) return true;
  const code = (err as { code?: unknown }).code;
  // syntax errors, undefined objects, data exceptions (a bad --where, a dropped table)
  return typeof code === 'string' && (code.startsWith('42') || code.startsWith('22'));
}

function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(new WindowLostError('stopped'));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new WindowLostError('stopped'));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}
