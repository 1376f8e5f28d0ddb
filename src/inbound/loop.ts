import { JetStreamApiCodes, JetStreamApiError, jetstream, type ConsumerMessages, type JsMsg } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { Logger } from '../util/log.js';
import { storableKey, type DeadLetter, type DeadLetterWriter } from '../sink/deadletter.js';
import { errorMessage, StreamMissingError } from '../util/errors.js';
import { backoffDelay } from '../util/backoff.js';
import { sleep } from '../util/sleep.js';

/** Headers of a message as a plain object. */
export function headerObject(m: JsMsg): Record<string, string> {
  const out: Record<string, string> = {};
  if (m.headers) for (const [k] of m.headers) out[k] = m.headers.get(k);
  return out;
}

/**
 * The inbox key: Fraiseql-Event-Id, else Nats-Msg-Id, else stream, sequence and the time the
 * stream stored the message (a stream created again starts its sequence at 1 anew); one longer
 * than an index entry can hold is shortened with a hash of the whole id (the same id, the same key).
 */
export function eventIdOf(m: JsMsg): string {
  const h = m.headers;
  const id = h?.get('Fraiseql-Event-Id') || h?.get('Nats-Msg-Id');
  return id ? storableKey(id) : `${m.info.stream}:${m.seq}:${m.info.timestampNanos}`;
}

/** How a worker keeps its durable consumer. */
export interface DurableUpkeep {
  /**
   * Creates the durable consumer again (with its configuration) on whichever stream captures its
   * subject now, and returns that stream; throws {@link StreamMissingError} while none does. Called
   * when the consumer or its stream has disappeared (deleted, or NATS restarted with an empty store).
   */
  recreate: () => Promise<string>;
  /** Told whether the durable consumer exists (false, with the reason, while it cannot be recreated). */
  onPresence: (present: boolean, reason: string | null) => void;
}

export interface ConsumerLoop {
  nc: NatsConnection;
  stream: string;
  consumer: string;
  /** Recreates the durable consumer when it disappears, and reports whether it exists. */
  durable: DurableUpkeep;
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
  let stream = o.stream;
  while (!o.stopping()) {
    try {
      let consumer;
      try {
        consumer = await js.consumers.get(stream, o.consumer);
      } catch (err) {
        if (!isMissing(err)) throw err;
        stream = await o.durable.recreate();
        o.log.warn(
          { consumer: o.consumer, stream },
          'the durable consumer was gone (its stream was deleted or NATS lost its store) and has been created again; ' +
            'messages that were in the lost stream are gone from NATS: recover them with `fraiseql-relay replay --since <time>` on the publishing service',
        );
        consumer = await js.consumers.get(stream, o.consumer);
      }
      // a deleted consumer or stream ends the subscription (instead of waiting for messages forever)
      const messages = await consumer.consume({
        max_messages: o.maxMessages,
        idle_heartbeat: 5_000,
        expires: 10_000,
        abort_on_missing_resource: true,
      });
      o.durable.onPresence(true, null);
      o.onSubscribed(messages);
      if (o.leaveIfStoppedWhileSubscribing && o.stopping()) break;
      attempt = 0;
      // a consumer deleted under an idle subscription is not always reported by the server: look
      // for it now and then, and end the subscription when it is gone (the loop recreates it)
      const gone: { err: Error | null } = { err: null };
      const watch = setInterval(() => {
        consumer.info(false).then(
          () => {},
          (err: unknown) => {
            if (!isMissing(err) || gone.err) return;
            gone.err = err instanceof Error ? err : new Error(String(err));
            void messages.close();
          },
        );
      }, WATCH_MS);
      watch.unref();
      try {
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
      } finally {
        clearInterval(watch);
      }
      if (gone.err) throw gone.err;
    } catch (err) {
      if (o.stopping()) break;
      if (err instanceof StreamMissingError) {
        o.durable.onPresence(false, `durable consumer ${o.consumer} is missing: ${err.message}`);
      } else if (isMissing(err)) {
        o.durable.onPresence(false, `durable consumer ${o.consumer} on stream ${stream} disappeared: ${errorMessage(err)}`);
      }
      o.log.warn({ consumer: o.consumer, stream, err: errorMessage(err) }, o.interruptedMessage);
    }
    if (!o.stopping()) await sleep(backoffDelay(attempt++, 250, 10_000), o.signal);
  }
}

/** How often a subscription checks that its durable consumer still exists. */
const WATCH_MS = 5_000;

/** JetStream says the consumer or its stream does not exist. */
function isMissing(err: unknown): boolean {
  if (err instanceof JetStreamApiError)
    return err.code === JetStreamApiCodes.ConsumerNotFound || err.code === JetStreamApiCodes.StreamNotFound;
  // the consume() iterator ends with these texts when the resource vanished under it
  return err instanceof Error && /^(consumer|stream) not found$|consumer deleted/i.test(err.message);
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
