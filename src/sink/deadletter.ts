import { createHash } from 'node:crypto';
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
  /** the message's bytes as received, when `body` is not exactly them (kept in `body_raw`) */
  raw?: Uint8Array;
  error: string;
  attempts: number;
}

/** Longest key (event id, subject, consumer) stored as it is; longer ones are shortened with a hash. */
const MAX_KEY_LENGTH = 512;
/** Longest error message and header value stored. */
const MAX_ERROR_LENGTH = 8192;
const MAX_HEADER_VALUE_LENGTH = 8192;

/** A text PostgreSQL can store: NUL, which no text or jsonb value can hold, becomes U+FFFD. */
function storableText(s: string): string {
  return s.includes('\0') ? s.replaceAll('\0', '\uFFFD') : s;
}

/**
 * A key short enough for a btree index entry: as it is up to {@link MAX_KEY_LENGTH} characters,
 * else its start and the SHA-256 of the whole value (the same value always gives the same key).
 */
export function storableKey(s: string): string {
  const t = storableText(s);
  if (t.length <= MAX_KEY_LENGTH && t === s) return s;
  if (t.length <= MAX_KEY_LENGTH) return t;
  return `${t.slice(0, 128)}…sha256:${createHash('sha256').update(s).digest('hex')}`;
}

function clip(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max)}… (${s.length - max} more characters)`;
}

/** The row written for a dead letter: every value in a form the table can always store. */
function storableDeadLetter(d: DeadLetter): {
  eventId: string | null;
  subject: string | null;
  consumer: string | null;
  handler: string | null;
  headers: string | null;
  body: string;
  raw: Buffer | null;
  originalKeys: string | null;
  error: string;
} {
  const original: Record<string, string> = {};
  const key = (name: string, v: string | null | undefined): string | null => {
    if (v === null || v === undefined) return null;
    const k = storableKey(v);
    if (k !== v) original[name] = storableText(v);
    return k;
  };
  const eventId = key('event_id', d.eventId);
  const subject = key('subject', d.subject);
  const consumer = key('consumer', d.consumer);
  const body = storableText(d.body);
  let raw: Buffer | null = d.raw ? Buffer.from(d.raw) : null;
  if (raw === null && body !== d.body) raw = Buffer.from(d.body, 'utf8');
  let headers: string | null = null;
  if (d.headers) {
    const h: Record<string, string> = {};
    for (const [k, v] of Object.entries(d.headers)) h[clip(storableText(k), 256)] = clip(storableText(v), MAX_HEADER_VALUE_LENGTH);
    headers = JSON.stringify(h);
  }
  return {
    eventId,
    subject,
    consumer,
    handler: d.handler ? clip(storableText(d.handler), 1024) : null,
    headers,
    body,
    raw,
    originalKeys: Object.keys(original).length > 0 ? JSON.stringify(original) : null,
    error: clip(storableText(d.error), MAX_ERROR_LENGTH),
  };
}

/**
 * Writes dead letters to `<schema>.dead_letter`. Idempotent per (direction, event, subject,
 * consumer): a replay after a crash does not record the same failure twice. Whatever a message
 * holds, its dead letter can be written (see storableDeadLetter), so a poison message
 * never blocks the consumer or the slot behind it.
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
    const r = storableDeadLetter(d);
    await this.pool.query(
      `INSERT INTO ${this.table} (direction, event_id, subject, consumer, handler, headers, body, body_raw, original_keys, error, attempts)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
       ON CONFLICT (direction, event_id, subject, coalesce(consumer, '')) DO UPDATE
         SET error = EXCLUDED.error, attempts = ${this.table}.attempts + EXCLUDED.attempts, updated_at = now()`,
      [d.direction, r.eventId, r.subject, r.consumer, r.handler, r.headers, r.body, r.raw, r.originalKeys, r.error, d.attempts],
    );
  }

  /** Rows by direction. */
  async counts(): Promise<Record<string, number>> {
    const r = await this.pool.query<{ direction: string; n: string }>(
      `SELECT direction, count(*)::text AS n FROM ${this.table} GROUP BY 1`,
    );
    return Object.fromEntries(r.rows.map((row) => [row.direction, Number(row.n)]));
  }

  async close(): Promise<void> {
    await this.pool.end().catch(() => {});
  }
}
