import pg from 'pg';
import { connectionConfig, quoteIdent } from '../util/db.js';
import type { Logger } from '../util/log.js';
import { parseLsn } from '../source/lsn.js';
import { errorMessage } from '../util/errors.js';

/**
 * Deletes published outbox rows older than `[relay] retention`, in small batches (the
 * publication is insert-only, so deletes are never streamed).
 *
 * "Published" is proven without touching the rows: at time T the relay notes the server's WAL
 * insert position L; once the slot's confirmed position passes L, every transaction that
 * committed before T has been published, and rows created before T are eligible. (A transaction
 * left open for longer than the retention period is the one case this does not cover.)
 */
export class OutboxRetention {
  private readonly pool: pg.Pool;
  private readonly marks: { lsn: bigint; at: Date }[] = [];
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private readonly table: string;

  constructor(
    url: string,
    schema: string,
    private readonly retentionMs: number,
    private readonly confirmed: () => bigint,
    private readonly log: Logger,
    private readonly batchSize = 1000,
  ) {
    this.pool = new pg.Pool({ ...connectionConfig(url), max: 1 });
    this.pool.on('error', () => {});
    this.table = `${quoteIdent(schema)}.outbox`;
  }

  start(intervalMs = Math.min(60_000, Math.max(1000, Math.floor(this.retentionMs / 4)))): void {
    if (this.timer) return;
    this.timer = setInterval(() => {
      if (!this.running)
        this.running = this.tick()
          .then(
            () => {},
            () => {},
          )
          .finally(() => (this.running = null));
    }, intervalMs);
    this.timer.unref();
  }

  /** One pass: note a mark, then delete what is provably published and old. Returns rows deleted. */
  async tick(): Promise<number> {
    try {
      const { rows } = await this.pool.query<{ lsn: string; at: Date }>(`SELECT pg_current_wal_lsn()::text AS lsn, now() AS at`);
      const r = rows[0]!;
      this.marks.push({ lsn: parseLsn(r.lsn), at: r.at });
      const confirmed = this.confirmed();
      let safe: Date | null = null;
      while (this.marks.length > 0 && this.marks[0]!.lsn <= confirmed) safe = this.marks.shift()!.at;
      if (safe) this.marks.unshift({ lsn: 0n, at: safe }); // keep the newest proven mark
      if (this.marks.length > 1000) this.marks.splice(1, this.marks.length - 1000);
      if (!safe) return 0;
      const cutoff = new Date(Math.min(safe.getTime(), Date.now() - this.retentionMs));
      let total = 0;
      for (;;) {
        const res = await this.pool.query(
          `DELETE FROM ${this.table} WHERE id IN (SELECT id FROM ${this.table} WHERE created_at < $1 ORDER BY created_at LIMIT ${this.batchSize})`,
          [cutoff],
        );
        total += res.rowCount ?? 0;
        if ((res.rowCount ?? 0) < this.batchSize) break;
      }
      if (total > 0) this.log.debug({ deleted: total, before: cutoff.toISOString() }, 'outbox retention');
      return total;
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, 'outbox retention pass failed; will retry');
      return 0;
    }
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.running;
    await this.pool.end().catch(() => {});
  }
}
