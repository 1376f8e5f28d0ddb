import { jetstream, type ConsumerMessages, type JsMsg } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { Logger } from '../util/log.js';
import { storableKey, type DeadLetter, type DeadLetterWriter } from '../sink/deadletter.js';
import { errorMessage } from '../util/errors.js';
import { backoffDelay } from '../util/backoff.js';
import { sleep } from '../util/sleep.js';

/** Headers of a message as a plain object. */
export function headerObject(m: JsMsg): Record<string, string> {
  const out: Record<string, string> = {};
  if (m.headers) for (const [k] of m.headers) out[k] = m.headers.get(k);
  return out;
}

/**
 * The inbox key: Fraiseql-Event-Id, else Nats-Msg-Id, else stream and sequence; one longer than
 * an index entry can hold is shortened with a hash of the whole id (the same id, the same key).
 */
export function eventIdOf(m: JsMsg): string {
  const h = m.headers;
  const id = h?.get('Fraiseql-Event-Id') || h?.get('Nats-Msg-Id');
  return id ? storableKey(id) : `${m.info.stream}:${m.seq}`;
}

export interface ConsumerLoop {
  nc: NatsConnection;
  stream: string;
  consumer: string;
  maxMessages: number;
  /**
   * Absent: each handler call is awaited before the next message is taken (an error from it ends
   * the subscription). Present: up to `limit` calls run at once, each tracked in `active` (which
   * the caller waits on when stopping); a message waits for a free slot before it is handled.
   */
  concurrency?: { limit: number; active: Set<Promise<void>> };
  /** Leave at once when a stop lands while subscribing, instead of nak()-ing the first message. */
  leaveIfStoppedWhileSubscribing?: boolean;
  stopping: () => boolean;
  /** Cuts short the pause before resubscribing. */
  signal?: AbortSignal;
  handle: (m: JsMsg) => Promise<void>;
  /** The current subscription, for the caller to close when stopping. */
  onSubscribed: (messages: ConsumerMessages) => void;
  log: Logger;
  /** Logged (with the consumer and the error) when the subscription fails or ends. */
  interruptedMessage: string;
}

/**
 * Consumes a durable consumer until `stopping()`: resubscribes with backoff when the subscription
 * fails or ends; a message taken once stopping is nak()-ed and ends the loop.
 */
export async function runConsumer(o: ConsumerLoop): Promise<void> {
  const js = jetstream(o.nc);
  let attempt = 0;
  while (!o.stopping()) {
    try {
      const consumer = await js.consumers.get(o.stream, o.consumer);
      const messages = await consumer.consume({ max_messages: o.maxMessages });
      o.onSubscribed(messages);
      if (o.leaveIfStoppedWhileSubscribing && o.stopping()) break;
      attempt = 0;
      for await (const m of messages) {
        if (o.concurrency) {
          const { limit, active } = o.concurrency;
          while (active.size >= limit) await Promise.race(active);
        }
        if (o.stopping()) {
          m.nak();
          break;
        }
        if (o.concurrency) {
          const { active } = o.concurrency;
          const p = o.handle(m).finally(() => active.delete(p));
          active.add(p);
        } else {
          await o.handle(m);
        }
      }
    } catch (err) {
      if (o.stopping()) break;
      o.log.warn({ consumer: o.consumer, err: errorMessage(err) }, o.interruptedMessage);
    }
    if (!o.stopping()) await sleep(backoffDelay(attempt++, 250, 10_000), o.signal);
  }
}

/**
 * Records a poison message, retrying the write with backoff until it succeeds, then terminates
 * the message (plain term(): 2.9 ignores reasons) and returns true. Stopping while the write
 * still fails nak()s the message instead (it is redelivered later) and returns false.
 */
export async function deadLetterThenTerm(
  m: JsMsg,
  entry: DeadLetter,
  o: { deadLetters: DeadLetterWriter; stopping: () => boolean; log: Logger; signal?: AbortSignal },
): Promise<boolean> {
  for (let attempt = 0; ; attempt++) {
    try {
      await o.deadLetters.write(entry);
      break;
    } catch (err) {
      if (o.stopping()) {
        m.nak();
        return false;
      }
      if (attempt === 0) o.log.warn({ err: errorMessage(err) }, 'cannot record a dead letter yet; retrying');
      await sleep(backoffDelay(attempt, 200, 5_000), o.signal);
    }
  }
  m.term();
  return true;
}
