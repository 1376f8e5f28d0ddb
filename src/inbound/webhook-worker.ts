import { jetstream, type ConsumerMessages, type JsMsg } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { Logger } from '../log.js';
import type { DeadLetterWriter } from '../sink/deadletter.js';
import { deliverOnce, retryDelayMs, type WebhookTarget } from '../sink/webhook.js';
import { errorMessage } from '../errors.js';
import { backoffDelay } from '../backoff.js';
import { eventIdOf, headerObject } from './worker.js';

export interface WebhookStats {
  delivered: number;
  retried: number;
  deadLettered: number;
}

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
    private readonly stats: WebhookStats,
    private readonly log: Logger,
  ) {}

  start(): void {
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    const js = jetstream(this.nc);
    let attempt = 0;
    while (!this.stopping) {
      try {
        const c = await js.consumers.get(this.stream, this.consumer);
        this.messages = await c.consume({ max_messages: 8 });
        attempt = 0;
        for await (const m of this.messages) {
          if (this.stopping) {
            m.nak();
            break;
          }
          await this.handle(m);
        }
      } catch (err) {
        if (this.stopping) break;
        this.log.warn({ consumer: this.consumer, err: errorMessage(err) }, 'webhook consumer interrupted; resubscribing');
      }
      if (!this.stopping) await sleep(backoffDelay(attempt++, 250, 10_000), this.abort.signal);
    }
  }

  private async handle(m: JsMsg): Promise<void> {
    const eventId = eventIdOf(m);
    const body = Buffer.from(m.data);
    // attempts already spent by earlier deliveries (a relay that crashed mid-retry) count too
    let attempts = Math.max(0, m.info.deliveryCount - 1);
    for (;;) {
      m.working();
      const r = await deliverOnce(this.target, eventId, body, undefined, Date.now, this.abort.signal);
      attempts++;
      if (r.ok) {
        m.ack();
        this.stats.delivered++;
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
      this.stats.retried++;
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
    for (let i = 0; ; i++) {
      try {
        await this.deadLetters.write({
          direction: 'webhook',
          eventId,
          subject: m.subject,
          consumer: this.consumer,
          headers: headerObject(m),
          body: m.string(),
          error,
          attempts,
        });
        break;
      } catch (err) {
        if (this.stopping) {
          m.nak();
          return;
        }
        if (i === 0) this.log.warn({ err: errorMessage(err) }, 'cannot record a dead letter yet; retrying');
        await sleep(backoffDelay(i, 200, 5_000), this.abort.signal);
      }
    }
    m.term();
    this.stats.deadLettered++;
    this.log.warn({ consumer: this.consumer, event_id: eventId, error, attempts }, 'webhook dead-lettered');
  }

  async stop(timeoutMs: number): Promise<void> {
    this.stopping = true;
    this.abort.abort();
    await this.messages?.close().catch(() => {});
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.loop, new Promise<void>((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
