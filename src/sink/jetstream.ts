import { headers as natsHeaders, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { PubAckPublisher } from './pubacks.js';
import type { OutboundMessage } from '../types.js';
import type { Logger } from '../log.js';
import { anyMatches } from './subjects.js';
import { findStream } from './stream.js';

/** A failure retrying cannot fix: the message goes to the dead-letter table. */
export class PermanentPublishError extends Error {
  override readonly name = 'PermanentPublishError';
}

export interface JetStreamSinkOptions {
  maxInFlight: number;
  maxInFlightBytes: number;
  /** PubAck timeout per message */
  timeoutMs: number;
  /** subjects of the relay's own stream (known without asking the server) */
  streamSubjects: readonly string[];
  log: Logger;
}

/** Size of the headers block as NATS encodes it ("NATS/1.0\r\n", "k: v\r\n"…, "\r\n"). */
export function encodedHeaderSize(h: Record<string, string>, msgId: string): number {
  let n = 12 + 15 + Buffer.byteLength(msgId) + 2; // NATS/1.0\r\n + \r\n ; Nats-Msg-Id: …\r\n
  for (const k in h) n += Buffer.byteLength(k) + Buffer.byteLength(h[k]!) + 4;
  return n;
}

/**
 * Publishes to JetStream with many PubAcks outstanding, bounded in count and bytes. Each
 * message carries `Nats-Msg-Id: <event_id>:<subject>`, so a re-send after a failure is dropped
 * by the stream's duplicate window. Knows nothing of LSNs: the caller's callback settles.
 */
export class JetStreamSink {
  private readonly publisher: PubAckPublisher;
  private jsm: JetStreamManager | null = null;
  private inFlight = 0;
  private inFlightBytes = 0;
  private capacityWaiters: (() => void)[] = [];
  private readonly captured = new Map<string, boolean>();

  constructor(private readonly nc: NatsConnection, private readonly opts: JetStreamSinkOptions) {
    this.publisher = new PubAckPublisher(nc, opts.timeoutMs);
  }

  get messagesInFlight(): number {
    return this.inFlight;
  }

  get bytesInFlight(): number {
    return this.inFlightBytes;
  }

  get maxPayload(): number {
    return this.nc.info?.max_payload ?? 1024 * 1024;
  }

  /** True while another message may be started. */
  get hasCapacity(): boolean {
    return this.inFlight < this.opts.maxInFlight && this.inFlightBytes < this.opts.maxInFlightBytes;
  }

  /** Resolves when a message may be started (immediately if it may now). */
  waitForCapacity(): Promise<void> {
    if (this.hasCapacity) return Promise.resolve();
    return new Promise((r) => this.capacityWaiters.push(r));
  }

  /** Resolves once nothing is in flight, or after `timeoutMs`; returns whether it drained. */
  async drain(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.inFlight > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
    return this.inFlight === 0;
  }

  /**
   * What can be known before publishing: null when the message may be published, a reason when
   * it never can be (too large for the server, or no stream captures its subject), or a promise
   * of either when the subject must first be looked up on the server.
   */
  check(msg: OutboundMessage): string | null | Promise<string | null> {
    const max = this.maxPayload;
    if (msg.body.length + 1024 > max) {
      const size = msg.body.length + encodedHeaderSize(msg.headers, `${msg.eventId}:${msg.subject}`);
      if (size > max) return `message of ${size} bytes (body and headers) exceeds the NATS server's max_payload of ${max} bytes`;
    }
    const known = this.captured.get(msg.subject);
    if (known === true) return null;
    const reason = `no JetStream stream captures subject ${msg.subject}; add it to [relay.stream] subjects or create a stream for it`;
    if (known === false) return reason;
    return this.isCaptured(msg.subject).then((ok) => (ok ? null : reason));
  }

  private async isCaptured(subject: string): Promise<boolean> {
    const known = this.captured.get(subject);
    if (known !== undefined) return known;
    let ok = anyMatches(this.opts.streamSubjects, subject);
    if (!ok) {
      this.jsm ??= await jetstreamManager(this.nc);
      ok = (await findStream(this.jsm, subject)) !== null;
    }
    this.captured.set(subject, ok);
    return ok;
  }

  /** Starts a publish; `done` is called once, with an error when it failed. */
  publish(msg: OutboundMessage, done: (err?: Error) => void): void {
    const h = natsHeaders();
    for (const k in msg.headers) h.set(k, msg.headers[k]!);
    h.set('Nats-Msg-Id', `${msg.eventId}:${msg.subject}`);
    const bytes = msg.body.length;
    this.inFlight++;
    this.inFlightBytes += bytes;
    this.publisher.publish(msg.subject, msg.body, h, (err) => this.finish(bytes, done, err));
  }

  /** Stops listening for acknowledgements (the session using this sink is over). */
  close(): void {
    this.publisher.close();
  }

  private finish(bytes: number, done: (err?: Error) => void, err: Error | undefined): void {
    this.inFlight--;
    this.inFlightBytes -= bytes;
    done(err);
    if (this.capacityWaiters.length > 0 && this.hasCapacity) {
      const w = this.capacityWaiters;
      this.capacityWaiters = [];
      for (const r of w) r();
    }
  }
}
