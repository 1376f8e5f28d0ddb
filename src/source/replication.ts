import type pg from 'pg';
import { both, type CopyBothQueryStream } from 'pg-copy-streams';
import { connectionConfig, DbClient, quoteLiteral } from '../util/db.js';
import type { Logger } from '../util/log.js';
import { SlotError, SlotLostError } from '../util/errors.js';
import type { Lsn } from './types.js';
import { formatLsn } from './lsn.js';
import { standbyStatus } from './frames.js';
import type { PluginName } from './decoder.js';
import { startReplicationSql, type StartOptions, type StreamedTable } from './plugin.js';
import { goneSlotMessage, readSlot, slotRecord, type SlotRecord } from '../schema/slot.js';

export interface ReplicationOptions {
  url: string;
  slot: string;
  /** pgoutput reads these; wal2json is given exactly their tables and operations */
  publications: string[];
  /** the slot's output plugin (`[relay] plugin`), default pgoutput */
  plugin?: PluginName;
  /** an independent status update at least this often, also while the stream is paused */
  statusIntervalMs?: number;
  /** a changed confirmed position is reported at most this often */
  confirmThrottleMs?: number;
  log: Logger;
}

/**
 * One replication connection (COPY BOTH) on a permanent logical slot. It always starts from the
 * slot's confirmed position (`0/0`), hands out raw CopyData frames, and reports exactly the LSN
 * it is told is durable: never a received position, never +1.
 */
export class ReplicationConnection {
  readonly stream: CopyBothQueryStream;
  /** wal2json: the tables streamed and their catalog facts, for the decoder (empty for pgoutput) */
  tables: readonly StreamedTable[] = [];
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

  private constructor(
    private readonly client: pg.Client,
    stream: CopyBothQueryStream,
    opts: ReplicationOptions,
  ) {
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
    const plugin = opts.plugin ?? 'pgoutput';
    const client = new DbClient(
      connectionConfig(opts.url, {
        replication: 'database',
        // values leave the walsender as text in a fixed, lossless form (the same for every plugin),
        // the text to_jsonb writes in a session with TimeZone=UTC and PostgreSQL's default styles
        options: '-c TimeZone=UTC -c DateStyle=ISO,YMD -c extra_float_digits=3 -c IntervalStyle=postgres -c bytea_output=hex',
      } as pg.ClientConfig),
    );
    client.on('error', () => {});
    await client.connect();
    let start: StartOptions = { plugin: 'pgoutput', publications: opts.publications };
    try {
      // readSlot's query has no bind parameters: a replication connection only speaks the simple query protocol
      const row = await readSlot(client, opts.slot);
      if (!row.exists) {
        const recorded = await streamedBefore(client, opts.slot);
        if (recorded) throw new SlotError(goneSlotMessage(opts.slot, recorded));
        throw new SlotError(
          `replication slot "${opts.slot}" does not exist; run \`fraiseql-relay migrate\` to create it (events committed before it exists are not streamed)`,
        );
      }
      if (row.plugin !== plugin) {
        throw new SlotError(
          `replication slot "${opts.slot}" uses plugin ${row.plugin}, but [relay] plugin = "${plugin}": ` +
            `set plugin = "${row.plugin}", or drop the slot and run \`fraiseql-relay migrate\` (events not yet streamed are then lost)`,
        );
      }
      if (row.walStatus === 'lost') {
        throw new SlotLostError(
          `replication slot "${opts.slot}" has been invalidated (wal_status = lost): PostgreSQL removed WAL it still needed, so events may be missing. ` +
            `Recreate the slot and re-publish the retained outbox rows.`,
        );
      }
      if (plugin === 'wal2json') start = await wal2jsonStart(client, opts);
    } catch (err) {
      await client.end().catch(() => {});
      throw err;
    }
    const sql = startReplicationSql(opts.slot, start);
    opts.log.debug({ sql }, 'starting replication');
    const stream = client.query(both(sql, { alignOnCopyDataFrame: true, readableObjectMode: true, highWaterMark: 64 }));
    const conn = new ReplicationConnection(client, stream, opts);
    if (start.plugin === 'wal2json') conn.tables = start.tables;
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

/**
 * The tables and row operations a set of publications holds (what pgoutput streams), with the
 * catalog facts pgoutput's Relation messages would carry. Simple queries only, so it works on a
 * replication connection too.
 */
export async function publishedTables(
  client: pg.Client,
  publications: readonly string[],
): Promise<{ tables: StreamedTable[]; actions: ('insert' | 'update' | 'delete')[] }> {
  const pubs = `ARRAY[${publications.map(quoteLiteral).join(',')}]::text[]`;
  const t = await client.query<{ schemaname: string; tablename: string; ident: string; keys: string; generated: string }>(
    `SELECT t.schemaname, t.tablename, c.relreplident AS ident,
            coalesce((SELECT json_agg(a.attname::text ORDER BY a.attnum)
                        FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                       WHERE i.indrelid = c.oid AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))), '[]')::text AS keys,
            coalesce((SELECT json_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
                       WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> ''), '[]')::text AS generated
       FROM (SELECT DISTINCT schemaname, tablename FROM pg_publication_tables WHERE pubname = ANY(${pubs})) t
       JOIN pg_namespace n ON n.nspname = t.schemaname
       JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename
      ORDER BY 1, 2`,
  );
  const p = await client.query<{ ins: boolean | null; upd: boolean | null; del: boolean | null }>(
    `SELECT bool_or(pubinsert) AS ins, bool_or(pubupdate) AS upd, bool_or(pubdelete) AS del FROM pg_publication WHERE pubname = ANY(${pubs})`,
  );
  const tables: StreamedTable[] = t.rows.map((r) => ({
    schema: r.schemaname,
    name: r.tablename,
    replicaIdentity: r.ident,
    keys: JSON.parse(r.keys) as string[],
    generated: JSON.parse(r.generated) as string[],
  }));
  const ops = p.rows[0];
  const actions = (['insert', 'update', 'delete'] as const).filter(
    (a) => (a === 'insert' ? ops?.ins : a === 'update' ? ops?.upd : ops?.del) === true,
  );
  return { tables, actions };
}

/**
 * wal2json ignores publications: it is given the tables and operations the relay's publications
 * hold, and told to write numbers as strings when this wal2json knows how.
 */
async function wal2jsonStart(client: pg.Client, opts: ReplicationOptions): Promise<StartOptions> {
  const { tables, actions } = await publishedTables(client, opts.publications);
  if (tables.length === 0 || actions.length === 0) {
    // an empty add-tables would make wal2json stream every table of the database
    throw new SlotError(`publication(s) ${opts.publications.join(', ')} hold no tables: run \`fraiseql-relay migrate\``);
  }
  // a startup-only decode of the slot tells whether this wal2json knows the option (2.6+)
  let numericAsString = true;
  try {
    await client.query(
      `SELECT count(*) FROM pg_logical_slot_peek_changes(${quoteLiteral(opts.slot)}, '0/1', NULL, 'format-version', '2', 'numeric-data-types-as-string', 'true')`,
    );
  } catch (err) {
    const msg = (err as Error).message;
    if (/numeric-data-types-as-string/.test(msg)) numericAsString = false;
    else throw pluginError(err, opts.slot);
  }
  if (!numericAsString) opts.log.debug('wal2json < 2.6: NaN and ±Infinity in float/numeric columns arrive as null');
  return { plugin: 'wal2json', tables, actions, numericAsString };
}

/** A refused or missing output plugin is a setup problem: say how to fix it. */
function pluginError(err: unknown, slot: string): Error {
  const e = err as { code?: string; message?: string };
  const msg = e.message ?? String(err);
  if (/may not be used as an output plugin/.test(msg)) {
    return new SlotError(
      `${msg}: PostgreSQL only decodes with plugins listed in output_plugin_libraries. As a superuser run ` +
        `ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', 'wal2json'; SELECT pg_reload_conf();`,
    );
  }
  if (/could not access file "wal2json"/.test(msg)) {
    return new SlotError(
      `${msg}: the wal2json plugin is not installed on the server (Debian/Ubuntu: apt-get install postgresql-<version>-wal2json); slot "${slot}" needs it`,
    );
  }
  return err instanceof Error ? err : new Error(msg);
}

/**
 * Whether a relay streamed from `slot` before on this database: the `relay_state` row of a relay
 * schema (any schema with a relay_state table this role may read) names it. A slot that is missing
 * although it was streamed was lost (a failover without a synchronized copy, or dropped): `migrate`
 * must not simply create it again. Simple protocol only, as on every replication connection.
 */
async function streamedBefore(client: pg.Client, slot: string): Promise<SlotRecord | null> {
  try {
    const schemas = await client.query<{ nspname: string }>(
      `SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relname = 'relay_state' AND c.relkind IN ('r', 'p') AND has_table_privilege(c.oid, 'SELECT')
        ORDER BY n.nspname`,
    );
    for (const { nspname } of schemas.rows) {
      const rec = await slotRecord(client, nspname, slot);
      if (rec) return rec;
    }
  } catch {
    // not readable: say what is known without it
  }
  return null;
}
