import type { OutboundMessage, Sink } from './sink.js';

/** A sink that takes some subjects only (webhook/sink.ts's WebhookSink: its webhook queues). */
interface SubjectSink extends Sink {
  accepts(subject: string): boolean;
}

/**
 * backend = "redis" with webhook actions: the messages of a webhook action's queue subject are
 * delivered in line by the webhook sink (done after the endpoint's 2xx, or after the dead letter
 * once its attempts are spent), every other message goes to the broker's sink. Each of the two
 * keeps the order it was handed its messages in (the broker's pipeline, the webhook queue one at
 * a time), and the session settles a transaction only once all of its messages are done in
 * whichever sink took them, so the slot never moves past an undelivered webhook.
 */
export class SplitSink implements Sink {
  constructor(
    private readonly broker: Sink,
    private readonly inline: SubjectSink,
  ) {}

  private sinkFor(msg: OutboundMessage): Sink {
    return this.inline.accepts(msg.subject) ? this.inline : this.broker;
  }

  check(msg: OutboundMessage): string | null | Promise<string | null> {
    return this.sinkFor(msg).check(msg);
  }

  publish(msg: OutboundMessage, done: (err?: Error, duplicate?: boolean) => void): void {
    this.sinkFor(msg).publish(msg, done);
  }

  /** Both have room: the session reads on only while neither is full (a slow endpoint holds the slot). */
  get hasCapacity(): boolean {
    return this.broker.hasCapacity && this.inline.hasCapacity;
  }

  async waitForCapacity(): Promise<void> {
    while (!this.hasCapacity) await Promise.all([this.broker.waitForCapacity(), this.inline.waitForCapacity()]);
  }

  get messagesInFlight(): number {
    return this.broker.messagesInFlight + this.inline.messagesInFlight;
  }

  get bytesInFlight(): number {
    return this.broker.bytesInFlight + this.inline.bytesInFlight;
  }

  close(): void {
    this.broker.close();
    this.inline.close();
  }
}
