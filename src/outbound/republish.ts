import type pg from 'pg';
import type { NatsConnection } from '@nats-io/transport-node';
import type { Config } from '../config/load.js';
import type { Logger } from '../util/log.js';
import { errorMessage, UsageError } from '../util/errors.js';
import { connectionConfig, DbClient, quoteIdent, rawTypes } from '../util/db.js';
import { OUTBOX_COLUMNS, OutboxRouter, outboxRowChange } from '../route/outbox.js';
import type { TupleValue } from '../source/types.js';
import { connectOnce } from '../sink/nats.js';
import { loadAppendScript } from '../sink/redis.js';
import { closeRedis, connectRedisOnce, type RedisLink } from '../sink/redis-client.js';
import { UndeliverableError } from '../sink/limits.js';
import { DeadLetterWriter } from '../sink/deadletter.js';
import type { OutboundMessage, Sink } from '../sink/sink.js';
import { MessageKeys } from '../sink/signing.js';
import { InboxExecutor } from '../inbound/inbox.js';
import { resolveWebhookTarget } from '../webhook/deliver.js';
import { webhookRoutes } from '../webhook/route.js';
import { backendSink } from './sinks.js';

/**
 * Publishes messages outside a replication session (replay, reconcile, `dlq retry`) through the
 * relay's own sink for the configured backend (outbound/sinks.ts): checked against the broker's
 * limits, signed, de-duplicated and classified exactly as `run` does it. With `backend =
 * "postgres"` that means applied through the inbox (an event applied before is a duplicate), with
 * webhook actions delivered in line.
 */
export class Republisher {
  private constructor(
    private readonly sink: Sink,
    /** where a message that can never be published is recorded */
    readonly deadLetters: DeadLetterWriter,
    private readonly closers: (() => Promise<void> | void)[],
  ) {}

  /**
   * Opens the connections the backend needs (one attempt each: a broker that is down fails here,
   * before the caller changes anything) and the sink over them.
   * @param purpose names the connections (`fraiseql-relay replay`)
   */
  static async open(config: Config, log: Logger, purpose: string, window = 256): Promise<Republisher> {
    const keys = config.relay.signing_key_env ? MessageKeys.fromEnv(config.relay.signing_key_env, process.env) : null;
    const backend = config.observers.backend;
    // JetStream queues webhook actions itself; every other backend delivers them in line
    const webhooks =
      backend === 'nats' ? new Map() : new Map(webhookRoutes(config).map((r) => [r.subject, resolveWebhookTarget(r.action, process.env)]));
    const closers: (() => Promise<void> | void)[] = [];
    const deadLetters = new DeadLetterWriter(config.database.url, config.relay.schema);
    closers.push(() => deadLetters.close());
    try {
      let nc: NatsConnection | undefined;
      let redis: RedisLink | undefined;
      let inbox: InboxExecutor | undefined;
      if (backend === 'nats') {
        if (!config.observers.nats_url) throw new UsageError('[observers] nats_url is needed to re-publish');
        const conn = await connectOnce(config, purpose);
        nc = conn;
        closers.push(() => conn.close());
      } else if (backend === 'redis') {
        const url = config.observers.redis_url;
        if (!url) throw new UsageError('[observers] redis_url is needed to re-publish');
        const link = await connectRedisOnce(url, `fraiseql-relay-${purpose}`, log);
        redis = link;
        closers.push(() => closeRedis(link));
        await loadAppendScript(link);
      } else if (backend === 'postgres') {
        const ex = new InboxExecutor(config.database.url, config.relay.schema, 1);
        inbox = ex;
        closers.push(() => ex.close());
      }
      const sink = backendSink({
        config,
        log,
        keys,
        deadLetters,
        webhooks,
        maxInFlight: window,
        timeoutMs: 10_000,
        ...(nc ? { nc } : {}),
        ...(redis ? { redis } : {}),
        ...(inbox ? { inbox } : {}),
      });
      closers.push(() => sink.close());
      return new Republisher(sink, deadLetters, closers);
    } catch (err) {
      await closeAll(closers);
      throw err;
    }
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
   * Publishes a checked message. Rejects with {@link UndeliverableError} when the broker refuses
   * it for good, with another error when the broker (or the handler's database) failed.
   */
  publish(msg: OutboundMessage): Promise<'published' | 'duplicate'> {
    return new Promise((resolve, reject) =>
      this.sink.publish(msg, (err, duplicate) => (err ? reject(err) : resolve(duplicate ? 'duplicate' : 'published'))),
    );
  }

  /** Closes the sink and every connection it opened. */
  async close(): Promise<void> {
    await closeAll(this.closers);
  }
}

/** Runs the closers, the last opened first, each once; a failing one does not stop the others. */
async function closeAll(closers: (() => Promise<void> | void)[]): Promise<void> {
  for (const c of closers.splice(0).reverse()) await Promise.resolve(c()).catch(() => {});
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
export async function republishOutbox(config: Config, publisher: Republisher, since: Date, log: Logger): Promise<RepublishResult> {
  const client = new DbClient(connectionConfig(config.database.url, { types: rawTypes, application_name: 'fraiseql-relay replay' }));
  client.on('error', () => {});
  await client.connect();
  const deadLetters = publisher.deadLetters;
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
    await client.end().catch(() => {});
  }
  if (failure !== null) throw failure as Error;
  return result;
}
