import type { OutboundMessage, Sink } from './sink.js';

/**
 * A sink that handles its messages one at a time, in the order it was given them, each done only
 * when `handle` resolves: webhooks straight from the slot, handlers straight from the slot. At most
 * `maxQueued` messages wait; the session reads on when there is room again.
 */
export abstract class SerialSink implements Sink {
  private readonly queue: { msg: OutboundMessage; done: (err?: Error, duplicate?: boolean) => void }[] = [];
  private queuedBytes = 0;
  private running = false;
  private waiters: (() => void)[] = [];

  constructor(private readonly maxQueued: number) {}

  abstract check(msg: OutboundMessage): string | null | Promise<string | null>;
  abstract close(): void;
  /**
   * Handles one message: resolves with no error once it is done ('duplicate' when it had been done
   * before: a handler's inbox row was there), with an error when the slot must not move past it.
   */
  protected abstract handle(msg: OutboundMessage): Promise<Error | undefined | 'duplicate'>;

  get hasCapacity(): boolean {
    return this.queue.length < this.maxQueued;
  }

  get messagesInFlight(): number {
    return this.queue.length;
  }

  get bytesInFlight(): number {
    return this.queuedBytes;
  }

  waitForCapacity(): Promise<void> {
    if (this.hasCapacity) return Promise.resolve();
    return new Promise((r) => this.waiters.push(r));
  }

  publish(msg: OutboundMessage, done: (err?: Error, duplicate?: boolean) => void): void {
    this.queue.push({ msg, done });
    this.queuedBytes += msg.body.length;
    if (!this.running) void this.drain();
  }

  private async drain(): Promise<void> {
    this.running = true;
    while (this.queue.length > 0) {
      const { msg, done } = this.queue[0]!;
      const r = await this.handle(msg);
      this.queue.shift();
      this.queuedBytes -= msg.body.length;
      if (r === 'duplicate') done(undefined, true);
      else done(r);
      if (this.waiters.length > 0 && this.hasCapacity) {
        const w = this.waiters;
        this.waiters = [];
        for (const r of w) r();
      }
    }
    this.running = false;
  }
}
