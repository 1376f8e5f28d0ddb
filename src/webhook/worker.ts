import type { ConsumerMessages, JsMsg } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { Logger } from '../util/log.js';
import type { DeadLetter, DeadLetterWriter } from '../sink/deadletter.js';
import { deliverOnce, retryDelayMs, type WebhookOutcome, type WebhookTarget } from './deliver.js';
import { sleep, within } from '../util/sleep.js';
import { deadLetterThenTerm, eventIdOf, headerObject, runConsumer, type DurableUpkeep } from '../inbound/loop.js';

/**
 * `backend = "nats"`: a webhook action's deliveries are driven from JetStream by a durable
 * consumer, so a slow or dead endpoint never holds the replication slot. One delivery at a time,
 * in stream order: a transient failure (5xx, 408, 429, network) is retried in place (the message
 * kept alive with in-progress acks, `Retry-After` honoured) up to `max_attempts` in all; a
 * permanent one (other 4xx) goes to the dead-letter table at once.
 */
export class WebhookWorker {
  private messages: ConsumerMessages | null = null;
  private stopping = false;
  private readonly abort = new AbortController();
  private loop: Promise<void> | null = null;

  constructor(
    private readonly nc: NatsConnection,
    private readonly stream: string,
    private readonly consumer: string,
    private readonly target: WebhookTarget,
    private readonly deadLetters: DeadLetterWriter,
    private readonly onOutcome: (outcome: WebhookOutcome) => void,
    /** each request's duration in seconds */
    private readonly onRequest: (seconds: number) => void,
    private readonly durable: DurableUpkeep,
    private readonly log: Logger,
  ) {}

  start(): void {
    this.loop = runConsumer({
      nc: this.nc,
      stream: this.stream,
      consumer: this.consumer,
      durable: this.durable,
      maxMessages: 8,
      stopping: () => this.stopping,
      signal: this.abort.signal,
      handle: (m) => this.handle(m),
      onSubscribed: (messages) => {
        this.messages = messages;
      },
      log: this.log,
      interruptedMessage: 'webhook consumer interrupted; resubscribing',
    });
  }

  private async handle(m: JsMsg): Promise<void> {
    const eventId = eventIdOf(m);
    const body = Buffer.from(m.data);
    // attempts already spent by earlier deliveries (a relay that crashed mid-retry) count too
    let attempts = Math.max(0, m.info.deliveryCount - 1);
    for (;;) {
      m.working();
      const started = performance.now();
      const r = await deliverOnce(this.target, eventId, body, undefined, Date.now, this.abort.signal);
      this.onRequest((performance.now() - started) / 1000);
      attempts++;
      if (r.ok) {
        m.ack();
        this.onOutcome('delivered');
        return;
      }
      if (this.stopping) {
        m.nak();
        return;
      }
      if (r.permanent || attempts >= this.target.maxAttempts) {
        await this.toDeadLetter(m, eventId, r.error, attempts);
        return;
      }
      this.onOutcome('retried');
      if (attempts === 1) this.log.warn({ consumer: this.consumer, event_id: eventId, err: r.error }, 'webhook delivery failed; retrying');
      const delay = retryDelayMs(attempts, r);
      // keep the message ours while we wait
      const keep = setInterval(() => m.working(), 5_000);
      try {
        await sleep(delay, this.abort.signal);
      } finally {
        clearInterval(keep);
      }
    }
  }

  private async toDeadLetter(m: JsMsg, eventId: string, error: string, attempts: number): Promise<void> {
    const entry: DeadLetter = {
      direction: 'webhook',
      eventId,
      subject: m.subject,
      consumer: this.consumer,
      headers: headerObject(m),
      body: m.string(),
      error,
      attempts,
    };
    if (
      !(await deadLetterThenTerm(m, entry, {
        deadLetters: this.deadLetters,
        stopping: () => this.stopping,
        log: this.log,
        signal: this.abort.signal,
      }))
    )
      return;
    this.onOutcome('dead_lettered');
    this.log.warn({ consumer: this.consumer, event_id: eventId, error, attempts }, 'webhook dead-lettered');
  }

  async stop(timeoutMs: number): Promise<void> {
    this.stopping = true;
    this.abort.abort();
    await this.messages?.close().catch(() => {});
    await within(this.loop, timeoutMs);
  }
}
