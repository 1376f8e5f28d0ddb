import { createInbox, type MsgHdrs, type NatsConnection, type Subscription, type Msg } from '@nats-io/transport-node';
import { PublishRefusedError, StreamMissingError } from '../util/errors.js';

/** A publish's end: an error, or stored (`duplicate`: JetStream already held its message id, nothing was stored). */
type PublishDone = (err?: Error, duplicate?: boolean) => void;

interface Pending {
  done: PublishDone;
  sentAt: number;
  subject: string;
}

/** The part of nats.js's protocol handler the lean path writes to (nats-core 3.x). */
interface ProtocolWriter {
  sendCommand(cmd: Uint8Array, ...payloads: Uint8Array[]): void;
  noMorePublishing?: boolean;
  info?: { headers?: boolean };
}

const CRLF = Buffer.from('\r\n');

/**
 * JetStream publishing without a request object per message: each publish goes out on the core
 * connection as `HPUB <subject> <inbox>.<n>` under one shared wildcard reply subscription, and
 * the PubAck (or the server's error) arriving there settles message n. One timer sweeps timeouts
 * oldest-first instead of one timer per message. Same guarantees as `js.publish`: a message is
 * done only when the stream acknowledged it.
 *
 * The protocol line and the header block are written as one buffer straight into the
 * connection's outbound queue (what `nc.publish` does after building a headers object and
 * validating it again for every message); the caller hands over header lines it has validated.
 */
export class PubAckPublisher {
  private readonly inbox: string;
  private readonly sub: Subscription;
  private readonly pending = new Map<number, Pending>();
  private seq = 0;
  private readonly sweeper: NodeJS.Timeout;
  private closed = false;
  private readonly writer: ProtocolWriter | null;

  constructor(
    private readonly nc: NatsConnection,
    private readonly timeoutMs: number,
  ) {
    this.inbox = createInbox();
    this.sub = nc.subscribe(`${this.inbox}.*`, { callback: (err, msg) => (err ? this.failAll(err) : this.onReply(msg)) });
    this.sweeper = setInterval(() => this.sweep(), Math.max(50, Math.floor(timeoutMs / 4)));
    this.sweeper.unref();
    const protocol = (nc as unknown as { protocol?: ProtocolWriter }).protocol;
    this.writer = protocol && typeof protocol.sendCommand === 'function' ? protocol : null;
  }

  get size(): number {
    return this.pending.size;
  }

  /**
   * Publishes `body` with the header lines `headerLines` ("Key: value\r\n"…, keys and values
   * already valid) and `Nats-Msg-Id: msgId`. The id is the first header: nats-server 2.9 reads a
   * header at the first place its name occurs in the block, so the relay's id must come before any
   * other header that mentions it.
   */
  publish(subject: string, body: Uint8Array, headerLines: string, msgId: string, done: PublishDone): void {
    if (this.closed) {
      done(new Error('publisher closed'));
      return;
    }
    const n = ++this.seq;
    this.pending.set(n, { done, sentAt: Date.now(), subject });
    try {
      const block = 'NATS/1.0\r\nNats-Msg-Id: ' + msgId + '\r\n' + headerLines + '\r\n';
      const hlen = Buffer.byteLength(block, 'utf8');
      const reply = this.inbox + '.' + n;
      const w = this.writer;
      if (w !== null && !this.nc.isClosed() && w.noMorePublishing !== true) {
        const head = Buffer.from('HPUB ' + subject + ' ' + reply + ' ' + hlen + ' ' + (hlen + body.length) + '\r\n' + block, 'utf8');
        w.sendCommand(head, body, CRLF);
      } else {
        // a nats.js without the protocol writer (or a closed connection: publish throws)
        const encoded = Buffer.from(block, 'utf8');
        // nats.js encodes a headers object with encode() and nothing else
        this.nc.publish(subject, body, { reply, headers: { encode: () => encoded } as unknown as MsgHdrs });
      }
    } catch (err) {
      this.pending.delete(n);
      done(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private onReply(msg: Msg): void {
    const s = msg.subject;
    const n = Number(s.slice(s.lastIndexOf('.') + 1));
    const p = this.pending.get(n);
    if (!p) return; // timed out already
    this.pending.delete(n);
    const data = msg.data;
    if (data.length === 0 || msg.headers?.hasError) {
      // a status-only reply: 503 no responders, no stream captures the subject (or JetStream is unavailable)
      const h = msg.headers;
      p.done(
        h?.code === 503
          ? new StreamMissingError(p.subject, `no JetStream stream answered for ${p.subject} (503 no responders)`)
          : new PublishRefusedError(p.subject, h?.code ?? null, h?.description ?? 'empty reply'),
      );
      return;
    }
    // {"stream":"S","seq":1} or {"error":{"code":…,"err_code":…,"description":"…"},…}
    if (data.length > 9 && contains(data, ERR)) {
      let refused = new PublishRefusedError(p.subject, null, 'JetStream rejected the message');
      try {
        const e = (JSON.parse(new TextDecoder().decode(data)) as { error?: { code?: number; err_code?: number; description?: string } })
          .error;
        if (e) refused = new PublishRefusedError(p.subject, e.err_code ?? e.code ?? null, e.description ?? '');
      } catch {
        // keep the generic refusal
      }
      p.done(refused);
      return;
    }
    // {"stream":"S", "seq":1,"duplicate": true} (2.9's spacing): a re-send the stream already held
    p.done(undefined, duplicateAck(data));
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

const ERR = Buffer.from('"error"');
const DUPLICATE = Buffer.from('"duplicate"');

/** Where `pattern` ends in the reply, or -1 (checked on bytes: no decoding for the common case). */
function find(d: Uint8Array, pattern: Uint8Array): number {
  outer: for (let i = 0; i + pattern.length <= d.length; i++) {
    for (let j = 0; j < pattern.length; j++) if (d[i + j] !== pattern[j]) continue outer;
    return i + pattern.length;
  }
  return -1;
}

const contains = (d: Uint8Array, pattern: Uint8Array): boolean => find(d, pattern) >= 0;

/** Does the PubAck say `"duplicate": true` (any spacing)? */
function duplicateAck(d: Uint8Array): boolean {
  let i = find(d, DUPLICATE);
  if (i < 0) return false;
  while (i < d.length && (d[i] === 0x20 || d[i] === 0x3a)) i++; // spaces and the colon
  return d[i] === 0x74; // t(rue)
}
