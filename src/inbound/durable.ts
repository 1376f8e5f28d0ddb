import {
  AckPolicy,
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  type ConsumerConfig,
  type JetStreamManager,
} from '@nats-io/jetstream';
import { nanos } from '@nats-io/transport-node';
import type { SubscribeRule } from '../config/load.js';
import type { Logger } from '../util/log.js';

/**
 * The consumer configuration a subscription asks for. `backoff` is deliberately not sent to the
 * server: nats-server 2.9 then replaces `ack_wait` with `backoff[0]`, so a message still waiting
 * in the client's pull buffer (or a handler slower than backoff[0]) is redelivered, its delivery
 * count climbs without a handler attempt, and it can reach the dead-letter table after fewer
 * handler failures than `max_deliver`. The worker applies the backoff itself (`nak(delay)`) after
 * a handler failure; `ack_wait` alone governs redelivery after a crash.
 *
 * `max_deliver` is enforced by the worker, not the server (which gets -1, unlimited): were the
 * server to stop after `max_deliver` deliveries that each ended in a relay crash, the message
 * would vanish without reaching the dead-letter table. The worker dead-letters a message whose
 * handler fails on or after its `max_deliver`-th delivery.
 */
/** Events a worker buffers beyond those it applies: two rounds of full batches, within bounds. */
export function bufferCapacity(rule: Pick<SubscribeRule, 'batch' | 'concurrency'>): number {
  return Math.min(5000, Math.max(16, rule.batch * rule.concurrency * 2));
}

function desiredConsumer(rule: SubscribeRule): Partial<ConsumerConfig> {
  const c: Partial<ConsumerConfig> = {
    durable_name: rule.consumer,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    filter_subject: rule.subject,
    max_deliver: -1,
    ack_wait: nanos(rule.ack_wait),
    // what the worker holds: its buffer and the batches it applies (inbound/worker.ts)
    max_ack_pending: Math.max(1000, bufferCapacity(rule) + rule.batch * rule.concurrency),
  };
  return c;
}

const UPDATABLE = ['filter_subject', 'max_deliver', 'ack_wait', 'backoff', 'max_ack_pending'] as const;

/**
 * Creates the durable consumer, or updates it explicitly when its configuration differs
 * (nats-server 2.9 silently replaces a config on create, so never rely on that), logging what
 * changed.
 */
export async function ensureConsumer(jsm: JetStreamManager, stream: string, rule: SubscribeRule, log: Logger): Promise<void> {
  const want = desiredConsumer(rule);
  let have: ConsumerConfig | null = null;
  try {
    have = (await jsm.consumers.info(stream, rule.consumer)).config;
  } catch (err) {
    if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.ConsumerNotFound)) throw err;
  }
  if (!have) {
    await jsm.consumers.add(stream, want);
    log.info({ stream, consumer: rule.consumer, subject: rule.subject }, 'created durable consumer');
    return;
  }
  const changes: Record<string, { from: unknown; to: unknown }> = {};
  const patch: Partial<ConsumerConfig> = {};
  for (const k of UPDATABLE) {
    const from = have[k] ?? (k === 'backoff' ? undefined : null);
    const to = want[k] ?? (k === 'backoff' ? undefined : null);
    if (JSON.stringify(from) !== JSON.stringify(to)) {
      changes[k] = { from, to };
      (patch as Record<string, unknown>)[k] = to ?? undefined;
    }
  }
  if (Object.keys(changes).length === 0) return;
  try {
    await jsm.consumers.update(stream, rule.consumer, patch);
  } catch (err) {
    throw new Error(
      `durable consumer ${rule.consumer} on stream ${stream} exists with a different configuration and could not be updated ` +
        `(${Object.keys(changes).join(', ')}): ${(err as Error).message}. Delete it (nats consumer rm ${stream} ${rule.consumer}) to recreate it.`,
      { cause: err },
    );
  }
  log.warn({ stream, consumer: rule.consumer, changes }, 'updated durable consumer to match the configuration');
}
