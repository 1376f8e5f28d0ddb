import pg from 'pg';
import { connectionConfig, quoteIdent, quoteQualified } from '../db.js';

export type Outcome = 'applied' | 'duplicate';

/**
 * Exactly-once effects: the inbox row and the handler call commit in one transaction. A
 * redelivered event finds its inbox row and the handler is not called again.
 */
export class InboxExecutor {
  private readonly pool: pg.Pool;
  private readonly inbox: string;
  private readonly deadLetter: string;

  constructor(url: string, schema: string, poolSize: number) {
    this.pool = new pg.Pool({ ...connectionConfig(url), max: poolSize });
    this.pool.on('error', () => {});
    this.inbox = `${quoteIdent(schema)}.inbox`;
    this.deadLetter = `${quoteIdent(schema)}.dead_letter`;
  }

  /** Calls `handler(body::jsonb)` once per (consumer, eventId). */
  async process(consumer: string, eventId: string, subject: string, handler: string, body: string, deadLetterId?: number): Promise<Outcome> {
    const client = await this.pool.connect();
    let broken: Error | undefined;
    try {
      await client.query('BEGIN');
      try {
        const ins = await client.query(
          `INSERT INTO ${this.inbox} (consumer, event_id, subject) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
          [consumer, eventId, subject],
        );
        const fresh = ins.rowCount === 1;
        if (fresh) await client.query(`SELECT ${quoteQualified(handler)}($1::jsonb)`, [body]);
        if (deadLetterId !== undefined) await client.query(`DELETE FROM ${this.deadLetter} WHERE id = $1`, [deadLetterId]);
        await client.query('COMMIT');
        return fresh ? 'applied' : 'duplicate';
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
