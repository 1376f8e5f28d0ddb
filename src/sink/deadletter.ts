import pg from 'pg';
import { connectionConfig, quoteIdent } from '../util/db.js';

export interface DeadLetter {
  direction: 'outbound' | 'inbound' | 'webhook';
  eventId: string | null;
  subject: string | null;
  consumer?: string | null;
  handler?: string | null;
  headers: Record<string, string> | null;
  body: string;
  error: string;
  attempts: number;
}

/**
 * Writes dead letters to `<schema>.dead_letter`. Idempotent per (direction, event, subject,
 * consumer): a replay after a crash does not record the same failure twice.
 */
export class DeadLetterWriter {
  private readonly pool: pg.Pool;
  private readonly table: string;

  constructor(url: string, schema: string) {
    this.pool = new pg.Pool({ ...connectionConfig(url), max: 2 });
    this.pool.on('error', () => {}); // idle client lost (server restart): the next query reconnects
    this.table = `${quoteIdent(schema)}.dead_letter`;
  }

  async write(d: DeadLetter): Promise<void> {
    await this.pool.query(
      `INSERT INTO ${this.table} (direction, event_id, subject, consumer, handler, headers, body, error, attempts)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
       ON CONFLICT (direction, event_id, subject, coalesce(consumer, '')) DO UPDATE
         SET error = EXCLUDED.error, attempts = ${this.table}.attempts + EXCLUDED.attempts, updated_at = now()`,
      [
        d.direction,
        d.eventId,
        d.subject,
        d.consumer ?? null,
        d.handler ?? null,
        d.headers ? JSON.stringify(d.headers) : null,
        d.body,
        d.error,
        d.attempts,
      ],
    );
  }

  async close(): Promise<void> {
    await this.pool.end().catch(() => {});
  }
}
