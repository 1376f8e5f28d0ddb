import pg from 'pg';
import { connectionConfig, quoteIdent, quoteQualified } from '../util/db.js';

export type Outcome = 'applied' | 'duplicate';

/** One event of a batch. `key`: events with the same key apply in order (null: no order). */
export interface BatchEvent {
  eventId: string;
  subject: string;
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
  private readonly deadLetter: string;

  constructor(url: string, schema: string, poolSize: number) {
    // pg_stat_activity shows which relay process a handler's session belongs to
    this.pool = new pg.Pool({ ...connectionConfig(url, { application_name: `fraiseql-relay inbound ${process.pid}` }), max: poolSize });
    this.pool.on('error', () => {});
    this.consume = `${quoteIdent(schema)}.consume`;
    this.consumeBatch = `${quoteIdent(schema)}.consume_batch`;
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
   * Applies a batch in one statement and one transaction: for each event, in order, its inbox row
   * and its handler call commit together, or neither does (a subtransaction per event). A failing
   * event leaves the others applied; with keys, the later events of a failed key are skipped.
   * Rejects only when the statement as a whole failed (nothing was applied).
   */
  async processBatch(consumer: string, handler: string, events: readonly BatchEvent[]): Promise<BatchResult[]> {
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
