import { jetstream, type ConsumerMessages, type JsMsg } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { SubscribeRule } from '../config/load.js';
import type { Logger } from '../log.js';
import type { DeadLetterWriter } from '../sink/deadletter.js';
import { errorMessage } from '../errors.js';
import { backoffDelay } from '../backoff.js';
import type { InboxExecutor } from './inbox.js';
import { isTransient, sqlState } from './sqlerrors.js';

export interface InboundStats {
  applied: number;
  duplicates: number;
  failed: number;
  deadLettered: number;
  /** per-consumer outcomes, for metrics */
  onOutcome?: (consumer: string, outcome: 'applied' | 'duplicate' | 'failed' | 'dead_lettered') => void;
}

/** Headers of a message as a plain object. */
export function headerObject(m: JsMsg): Record<string, string> {
  const out: Record<string, string> = {};
  if (m.headers) for (const [k] of m.headers) out[k] = m.headers.get(k);
  return out;
}

/** The inbox key: Fraiseql-Event-Id, else Nats-Msg-Id, else stream and sequence. */
export function eventIdOf(m: JsMsg): string {
  const h = m.headers;
  const id = h?.get('Fraiseql-Event-Id') || h?.get('Nats-Msg-Id');
  return id || `${m.info.stream}:${m.seq}`;
}

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
    private readonly stats: InboundStats,
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
        const consumer = await js.consumers.get(this.stream, this.rule.consumer);
        this.messages = await consumer.consume({ max_messages: Math.max(16, this.rule.concurrency * 2) });
        if (this.stopping) break;
        attempt = 0;
        for await (const m of this.messages) {
          while (this.active.size >= this.rule.concurrency) await Promise.race(this.active);
          if (this.stopping) {
            m.nak();
            break;
          }
          const p = this.handle(m).finally(() => this.active.delete(p));
          this.active.add(p);
        }
      } catch (err) {
        if (this.stopping) break;
        this.log.warn({ consumer: this.rule.consumer, err: errorMessage(err) }, 'consumer interrupted; resubscribing');
      }
      if (!this.stopping) await sleep(backoffDelay(attempt++, 250, 10_000));
    }
  }

  private async handle(m: JsMsg): Promise<void> {
    const { rule } = this;
    const body = m.string();
    const eventId = eventIdOf(m);
    try {
      JSON.parse(body);
    } catch (err) {
      await this.toDeadLetter(m, eventId, body, `message body is not JSON: ${(err as Error).message}`);
      return;
    }
    const keepAlive = setInterval(() => m.working(), Math.max(500, Math.floor(rule.ack_wait / 2)));
    try {
      for (let attempt = 0; ; attempt++) {
        try {
          const outcome = await this.inbox.process(rule.consumer, eventId, m.subject, rule.handler, body);
          m.ack();
          if (outcome === 'applied') this.stats.applied++;
          else this.stats.duplicates++;
          this.stats.onOutcome?.(rule.consumer, outcome);
          return;
        } catch (err) {
          if (isTransient(err)) {
            // the database, not the handler: retry in place without spending a delivery
            if (this.stopping) {
              m.nak();
              return;
            }
            if (attempt === 0) this.log.warn({ consumer: rule.consumer, err: errorMessage(err) }, 'database unavailable; retrying the handler call');
            await sleep(backoffDelay(attempt, 200, 5_000));
            continue;
          }
          this.stats.failed++;
          this.stats.onOutcome?.(rule.consumer, 'failed');
          const deliveries = m.info.deliveryCount;
          const reason = `${sqlState(err) ?? ''} ${errorMessage(err)}`.trim();
          if (deliveries >= rule.max_deliver) {
            await this.toDeadLetter(m, eventId, body, reason);
          } else {
            const delay = rule.backoff.length > 0 ? rule.backoff[Math.min(deliveries - 1, rule.backoff.length - 1)]! : Math.min(30_000, 1000 * 2 ** (deliveries - 1));
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

  /** Records the poison message, then terminates it (plain term(): 2.9 ignores reasons). */
  private async toDeadLetter(m: JsMsg, eventId: string, body: string, error: string): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await this.deadLetters.write({
          direction: 'inbound',
          eventId,
          subject: m.subject,
          consumer: this.rule.consumer,
          handler: this.rule.handler,
          headers: headerObject(m),
          body,
          error,
          attempts: m.info.deliveryCount,
        });
        break;
      } catch (err) {
        if (this.stopping) {
          m.nak();
          return;
        }
        if (attempt === 0) this.log.warn({ err: errorMessage(err) }, 'cannot record a dead letter yet; retrying');
        await sleep(backoffDelay(attempt, 200, 5_000));
      }
    }
    m.term();
    this.stats.deadLettered++;
    this.stats.onOutcome?.(this.rule.consumer, 'dead_lettered');
    this.log.warn({ consumer: this.rule.consumer, event_id: eventId, subject: m.subject, error }, 'inbound event dead-lettered');
  }

  async stop(timeoutMs: number): Promise<void> {
    this.stopping = true;
    await this.messages?.close().catch(() => {});
    await within(Promise.all([...this.active]), timeoutMs);
    await within(this.loop, 1000);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Waits for `p`, at most `ms`, and leaves no timer behind (a pending one keeps the process alive). */
async function within(p: Promise<unknown> | null, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([p, new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
  } finally {
    clearTimeout(timer);
  }
}
