import type { Logger } from '../util/log.js';
import type { OutboundMessage } from '../sink/sink.js';
import { SerialSink } from '../sink/serial.js';
import type { DeadLetterWriter } from '../sink/deadletter.js';
import { deliverWithRetries, type WebhookOutcome, type WebhookTarget } from './deliver.js';
import { errorMessage } from '../util/errors.js';

/**
 * `backend = "webhook"`: no NATS at all. Deliveries happen in commit order, one at a time; a
 * delivery is done once the endpoint accepted it, or once it failed permanently (or ran out of
 * attempts) and the dead letter is recorded. Only then does the slot move past it.
 */
export class WebhookSink extends SerialSink {
  private readonly abort = new AbortController();

  constructor(
    private readonly targets: Map<string, WebhookTarget>,
    private readonly deadLetters: DeadLetterWriter,
    maxQueued: number,
    private readonly log: Logger,
    private readonly onOutcome: (outcome: WebhookOutcome) => void = () => {},
    /** each delivery's duration in seconds (its retries included) */
    private readonly onRequest: (seconds: number) => void = () => {},
  ) {
    super(maxQueued);
  }

  check(msg: OutboundMessage): string | null {
    return this.targets.has(msg.subject) ? null : `no webhook is configured for ${msg.subject}`;
  }

  /** Abandons retries (the session is stopping or failed); queued work is re-read later. */
  close(): void {
    this.abort.abort();
  }

  /** True when `subject` is one of this sink's webhook queues. */
  accepts(subject: string): boolean {
    return this.targets.has(subject);
  }

  /**
   * Delivers one message with its retries: resolves with no error once the endpoint accepted it
   * or its dead letter is recorded, with an error when it was interrupted or could not be
   * recorded (the slot must not move past it).
   */
  async deliver(msg: OutboundMessage): Promise<Error | undefined> {
    const target = this.targets.get(msg.subject)!;
    try {
      const started = performance.now();
      const r = await deliverWithRetries(target, msg.eventId, msg.body, { signal: this.abort.signal });
      this.onRequest((performance.now() - started) / 1000);
      if (this.abort.signal.aborted && !r.delivered) return new Error('webhook delivery interrupted');
      if (r.delivered) {
        this.onOutcome('delivered');
        return undefined;
      }
      const reason = r.last.ok ? 'unknown' : r.last.error;
      this.log.warn({ event_id: msg.eventId, webhook: msg.subject, attempts: r.attempts, err: reason }, 'webhook dead-lettered');
      await this.deadLetters.write({
        direction: 'webhook',
        eventId: msg.eventId,
        subject: msg.subject,
        headers: msg.headers,
        body: msg.body.toString('utf8'),
        error: reason,
        attempts: r.attempts,
      });
      this.onOutcome('dead_lettered');
      return undefined;
    } catch (e) {
      return new Error(`webhook delivery: ${errorMessage(e)}`);
    }
  }

  protected handle(msg: OutboundMessage): Promise<Error | undefined> {
    return this.deliver(msg);
  }
}
