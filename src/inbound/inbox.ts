import pg from 'pg';
import { connectionConfig, quoteIdent, quoteQualified } from '../util/db.js';

export type Outcome = 'applied' | 'duplicate';

/**
 * Subtransactions in one transaction when a batch has a failing event: a transaction with more
 * than 64 makes every other session's snapshots slower (PGPROC_MAX_CACHED_SUBXIDS), so a larger
 * batch is applied in transactions of this many.
 */
const SUBXACT_CHUNK = 64;

/** One event of a batch. `key`: events with the same key apply in order (null: no order). */
export interface BatchEvent {
  eventId: string;
  subject: string;
  /** the body: JSON text (the worker parsed it) */
  body: string;
  key: string | null;
}

/** What became of one event of a batch (see sql/008_consume_batch.sql). */
export type BatchResult =
  | { outcome: 'applied' | 'duplicate'; seconds: number }
  | { outcome: 'failed'; sqlstate: string; message: string; seconds: number }
  | { outcome: 'skipped' };

/**
 * Exactly-once effects: the inbox row and the handler call commit in one transaction. A
 * redelivered event finds its inbox row and the handler is not called again.
 */
export class InboxExecutor {
  private readonly pool: pg.Pool;
  private readonly consume: string;
  private readonly consumeBatch: string;
  private readonly consumeBatchFast: string;
  private readonly deadLetter: string;

  constructor(url: string, schema: string, poolSize: number) {
    // pg_stat_activity shows which relay process a handler's session belongs to
    this.pool = new pg.Pool({ ...connectionConfig(url, { application_name: `fraiseql-relay inbound ${process.pid}` }), max: poolSize });
    this.pool.on('error', () => {});
    this.consume = `${quoteIdent(schema)}.consume`;
    this.consumeBatch = `${quoteIdent(schema)}.consume_batch`;
    this.consumeBatchFast = `${quoteIdent(schema)}.consume_batch_fast`;
    this.deadLetter = `${quoteIdent(schema)}.dead_letter`;
  }

  /**
   * Calls `handler(body::jsonb)` once per (consumer, eventId): one statement, one round trip,
   * one transaction. With `deadLetterId`, the dead letter is removed in the same transaction.
   */
  async process(
    consumer: string,
    eventId: string,
    subject: string,
    handler: string,
    body: string,
    deadLetterId?: number,
  ): Promise<Outcome> {
    const sig = `${quoteQualified(handler)}(jsonb)`;
    const call = `SELECT ${this.consume}($1, $2, $3, $4::regprocedure, $5::jsonb) AS applied`;
    const client = await this.pool.connect();
    let broken: Error | undefined;
    try {
      if (deadLetterId === undefined) {
        const r = await client.query<{ applied: boolean }>(call, [consumer, eventId, subject, sig, body]);
        return r.rows[0]?.applied ? 'applied' : 'duplicate';
      }
      await client.query('BEGIN');
      try {
        const r = await client.query<{ applied: boolean }>(call, [consumer, eventId, subject, sig, body]);
        await client.query(`DELETE FROM ${this.deadLetter} WHERE id = $1`, [deadLetterId]);
        await client.query('COMMIT');
        return r.rows[0]?.applied ? 'applied' : 'duplicate';
      } catch (err) {
        await client.query('ROLLBACK').catch((e: Error) => (broken = e));
        throw err;
      }
    } catch (err) {
      if (!(err as { code?: string }).code) broken = err as Error;
      throw err;
    } finally {
      client.release(broken);
    }
  }

  /**
   * Applies a batch all or nothing: every event not applied before (no inbox row), in order, in
   * ONE statement and one transaction (consume_batch_fast); an event applied before is a
   * duplicate. Rejects, with nothing applied, when any handler call fails. The event ids must be
   * distinct.
   */
  async processAll(
    consumer: string,
    handler: string,
    events: readonly Omit<BatchEvent, 'key'>[],
  ): Promise<{ outcome: Outcome; seconds: number }[]> {
    const t0 = performance.now();
    const r = await this.pool.query<{ applied: string[] }>(
      `SELECT ${this.consumeBatchFast}($1, $2::regprocedure, $3, $4, $5::jsonb) AS applied`,
      [
        consumer,
        `${quoteQualified(handler)}(jsonb)`,
        events.map((e) => e.eventId),
        events.map((e) => e.subject),
        // the bodies are JSON texts: joined, they are a JSON array
        `[${events.map((e) => e.body).join(',')}]`,
      ],
    );
    const applied = new Set(r.rows[0]?.applied ?? []);
    // one statement for all: each event is given its share of the time
    const seconds = (performance.now() - t0) / 1000 / events.length;
    return events.map((e) => ({ outcome: applied.has(e.eventId) ? ('applied' as const) : ('duplicate' as const), seconds }));
  }

  /**
   * Applies a batch: for each event, in order, its inbox row and its handler call commit together,
   * or neither does. First all in one statement and one transaction (consume_batch_fast); when
   * that fails, again with a subtransaction per event (consume_batch, in transactions of at most
   * SUBXACT_CHUNK events), so a failing event leaves the others applied; with keys, the later
   * events of a failed key are skipped.
   * Rejects when a statement as a whole failed (a connection lost): applying the batch again is
   * safe, since what was applied finds its inbox row.
   */
  async processBatch(consumer: string, handler: string, events: readonly BatchEvent[]): Promise<BatchResult[]> {
    // the usual case first: nothing fails, so no subtransaction per event is needed
    if (events.length > 1 && new Set(events.map((e) => e.eventId)).size === events.length) {
      try {
        return await this.processAll(consumer, handler, events);
      } catch (err) {
        // a connection error rejects below too; an error of the SQL (a handler's) is isolated by consume_batch
        if (!(err as { code?: string }).code) throw err;
      }
    }
    // one event failed: a subtransaction each, at most SUBXACT_CHUNK to a transaction
    const results: BatchResult[] = [];
    const failedKeys = new Set<string>();
    for (let from = 0; from < events.length; from += SUBXACT_CHUNK) {
      const chunk = events.slice(from, from + SUBXACT_CHUNK);
      // behind a failure of its key in an earlier chunk: not attempted, like consume_batch does within one
      const run = chunk.filter((e) => e.key === null || !failedKeys.has(e.key));
      const r = run.length === 0 ? [] : await this.slowBatch(consumer, handler, run);
      const byId = new Map(run.map((e, i) => [e, r[i]]));
      for (const e of chunk) {
        const res = byId.get(e) ?? { outcome: 'skipped' as const };
        if (res.outcome === 'failed' && e.key !== null) failedKeys.add(e.key);
        results.push(res);
      }
    }
    return results;
  }

  private async slowBatch(consumer: string, handler: string, events: readonly BatchEvent[]): Promise<BatchResult[]> {
    const r = await this.pool.query<{ outcome: string; error_code: string | null; error_message: string | null; micros: string }>(
      `SELECT outcome, error_code, error_message, micros::text FROM ${this.consumeBatch}($1, $2::regprocedure, $3, $4, $5, $6)`,
      [
        consumer,
        `${quoteQualified(handler)}(jsonb)`,
        events.map((e) => e.eventId),
        events.map((e) => e.subject),
        events.map((e) => e.body),
        events.map((e) => e.key),
      ],
    );
    return r.rows.map((row): BatchResult => {
      const seconds = Number(row.micros) / 1e6;
      if (row.outcome === 'applied' || row.outcome === 'duplicate') return { outcome: row.outcome, seconds };
      if (row.outcome === 'failed') return { outcome: 'failed', sqlstate: row.error_code ?? '', message: row.error_message ?? '', seconds };
      return { outcome: 'skipped' };
    });
  }

  async close(): Promise<void> {
    await this.pool.end().catch(() => {});
  }
}

/** Null when `handler(jsonb)` exists, else a message naming it. */
export async function checkHandler(client: pg.Client | pg.Pool, handler: string): Promise<string | null> {
  const sig = `${quoteQualified(handler)}(jsonb)`;
  const r = await client.query<{ p: string | null }>(`SELECT to_regprocedure($1)::text AS p`, [sig]);
  if (r.rows[0]?.p) return null;
  return (
    `handler function ${handler}(jsonb) does not exist in the database (looked up as ${sig}); ` +
    `create it (CREATE FUNCTION ${handler}(p_event jsonb) ...) or fix [[observers.subscribe]] handler`
  );
}
