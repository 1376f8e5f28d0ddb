import type { NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { PubAckPublisher } from './pubacks.js';
import type { OutboundMessage, Sink } from './sink.js';
import type { Logger } from '../util/log.js';
import { anyMatches } from './subjects.js';
import { findStream } from './stream.js';
import { checkSubject } from '../config/names.js';

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
function encodedHeaderSize(h: Record<string, string>, msgId: string): number {
  let n = 12 + 15 + Buffer.byteLength(msgId) + 2; // NATS/1.0\r\n + \r\n ; Nats-Msg-Id: …\r\n
  for (const k in h) n += Buffer.byteLength(k) + Buffer.byteLength(h[k]!) + 4;
  return n;
}

/** A NATS header name: printable ASCII except ':' (RFC 822, as nats.js checks it). */
function validHeaderName(k: string): boolean {
  if (k.length === 0) return false;
  for (let i = 0; i < k.length; i++) {
    const c = k.charCodeAt(i);
    if (c === 58 || c < 33 || c > 126) return false;
  }
  return true;
}

/**
 * Publishes to JetStream with many PubAcks outstanding, bounded in count and bytes. Each
 * message carries `Nats-Msg-Id: <event_id>:<subject>`, so a re-send after a failure is dropped
 * by the stream's duplicate window. Knows nothing of LSNs: the caller's callback settles.
 */
export class JetStreamSink implements Sink {
  private readonly publisher: PubAckPublisher;
  private jsm: JetStreamManager | null = null;
  private inFlight = 0;
  private inFlightBytes = 0;
  private capacityWaiters: (() => void)[] = [];
  /** subject ▶ why it cannot be published, or null when it can */
  private readonly captured = new Map<string, string | null>();
  private readonly goodKeys = new Set<string>();

  constructor(
    private readonly nc: NatsConnection,
    private readonly opts: JetStreamSinkOptions,
  ) {
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
    for (const k in msg.headers) {
      if (!this.goodKeys.has(k)) {
        if (!validHeaderName(k)) return `header name ${JSON.stringify(k)} is not valid in NATS (printable ASCII without ':' or spaces)`;
        if (this.goodKeys.size < 1024) this.goodKeys.add(k); // bounded: emit() headers can use any names
      }
    }
    const known = this.captured.get(msg.subject);
    if (known === null) return null;
    if (known !== undefined) return known;
    // what can be known without the server is answered at once (per-entity subjects stay cheap)
    let reason: string | null = null;
    const problem = checkSubject(msg.subject, false);
    if (problem !== undefined) {
      reason = `${JSON.stringify(msg.subject)} is not a valid NATS subject to publish to: it ${problem}`;
    } else if (!anyMatches(this.opts.streamSubjects, msg.subject)) {
      return this.lookUp(msg.subject);
    }
    this.remember(msg.subject, reason);
    return reason;
  }

  /** Asks the server whether some stream captures a subject outside the relay's own stream. */
  private async lookUp(subject: string): Promise<string | null> {
    this.jsm ??= await jetstreamManager(this.nc);
    const reason =
      (await findStream(this.jsm, subject)) !== null
        ? null
        : `no JetStream stream captures subject ${subject}; add it to [relay.stream] subjects or create a stream for it`;
    this.remember(subject, reason);
    return reason;
  }

  /** Caches a subject's answer; bounded, since emit() subjects can be unbounded (one per entity). */
  private remember(subject: string, reason: string | null): void {
    if (this.captured.size >= 10_000) this.captured.clear();
    this.captured.set(subject, reason);
  }

  /** Starts a publish; `done` is called once, with an error when it failed. */
  publish(msg: OutboundMessage, done: (err?: Error) => void): void {
    let lines = '';
    const h = msg.headers;
    // values as nats.js writes them (trimmed); names were checked by check()
    for (const k in h) lines += k + ': ' + h[k]!.trim() + '\r\n';
    const bytes = msg.body.length;
    this.inFlight++;
    this.inFlightBytes += bytes;
    this.publisher.publish(msg.subject, msg.body, lines, msg.eventId + ':' + msg.subject, (err) => this.finish(bytes, done, err));
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
