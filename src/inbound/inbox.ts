import pg from 'pg';
import { connectionConfig, quoteIdent, quoteQualified } from '../util/db.js';

export type Outcome = 'applied' | 'duplicate';

/**
 * Exactly-once effects: the inbox row and the handler call commit in one transaction. A
 * redelivered event finds its inbox row and the handler is not called again.
 */
export class InboxExecutor {
  private readonly pool: pg.Pool;
  private readonly consume: string;
  private readonly deadLetter: string;

  constructor(url: string, schema: string, poolSize: number) {
    this.pool = new pg.Pool({ ...connectionConfig(url), max: poolSize });
    this.pool.on('error', () => {});
    this.consume = `${quoteIdent(schema)}.consume`;
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
