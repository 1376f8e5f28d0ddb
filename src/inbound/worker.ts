import { isUtf8 } from 'node:buffer';
import { DeliverPolicy, jetstreamManager, type ConsumerMessages, type JsMsg } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { SubscribeRule } from '../config/load.js';
import type { Logger } from '../util/log.js';
import type { DeadLetter, DeadLetterWriter } from '../sink/deadletter.js';
import { errorMessage } from '../util/errors.js';
import { backoffDelay } from '../util/backoff.js';
import { sleep, within } from '../util/sleep.js';
import { deadLetterThenTerm, eventIdOf, headerObject, runConsumer, type DurableUpkeep } from './loop.js';
import type { BatchResult, InboxExecutor } from './inbox.js';
import { isTransient, isUnstorable } from './sqlerrors.js';
import { bufferCapacity } from './durable.js';
import { SIGNATURE_HEADER, type MessageKeys } from '../sink/signing.js';
import { LeaderLock } from '../schema/leader.js';

/** What became of one delivery of an inbound event. */
export type HandlerOutcome = 'applied' | 'duplicate' | 'failed' | 'dead_lettered';

/** A message taken from the consumer, waiting in the worker until its batch is applied. */
interface Pending {
  m: JsMsg;
  eventId: string;
  body: string;
  /** its ordering key (`order_by`), or null */
  key: string | null;
  /** handler failures in this process (its earlier deliveries are counted by JetStream) */
  failures: number;
  /** when this process received it (performance.now()) */
  at: number;
}

/**
 * While other batches run, a free worker waits this long (ms, or `max_wait` when longer) for a
 * full batch before it takes a partial one: under load, events arrive while batches commit and
 * a batch of one or two events per transaction would cap the rate at the database's commit rate;
 * when nothing runs, an event starts at once.
 */
const LINGER_MS = 2;

/** The ordering key of a message: a header, or a path of fields into its (JSON) body. */
function keyOf(rule: SubscribeRule, m: JsMsg, parsed: unknown): string | null {
  const o = rule.order_by;
  if (o === null) return null;
  if ('header' in o) return m.headers?.get(o.header) || '';
  let v: unknown = parsed;
  for (const f of o.path) v = v !== null && typeof v === 'object' ? (v as Record<string, unknown>)[f] : undefined;
  return v === undefined || v === null ? '' : typeof v === 'string' ? v : JSON.stringify(v);
}

/**
 * One durable consumer feeding one SQL handler. Messages are applied in batches (up to `batch`
 * events in one transaction, one inbox row and one handler call each, a subtransaction per
 * event) by up to `concurrency` batches at once, and acknowledged after the COMMIT. A failing
 * event leaves the others of its batch applied and goes its own way: retried, then
 * dead-lettered after `max_deliver` handler failures.
 *
 * With `order_by`, events with the same key apply in stream order, retries included: a key is in
 * at most one batch at a time, a failed event is retried in place (its key held back meanwhile)
 * and the later events of its key wait behind it. Without `order_by` a failed event is nak'd with
 * its backoff and the others go ahead of it.
 */
export class InboundWorker {
  private messages: ConsumerMessages | null = null;
  private stopping = false;
  private loop: Promise<void> | null = null;
  /** taken from the consumer, not yet in a batch, in stream order */
  private buffer: Pending[] = [];
  /** keys whose events are in a batch or held back for a retry */
  private readonly busy = new Set<string>();
  /** batches being applied */
  private readonly running = new Set<Promise<void>>();
  /** every message not yet acknowledged, nak'd or terminated: kept alive while it waits */
  private readonly unsettled = new Set<JsMsg>();
  private readonly retryTimers = new Set<NodeJS.Timeout>();
  private spaceWaiters: (() => void)[] = [];
  private waitTimer: NodeJS.Timeout | null = null;
  private keepAlive: NodeJS.Timeout | null = null;
  private lock: LeaderLock | null = null;
  private readonly capacity: number;

  constructor(
    private readonly nc: NatsConnection,
    private readonly stream: string,
    private readonly rule: SubscribeRule,
    private readonly inbox: InboxExecutor,
    private readonly deadLetters: DeadLetterWriter,
    /** each handler call's outcome, with its duration in seconds when the handler ran */
    private readonly onOutcome: (consumer: string, outcome: HandlerOutcome, seconds?: number) => void,
    private readonly durable: DurableUpkeep,
    private readonly log: Logger,
    /** `[relay] signing_key_env`: only messages signed with one of these keys reach the inbox */
    private readonly keys: MessageKeys | null = null,
    /**
     * with `order_by`: the database whose advisory lock makes this replica the subscription's only
     * consumer (the others stand by), so one key's events never apply on two replicas at once
     */
    private readonly exclusiveOn: string | null = null,
  ) {
    this.capacity = bufferCapacity(rule);
  }

  start(): void {
    this.keepAlive = setInterval(
      () => {
        for (const m of this.unsettled) m.working();
      },
      Math.max(500, Math.floor(this.rule.ack_wait / 2)),
    );
    this.keepAlive.unref();
    if (this.exclusiveOn === null) {
      this.consume();
      return;
    }
    this.lock = new LeaderLock(
      this.exclusiveOn,
      this.rule.consumer,
      this.log,
      () => void this.lead(),
      (reason) => this.standBy(reason),
      2000,
      undefined,
      'ordered-consumer',
    );
    this.log.info({ consumer: this.rule.consumer }, 'ordered subscription: consuming only while this replica holds its lock');
    this.lock.start();
  }

  /**
   * This replica now consumes the ordered subscription alone. When the one before it stopped
   * without acknowledging everything (killed, cut off), its unacknowledged events would come back
   * after `ack_wait`, behind newer ones of the same keys: the consumer restarts from the first
   * unacknowledged event instead (events acknowledged after it come again and are inbox
   * duplicates), so every key stays in stream order.
   */
  private async lead(): Promise<void> {
    try {
      const jsm = await jetstreamManager(this.nc);
      const info = await jsm.consumers.info(this.stream, this.rule.consumer);
      if (info.num_ack_pending > 0) {
        const from = info.ack_floor.stream_seq + 1;
        const config = { ...info.config, deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: from };
        await jsm.consumers.delete(this.stream, this.rule.consumer);
        await jsm.consumers.add(this.stream, config);
        this.log.warn(
          { consumer: this.rule.consumer, from_seq: from, unacknowledged: info.num_ack_pending },
          'took over an ordered subscription with unacknowledged events: redelivering from the first of them, in order',
        );
      }
    } catch (err) {
      this.log.warn(
        { consumer: this.rule.consumer, err: errorMessage(err) },
        'ordered subscription: could not inspect the consumer; consuming as it is',
      );
    }
    if (!this.stopping && this.lock?.isActive) this.consume();
  }

  /** Another replica may consume now: stop taking messages at once. */
  private standBy(reason: string): void {
    this.log.warn({ consumer: this.rule.consumer, reason }, 'ordered subscription: lock lost; standing by');
    void this.messages?.close().catch(() => {});
  }

  private consume(): void {
    this.loop = runConsumer({
      nc: this.nc,
      stream: this.stream,
      consumer: this.rule.consumer,
      durable: this.durable,
      maxMessages: this.capacity,
      leaveIfStoppedWhileSubscribing: true,
      stopping: () => this.stopping || (this.lock !== null && !this.lock.isActive),
      handle: (m) => this.take(m),
      onSubscribed: (messages) => {
        this.messages = messages;
      },
      log: this.log,
      interruptedMessage: 'consumer interrupted; resubscribing',
    });
  }

  /** Takes one message: checks what can be checked alone, then buffers it for a batch. */
  private async take(m: JsMsg): Promise<void> {
    const eventId = eventIdOf(m);
    if (this.keys !== null) {
      // before anything else: a forged message must not claim its event id in the inbox
      const refused = this.keys.verify(m.headers?.get('Fraiseql-Event-Id'), m.subject, m.data, m.headers?.get(SIGNATURE_HEADER));
      if (refused !== null) {
        // recorded under its stream position, not the id it claims: neither this dead letter nor
        // a `dlq retry` of it can take the real event's place (the claimed id stays in its headers)
        const where = `unverified:${m.info.stream}:${m.seq}:${m.info.timestampNanos}`;
        await this.toDeadLetter(m, where, m.string(), refused, isUtf8(m.data) ? undefined : m.data);
        return;
      }
    }
    if (!isUtf8(m.data)) {
      await this.toDeadLetter(m, eventId, m.string(), 'message body is not valid UTF-8', m.data);
      return;
    }
    const body = m.string();
    let parsed: unknown;
    try {
      parsed = JSON.parse(body);
    } catch (err) {
      await this.toDeadLetter(m, eventId, body, `message body is not JSON: ${(err as Error).message}`);
      return;
    }
    this.unsettled.add(m);
    this.buffer.push({ m, eventId, body, key: keyOf(this.rule, m, parsed), failures: 0, at: performance.now() });
    this.pump();
    // backpressure: the consumer hands over no more than the worker can hold
    while (this.buffer.length >= this.capacity && !this.stopping) await new Promise<void>((r) => this.spaceWaiters.push(r));
  }

  /** Starts batches while a worker slot is free and events are ready. */
  private pump(): void {
    if (this.stopping) return;
    while (this.running.size < this.rule.concurrency && this.buffer.length > 0) {
      if (this.buffer.length < this.rule.batch) {
        const oldest = this.buffer[0]!;
        // `max_wait`: from the event's time in the stream (a backlog does not wait)
        let wait = this.rule.max_wait - (Date.now() - Number(oldest.m.info.timestampNanos) / 1e6);
        // other batches are committing: gather from the events that arrive meanwhile (see LINGER_MS)
        if (this.running.size > 0) wait = Math.max(wait, Math.max(this.rule.max_wait, LINGER_MS) - (performance.now() - oldest.at));
        if (wait > 0) {
          this.waitTimer ??= setTimeout(() => {
            this.waitTimer = null;
            this.pump();
          }, Math.ceil(wait));
          return;
        }
      }
      const batch = this.nextBatch();
      if (batch.length === 0) return;
      const run = this.apply(batch).finally(() => {
        this.running.delete(run);
        for (const p of batch) if (p.key !== null && !this.held(p.key)) this.busy.delete(p.key);
        this.pump();
      });
      this.running.add(run);
    }
    if (this.buffer.length < this.capacity) {
      const w = this.spaceWaiters;
      this.spaceWaiters = [];
      for (const r of w) r();
    }
  }

  /** Up to `batch` buffered events, in stream order, none of a key another batch or a retry holds. */
  private nextBatch(): Pending[] {
    const batch: Pending[] = [];
    const keep: Pending[] = [];
    const mine = new Set<string>();
    for (const p of this.buffer) {
      const free = p.key === null || mine.has(p.key) || !this.busy.has(p.key);
      if (batch.length < this.rule.batch && free) {
        batch.push(p);
        if (p.key !== null && !mine.has(p.key)) {
          mine.add(p.key);
          this.busy.add(p.key);
        }
      } else {
        keep.push(p);
      }
    }
    this.buffer = keep;
    return batch;
  }

  /** Keys held back while one of their events waits for a retry. */
  private readonly holding = new Map<string, Pending[]>();

  private held(key: string): boolean {
    return this.holding.has(key);
  }

  /** Applies one batch in one transaction, then acknowledges, retries or dead-letters each event. */
  private async apply(batch: Pending[]): Promise<void> {
    const { rule } = this;
    let results: BatchResult[];
    for (let attempt = 0; ; attempt++) {
      try {
        results = await this.inbox.processBatch(
          rule.consumer,
          rule.handler,
          batch.map((p) => ({ eventId: p.eventId, subject: p.m.subject, body: p.body, key: p.key })),
        );
        break;
      } catch (err) {
        if (this.stopping) return; // unsettled: nak'd by stop()
        // the statement as a whole failed, so nothing of the batch was applied
        if (attempt === 0) {
          this.log.warn(
            { consumer: rule.consumer, events: batch.length, err: errorMessage(err) },
            isTransient(err) ? 'database unavailable; retrying the batch' : 'the batch failed as a whole; retrying it',
          );
        }
        await sleep(backoffDelay(attempt, 200, 5_000));
      }
    }
    const retry: Pending[] = [];
    for (let i = 0; i < batch.length; i++) {
      const p = batch[i]!;
      const r = results[i];
      if (r === undefined || r.outcome === 'skipped') {
        retry.push(p); // behind an earlier failure of its key: tried again after it
        continue;
      }
      if (r.outcome !== 'failed') {
        this.settle(p.m, () => p.m.ack());
        this.onOutcome(rule.consumer, r.outcome, r.seconds);
        continue;
      }
      const err = { code: r.sqlstate, message: r.message };
      if (isTransient(err)) {
        // the database, not the handler (a deadlock, a serialization failure): again, without spending a delivery
        retry.push(p);
        continue;
      }
      this.onOutcome(rule.consumer, 'failed', r.seconds);
      p.failures++;
      const failures = p.m.info.deliveryCount - 1 + p.failures;
      const reason = `${r.sqlstate} ${r.message}`.trim();
      if (failures >= rule.max_deliver || isUnstorable(err)) {
        // a value PostgreSQL can never take (a NUL in jsonb, an over-long key) fails every retry alike
        await this.toDeadLetter(p.m, p.eventId, p.body, reason);
      } else if (p.key === null) {
        const delay = this.backoff(failures);
        this.log.debug({ consumer: rule.consumer, event_id: p.eventId, failures, err: reason }, 'handler failed; will be redelivered');
        this.settle(p.m, () => p.m.nak(delay));
      } else {
        this.log.debug(
          { consumer: rule.consumer, event_id: p.eventId, key: p.key, failures, err: reason },
          'handler failed; retrying in order',
        );
        retry.push(p);
      }
    }
    if (retry.length > 0) this.retryLater(retry);
  }

  /** Delay before the next attempt after `failures` handler failures: `backoff`, else exponential. */
  private backoff(failures: number): number {
    const b = this.rule.backoff;
    return b.length > 0 ? b[Math.min(failures - 1, b.length - 1)]! : Math.min(30_000, 1000 * 2 ** Math.max(0, failures - 1));
  }

  /**
   * Puts events back in front of the buffer, in stream order, after a pause; their keys stay held
   * meanwhile, so no later event of a key overtakes them.
   */
  private retryLater(events: Pending[]): void {
    // the first event failed (its key's later events were skipped behind it); a transient failure has no count
    const failures = events.reduce((n, p) => Math.max(n, p.failures), 0);
    const delay = failures > 0 ? this.backoff(failures) : backoffDelay(0, 100, 1_000);
    const keys = new Set<string>();
    for (const p of events) if (p.key !== null) keys.add(p.key);
    for (const k of keys)
      this.holding.set(
        k,
        events.filter((p) => p.key === k),
      );
    const t = setTimeout(() => {
      this.retryTimers.delete(t);
      for (const k of keys) {
        this.holding.delete(k);
        this.busy.delete(k);
      }
      this.buffer = [...events, ...this.buffer];
      this.pump();
    }, delay);
    this.retryTimers.add(t);
  }

  private settle(m: JsMsg, how: () => void): void {
    this.unsettled.delete(m);
    how();
  }

  /** Records the poison message, then terminates it. */
  private async toDeadLetter(m: JsMsg, eventId: string, body: string, error: string, raw?: Uint8Array): Promise<void> {
    const entry: DeadLetter = {
      direction: 'inbound',
      eventId,
      subject: m.subject,
      consumer: this.rule.consumer,
      handler: this.rule.handler,
      headers: headerObject(m),
      body,
      error,
      attempts: m.info.deliveryCount,
    };
    if (raw) entry.raw = raw;
    const done = await deadLetterThenTerm(m, entry, { deadLetters: this.deadLetters, stopping: () => this.stopping, log: this.log });
    this.unsettled.delete(m);
    if (!done) return;
    this.onOutcome(this.rule.consumer, 'dead_lettered');
    this.log.warn({ consumer: this.rule.consumer, event_id: eventId, subject: m.subject, error }, 'inbound event dead-lettered');
  }

  async stop(timeoutMs: number): Promise<void> {
    this.stopping = true;
    for (const r of this.spaceWaiters) r();
    this.spaceWaiters = [];
    if (this.waitTimer) clearTimeout(this.waitTimer);
    for (const t of this.retryTimers) clearTimeout(t);
    await this.messages?.close().catch(() => {});
    await within(Promise.all([...this.running]), timeoutMs);
    if (this.keepAlive) clearInterval(this.keepAlive);
    // what was taken but not applied goes back to JetStream at once (not after ack_wait)
    for (const m of this.unsettled) m.nak();
    this.unsettled.clear();
    this.buffer = [];
    await within(this.loop, 1000);
    await this.lock?.stop();
  }
}
