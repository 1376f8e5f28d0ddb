import type { OutboundMessage, Sink } from './sink.js';

/** What became of one message: done (or done before: 'duplicate'), or an error that holds the slot. */
export type SerialResult = Error | undefined | 'duplicate';

/**
 * A sink that handles its messages one at a time, in the order it was given them, each done only
 * when `handle` resolves: webhooks straight from the slot, handlers straight from the slot. At most
 * `maxQueued` messages wait; the session reads on when there is room again. A subclass may take
 * a run of queued messages together ({@link runLength}, {@link handleRun}): what queued up while
 * the previous run was handled, never waiting for more.
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
  protected abstract handle(msg: OutboundMessage): Promise<SerialResult>;

  /** How many messages from the head of the queue (`at(0)` is the head) to handle together: 1 by default. */
  protected runLength(_at: (i: number) => OutboundMessage | undefined): number {
    return 1;
  }

  /** Handles a run of messages that {@link runLength} chose, in order: one result each. */
  protected async handleRun(msgs: readonly OutboundMessage[]): Promise<SerialResult[]> {
    const out: SerialResult[] = [];
    for (const m of msgs) out.push(await this.handle(m));
    return out;
  }

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
      const n = Math.min(
        this.queue.length,
        Math.max(
          1,
          this.runLength((i) => this.queue[i]?.msg),
        ),
      );
      const run = this.queue.slice(0, n);
      const results = n === 1 ? [await this.handle(run[0]!.msg)] : await this.handleRun(run.map((q) => q.msg));
      this.queue.splice(0, n);
      run.forEach(({ msg, done }, i) => {
        this.queuedBytes -= msg.body.length;
        const r = results[i];
        if (r === 'duplicate') done(undefined, true);
        else done(r);
      });
      if (this.waiters.length > 0 && this.hasCapacity) {
        const w = this.waiters;
        this.waiters = [];
        for (const r of w) r();
      }
    }
    this.running = false;
  }
}
