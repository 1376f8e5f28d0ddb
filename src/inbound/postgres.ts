/**
 * backend = "postgres": no broker at all. The `[[observers.subscribe]]` handlers of the service's
 * own database are driven straight from the decoded stream of its slot: each message of a
 * subscribed subject is applied through the inbox (the inbox row and the handler call commit in
 * one transaction), and the message is done, so the slot may move past it, only after that COMMIT.
 */
import type { SubscribeRule } from '../config/load.js';
import type { Logger } from '../util/log.js';
import type { OutboundMessage } from '../sink/sink.js';
import { SerialSink, type SerialResult } from '../sink/serial.js';
import type { DeadLetterWriter } from '../sink/deadletter.js';
import { subjectMatches } from '../sink/subjects.js';
import { errorMessage } from '../util/errors.js';
import { backoffDelay } from '../util/backoff.js';
import { sleep } from '../util/sleep.js';
import type { InboxExecutor } from './inbox.js';
import { isTransient, isUnstorable } from './sqlerrors.js';
import type { HandlerOutcome } from './worker.js';

/** Webhook actions delivered in line, in commit order (webhook/sink.ts's WebhookSink fits). */
interface InlineDeliveries {
  accepts(subject: string): boolean;
  /** resolves with no error once delivered or dead-lettered; with an error when the slot must not move past it */
  deliver(msg: OutboundMessage): Promise<Error | undefined>;
  close(): void;
}

export interface PostgresSinkOptions {
  subscribe: readonly SubscribeRule[];
  inbox: InboxExecutor;
  deadLetters: DeadLetterWriter;
  /** messages queued before the session pauses reading */
  maxQueued: number;
  /** webhook actions, or null when none is configured */
  webhooks: InlineDeliveries | null;
  /** each handler call's outcome, with its duration in seconds when the handler ran */
  onOutcome: (consumer: string, outcome: HandlerOutcome, seconds?: number) => void;
  /** a message no subscription matches: acknowledged without a handler call */
  onIgnored: (msg: OutboundMessage) => void;
  log: Logger;
}

/** SQLSTATE-bearing transient failures (a deadlock, a serialization failure) retried in place before the session gives up. */
const IN_PLACE_RETRIES = 5;

/**
 * One message at a time, in commit order: for each subscription whose subject matches (NATS
 * wildcards `*` and `>`), in configuration order, its handler is applied once through the inbox.
 * A handler failure is retried after the subscription's backoff, up to `max_deliver` attempts,
 * then dead-lettered (direction inbound), and the stream moves on. A lost database connection
 * ends the session: it re-reads from the slot's confirmed position and what was already applied
 * finds its inbox row.
 */
export class PostgresSink extends SerialSink {
  private readonly abort = new AbortController();
  /** set once a message failed: the session is over and nothing after it may be applied */
  private broken: Error | null = null;
  /** subject ▶ the subscriptions it matches (subjects repeat: matched once each) */
  private readonly routes = new Map<string, SubscribeRule[]>();

  constructor(private readonly opts: PostgresSinkOptions) {
    super(opts.maxQueued);
  }

  check(): null {
    return null;
  }

  /** The session is over: stop retrying; what is queued is read again from the slot by the next one. */
  close(): void {
    this.abort.abort();
    this.opts.webhooks?.close();
  }

  /** The subscriptions whose subject captures `subject`, in configuration order. */
  private rulesFor(subject: string): SubscribeRule[] {
    let r = this.routes.get(subject);
    if (r === undefined) {
      r = this.opts.subscribe.filter((s) => subjectMatches(s.subject, subject));
      if (this.routes.size > 10_000) this.routes.clear();
      this.routes.set(subject, r);
    }
    return r;
  }

  /**
   * A run applied in one transaction: consecutive messages that each match exactly one
   * subscription, the same one, with distinct event ids, at most its `batch`. Its handler then
   * sees them in commit order as it would one by one; a message that matches several
   * subscriptions, none, or a webhook action is handled alone, as always.
   */
  protected override runLength(at: (i: number) => OutboundMessage | undefined): number {
    const head = at(0);
    if (head === undefined || this.broken !== null || this.opts.webhooks?.accepts(head.subject)) return 1;
    const rules = this.rulesFor(head.subject);
    if (rules.length !== 1) return 1;
    const rule = rules[0]!;
    const ids = new Set([head.eventId]);
    let n = 1;
    for (let m = at(n); m !== undefined && n < rule.batch; m = at(++n)) {
      if (ids.has(m.eventId) || this.opts.webhooks?.accepts(m.subject)) break;
      const r = this.rulesFor(m.subject);
      if (r.length !== 1 || r[0] !== rule) break;
      ids.add(m.eventId);
    }
    return n;
  }

  /**
   * All of the run in one statement and one transaction (the inbox's consume_batch_fast). When a
   * handler call fails nothing of it is applied, and the run is handled again one message at a
   * time, with the retries, dead letters and session end that {@link handle} gives each.
   */
  protected override async handleRun(msgs: readonly OutboundMessage[]): Promise<SerialResult[]> {
    const rule = this.rulesFor(msgs[0]!.subject)[0]!;
    if (this.abort.signal.aborted) return msgs.map(() => new Error('handler call interrupted: the session is over'));
    try {
      const results = await this.opts.inbox.processAll(
        rule.consumer,
        rule.handler,
        msgs.map((m) => ({ eventId: m.eventId, subject: m.subject, body: m.body.toString('utf8') })),
      );
      return results.map((r) => {
        this.opts.onOutcome(rule.consumer, r.outcome, r.seconds);
        return r.outcome === 'duplicate' ? 'duplicate' : undefined;
      });
    } catch {
      return super.handleRun(msgs);
    }
  }

  /** Once a message failed, the session is over: nothing after it may be applied. */
  protected async handle(msg: OutboundMessage): Promise<SerialResult> {
    const r = this.broken ?? (await this.applyAll(msg));
    if (r instanceof Error) this.broken ??= r;
    return r;
  }

  /** Every matching handler applied (or dead-lettered); 'duplicate' when each had been applied before. */
  private async applyAll(msg: OutboundMessage): Promise<SerialResult> {
    const webhooks = this.opts.webhooks;
    if (webhooks?.accepts(msg.subject)) return webhooks.deliver(msg);
    const rules = this.rulesFor(msg.subject);
    if (rules.length === 0) {
      this.opts.onIgnored(msg);
      return undefined;
    }
    let duplicates = 0;
    for (const rule of rules) {
      const r = await this.apply(rule, msg);
      if (r instanceof Error) return r;
      if (r === 'duplicate') duplicates++;
    }
    return duplicates === rules.length ? 'duplicate' : undefined;
  }

  /** Applies one subscription's handler to one message: applied ('duplicate': already), or dead-lettered; else an error. */
  private async apply(rule: SubscribeRule, msg: OutboundMessage): Promise<Error | undefined | 'duplicate'> {
    const { inbox, log } = this.opts;
    const body = msg.body.toString('utf8');
    let failures = 0;
    let transient = 0;
    for (;;) {
      if (this.abort.signal.aborted) return new Error('handler call interrupted: the session is over');
      const started = performance.now();
      try {
        const outcome = await inbox.process(rule.consumer, msg.eventId, msg.subject, rule.handler, body);
        this.opts.onOutcome(rule.consumer, outcome, (performance.now() - started) / 1000);
        return outcome === 'duplicate' ? 'duplicate' : undefined;
      } catch (err) {
        const seconds = (performance.now() - started) / 1000;
        if (isTransient(err)) {
          const code = (err as { code?: string }).code;
          // no SQLSTATE: the connection broke; the session ends and re-reads once PostgreSQL is back
          if (code === undefined || code.startsWith('08') || code.startsWith('57P') || ++transient > IN_PLACE_RETRIES)
            return new Error(`handler ${rule.handler} (${rule.consumer}): ${errorMessage(err)}`);
          await sleep(backoffDelay(transient, 100, 2_000), this.abort.signal);
          continue;
        }
        failures++;
        this.opts.onOutcome(rule.consumer, 'failed', seconds);
        const reason = `${(err as { code?: string }).code ?? ''} ${errorMessage(err)}`.trim();
        if (failures >= rule.max_deliver || isUnstorable(err)) {
          try {
            await this.opts.deadLetters.write({
              direction: 'inbound',
              eventId: msg.eventId,
              subject: msg.subject,
              consumer: rule.consumer,
              handler: rule.handler,
              headers: msg.headers,
              body,
              error: reason,
              attempts: failures,
            });
          } catch (e) {
            return new Error(`could not record a dead letter: ${errorMessage(e)}`);
          }
          this.opts.onOutcome(rule.consumer, 'dead_lettered');
          log.warn({ consumer: rule.consumer, event_id: msg.eventId, subject: msg.subject, error: reason }, 'inbound event dead-lettered');
          return undefined;
        }
        if (failures === 1) log.warn({ consumer: rule.consumer, event_id: msg.eventId, err: reason }, 'handler failed; retrying');
        await sleep(this.backoff(rule, failures), this.abort.signal);
      }
    }
  }

  /** Delay before the next attempt after `failures` handler failures: `backoff`, else exponential (as the NATS worker). */
  private backoff(rule: SubscribeRule, failures: number): number {
    const b = rule.backoff;
    return b.length > 0 ? b[Math.min(failures - 1, b.length - 1)]! : Math.min(30_000, 1000 * 2 ** Math.max(0, failures - 1));
  }
}
