import { jetstreamManager } from '@nats-io/jetstream';
import type { Config } from '../config/load.js';
import { connectOnce } from '../sink/nats.js';
import { quoteIdent, withClient } from '../util/db.js';
import { errorMessage } from '../util/errors.js';
import { readSlot, type SlotStats } from '../schema/slot.js';
import { needsSlot } from '../schema/plan.js';
import { findStream } from '../sink/stream.js';

export interface StatusReport {
  role: 'active' | 'none' | 'not applicable';
  active: { pid: number; client: string | null; holder: string | null } | null;
  slot: (SlotStats & { name: string }) | null;
  last_event: { id: string | null; subject: string | null; published_at: string | null } | null;
  heartbeat: { at: string | null; age_seconds: number | null; lag_ms: number | null } | null;
  consumers: {
    consumer: string;
    subject: string;
    stream: string | null;
    pending: number | null;
    ack_pending: number | null;
    redelivered: number | null;
    error?: string;
  }[];
  dead_letters: Record<string, number>;
}

/** Slot lag, the active relay, last event, heartbeat, consumers and dead letters. Changes nothing. */
async function collectStatus(config: Config): Promise<StatusReport> {
  const slotName = config.relay.slot;
  const s = quoteIdent(config.relay.schema);
  const report: StatusReport = {
    role: needsSlot(config) ? 'none' : 'not applicable',
    active: null,
    slot: null,
    last_event: null,
    heartbeat: null,
    consumers: [],
    dead_letters: {},
  };
  await withClient(config.database.url, async (c) => {
    if (needsSlot(config)) {
      report.slot = { name: slotName, ...(await readSlot(c, slotName)) };
      const lock = await c.query<{ pid: number; client: string | null }>(
        `SELECT l.pid, a.client_addr::text AS client FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
            AND l.classid::bigint = (hashtext('fraiseql-relay/active')::bigint & 4294967295)
            AND l.objid::bigint = (hashtext($1)::bigint & 4294967295)`,
        [slotName],
      );
      const state = (
        await c
          .query<{
            holder: string | null;
            last_event_id: string | null;
            last_event_subject: string | null;
            last_published_at: Date | null;
            heartbeat_at: Date | null;
            heartbeat_lag_ms: number | null;
            age: number | null;
          }>(
            `SELECT holder, last_event_id, last_event_subject, last_published_at, heartbeat_at, heartbeat_lag_ms,
                  extract(epoch FROM now() - heartbeat_at)::float8 AS age
             FROM ${s}.relay_state WHERE slot = $1`,
            [slotName],
          )
          .catch(() => ({ rows: [] }))
      ).rows[0];
      const l = lock.rows[0];
      if (l) {
        report.role = 'active';
        report.active = { pid: l.pid, client: l.client, holder: state?.holder ?? null };
      }
      if (state) {
        report.last_event = {
          id: state.last_event_id,
          subject: state.last_event_subject,
          published_at: state.last_published_at?.toISOString() ?? null,
        };
        report.heartbeat = { at: state.heartbeat_at?.toISOString() ?? null, age_seconds: state.age, lag_ms: state.heartbeat_lag_ms };
      }
    }
    const dl = await c
      .query<{ direction: string; n: string }>(`SELECT direction, count(*)::text AS n FROM ${s}.dead_letter GROUP BY 1`)
      .catch(() => ({ rows: [] }));
    for (const r of dl.rows) report.dead_letters[r.direction] = Number(r.n);
  });
  if (config.observers.subscribe.length > 0 && config.observers.nats_url) {
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
            });
          } catch (err) {
            report.consumers.push({
              consumer: sub.consumer,
              subject: sub.subject,
              stream,
              pending: null,
              ack_pending: null,
              redelivered: null,
              error: errorMessage(err),
            });
          }
        }
      } finally {
        await nc.close();
      }
    } catch (err) {
      for (const sub of config.observers.subscribe) {
        report.consumers.push({
          consumer: sub.consumer,
          subject: sub.subject,
          stream: null,
          pending: null,
          ack_pending: null,
          redelivered: null,
          error: `NATS: ${errorMessage(err)}`,
        });
      }
    }
  }
  return report;
}

const bytes = (n: number) =>
  n >= 1 << 30
    ? `${(n / (1 << 30)).toFixed(1)} GiB`
    : n >= 1 << 20
      ? `${(n / (1 << 20)).toFixed(1)} MiB`
      : n >= 1024
        ? `${(n / 1024).toFixed(1)} KiB`
        : `${n} B`;

export async function runStatus(config: Config, opts: { json: boolean }): Promise<number> {
  const r = await collectStatus(config);
  if (opts.json) {
    process.stdout.write(JSON.stringify(r, null, 2) + '\n');
    return 0;
  }
  const rows: [string, string][] = [];
  rows.push([
    'relay',
    r.role === 'active'
      ? `active (pid ${r.active!.pid}${r.active!.holder ? `, ${r.active!.holder}` : ''})`
      : r.role === 'none'
        ? 'no active relay holds the slot'
        : 'subscriptions only (no slot)',
  ]);
  if (r.slot) {
    rows.push([
      'slot',
      r.slot.exists
        ? `${r.slot.name}: ${r.slot.active ? 'streaming' : 'inactive'}, wal_status ${r.slot.walStatus}`
        : `${r.slot.name}: missing (run migrate)`,
    ]);
    if (r.slot.exists) {
      rows.push([
        'slot lag',
        `${bytes(r.slot.lagBytes)}${r.slot.flushLagSeconds !== null ? `, ${r.slot.flushLagSeconds.toFixed(3)} s` : ''}`,
      ]);
      rows.push([
        'retained WAL',
        `${bytes(r.slot.retainedBytes)}${r.slot.safeWalBytes !== null ? `, ${bytes(r.slot.safeWalBytes)} left before invalidation` : ''}`,
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
      r.heartbeat.at ? `${r.heartbeat.age_seconds?.toFixed(1)} s ago (end-to-end ${r.heartbeat.lag_ms?.toFixed(1)} ms)` : 'none yet',
    ]);
  for (const c of r.consumers) {
    rows.push([
      `consumer ${c.consumer}`,
      c.error ? `error: ${c.error}` : `${c.pending} pending, ${c.ack_pending} in progress, ${c.redelivered} redelivered`,
    ]);
  }
  const dl = Object.entries(r.dead_letters);
  rows.push(['dead letters', dl.length === 0 ? '0' : dl.map(([k, v]) => `${v} ${k}`).join(', ')]);
  const w = Math.max(...rows.map(([k]) => k.length));
  for (const [k, v] of rows) process.stdout.write(`${k.padEnd(w)}  ${v}\n`);
  return 0;
}
