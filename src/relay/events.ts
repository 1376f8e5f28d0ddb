import type { Backfill } from '../backfill/store.js';
import type { ChunkOutcome } from '../backfill/windows.js';
import type { OutboundMessage } from '../sink/sink.js';
import type { DeadLetter } from '../sink/deadletter.js';
import type { SlotStats } from '../schema/slot.js';
import type { HandlerOutcome } from '../inbound/worker.js';
import type { WebhookOutcome } from '../webhook/deliver.js';

/**
 * What a {@link Relay} tells as it happens (`relay.on('published', (msg) => …)`). Listeners run
 * on the relay's own path: keep them short, and do not throw.
 */
export type RelayEvents = {
  /** this relay took over the slot (true) or stood down for another one (false) */
  active: [active: boolean];
  /** the slot may be confirmed up to this position: everything before it is published */
  durable: [lsn: bigint];
  /** JetStream (or the webhook endpoint) acknowledged a message it did not hold yet (a re-sent duplicate is not told) */
  published: [message: OutboundMessage];
  /** an event went to the dead-letter table (the subject, when known) */
  deadLetter: [direction: DeadLetter['direction'], subject: string | null];
  /** a change was read that no rule routes (acknowledged, not published) */
  unrouted: [];
  /** a heartbeat came back through the whole outbound path, `lagMs` after it was written */
  heartbeat: [lagMs: number];
  /** the replication slot was inspected */
  slot: [stats: SlotStats];
  /** the replication session failed and is being reconnected; `cause`: the stream from PostgreSQL, or publishing to NATS */
  reconnect: [cause: 'postgres' | 'nats' | 'redis'];
  /** PostgreSQL answered the leader election (true) or could not be reached, with the reason */
  postgres: [up: boolean, reason: string | null];
  /** the NATS connection went down (false) or came back (true) */
  nats: [up: boolean];
  /** backend = "redis": the Redis connection went down (false) or came back (true) */
  redis: [up: boolean];
  /** a handler call ended (per delivery: a failure is followed by a retry), with its duration when it ran */
  handler: [consumer: string, outcome: HandlerOutcome, seconds: number | null];
  /** a webhook delivery ended (a retry is followed by another outcome) */
  webhook: [outcome: WebhookOutcome];
  /** one webhook request (or, with backend = "webhook", one delivery with its retries) took this long */
  webhookRequest: [seconds: number];
  /** a subscription's durable consumer disappeared (false, with the reason) or exists again (true) */
  consumer: [consumer: string, present: boolean, reason: string | null];
  /** the relay cannot go on (its slot was invalidated): stop it and exit non-zero */
  fatal: [error: Error];
  /** a backfill's chunk is durable (with what it published and skipped), or its state changed (outcome null) */
  backfill: [backfill: Backfill, outcome: ChunkOutcome | null];
};

export interface InboundStats {
  applied: number;
  duplicates: number;
  failed: number;
  deadLettered: number;
}

export interface WebhookStats {
  delivered: number;
  retried: number;
  deadLettered: number;
}

/** The outbound side at one moment. */
export interface OutboundState {
  /** this relay holds the leader lock and streams the slot */
  active: boolean;
  /** when it became active (ms since epoch; 0 when never) */
  activeSince: number;
  /** a replication session is open */
  connected: boolean;
  /** why the last session ended, when it failed */
  lastError: string | null;
  /** what that failure was about: the replication stream, or publishing to NATS */
  lastFailure: 'postgres' | 'nats' | null;
  confirmedLsn: bigint;
  /** the last heartbeat that came back */
  heartbeatBack: { at: Date; lagMs: number } | null;
  /** messages (and their bytes) waiting for their acknowledgement */
  inFlight: { messages: number; bytes: number };
}

/** A subscription's durable consumer as NATS reports it. */
export interface ConsumerState {
  consumer: string;
  stream: string;
  pending: number;
  redelivered: number;
}
