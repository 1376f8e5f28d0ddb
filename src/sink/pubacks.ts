import { createInbox, type MsgHdrs, type NatsConnection, type Subscription, type Msg } from '@nats-io/transport-node';

interface Pending {
  done: (err?: Error) => void;
  sentAt: number;
  subject: string;
}

/**
 * JetStream publishing without a request object per message: each publish goes out on the core
 * connection with a reply subject `<inbox>.<n>` under one shared wildcard subscription, and the
 * PubAck (or the server's error) arriving there settles message n. One timer sweeps timeouts
 * oldest-first instead of one timer per message. Same guarantees as `js.publish`: a message is
 * done only when the stream acknowledged it.
 */
export class PubAckPublisher {
  private readonly inbox: string;
  private readonly sub: Subscription;
  private readonly pending = new Map<number, Pending>();
  private seq = 0;
  private readonly sweeper: NodeJS.Timeout;
  private closed = false;

  constructor(private readonly nc: NatsConnection, private readonly timeoutMs: number) {
    this.inbox = createInbox();
    this.sub = nc.subscribe(`${this.inbox}.*`, { callback: (err, msg) => (err ? this.failAll(err) : this.onReply(msg)) });
    this.sweeper = setInterval(() => this.sweep(), Math.max(50, Math.floor(timeoutMs / 4)));
    this.sweeper.unref();
  }

  get size(): number {
    return this.pending.size;
  }

  publish(subject: string, body: Uint8Array, headers: MsgHdrs, done: (err?: Error) => void): void {
    if (this.closed) {
      done(new Error('publisher closed'));
      return;
    }
    const n = ++this.seq;
    this.pending.set(n, { done, sentAt: Date.now(), subject });
    try {
      this.nc.publish(subject, body, { reply: `${this.inbox}.${n}`, headers });
    } catch (err) {
      this.pending.delete(n);
      done(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private onReply(msg: Msg): void {
    const dot = msg.subject.lastIndexOf('.');
    const n = Number(msg.subject.slice(dot + 1));
    const p = this.pending.get(n);
    if (!p) return; // timed out already
    this.pending.delete(n);
    const h = msg.headers;
    if (h && h.hasError) {
      // 503: no responders, no stream captures the subject (or JetStream is unavailable)
      p.done(new Error(h.code === 503 ? `no JetStream stream answered for ${p.subject} (503 no responders)` : `${h.code} ${h.description}`));
      return;
    }
    const data = msg.data;
    // {"stream":"S","seq":1} or {"error":{"code":…,"err_code":…,"description":"…"},…}
    if (data.length > 9 && indexOfError(data)) {
      let text = 'JetStream rejected the message';
      try {
        const e = (JSON.parse(new TextDecoder().decode(data)) as { error?: { code?: number; err_code?: number; description?: string } }).error;
        if (e) text = `JetStream error ${e.err_code ?? e.code}: ${e.description ?? ''}`;
      } catch {
        // keep the generic text
      }
      p.done(new Error(text));
      return;
    }
    p.done();
  }

  private sweep(): void {
    const limit = Date.now() - this.timeoutMs;
    for (const [n, p] of this.pending) {
      if (p.sentAt > limit) break; // insertion order = send order
      this.pending.delete(n);
      p.done(new Error(`timeout: no PubAck for ${p.subject} within ${this.timeoutMs} ms`));
    }
  }

  private failAll(err: Error): void {
    for (const [n, p] of this.pending) {
      this.pending.delete(n);
      p.done(err);
    }
  }

  /** Stops listening; unsettled messages stay unsettled (their session is over). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweeper);
    this.sub.unsubscribe();
    this.pending.clear();
  }
}

const ERR = [0x22, 0x65, 0x72, 0x72, 0x6f, 0x72, 0x22]; // "error"

/** Does the reply contain `"error"`? (checked on bytes: no decoding for the common case) */
function indexOfError(d: Uint8Array): boolean {
  outer: for (let i = 0; i + ERR.length <= d.length; i++) {
    for (let j = 0; j < ERR.length; j++) if (d[i + j] !== ERR[j]) continue outer;
    return true;
  }
  return false;
}
