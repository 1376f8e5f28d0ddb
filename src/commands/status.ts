import { jetstreamManager } from '@nats-io/jetstream';
import type pg from 'pg';
import type { Config } from '../config/load.js';
import { connectOnce } from '../sink/nats.js';
import { quoteIdent, withClient } from '../util/db.js';
import { errorMessage, pgWhere } from '../util/errors.js';
import { readSlot } from '../schema/slot.js';
import { needsSlot } from '../schema/plan.js';
import { findStream } from '../sink/stream.js';
import { BackfillStore } from '../backfill/store.js';
import { closeRedis, connectRedisOnce, type RedisLink } from '../sink/redis-client.js';
import { streamKey } from '../sink/redis.js';
import { redisGroupState } from '../inbound/redis.js';
import { createLogger } from '../util/log.js';

/** A relay process: its own host name and pid (not a PostgreSQL backend's), and where it connects from. */
interface RelayProcessInfo {
  host: string | null;
  pid: number | null;
  /** the address PostgreSQL sees the relay's connection come from (null: a Unix socket, or not visible to this role) */
  client_addr: string | null;
}

/**
 * What `status --json` prints: a stable schema, every key snake_case (README, "Commands": the
 * fields of `status --json`). Fields are added, never renamed or removed, within a major version.
 */
export interface StatusReport {
  /** `active`: a relay holds the leader lock for the slot; `none`: none does; `not_applicable`: subscriptions only, no slot */
  role: 'active' | 'none' | 'not_applicable';
  /** the relay holding the leader lock (the one streaming the slot), or null */
  leader: RelayProcessInfo | null;
  /** relays of this database waiting for the leader lock */
  standbys: RelayProcessInfo[];
  /** how far behind the relay is, in seconds (null: no slot) */
  lag: {
    /** `slot`: the slot has confirmed everything written, 0; `heartbeat`: the age of the newest commit known published; null: unknown yet */
    seconds: number | null;
    measured_from: 'slot' | 'heartbeat' | null;
    /** measured_from `heartbeat`: when the newest commit known to be published was written (the last heartbeat that came back was emitted then); otherwise null */
    newest_published_commit_at: string | null;
  } | null;
  slot: {
    name: string;
    exists: boolean;
    /** a relay is streaming from it */
    active: boolean;
    plugin: string | null;
    wal_status: string | null;
    /** WAL written since the slot's confirmed position */
    lag_bytes: number;
    /** WAL kept on disk for the slot */
    retained_bytes: number;
    /** WAL budget left before PostgreSQL invalidates the slot (null: max_slot_wal_keep_size is unlimited) */
    safe_wal_bytes: number | null;
    confirmed_lsn: string | null;
  } | null;
  last_event: { id: string | null; subject: string | null; published_at: string | null } | null;
  /** the last heartbeat that came back through the whole outbound path */
  heartbeat: { at: string | null; age_seconds: number | null; lag_ms: number | null } | null;
  consumers: {
    consumer: string;
    subject: string;
    stream: string | null;
    pending: number | null;
    ack_pending: number | null;
    redelivered: number | null;
    error: string | null;
  }[];
  dead_letters: { outbound: number; inbound: number; webhook: number };
  /** open backfills (pending or running), oldest first: the active relay works on the first */
  backfills: {
    id: number;
    table: string;
    state: 'pending' | 'running';
    rows_total: number | null;
    rows_published: number;
    rows_skipped: number;
    updated_at: string;
  }[];
}

/** The advisory lock of the active relay (schema/leader.ts), as pg_locks shows it, in this database. */
const LEADER_LOCK = `l.locktype = 'advisory' AND l.objsubid = 2
  AND l.classid::bigint = (hashtext('fraiseql-relay/active')::bigint & 4294967295)
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`;

/** `fraiseql-relay leader <pid> <host>` (schema/leader.ts), the leader connection's application_name. */
function parseLeaderName(name: string | null): { pid: number; host: string } | null {
  const m = /^fraiseql-relay leader (\d+) (.+)$/.exec(name ?? '');
  return m ? { pid: Number(m[1]), host: m[2]! } : null;
}

/** `host/pid` of relay_state.holder. */
function parseHolder(holder: string | null): { host: string; pid: number } | null {
  const m = /^(.*)\/(\d+)$/.exec(holder ?? '');
  return m ? { host: m[1]!, pid: Number(m[2]) } : null;
}

async function readLeadership(
  c: pg.Client,
  slot: string,
  holder: string | null,
): Promise<{ leader: RelayProcessInfo | null; standbys: RelayProcessInfo[] }> {
  const rows = (
    await c.query<{ application_name: string | null; client_addr: string | null; leads: boolean }>(
      `SELECT a.application_name, host(a.client_addr) AS client_addr,
              EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.granted AND ${LEADER_LOCK}
                         AND l.objid::bigint = (hashtext($1)::bigint & 4294967295)) AS leads
         FROM pg_stat_activity a
        WHERE a.pid IN (SELECT l.pid FROM pg_locks l WHERE l.granted AND ${LEADER_LOCK}
                          AND l.objid::bigint = (hashtext($1)::bigint & 4294967295))
           OR (a.datname = current_database() AND a.application_name LIKE 'fraiseql-relay leader %'
               AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.granted AND ${LEADER_LOCK}))
        ORDER BY a.backend_start`,
      [slot],
    )
  ).rows;
  const recorded = parseHolder(holder);
  const info = (r: { application_name: string | null; client_addr: string | null }): RelayProcessInfo => {
    const named = parseLeaderName(r.application_name);
    if (named) {
      // PostgreSQL keeps 63 bytes of application_name: the host may be cut; relay_state has it whole
      const host = recorded && recorded.pid === named.pid && recorded.host.startsWith(named.host) ? recorded.host : named.host;
      return { host, pid: named.pid, client_addr: r.client_addr };
    }
    return { host: null, pid: null, client_addr: r.client_addr };
  };
  const lead = rows.find((r) => r.leads);
  let leader: RelayProcessInfo | null = null;
  if (lead) {
    leader = info(lead);
    // a relay before 0.2.0 names its leader connection `fraiseql-relay leader`: what it last recorded
    if (leader.pid === null && recorded) leader = { ...leader, host: recorded.host, pid: recorded.pid };
  }
  return { leader, standbys: rows.filter((r) => !r.leads).map(info) };
}

/** The slot, the active relay and its standbys, lag, last event, heartbeat, consumers and dead letters. Changes nothing. */
async function collectStatus(config: Config): Promise<StatusReport> {
  const slotName = config.relay.slot;
  const s = quoteIdent(config.relay.schema);
  const report: StatusReport = {
    role: needsSlot(config) ? 'none' : 'not_applicable',
    leader: null,
    standbys: [],
    lag: null,
    slot: null,
    last_event: null,
    heartbeat: null,
    consumers: [],
    dead_letters: { outbound: 0, inbound: 0, webhook: 0 },
    backfills: [],
  };
  await withClient(config.database.url, async (c) => {
    if (needsSlot(config)) {
      const slot = await readSlot(c, slotName);
      report.slot = {
        name: slotName,
        exists: slot.exists,
        active: slot.active,
        plugin: slot.plugin,
        wal_status: slot.walStatus,
        lag_bytes: slot.lagBytes,
        retained_bytes: slot.retainedBytes,
        safe_wal_bytes: slot.safeWalBytes,
        confirmed_lsn: slot.confirmedLsn,
      };
      const state = (
        await c
          .query<{
            holder: string | null;
            last_event_id: string | null;
            last_event_subject: string | null;
            last_published_at: Date | null;
            heartbeat_at: Date | null;
            heartbeat_lag_ms: number | null;
            heartbeat_age: number | null;
            emitted_at: Date | null;
            emitted_age: number | null;
          }>(
            `SELECT holder, last_event_id, last_event_subject, last_published_at, heartbeat_at, heartbeat_lag_ms,
                    extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age,
                    heartbeat_at - heartbeat_lag_ms * interval '1 millisecond' AS emitted_at,
                    extract(epoch FROM now() - heartbeat_at)::float8 + heartbeat_lag_ms / 1000.0 AS emitted_age
               FROM ${s}.relay_state WHERE slot = $1`,
            [slotName],
          )
          .catch(() => ({ rows: [] }))
      ).rows[0];
      const who = await readLeadership(c, slotName, state?.holder ?? null);
      report.leader = who.leader;
      report.standbys = who.standbys;
      if (who.leader) report.role = 'active';
      // nothing unconfirmed: no lag, whatever the heartbeat says; otherwise the heartbeat bounds it
      const emitted = state?.emitted_at ?? null;
      report.lag =
        slot.exists && slot.confirmedLsn !== null && slot.lagBytes <= 0
          ? { seconds: 0, measured_from: 'slot', newest_published_commit_at: null }
          : emitted && state?.emitted_age !== null && state?.emitted_age !== undefined
            ? { seconds: Math.max(0, state.emitted_age), measured_from: 'heartbeat', newest_published_commit_at: emitted.toISOString() }
            : { seconds: null, measured_from: null, newest_published_commit_at: null };
      if (state) {
        report.last_event = {
          id: state.last_event_id,
          subject: state.last_event_subject,
          published_at: state.last_published_at?.toISOString() ?? null,
        };
        report.heartbeat = {
          at: state.heartbeat_at?.toISOString() ?? null,
          age_seconds: state.heartbeat_age,
          lag_ms: state.heartbeat_lag_ms,
        };
      }
    }
    const dl = await c
      .query<{ direction: string; n: string }>(`SELECT direction, count(*)::text AS n FROM ${s}.dead_letter GROUP BY 1`)
      .catch(() => ({ rows: [] }));
    for (const r of dl.rows) {
      if (r.direction === 'outbound' || r.direction === 'inbound' || r.direction === 'webhook')
        report.dead_letters[r.direction] = Number(r.n);
    }
    // a database migrated by an older version has no backfill table: no backfills
    const open = await new BackfillStore(config.relay.schema).list(c, 0).catch(() => []);
    for (const b of open) {
      if (b.state !== 'pending' && b.state !== 'running') continue;
      report.backfills.push({
        id: b.id,
        table: `${b.schema}.${b.table}`,
        state: b.state,
        rows_total: b.rowsTotal,
        rows_published: b.rowsPublished,
        rows_skipped: b.rowsSkipped,
        updated_at: b.updatedAt.toISOString(),
      });
    }
  });
  if (config.observers.backend === 'postgres') {
    // no broker: the subscriptions are applied from the slot, in commit order; their backlog is the slot's lag
    for (const sub of config.observers.subscribe) report.consumers.push(withoutCounts(sub, null, null));
  } else if (config.observers.backend === 'redis') {
    if (config.observers.subscribe.length > 0) report.consumers.push(...(await redisConsumers(config)));
  } else if (config.observers.subscribe.length > 0 && config.observers.nats_url) {
    try {
      const nc = await connectOnce(config, 'status');
      try {
        const jsm = await jetstreamManager(nc);
        for (const sub of config.observers.subscribe) {
          const stream = await findStream(jsm, sub.subject).catch(() => null);
          try {
            if (!stream) throw new Error('no stream captures the subject');
            const info = await jsm.consumers.info(stream, sub.consumer);
            report.consumers.push({
              consumer: sub.consumer,
              subject: sub.subject,
              stream,
              pending: info.num_pending,
              ack_pending: info.num_ack_pending,
              redelivered: info.num_redelivered,
              error: null,
            });
          } catch (err) {
            report.consumers.push(withoutCounts(sub, stream, errorMessage(err)));
          }
        }
      } finally {
        await nc.close();
      }
    } catch (err) {
      for (const sub of config.observers.subscribe) report.consumers.push(withoutCounts(sub, null, errorMessage(err)));
    }
  }
  return report;
}

type Consumer = StatusReport['consumers'][number];

/** A subscription whose counts are not known: why (`error`), or null when it has none to know (`backend = "postgres"`). */
function withoutCounts(sub: { consumer: string; subject: string }, stream: string | null, error: string | null): Consumer {
  return { consumer: sub.consumer, subject: sub.subject, stream, pending: null, ack_pending: null, redelivered: null, error };
}

/**
 * backend = "redis": each subscription's consumer group (`XINFO GROUPS` of its stream), in the
 * fields of a NATS consumer: `pending` is the group's `lag` (entries not yet delivered to it; null
 * when Redis cannot tell, after entries were deleted out of order), `ack_pending` its pending list
 * (delivered, not acknowledged), `redelivered` the entries of that list delivered more than once
 * (`XPENDING`, the first 10,000). A missing stream or group, or Redis down, is the consumer's `error`.
 */
async function redisConsumers(config: Config): Promise<Consumer[]> {
  const subs = config.observers.subscribe;
  let redis: RedisLink;
  try {
    redis = await connectRedisOnce(config.observers.redis_url ?? '', 'fraiseql-relay-status', createLogger('silent'));
  } catch (err) {
    return subs.map((sub) => withoutCounts(sub, null, errorMessage(err)));
  }
  const out: Consumer[] = [];
  try {
    for (const sub of subs) {
      const key = streamKey(config.relay.redis, sub.subject);
      try {
        const g = await redisGroupState(redis, key, sub.consumer);
        out.push({
          consumer: sub.consumer,
          subject: sub.subject,
          stream: key,
          pending: g.lag,
          ack_pending: g.ackPending,
          redelivered: g.redelivered,
          error: null,
        });
      } catch (err) {
        out.push(withoutCounts(sub, key, errorMessage(err)));
      }
    }
  } finally {
    closeRedis(redis);
  }
  return out;
}

const bytes = (n: number) =>
  n >= 1 << 30
    ? `${(n / (1 << 30)).toFixed(1)} GiB`
    : n >= 1 << 20
      ? `${(n / (1 << 20)).toFixed(1)} MiB`
      : n >= 1024
        ? `${(n / 1024).toFixed(1)} KiB`
        : `${n} B`;

const processName = (p: RelayProcessInfo) =>
  p.pid !== null
    ? `${p.host ?? '?'}/${p.pid}${p.client_addr ? ` from ${p.client_addr}` : ''}`
    : `a relay${p.client_addr ? ` from ${p.client_addr}` : ''}`;

/** The table a person reads. */
function formatStatus(r: StatusReport, where: string): string {
  const rows: [string, string][] = [['database', where]];
  const standbys =
    r.standbys.length === 0
      ? 'no standby'
      : `${r.standbys.length} standby${r.standbys.length === 1 ? '' : 's'} (${r.standbys.map(processName).join(', ')})`;
  rows.push([
    'relay',
    r.role === 'active'
      ? `active: ${processName(r.leader!)} holds the leader lock; ${standbys}`
      : r.role === 'none'
        ? `no relay is active (none holds the leader lock); ${standbys}`
        : 'subscriptions only (no slot)',
  ]);
  if (r.lag) {
    rows.push([
      'lag',
      r.lag.seconds === null
        ? 'unknown: no heartbeat has come back yet'
        : r.lag.measured_from === 'slot'
          ? '0 s (the slot has confirmed everything written)'
          : `${r.lag.seconds.toFixed(1)} s (the newest commit known published was written at ${r.lag.newest_published_commit_at})`,
    ]);
  }
  if (r.slot) {
    rows.push([
      'slot',
      r.slot.exists
        ? `${r.slot.name}: ${r.slot.active ? 'streaming' : 'inactive'}, wal_status ${r.slot.wal_status}, ${bytes(r.slot.lag_bytes)} not confirmed yet`
        : `${r.slot.name}: missing (run fraiseql-relay migrate)`,
    ]);
    if (r.slot.exists) {
      rows.push([
        'retained WAL',
        `${bytes(r.slot.retained_bytes)}${r.slot.safe_wal_bytes !== null ? `, ${bytes(r.slot.safe_wal_bytes)} left before invalidation` : ''}`,
      ]);
    }
  }
  if (r.last_event)
    rows.push([
      'last event',
      r.last_event.id ? `${r.last_event.id} on ${r.last_event.subject} at ${r.last_event.published_at}` : 'none yet',
    ]);
  if (r.heartbeat)
    rows.push([
      'heartbeat',
      r.heartbeat.at
        ? `came back ${r.heartbeat.age_seconds?.toFixed(1)} s ago, ${r.heartbeat.lag_ms?.toFixed(1)} ms after it was written`
        : 'none yet',
    ]);
  for (const c of r.consumers) {
    rows.push([
      `consumer ${c.consumer}`,
      c.error !== null
        ? `error: ${c.error}`
        : c.stream === null
          ? `${c.subject}: applied from the slot in commit order (backend = "postgres"; its backlog is the slot's lag)`
          : `${c.pending ?? '?'} pending, ${c.ack_pending} in progress, ${c.redelivered} redelivered`,
    ]);
  }
  const dl = Object.entries(r.dead_letters).filter(([, n]) => n > 0);
  rows.push(['dead letters', dl.length === 0 ? '0' : dl.map(([k, v]) => `${v} ${k}`).join(', ')]);
  for (const b of r.backfills) {
    const done = b.rows_published + b.rows_skipped;
    const share = b.rows_total ? ` ${Math.floor((100 * done) / b.rows_total)}%` : '';
    rows.push([
      `backfill ${b.id}`,
      `${b.table} ${b.state}${share} (${done}${b.rows_total === null ? '' : ` / ${b.rows_total}`} rows, ${b.rows_skipped} skipped)`,
    ]);
  }
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${v}\n`).join('');
}

export async function runStatus(config: Config, opts: { json: boolean }): Promise<number> {
  const r = await collectStatus(config);
  process.stdout.write(opts.json ? JSON.stringify(r, null, 2) + '\n' : formatStatus(r, pgWhere(config.database.url)));
  return 0;
}
