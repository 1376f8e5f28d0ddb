import type pg from 'pg';
import type { NatsConnection } from '@nats-io/transport-node';
import type { Config } from '../config/load.js';
import type { Logger } from '../util/log.js';
import { errorMessage } from '../util/errors.js';
import { connectionConfig, DbClient, quoteIdent, rawTypes } from '../util/db.js';
import { OUTBOX_COLUMNS, OutboxRouter, outboxRowChange } from '../route/outbox.js';
import type { TupleValue } from '../source/types.js';
import { JetStreamSink } from '../sink/jetstream.js';
import { UndeliverableError } from '../sink/limits.js';
import { DeadLetterWriter } from '../sink/deadletter.js';
import type { OutboundMessage } from '../sink/sink.js';
import { MessageKeys } from '../sink/signing.js';

/**
 * Publishes messages outside a replication session (replay, reconcile, `dlq retry`) through the
 * relay's own publisher: checked against the server's limits, signed, de-duplicated and
 * classified exactly as `run` does it.
 */
export class Republisher {
  private readonly sink: JetStreamSink;

  constructor(config: Config, nc: NatsConnection, log: Logger, window = 256) {
    const keys = config.relay.signing_key_env ? MessageKeys.fromEnv(config.relay.signing_key_env, process.env) : null;
    this.sink = new JetStreamSink(nc, {
      maxInFlight: window,
      maxInFlightBytes: config.relay.max_in_flight_bytes,
      timeoutMs: 10_000,
      streamSubjects: [],
      log,
      keys,
    });
  }

  /** Why `msg` can never be published, or null. */
  async check(msg: OutboundMessage): Promise<string | null> {
    return msg.refused ?? (await this.sink.check(msg));
  }

  /** Resolves when another message may be started. */
  ready(): Promise<void> {
    return this.sink.waitForCapacity();
  }

  /**
   * Publishes a checked message. Rejects with {@link UndeliverableError} when JetStream refuses
   * it for good, with another error when NATS failed.
   */
  publish(msg: OutboundMessage): Promise<'published' | 'duplicate'> {
    return new Promise((resolve, reject) =>
      this.sink.publish(msg, (err, duplicate) => (err ? reject(err) : resolve(duplicate ? 'duplicate' : 'published'))),
    );
  }

  close(): void {
    this.sink.close();
  }
}

export interface RepublishResult {
  rows: number;
  published: number;
  duplicates: number;
  unrouted: number;
  /** messages that can never be published (the reasons are in the dead-letter table, as `run` records them) */
  deadLettered: number;
}

/**
 * Re-publishes retained outbox rows created at or after `since`, oldest first, with the same
 * message ids as the relay (`<event_id>:<subject>`): JetStream drops what it already holds within
 * its duplicate window. Messages go through the relay's own publisher, so they are checked,
 * signed and classified exactly as `run` does it: a row that can never be published is
 * dead-lettered and the replay goes on; a failure of NATS itself (timeout, no connection) ends
 * it with that error once what is in flight has settled.
 */
export async function republishOutbox(
  config: Config,
  nc: NatsConnection,
  since: Date,
  log: Logger,
  window = 256,
): Promise<RepublishResult> {
  const client = new DbClient(connectionConfig(config.database.url, { types: rawTypes, application_name: 'fraiseql-relay replay' }));
  client.on('error', () => {});
  await client.connect();
  const deadLetters = new DeadLetterWriter(config.database.url, config.relay.schema);
  const publisher = new Republisher(config, nc, log, window);
  const result: RepublishResult = { rows: 0, published: 0, duplicates: 0, unrouted: 0, deadLettered: 0 };
  let failure: Error | null = null;
  let pending = 0;
  let drained: (() => void) | null = null;
  const settle = () => {
    if (--pending === 0) drained?.();
  };
  const deadLetter = (msg: OutboundMessage, reason: string) => {
    pending++;
    log.warn({ event_id: msg.eventId, subject: msg.subject, reason }, 'replay: event dead-lettered');
    deadLetters
      .write({
        direction: 'outbound',
        eventId: msg.eventId,
        subject: msg.subject,
        headers: msg.headers,
        body: msg.body.toString('utf8'),
        error: reason,
        attempts: 1,
      })
      .then(
        () => result.deadLettered++,
        (err: unknown) => (failure ??= new Error(`could not record a dead letter: ${errorMessage(err)}`)),
      )
      .finally(settle);
  };
  try {
    await client.query(`SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'`);
    const database = (await client.query<{ db: string }>('SELECT current_database() AS db')).rows[0]!.db;
    const router = new OutboxRouter(config, database);
    const table = `${quoteIdent(config.relay.schema)}.outbox`;
    const columns = OUTBOX_COLUMNS.map((c) => `${c}::text AS ${c}`).join(', ');
    let cursor: { at: string; id: string } | null = null;
    while (failure === null) {
      const res: pg.QueryResult<Record<string, TupleValue>> = cursor
        ? await client.query(
            `SELECT ${columns} FROM ${table} WHERE (created_at, id) > ($1::timestamptz, $2::uuid) ORDER BY created_at, id LIMIT 1000`,
            [cursor.at, cursor.id],
          )
        : await client.query(`SELECT ${columns} FROM ${table} WHERE created_at >= $1 ORDER BY created_at, id LIMIT 1000`, [
            since.toISOString(),
          ]);
      if (res.rows.length === 0) break;
      for (const row of res.rows) {
        if (failure !== null) break;
        result.rows++;
        const routed = router.route(outboxRowChange(config.relay.schema, row));
        if (routed.unrouted) result.unrouted++;
        for (const msg of routed.messages) {
          const problem = await publisher.check(msg);
          if (problem !== null) {
            deadLetter(msg, problem);
            continue;
          }
          await publisher.ready();
          pending++;
          publisher
            .publish(msg)
            .then(
              (outcome) => (outcome === 'duplicate' ? result.duplicates++ : result.published++),
              (err: unknown) => {
                if (err instanceof UndeliverableError) deadLetter(msg, err.reason);
                else failure ??= new Error(`publishing ${msg.subject} failed: ${errorMessage(err)}`, { cause: err });
              },
            )
            .finally(settle);
        }
      }
      const last = res.rows[res.rows.length - 1]!;
      cursor = { at: String(last['created_at']), id: String(last['id']) };
    }
    if (pending > 0) await new Promise<void>((r) => (drained = r));
  } finally {
    publisher.close();
    await deadLetters.close();
    await client.end().catch(() => {});
  }
  if (failure !== null) throw failure as Error;
  return result;
}
