import type { Lsn } from '../source/types.js';

/**
 * One transaction's bookkeeping: how many of its messages are still unsettled, and its commit
 * end LSN once the Commit message has been read.
 */
export class TxnTicket {
  pending = 0;
  endLsn: Lsn = -1n;
  committed = false;
  /** set when the transaction carried a relay heartbeat: when it was emitted (ms since epoch) */
  heartbeatAt: number | null = null;
  /** called once the transaction is durable (a backfill chunk's READ events ride in it) */
  whenDurable: (() => void) | null = null;
  constructor(readonly xid: number) {}
}

/**
 * The acknowledgement watermark. The slot may be confirmed up to the commit end LSN of the
 * newest transaction such that it and every earlier transaction have all their messages settled
 * (published and acknowledged by JetStream, or dead-lettered). Transactions arrive in commit
 * order, so a FIFO suffices.
 */
export class AckWatermark {
  private readonly queue: TxnTicket[] = [];
  private head = 0;
  private current: TxnTicket | null = null;
  private durable: Lsn;

  constructor(
    start: Lsn,
    private readonly onDurable: (lsn: Lsn) => void,
    private readonly onHeartbeat: (emittedAt: number) => void = () => {},
  ) {
    this.durable = start;
  }

  get durableLsn(): Lsn {
    return this.durable;
  }

  /** A Begin message: opens the transaction messages are added to. */
  begin(xid: number): TxnTicket {
    const t = new TxnTicket(xid);
    this.queue.push(t);
    this.current = t;
    return t;
  }

  /** The open transaction, if a Begin was read without its Commit. */
  get open(): TxnTicket | null {
    return this.current;
  }

  /** One more message of `t` is on its way. */
  add(t: TxnTicket): void {
    t.pending++;
  }

  /** One message of `t` is settled. */
  settle(t: TxnTicket): void {
    t.pending--;
    if (t.pending === 0 && t.committed) this.advance();
  }

  /** The Commit message: the transaction is complete once its messages settle. */
  commit(t: TxnTicket, endLsn: Lsn): void {
    t.endLsn = endLsn;
    t.committed = true;
    if (this.current === t) this.current = null;
    if (t.pending === 0) this.advance();
  }

  /** No transaction partially read and nothing unsettled. */
  get idle(): boolean {
    return this.current === null && this.head === this.queue.length;
  }

  /** Number of transactions read but not yet durable. */
  get backlog(): number {
    return this.queue.length - this.head;
  }

  /**
   * A keepalive's WAL end may be confirmed only when idle: the walsender has then sent us
   * everything before it, and all of it is settled.
   */
  idleAdvance(walEnd: Lsn): void {
    if (this.idle && walEnd > this.durable) {
      this.durable = walEnd;
      this.onDurable(walEnd);
    }
  }

  private advance(): void {
    let moved = false;
    while (this.head < this.queue.length) {
      const t = this.queue[this.head]!;
      if (!t.committed || t.pending !== 0) break;
      if (t.endLsn > this.durable) this.durable = t.endLsn;
      if (t.heartbeatAt !== null) this.onHeartbeat(t.heartbeatAt);
      if (t.whenDurable !== null) {
        // settled tickets stay queued a while: what the hook holds (a backfill chunk) must not
        const hook = t.whenDurable;
        t.whenDurable = null;
        hook();
      }
      this.head++;
      moved = true;
    }
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue.splice(0, this.head);
      this.head = 0;
    }
    if (moved) this.onDurable(this.durable);
  }
}
