/**
 * The sink of each backend, built once for `run` (a new one per replication session) and for the
 * commands that re-publish outside a session (replay, reconcile, `dlq retry`), so that a replayed
 * event takes exactly the path a streamed one takes:
 *
 * - `nats`: JetStream (webhook actions are queued in the stream and delivered by their consumers);
 * - `redis`: the append script, with webhook actions delivered in line beside it (SplitSink);
 * - `postgres`: the handlers applied through the inbox, webhook actions in line;
 * - `webhook`: webhook actions in line.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import type { Config } from '../config/load.js';
import type { Logger } from '../util/log.js';
import { JetStreamSink } from '../sink/jetstream.js';
import { RedisSink } from '../sink/redis.js';
import type { RedisLink } from '../sink/redis-client.js';
import { SplitSink } from '../sink/split.js';
import type { DeadLetterWriter } from '../sink/deadletter.js';
import type { MessageKeys } from '../sink/signing.js';
import type { Sink } from '../sink/sink.js';
import type { InboxExecutor } from '../inbound/inbox.js';
import { PostgresSink } from '../inbound/postgres.js';
import type { HandlerOutcome } from '../inbound/worker.js';
import { WebhookSink } from '../webhook/sink.js';
import type { WebhookOutcome, WebhookTarget } from '../webhook/deliver.js';

/** What a backend's sink is made of: the connections its caller opened, and where outcomes are told. */
export interface SinkParts {
  config: Config;
  log: Logger;
  /** `[relay] signing_key_env`'s keys, or null */
  keys: MessageKeys | null;
  deadLetters: DeadLetterWriter;
  /** webhook queue subject ▶ its endpoint (every backend but "nats", which queues them in JetStream) */
  webhooks: ReadonlyMap<string, WebhookTarget>;
  /** messages (and for JetStream and Redis, bytes: `[relay] max_in_flight_bytes`) in flight at most */
  maxInFlight: number;
  /** no acknowledgement within this long fails the message */
  timeoutMs: number;
  /** backend = "nats" */
  nc?: NatsConnection;
  /** the subjects the relay's stream captures (a "no responders" outside them is the message's own problem) */
  streamSubjects?: string[];
  /** backend = "redis" */
  redis?: RedisLink;
  /** backend = "postgres" */
  inbox?: InboxExecutor;
  onWebhook?: (outcome: WebhookOutcome) => void;
  onWebhookRequest?: (seconds: number) => void;
  onHandler?: (consumer: string, outcome: HandlerOutcome, seconds?: number) => void;
  /** backend = "postgres": a message no subscription matches */
  onUnsubscribed?: () => void;
}

function need<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`internal: the ${what} sink was asked for without its connection`);
  return value;
}

/** The sink of `[observers] backend`, made of the given parts. */
export function backendSink(p: SinkParts): Sink {
  const { config, log } = p;
  const targets = new Map(p.webhooks);
  const webhookSink = (maxQueued: number) =>
    new WebhookSink(targets, p.deadLetters, maxQueued, log.child({ component: 'webhook' }), p.onWebhook, p.onWebhookRequest);
  switch (config.observers.backend) {
    case 'nats':
      return new JetStreamSink(need(p.nc, 'NATS'), {
        maxInFlight: p.maxInFlight,
        maxInFlightBytes: config.relay.max_in_flight_bytes,
        timeoutMs: p.timeoutMs,
        streamSubjects: p.streamSubjects ?? [],
        log: log.child({ component: 'publisher' }),
        keys: p.keys,
      });
    case 'redis': {
      const appends = new RedisSink(need(p.redis, 'Redis'), {
        maxInFlight: p.maxInFlight,
        maxInFlightBytes: config.relay.max_in_flight_bytes,
        timeoutMs: p.timeoutMs,
        redis: config.relay.redis,
        log: log.child({ component: 'publisher' }),
        keys: p.keys,
      });
      // webhook actions are delivered in line from the slot, as with backend = "webhook"; the rest goes to Redis
      return targets.size === 0 ? appends : new SplitSink(appends, webhookSink(p.maxInFlight));
    }
    case 'postgres':
      return new PostgresSink({
        subscribe: config.observers.subscribe,
        inbox: need(p.inbox, 'postgres'),
        deadLetters: p.deadLetters,
        maxQueued: p.maxInFlight,
        webhooks: targets.size === 0 ? null : webhookSink(1),
        onOutcome: p.onHandler ?? (() => {}),
        onIgnored: p.onUnsubscribed ?? (() => {}),
        log: log.child({ component: 'inbound' }),
      });
    case 'webhook':
      return webhookSink(p.maxInFlight);
  }
}
