/**
 * The reference publisher of the benchmark: JetStream publishes on the core NATS connection
 * (`nc.publish(subject, data, { headers: Nats-Msg-Id, reply })`), every reply subject
 * `<inbox>.<n>` under ONE shared wildcard subscription, PubAcks parsed from the replies.
 * No per-publish subscription, promise or timer: a callback per message, a bounded window.
 */
import { createInbox, headers as natsHeaders, type Msg, type NatsConnection } from '@nats-io/transport-node';

export type AckCallback = (err: Error | null) => void;

export class CorePublisher {
  private readonly prefix: string;
  private readonly prefixLen: number;
  private next = 1;
  private readonly pending = new Map<number, AckCallback>();
  /** the first error reply (or null); the reference loops stop on it */
  failure: Error | null = null;

  constructor(private readonly nc: NatsConnection) {
    this.prefix = `${createInbox()}.`;
    this.prefixLen = this.prefix.length;
    nc.subscribe(`${this.prefix}*`, { callback: (_err, msg) => this.onReply(msg) });
  }

  get inFlight(): number {
    return this.pending.size;
  }

  publish(subject: string, data: Uint8Array | string, msgId: string, done: AckCallback): void {
    const n = this.next++;
    const h = natsHeaders();
    h.set('Nats-Msg-Id', msgId);
    this.pending.set(n, done);
    this.nc.publish(subject, data, { headers: h, reply: this.prefix + n });
  }

  /** Like publish(), with extra headers. */
  publishWith(subject: string, data: Uint8Array | string, msgId: string, extra: readonly [string, string][], done: AckCallback): void {
    const n = this.next++;
    const h = natsHeaders();
    for (const [k, v] of extra) h.set(k, v);
    h.set('Nats-Msg-Id', msgId);
    this.pending.set(n, done);
    this.nc.publish(subject, data, { headers: h, reply: this.prefix + n });
  }

  private onReply(msg: Msg): void {
    const n = Number(msg.subject.slice(this.prefixLen));
    const done = this.pending.get(n);
    if (!done) return;
    this.pending.delete(n);
    let err: Error | null = null;
    const data = msg.data;
    if (data.length === 0) {
      // a status-only reply: 503 no responders (no stream captures the subject)
      const code = msg.headers?.code ?? 0;
      err = new Error(`publish failed: status ${code} ${msg.headers?.description ?? ''}`.trim());
    } else if (data[2] === 0x65 /* {"e…: {"error":…} */) {
      err = new Error(`publish failed: ${Buffer.from(data).toString('utf8')}`);
    }
    if (err && !this.failure) this.failure = err;
    done(err);
  }
}
