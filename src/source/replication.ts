import pg from 'pg';
import { both, type CopyBothQueryStream } from 'pg-copy-streams';
import { connectionConfig, quoteIdent } from '../db.js';
import type { Logger } from '../log.js';
import type { Lsn } from '../types.js';
import { formatLsn } from './lsn.js';
import { standbyStatus } from './frames.js';

export interface ReplicationOptions {
  url: string;
  slot: string;
  publications: string[];
  /** an independent status update at least this often, also while the stream is paused */
  statusIntervalMs?: number;
  /** a changed confirmed position is reported at most this often */
  confirmThrottleMs?: number;
  log: Logger;
}

/** Raised when the slot is missing or unusable: retrying will not help. */
export class SlotError extends Error {
  override readonly name = 'SlotError';
}

/**
 * One replication connection (COPY BOTH) on a permanent logical slot. It always starts from the
 * slot's confirmed position (`0/0`), hands out raw CopyData frames, and reports exactly the LSN
 * it is told is durable: never a received position, never +1.
 */
export class ReplicationConnection {
  readonly stream: CopyBothQueryStream;
  private confirmed: Lsn = 0n;
  private sent: Lsn = -1n;
  private lastSendAt = 0;
  private timer: NodeJS.Timeout;
  private throttleTimer: NodeJS.Timeout | null = null;
  private closing = false;
  private readonly statusIntervalMs: number;
  private readonly confirmThrottleMs: number;
  /** resolves once with the reason the connection ended (undefined after close()) */
  readonly ended: Promise<Error | undefined>;
  private endResolve!: (e: Error | undefined) => void;

  private constructor(private readonly client: pg.Client, stream: CopyBothQueryStream, opts: ReplicationOptions) {
    this.stream = stream;
    this.statusIntervalMs = opts.statusIntervalMs ?? 10_000;
    this.confirmThrottleMs = opts.confirmThrottleMs ?? 100;
    this.ended = new Promise((r) => (this.endResolve = r));
    const fail = (err: Error) => this.finish(err);
    stream.on('error', fail);
    stream.on('end', () => this.finish(new Error('replication stream ended by the server')));
    client.on('error', fail);
    client.on('end', () => this.finish(new Error('replication connection closed')));
    this.timer = setInterval(() => this.sendStatus(false), this.statusIntervalMs);
    this.timer.unref();
  }

  static async open(opts: ReplicationOptions): Promise<ReplicationConnection> {
    const client = new pg.Client(
      connectionConfig(opts.url, {
        replication: 'database',
        // values leave the walsender as text in a fixed, lossless form
        options: '-c TimeZone=UTC -c DateStyle=ISO,YMD -c extra_float_digits=3 -c IntervalStyle=iso_8601',
      } as pg.ClientConfig),
    );
    client.on('error', () => {});
    await client.connect();
    try {
      const slot = await client.query<{ plugin: string; slot_type: string; active_pid: number | null; wal_status: string | null }>(
        `SELECT plugin, slot_type, active_pid, wal_status FROM pg_replication_slots WHERE slot_name = '${opts.slot.replace(/'/g, "''")}'`,
      );
      const row = slot.rows[0];
      if (!row) {
        throw new SlotError(
          `replication slot "${opts.slot}" does not exist; run \`fraiseql-relay migrate\` to create it (events committed before it exists are not streamed)`,
        );
      }
      if (row.plugin !== 'pgoutput') throw new SlotError(`replication slot "${opts.slot}" uses plugin ${row.plugin}, expected pgoutput`);
      if (row.wal_status === 'lost') {
        throw new SlotError(
          `replication slot "${opts.slot}" has been invalidated (wal_status = lost): PostgreSQL removed WAL it still needed, so events may be missing. ` +
            `Recreate the slot and re-publish the retained outbox rows.`,
        );
      }
    } catch (err) {
      await client.end().catch(() => {});
      throw err;
    }
    const pubs = opts.publications.map((p) => quoteIdent(p)).join(',').replace(/'/g, "''");
    const sql = `START_REPLICATION SLOT ${quoteIdent(opts.slot)} LOGICAL 0/0 (proto_version '1', publication_names '${pubs}', messages 'true')`;
    const stream = client.query(both(sql, { alignOnCopyDataFrame: true, readableObjectMode: true, highWaterMark: 64 }));
    const conn = new ReplicationConnection(client, stream, opts);
    return conn;
  }

  /** The position last reported as durable. */
  get confirmedLsn(): Lsn {
    return this.confirmed;
  }

  /**
   * Everything up to `lsn` (a commit end LSN, or an idle keepalive's WAL end) is durable
   * downstream. Reported soon, throttled; older positions are ignored.
   */
  confirm(lsn: Lsn): void {
    if (lsn <= this.confirmed) return;
    this.confirmed = lsn;
    if (this.throttleTimer || this.closing) return;
    const wait = Math.max(0, this.lastSendAt + this.confirmThrottleMs - Date.now());
    this.throttleTimer = setTimeout(() => {
      this.throttleTimer = null;
      this.sendStatus(false);
    }, wait);
    this.throttleTimer.unref();
  }

  /** Sends a Standby Status Update with the confirmed position. */
  sendStatus(replyRequested: boolean): void {
    if (this.stream.destroyed || this.stream.writableEnded) return;
    this.lastSendAt = Date.now();
    this.sent = this.confirmed;
    this.stream.write(standbyStatus(this.confirmed, replyRequested));
  }

  get sentLsn(): string {
    return formatLsn(this.sent < 0n ? 0n : this.sent);
  }

  private finish(err: Error | undefined): void {
    clearInterval(this.timer);
    if (this.throttleTimer) clearTimeout(this.throttleTimer);
    this.throttleTimer = null;
    this.endResolve(this.closing ? undefined : err);
  }

  /** Sends the final confirmation and closes the connection. Safe to call twice. */
  async close(): Promise<void> {
    if (this.closing) return;
    if (this.confirmed > 0n && this.sent !== this.confirmed) this.sendStatus(false);
    this.closing = true;
    this.finish(undefined);
    this.stream.pause();
    await this.client.end().catch(() => {});
    this.stream.destroy();
  }

  /** Drops the connection without a final confirmation (after a failure). */
  abort(): void {
    this.closing = true;
    this.finish(undefined);
    this.stream.destroy();
    const conn = (this.client as unknown as { connection?: { stream?: { destroy(): void } } }).connection;
    conn?.stream?.destroy();
    this.client.end().catch(() => {});
  }
}
