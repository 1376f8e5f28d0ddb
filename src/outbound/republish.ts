import pg from 'pg';
import { headers as natsHeaders, type NatsConnection } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import type { Config } from '../config/load.js';
import { connectionConfig, quoteIdent, rawTypes } from '../util/db.js';
import { OUTBOX_COLUMNS, OutboxRouter, outboxRowChange } from '../route/outbox.js';
import type { TupleValue } from '../source/types.js';

export interface RepublishResult {
  rows: number;
  published: number;
  duplicates: number;
  unrouted: number;
}

/**
 * Re-publishes retained outbox rows created at or after `since`, oldest first, with the same
 * message ids as the relay (`<event_id>:<subject>`): JetStream drops what it already holds within
 * its duplicate window.
 */
export async function republishOutbox(config: Config, nc: NatsConnection, since: Date, window = 256): Promise<RepublishResult> {
  const client = new pg.Client(connectionConfig(config.database.url, { types: rawTypes, application_name: 'fraiseql-relay replay' }));
  client.on('error', () => {});
  await client.connect();
  const result: RepublishResult = { rows: 0, published: 0, duplicates: 0, unrouted: 0 };
  try {
    await client.query(`SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'`);
    const database = (await client.query<{ db: string }>('SELECT current_database() AS db')).rows[0]!.db;
    const router = new OutboxRouter(config, database);
    const js = jetstream(nc);
    const table = `${quoteIdent(config.relay.schema)}.outbox`;
    let cursor: { at: string; id: string } | null = null;
    let inFlight: Promise<void>[] = [];
    for (;;) {
      const res: pg.QueryResult<Record<string, TupleValue>> = cursor
        ? await client.query(
            `SELECT ${OUTBOX_COLUMNS.map((c) => `${c}::text AS ${c}`).join(', ')} FROM ${table}
              WHERE (created_at, id) > ($1::timestamptz, $2::uuid) ORDER BY created_at, id LIMIT 1000`,
            [cursor.at, cursor.id],
          )
        : await client.query(
            `SELECT ${OUTBOX_COLUMNS.map((c) => `${c}::text AS ${c}`).join(', ')} FROM ${table}
              WHERE created_at >= $1 ORDER BY created_at, id LIMIT 1000`,
            [since.toISOString()],
          );
      if (res.rows.length === 0) break;
      for (const row of res.rows) {
        result.rows++;
        const routed = router.route(outboxRowChange(config.relay.schema, row));
        if (routed.unrouted) result.unrouted++;
        for (const msg of routed.messages) {
          const h = natsHeaders();
          for (const k in msg.headers) h.set(k, msg.headers[k]!);
          inFlight.push(
            js.publish(msg.subject, msg.body, { msgID: `${msg.eventId}:${msg.subject}`, headers: h }).then((ack) => {
              if (ack.duplicate) result.duplicates++;
              else result.published++;
            }),
          );
          if (inFlight.length >= window) {
            await Promise.all(inFlight);
            inFlight = [];
          }
        }
      }
      const last = res.rows[res.rows.length - 1]!;
      cursor = { at: String(last['created_at']), id: String(last['id']) };
    }
    await Promise.all(inFlight);
  } finally {
    await client.end().catch(() => {});
  }
  return result;
}
