/**
 * The `backfill` table: requests (what `fraiseql-relay backfill` writes, the way Debezium's signal
 * table is written) and the progress the active relay records after each chunk.
 */
import type pg from 'pg';
import { quoteIdent } from '../util/db.js';

export type BackfillState = 'pending' | 'running' | 'done' | 'cancelled' | 'failed';

export interface Backfill {
  id: number;
  schema: string;
  table: string;
  subject: string | null;
  where: string | null;
  chunkSize: number;
  maxRate: number | null;
  state: BackfillState;
  /** the key columns' text of the last row done, null before the first chunk */
  lastKey: (string | null)[] | null;
  rowsTotal: number | null;
  rowsPublished: number;
  rowsSkipped: number;
  chunks: number;
  error: string | null;
  requestedBy: string | null;
  requestedAt: Date;
  startedAt: Date | null;
  updatedAt: Date;
  finishedAt: Date | null;
}

export interface BackfillRequest {
  schema: string;
  table: string;
  subject: string | null;
  where: string | null;
  chunkSize: number;
  maxRate: number | null;
  requestedBy: string;
}

/** Something that runs queries: a client or a pool. */
type Queryable = Pick<pg.Client, 'query'>;

interface Row {
  id: string;
  table_schema: string;
  table_name: string;
  subject: string | null;
  where_sql: string | null;
  chunk_size: number;
  max_rate: number | null;
  state: BackfillState;
  last_key: (string | null)[] | null;
  rows_total: string | null;
  rows_published: string;
  rows_skipped: string;
  chunks: string;
  error: string | null;
  requested_by: string | null;
  requested_at: Date;
  started_at: Date | null;
  updated_at: Date;
  finished_at: Date | null;
}

function fromRow(r: Row): Backfill {
  return {
    id: Number(r.id),
    schema: r.table_schema,
    table: r.table_name,
    subject: r.subject,
    where: r.where_sql,
    chunkSize: r.chunk_size,
    maxRate: r.max_rate,
    state: r.state,
    lastKey: r.last_key,
    rowsTotal: r.rows_total === null ? null : Number(r.rows_total),
    rowsPublished: Number(r.rows_published),
    rowsSkipped: Number(r.rows_skipped),
    chunks: Number(r.chunks),
    error: r.error,
    requestedBy: r.requested_by,
    requestedAt: r.requested_at,
    startedAt: r.started_at,
    updatedAt: r.updated_at,
    finishedAt: r.finished_at,
  };
}

export class BackfillStore {
  private readonly t: string;

  constructor(schema: string) {
    this.t = `${quoteIdent(schema)}.backfill`;
  }

  async request(c: Queryable, r: BackfillRequest): Promise<Backfill> {
    const res = await c.query<Row>(
      `INSERT INTO ${this.t} (table_schema, table_name, subject, where_sql, chunk_size, max_rate, requested_by)
       VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *`,
      [r.schema, r.table, r.subject, r.where, r.chunkSize, r.maxRate, r.requestedBy],
    );
    return fromRow(res.rows[0]!);
  }

  async get(c: Queryable, id: number): Promise<Backfill | null> {
    const res = await c.query<Row>(`SELECT * FROM ${this.t} WHERE id = $1`, [id]);
    return res.rows[0] ? fromRow(res.rows[0]) : null;
  }

  /** Open backfills (pending or running) and the `recent` latest finished ones, oldest first. */
  async list(c: Queryable, recent = 10): Promise<Backfill[]> {
    const res = await c.query<Row>(
      `(SELECT * FROM ${this.t} WHERE state IN ('pending', 'running'))
       UNION ALL
       (SELECT * FROM ${this.t} WHERE state NOT IN ('pending', 'running') ORDER BY id DESC LIMIT $1)
       ORDER BY id`,
      [recent],
    );
    return res.rows.map(fromRow);
  }

  /** The oldest open backfill: the one the active relay works on. */
  async nextOpen(c: Queryable): Promise<Backfill | null> {
    const res = await c.query<Row>(`SELECT * FROM ${this.t} WHERE state IN ('pending', 'running') ORDER BY id LIMIT 1`);
    return res.rows[0] ? fromRow(res.rows[0]) : null;
  }

  async state(c: Queryable, id: number): Promise<BackfillState | null> {
    const res = await c.query<{ state: BackfillState }>(`SELECT state FROM ${this.t} WHERE id = $1`, [id]);
    return res.rows[0]?.state ?? null;
  }

  /** Cancels one open backfill (or every open one with id null); returns the ids cancelled. */
  async cancel(c: Queryable, id: number | null): Promise<number[]> {
    const res = await c.query<{ id: string }>(
      `UPDATE ${this.t} SET state = 'cancelled', finished_at = now(), updated_at = now()
        WHERE state IN ('pending', 'running') AND ($1::bigint IS NULL OR id = $1) RETURNING id`,
      [id],
    );
    return res.rows.map((r) => Number(r.id));
  }

  /** The relay starts (or resumes) it; `rowsTotal` is counted on the first start only. */
  async started(c: Queryable, id: number, rowsTotal: number | null): Promise<void> {
    await c.query(
      `UPDATE ${this.t} SET state = 'running', started_at = coalesce(started_at, now()),
              rows_total = coalesce(rows_total, $2), updated_at = now()
        WHERE id = $1 AND state IN ('pending', 'running')`,
      [id, rowsTotal],
    );
  }

  /** A chunk is durable in the stream: the next one starts after `lastKey`. False: it was cancelled meanwhile. */
  async progress(c: Queryable, id: number, lastKey: (string | null)[], published: number, skipped: number): Promise<boolean> {
    const res = await c.query(
      `UPDATE ${this.t} SET last_key = $2, rows_published = rows_published + $3, rows_skipped = rows_skipped + $4,
              chunks = chunks + 1, updated_at = now()
        WHERE id = $1 AND state = 'running'`,
      [id, JSON.stringify(lastKey), published, skipped],
    );
    return res.rowCount === 1;
  }

  async finish(c: Queryable, id: number, state: 'done' | 'failed', error: string | null = null): Promise<void> {
    await c.query(
      `UPDATE ${this.t} SET state = $2, error = $3, finished_at = now(), updated_at = now()
        WHERE id = $1 AND state IN ('pending', 'running')`,
      [id, state, error],
    );
  }
}
