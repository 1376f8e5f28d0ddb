import pg from 'pg';
import { connectionConfig, quoteIdent, quoteLiteral } from '../util/db.js';

export interface SlotStats {
  exists: boolean;
  /** the slot's output plugin (null for a physical slot, or when the slot does not exist) */
  plugin: string | null;
  /** the database a logical slot belongs to */
  database: string | null;
  /** 'logical' or 'physical' */
  slotType: string | null;
  active: boolean;
  activePid: number | null;
  walStatus: string | null;
  /** bytes between the server's WAL position and the slot's confirmed position */
  lagBytes: number;
  /** WAL kept on disk for the slot */
  retainedBytes: number;
  /** remaining WAL budget before invalidation; null when max_slot_wal_keep_size is unlimited */
  safeWalBytes: number | null;
  confirmedLsn: string | null;
  /** flush_lag reported by pg_stat_replication for the slot's walsender, seconds */
  flushLagSeconds: number | null;
}

interface SlotRow {
  plugin: string | null;
  database: string | null;
  slot_type: string;
  active: boolean;
  active_pid: number | null;
  wal_status: string | null;
  lag: string | null;
  retained: string | null;
  safe: string | null;
  confirmed: string | null;
  flush_lag: number | null;
}

/**
 * The one query of pg_replication_slots (and pg_stat_replication for the slot's walsender). It
 * has no bind parameters, the slot name is an inline literal, so it also runs on a replication
 * connection (`replication: 'database'`), which only speaks the simple query protocol.
 */
function slotQuery(slot: string): string {
  return `SELECT s.plugin, s.database, s.slot_type, s.active, s.active_pid, s.wal_status,
            pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::text AS lag,
            pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::text AS retained,
            s.safe_wal_size::text AS safe, s.confirmed_flush_lsn::text AS confirmed,
            (SELECT extract(epoch FROM r.flush_lag)::float8 FROM pg_stat_replication r WHERE r.pid = s.active_pid) AS flush_lag
       FROM pg_replication_slots s WHERE s.slot_name = ${quoteLiteral(slot)}`;
}

/** One read of the slot: everything any caller needs, `exists: false` when there is no such slot. */
export async function readSlot(client: pg.Client | pg.Pool, slot: string): Promise<SlotStats> {
  // no values: the simple query protocol, which a replication connection requires
  const r = await client.query<SlotRow>(slotQuery(slot));
  const row = r.rows[0];
  if (!row) {
    return {
      exists: false,
      plugin: null,
      database: null,
      slotType: null,
      active: false,
      activePid: null,
      walStatus: null,
      lagBytes: 0,
      retainedBytes: 0,
      safeWalBytes: null,
      confirmedLsn: null,
      flushLagSeconds: null,
    };
  }
  return {
    exists: true,
    plugin: row.plugin,
    database: row.database,
    slotType: row.slot_type,
    active: row.active,
    activePid: row.active_pid,
    walStatus: row.wal_status,
    lagBytes: Number(row.lag ?? 0),
    retainedBytes: Number(row.retained ?? 0),
    safeWalBytes: row.safe === null ? null : Number(row.safe),
    confirmedLsn: row.confirmed,
    flushLagSeconds: row.flush_lag,
  };
}

/** The explanation and the way out when the slot was invalidated. */
export function lostSlotMessage(slot: string): string {
  return (
    `replication slot "${slot}" has been invalidated (wal_status = lost): PostgreSQL removed WAL the slot still needed ` +
    `(max_slot_wal_keep_size was exceeded while the relay was down or behind), so events committed since the last ` +
    `confirmed position may never be decoded. The relay will not continue on a gap.\n` +
    `  Way out: run \`fraiseql-relay reconcile --yes\`: it recreates the slot and re-publishes every retained outbox row ` +
    `committed after the last confirmed event (same message ids, so JetStream drops what it already has). ` +
    `Then start the relay again.`
  );
}

/** What a relay schema's `relay_state` records of a slot it streamed from. */
export interface SlotRecord {
  /** `<schema>.relay_state` */
  table: string;
  confirmedLsn: string | null;
  updatedAt: string;
}

/**
 * The `relay_state` row of `slot` in `schema`, or null (no row, no such table, not readable).
 * Simple protocol (no bind parameters), so it also runs on a replication connection.
 */
export async function slotRecord(client: pg.Client, schema: string, slot: string): Promise<SlotRecord | null> {
  try {
    const r = await client.query<{ lsn: string | null; at: string }>(
      `SELECT confirmed_lsn::text AS lsn, updated_at::text AS at FROM ${quoteIdent(schema)}.relay_state WHERE slot = ${quoteLiteral(slot)}`,
    );
    const row = r.rows[0];
    return row ? { table: `${schema}.relay_state`, confirmedLsn: row.lsn, updatedAt: row.at } : null;
  } catch {
    return null;
  }
}

/**
 * The explanation and the way out when the slot is missing but this relay streamed from it before
 * (`relay_state` records it): it was lost, most often in a failover to a standby without a
 * synchronized copy. `run`, a running relay, `migrate` and `check` say it; `migrate` refuses to
 * create such a slot, which would silently skip the events since the last confirmation.
 */
export function goneSlotMessage(slot: string, rec: SlotRecord): string {
  return (
    `replication slot "${slot}" does not exist on this server, but this relay streamed from it before (${rec.table}: confirmed up to ` +
    `${rec.confirmedLsn ?? '?'}, last written ${rec.updatedAt}): the slot was lost. ` +
    `Most likely PostgreSQL failed over to a standby that had no synchronized copy of it (PostgreSQL 16 and older have no failover ` +
    `slots; on 17 and later the standby needs sync_replication_slots = on, see "High availability" in the README), or it was dropped. ` +
    `Events committed after the last confirmed position may not have been published.\n` +
    `  Way out: run \`fraiseql-relay reconcile --yes\`: it recreates the slot and re-publishes every retained outbox row committed ` +
    `after the last confirmed event (same message ids, so JetStream drops what it already has); a running relay then streams from ` +
    `the new slot by itself. Do not create it with \`migrate\`: at the current position, the events committed since the last ` +
    `confirmed one would never be published (migrate refuses while ${rec.table} records the slot; delete that row only to start ` +
    `afresh on purpose, without those events).`
  );
}

export function slotPool(url: string): pg.Pool {
  const p = new pg.Pool({ ...connectionConfig(url, { application_name: 'fraiseql-relay monitor' }), max: 1 });
  p.on('error', () => {});
  return p;
}
