import type { NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { PubAckPublisher } from './pubacks.js';
import type { OutboundMessage, Sink } from './sink.js';
import type { Logger } from '../util/log.js';
import { anyMatches } from './subjects.js';
import { findStream } from './stream.js';
import { checkSubject } from '../config/names.js';
import { brokerHeaderProblem, MAX_HEADER_BYTES, quotedName, MAX_SUBJECT_BYTES, refusalReason, UndeliverableError } from './limits.js';
import { PublishRefusedError, StreamMissingError } from '../util/errors.js';
import { SIGNATURE_HEADER, type MessageKeys } from './signing.js';

export interface JetStreamSinkOptions {
  maxInFlight: number;
  maxInFlightBytes: number;
  /** PubAck timeout per message */
  timeoutMs: number;
  /** subjects of the relay's own stream (known without asking the server) */
  streamSubjects: readonly string[];
  log: Logger;
  /** `[relay] signing_key_env`: every message gets a `Fraiseql-Signature` header */
  keys?: MessageKeys | null;
}

/** Bytes of the header block besides the message's own headers and id: "NATS/1.0\r\n", "Nats-Msg-Id: \r\n", the closing "\r\n". */
const HEADER_BLOCK_FIXED = 10 + 15 + 2;
/** Bytes of the `Fraiseql-Signature: v1=<base64 HMAC-SHA256>\r\n` line the publisher adds when signing. */
const SIGNATURE_LINE_BYTES = SIGNATURE_HEADER.length + 2 + 3 + 44 + 2;

/** Size of the header block as the publisher encodes it (values trimmed, "k: v\r\n" each, the relay's Nats-Msg-Id). */
function encodedHeaderSize(h: Record<string, string>, msgId: string, extra: number): number {
  let n = HEADER_BLOCK_FIXED + extra + Buffer.byteLength(msgId);
  for (const k in h) n += Buffer.byteLength(k) + Buffer.byteLength(h[k]!.trim()) + 4;
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

/** Why a header name cannot be sent (not valid in NATS, or a name the broker interprets), or null. */
function headerNameProblem(k: string): string | null {
  if (!validHeaderName(k)) return `header name ${quotedName(k)} is not valid in NATS (printable ASCII without ':' or spaces)`;
  return brokerHeaderProblem(k);
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
   * it never can be (a header the router or the broker refuses, headers or a whole message over
   * the server's limits, a subject that is not valid or too long, or no stream captures it), or a
   * promise of either when the subject must first be looked up on the server. What this lets
   * through can still be refused by JetStream: `finish` tells those refusals apart.
   */
  check(msg: OutboundMessage): string | null | Promise<string | null> {
    if (msg.refused !== undefined) return msg.refused;
    const sized = this.sizeProblem(msg);
    if (sized !== null) return sized;
    const known = this.captured.get(msg.subject);
    if (known === null) return null;
    if (known !== undefined) return known;
    // what can be known without the server is answered at once (per-entity subjects stay cheap)
    const bytes = Buffer.byteLength(msg.subject);
    if (bytes > MAX_SUBJECT_BYTES) {
      // not remembered: each such subject is its own (and holding them would hold their bytes)
      return (
        `subject of ${bytes} bytes is longer than the ${MAX_SUBJECT_BYTES} bytes the relay publishes (the publish line must fit ` +
        `nats-server's max_control_line of 4096 bytes): ${JSON.stringify(msg.subject.slice(0, 64))}…`
      );
    }
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

  /**
   * Why the message's headers or size cannot go to the server, or null: a header name NATS
   * cannot carry or the broker interprets, a header block over JetStream's 64 KiB, or body and
   * header block (as the publisher encodes it, signature included) over the server's
   * `max_payload`, which the server answers by closing the connection.
   */
  private sizeProblem(msg: OutboundMessage): string | null {
    const h = msg.headers;
    // an upper bound first (a UTF-16 unit is at most 3 UTF-8 bytes): the exact size only near a limit
    let units = msg.eventId.length + 1 + msg.subject.length;
    for (const k in h) {
      if (!this.goodKeys.has(k)) {
        const bad = headerNameProblem(k);
        if (bad !== null) return bad;
        if (this.goodKeys.size < 1024) this.goodKeys.add(k); // bounded: emit() headers can use any names
      }
      units += k.length + h[k]!.length + 4;
    }
    const extra = this.opts.keys ? SIGNATURE_LINE_BYTES : 0;
    const max = this.maxPayload;
    const bound = HEADER_BLOCK_FIXED + extra + 3 * units;
    if (bound <= MAX_HEADER_BYTES && msg.body.length + bound <= max) return null;
    const headers = encodedHeaderSize(h, `${msg.eventId}:${msg.subject}`, extra);
    if (headers > MAX_HEADER_BYTES) {
      return `headers of ${headers} bytes (as NATS encodes them) exceed JetStream's limit of ${MAX_HEADER_BYTES} bytes`;
    }
    const size = msg.body.length + headers;
    if (size > max) {
      return `message of ${size} bytes (body ${msg.body.length}, headers ${headers}) exceeds the NATS server's max_payload of ${max} bytes`;
    }
    return null;
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

  /**
   * Why a failed publish can never succeed (a reason, or the promise of one), or null when the
   * failure is about the connection, the server or the stream as a whole. A refusal is decided
   * by its JetStream code (limits.ts). "No responders" for a subject of the relay's own stream
   * means that stream is gone (re-created by the next session, or by an operator); for any other
   * subject the server is asked again: a subject no stream captures is the message's own problem.
   */
  private undeliverable(err: Error): string | null | Promise<string | null> {
    if (err instanceof PublishRefusedError) return refusalReason(err);
    if (!(err instanceof StreamMissingError) || anyMatches(this.opts.streamSubjects, err.subject)) return null;
    this.captured.delete(err.subject);
    return this.lookUp(err.subject);
  }

  /** Starts a publish; `done` is called once, with an error when it failed. */
  publish(msg: OutboundMessage, done: (err?: Error, duplicate?: boolean) => void): void {
    let lines = '';
    const h = msg.headers;
    const keys = this.opts.keys;
    // values as nats.js writes them (trimmed); names and sizes (the signature's too) were checked by check()
    if (!keys) for (const k in h) lines += k + ': ' + h[k]!.trim() + '\r\n';
    else lines = signedHeaderLines(keys, msg);
    const bytes = msg.body.length;
    this.inFlight++;
    this.inFlightBytes += bytes;
    this.publisher.publish(msg.subject, msg.body, lines, msg.eventId + ':' + msg.subject, (err, duplicate) =>
      this.finish(bytes, done, err, duplicate),
    );
  }

  /**
   * The session using this sink is over. Answers to messages already sent are still taken for
   * one publish timeout (JetStream may have stored them: the session counts them once, and
   * confirms nothing more); then the publisher stops listening.
   */
  close(): void {
    if (this.publisher.size === 0) {
      this.publisher.close();
      return;
    }
    setTimeout(() => {
      try {
        this.publisher.close();
      } catch {
        // the connection is closed already: nothing listens any more
      }
    }, this.opts.timeoutMs + 50).unref();
  }

  /**
   * A publish ended: an acknowledgement (perhaps of a duplicate), an error that is the message's
   * own and will not change on retry (passed on as an UndeliverableError: the session dead-letters
   * the message), or any other error (passed on as it is: the session reconnects).
   */
  private finish(bytes: number, done: (err?: Error, duplicate?: boolean) => void, err: Error | undefined, duplicate?: boolean): void {
    this.inFlight--;
    this.inFlightBytes -= bytes;
    if (err === undefined) done(undefined, duplicate === true);
    else {
      const verdict = this.undeliverable(err);
      if (verdict === null) done(err);
      else if (typeof verdict === 'string') done(new UndeliverableError(verdict, { cause: err }));
      else
        verdict.then(
          (reason) => done(reason === null ? err : new UndeliverableError(reason, { cause: err })),
          () => done(err), // the streams could not be listed: JetStream is not answering
        );
    }
    if (this.capacityWaiters.length > 0 && this.hasCapacity) {
      const w = this.capacityWaiters;
      this.capacityWaiters = [];
      for (const r of w) r();
    }
  }
}

/**
 * The header lines of a signed message: its headers (a `Fraiseql-Signature` of its own is
 * dropped: the relay signs) and the relay's signature over the event id its `Fraiseql-Event-Id`
 * header carries (what a subscriber keys its inbox with), its subject and its body.
 */
function signedHeaderLines(keys: MessageKeys, msg: OutboundMessage): string {
  let lines = '';
  const h = msg.headers;
  for (const k in h) if (k !== SIGNATURE_HEADER) lines += k + ': ' + h[k]!.trim() + '\r\n';
  const id = h['Fraiseql-Event-Id'];
  return lines + SIGNATURE_HEADER + ': ' + keys.sign(id === undefined ? msg.eventId : id.trim(), msg.subject, msg.body) + '\r\n';
}
