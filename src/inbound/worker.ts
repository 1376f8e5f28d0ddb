import { isUtf8 } from 'node:buffer';
import type { ConsumerMessages, JsMsg } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { SubscribeRule } from '../config/load.js';
import type { Logger } from '../util/log.js';
import type { DeadLetter, DeadLetterWriter } from '../sink/deadletter.js';
import { errorMessage } from '../util/errors.js';
import { backoffDelay } from '../util/backoff.js';
import { sleep, within } from '../util/sleep.js';
import { deadLetterThenTerm, eventIdOf, headerObject, runConsumer, type DurableUpkeep } from './loop.js';
import type { InboxExecutor } from './inbox.js';
import { isTransient, isUnstorable, sqlState } from './sqlerrors.js';
import { SIGNATURE_HEADER, type MessageKeys } from '../sink/signing.js';

/** What became of one delivery of an inbound event. */
export type HandlerOutcome = 'applied' | 'duplicate' | 'failed' | 'dead_lettered';

/**
 * One durable consumer feeding one SQL handler: up to `concurrency` messages at once (1 keeps
 * stream order), each in its own exactly-once transaction, acknowledged after COMMIT.
 */
export class InboundWorker {
  private messages: ConsumerMessages | null = null;
  private stopping = false;
  private readonly active = new Set<Promise<void>>();
  private loop: Promise<void> | null = null;

  constructor(
    private readonly nc: NatsConnection,
    private readonly stream: string,
    private readonly rule: SubscribeRule,
    private readonly inbox: InboxExecutor,
    private readonly deadLetters: DeadLetterWriter,
    /** each handler call's outcome, with its duration in seconds when the handler ran */
    private readonly onOutcome: (consumer: string, outcome: HandlerOutcome, seconds?: number) => void,
    private readonly durable: DurableUpkeep,
    private readonly log: Logger,
    /** `[relay] signing_key_env`: only messages signed with one of these keys reach the inbox */
    private readonly keys: MessageKeys | null = null,
  ) {}

  start(): void {
    this.loop = runConsumer({
      nc: this.nc,
      stream: this.stream,
      consumer: this.rule.consumer,
      durable: this.durable,
      maxMessages: Math.max(16, this.rule.concurrency * 2),
      concurrency: { limit: this.rule.concurrency, active: this.active },
      leaveIfStoppedWhileSubscribing: true,
      stopping: () => this.stopping,
      handle: (m) => this.handle(m),
      onSubscribed: (messages) => {
        this.messages = messages;
      },
      log: this.log,
      interruptedMessage: 'consumer interrupted; resubscribing',
    });
  }

  private async handle(m: JsMsg): Promise<void> {
    const { rule } = this;
    const eventId = eventIdOf(m);
    if (this.keys !== null) {
      // before anything else: a forged message must not claim its event id in the inbox
      const refused = this.keys.verify(m.headers?.get('Fraiseql-Event-Id'), m.subject, m.data, m.headers?.get(SIGNATURE_HEADER));
      if (refused !== null) {
        // recorded under its stream position, not the id it claims: neither this dead letter nor
        // a `dlq retry` of it can take the real event's place (the claimed id stays in its headers)
        const where = `unverified:${m.info.stream}:${m.seq}:${m.info.timestampNanos}`;
        await this.toDeadLetter(m, where, m.string(), refused, isUtf8(m.data) ? undefined : m.data);
        return;
      }
    }
    if (!isUtf8(m.data)) {
      await this.toDeadLetter(m, eventId, m.string(), 'message body is not valid UTF-8', m.data);
      return;
    }
    const body = m.string();
    try {
      JSON.parse(body);
    } catch (err) {
      await this.toDeadLetter(m, eventId, body, `message body is not JSON: ${(err as Error).message}`);
      return;
    }
    const keepAlive = setInterval(() => m.working(), Math.max(500, Math.floor(rule.ack_wait / 2)));
    try {
      for (let attempt = 0; ; attempt++) {
        const started = performance.now();
        try {
          const outcome = await this.inbox.process(rule.consumer, eventId, m.subject, rule.handler, body);
          m.ack();
          this.onOutcome(rule.consumer, outcome, (performance.now() - started) / 1000);
          return;
        } catch (err) {
          if (isTransient(err)) {
            // the database, not the handler: retry in place without spending a delivery
            if (this.stopping) {
              m.nak();
              return;
            }
            if (attempt === 0)
              this.log.warn({ consumer: rule.consumer, err: errorMessage(err) }, 'database unavailable; retrying the handler call');
            await sleep(backoffDelay(attempt, 200, 5_000));
            continue;
          }
          this.onOutcome(rule.consumer, 'failed', (performance.now() - started) / 1000);
          const deliveries = m.info.deliveryCount;
          const reason = `${sqlState(err) ?? ''} ${errorMessage(err)}`.trim();
          if (deliveries >= rule.max_deliver || isUnstorable(err)) {
            // a value PostgreSQL can never take (a NUL in jsonb, an over-long key) fails every retry alike
            await this.toDeadLetter(m, eventId, body, reason);
          } else {
            const delay =
              rule.backoff.length > 0
                ? rule.backoff[Math.min(deliveries - 1, rule.backoff.length - 1)]!
                : Math.min(30_000, 1000 * 2 ** (deliveries - 1));
            this.log.debug({ consumer: rule.consumer, event_id: eventId, deliveries, err: reason }, 'handler failed; will be redelivered');
            m.nak(delay);
          }
          return;
        }
      }
    } finally {
      clearInterval(keepAlive);
    }
  }

  /** Records the poison message, then terminates it. */
  private async toDeadLetter(m: JsMsg, eventId: string, body: string, error: string, raw?: Uint8Array): Promise<void> {
    const entry: DeadLetter = {
      direction: 'inbound',
      eventId,
      subject: m.subject,
      consumer: this.rule.consumer,
      handler: this.rule.handler,
      headers: headerObject(m),
      body,
      error,
      attempts: m.info.deliveryCount,
    };
    if (raw) entry.raw = raw;
    if (!(await deadLetterThenTerm(m, entry, { deadLetters: this.deadLetters, stopping: () => this.stopping, log: this.log }))) return;
    this.onOutcome(this.rule.consumer, 'dead_lettered');
    this.log.warn({ consumer: this.rule.consumer, event_id: eventId, subject: m.subject, error }, 'inbound event dead-lettered');
  }

  async stop(timeoutMs: number): Promise<void> {
    this.stopping = true;
    await this.messages?.close().catch(() => {});
    await within(Promise.all([...this.active]), timeoutMs);
    await within(this.loop, 1000);
  }
}
