/**
 * backend = "redis", inbound: each `[[observers.subscribe]]` is a consumer group (named as the NATS
 * durable consumer is: `consumer`) on the subject's stream key, read by `concurrency` readers (Redis
 * consumers `<host>-<pid>-<n>`, each with its own connection for its blocking read). Entries are
 * applied in batches through the inbox exactly as JetStream messages are (inbox row and handler
 * call in one transaction) and acknowledged (XACK) after the COMMIT.
 *
 * - An entry left pending longer than `ack_wait` (its reader died, or was cut off) is claimed by
 *   another reader (XAUTOCLAIM) and delivered again: the inbox makes it a duplicate if it had been
 *   applied. While a reader works on an entry it keeps it fresh (XCLAIM … JUSTID resets its idle time).
 * - The delivery count (XPENDING's, incremented by every claim) enforces `max_deliver`: an entry
 *   whose handler failed that many times goes to the dead-letter table and is acknowledged.
 * - A failed entry below that is retried by the same reader after its backoff (`backoff`, else
 *   exponential), claimed anew so that its count grows.
 */
import { hostname } from 'node:os';
import type { Config, RedisConfig, SubscribeRule } from '../config/load.js';
import type { Logger } from '../util/log.js';
import { storableKey, type DeadLetter, type DeadLetterWriter } from '../sink/deadletter.js';
import { errorMessage } from '../util/errors.js';
import { backoffDelay } from '../util/backoff.js';
import { sleep, within } from '../util/sleep.js';
import { redisErrorCode, type RedisLink } from '../sink/redis-client.js';
import { BODY_FIELD, streamKey } from '../sink/redis.js';
import { SIGNATURE_HEADER, type MessageKeys } from '../sink/signing.js';
import type { BatchResult, InboxExecutor } from './inbox.js';
import { isTransient, isUnstorable } from './sqlerrors.js';
import type { HandlerOutcome } from './worker.js';

/** An entry as XREADGROUP / XAUTOCLAIM / XCLAIM answer it (RESP2): its id and its flat field list. */
type RawEntry = [id: string, fields: string[] | null];

interface Entry {
  id: string;
  fields: Record<string, string>;
  /** deliveries so far, this one included */
  deliveries: number;
}

/** Pending entries looked at for the redelivered count (XPENDING's first this many). */
const PENDING_SCAN = 10_000;

/** A consumer group in the fields of a NATS consumer. */
export interface RedisGroupState {
  /** entries not yet delivered to the group (`lag`, Redis 7); null when Redis cannot tell (entries deleted out of order) */
  lag: number | null;
  /** its pending-entries list: delivered, not acknowledged */
  ackPending: number;
  /** entries of that list delivered more than once (the first 10,000 looked at) */
  redelivered: number;
}

/**
 * One consumer group of one stream (XINFO GROUPS, XPENDING). Rejects naming the stream or the
 * group when either does not exist yet.
 */
export async function redisGroupState(redis: RedisLink, key: string, group: string): Promise<RedisGroupState> {
  const groups = await redis.sendCommand<(string | number | null)[][]>(['XINFO', 'GROUPS', key]).catch((err: unknown) => {
    throw new Error(/no such key/i.test(errorMessage(err)) ? `stream ${JSON.stringify(key)} does not exist yet` : errorMessage(err));
  });
  let info: Map<string, string | number | null> | null = null;
  for (const g of groups) {
    const m = new Map<string, string | number | null>();
    for (let i = 0; i + 1 < g.length; i += 2) m.set(String(g[i]), g[i + 1]!);
    if (m.get('name') === group) info = m;
  }
  if (!info) throw new Error(`no consumer group ${group} on stream ${JSON.stringify(key)} yet (the relay creates it when it starts)`);
  const lag = info.get('lag');
  const ackPending = Number(info.get('pending') ?? 0);
  const entries =
    ackPending === 0
      ? []
      : await redis.sendCommand<[string, string, number, number][]>(['XPENDING', key, group, '-', '+', String(PENDING_SCAN)]);
  return {
    lag: lag === undefined || lag === null ? null : Number(lag),
    ackPending,
    redelivered: entries.filter((e) => Number(e[3]) > 1).length,
  };
}

/** The subscriptions' consumer groups that exist, for the metrics: pending = lag + pending list. */
export async function redisGroups(
  redis: RedisLink,
  config: Config,
): Promise<{ consumer: string; stream: string; pending: number; redelivered: number }[]> {
  const out: { consumer: string; stream: string; pending: number; redelivered: number }[] = [];
  for (const sub of config.observers.subscribe) {
    const key = streamKey(config.relay.redis, sub.subject);
    let g: RedisGroupState;
    try {
      g = await redisGroupState(redis, key, sub.consumer);
    } catch {
      continue; // no stream or group yet
    }
    out.push({ consumer: sub.consumer, stream: key, pending: (g.lag ?? 0) + g.ackPending, redelivered: g.redelivered });
  }
  return out;
}

/** Creates the consumer group (reading the stream from its start) unless it exists. */
async function ensureGroup(redis: RedisLink, key: string, group: string): Promise<boolean> {
  try {
    await redis.sendCommand(['XGROUP', 'CREATE', key, group, '0', 'MKSTREAM']);
    return true;
  } catch (err) {
    if (redisErrorCode(err) === 'BUSYGROUP') return false;
    throw err;
  }
}

export interface RedisInboundOptions {
  redis: RedisLink;
  config: RedisConfig;
  rule: SubscribeRule;
  inbox: InboxExecutor;
  deadLetters: DeadLetterWriter;
  onOutcome: (consumer: string, outcome: HandlerOutcome, seconds?: number) => void;
  log: Logger;
  keys: MessageKeys | null;
  /** how long a blocking read waits before it looks for stale entries again (default: min(ack_wait / 2, 2 s)) */
  blockMs?: number;
}

/** One subscription's readers. */
export class RedisInboundWorker {
  private stopping = false;
  private readonly readers: Reader[] = [];

  constructor(private readonly o: RedisInboundOptions) {}

  async start(): Promise<void> {
    const { rule, redis, config, log } = this.o;
    const key = streamKey(config, rule.subject);
    if (await ensureGroup(redis, key, rule.consumer)) log.info({ stream: key, group: rule.consumer }, 'consumer group created');
    for (let i = 0; i < rule.concurrency; i++) {
      const r = new Reader(this.o, key, `${hostname()}-${process.pid}-${i}`, () => this.stopping);
      this.readers.push(r);
      r.start();
    }
  }

  async stop(timeoutMs: number): Promise<void> {
    this.stopping = true;
    await within(Promise.all(this.readers.map((r) => r.stop())), timeoutMs);
    for (const r of this.readers) r.close();
  }
}

class Reader {
  private readonly conn: RedisLink;
  private loop: Promise<void> | null = null;
  /** entries taken and not yet acknowledged or dead-lettered: kept fresh while they wait */
  private readonly working = new Set<string>();
  private readonly keepAlive: NodeJS.Timeout;
  private readonly retryTimers = new Set<NodeJS.Timeout>();
  private readonly retries: string[] = [];
  private lastClaim = 0;
  private readonly blockMs: number;

  constructor(
    private readonly o: RedisInboundOptions,
    private readonly key: string,
    private readonly name: string,
    private readonly stopping: () => boolean,
  ) {
    // a blocking read has its own connection: it would hold up every other command on a shared one
    this.conn = o.redis.duplicate();
    // node-redis throws an 'error' event nobody listens to; the shared connection reports the state
    this.conn.on('error', (err: Error) => o.log.debug({ err: errorMessage(err) }, 'reader connection error'));
    this.blockMs = o.blockMs ?? Math.max(50, Math.min(2000, Math.floor(o.rule.ack_wait / 2)));
    this.keepAlive = setInterval(() => void this.refresh(), Math.max(500, Math.floor(o.rule.ack_wait / 2)));
    this.keepAlive.unref();
  }

  start(): void {
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    for (const t of this.retryTimers) clearTimeout(t);
    await this.loop?.catch(() => {});
  }

  close(): void {
    clearInterval(this.keepAlive);
    try {
      this.conn.destroy();
    } catch {
      // closed already
    }
  }

  private get rule(): SubscribeRule {
    return this.o.rule;
  }

  private async run(): Promise<void> {
    const { log } = this.o;
    let attempt = 0;
    await this.conn.connect().catch(() => {});
    while (!this.stopping()) {
      try {
        const entries = await this.next();
        attempt = 0;
        if (entries.length > 0) await this.apply(entries);
      } catch (err) {
        if (this.stopping()) break;
        if (redisErrorCode(err) === 'NOGROUP') {
          // the stream or its group is gone (deleted, or Redis lost its data): create it again
          log.warn({ stream: this.key, group: this.rule.consumer }, 'consumer group missing: creating it again');
          await ensureGroup(this.o.redis, this.key, this.rule.consumer).catch(() => {});
        } else if (attempt === 0) {
          log.warn({ consumer: this.rule.consumer, err: errorMessage(err) }, 'reading from Redis failed; retrying');
        }
        await sleep(backoffDelay(attempt++, 200, 5_000));
      }
    }
  }

  /** The next entries: retries due, stale entries of dead readers, else new ones (blocking a while). */
  private async next(): Promise<Entry[]> {
    const { rule } = this;
    const due = this.retries.splice(0, rule.batch);
    if (due.length > 0)
      return this.counted(await this.conn.sendCommand<RawEntry[]>(['XCLAIM', this.key, rule.consumer, this.name, '0', ...due]));
    if (Date.now() - this.lastClaim >= this.blockMs) {
      this.lastClaim = Date.now();
      const r = await this.conn.sendCommand<[string, RawEntry[], string[]?]>([
        'XAUTOCLAIM',
        this.key,
        rule.consumer,
        this.name,
        String(rule.ack_wait),
        '0-0',
        'COUNT',
        String(rule.batch),
      ]);
      if (r[1].length > 0) {
        this.o.log.info({ consumer: rule.consumer, entries: r[1].length }, 'claimed entries pending longer than ack_wait');
        return this.counted(r[1]);
      }
    }
    const r = await this.conn.sendCommand<[string, RawEntry[]][] | null>([
      'XREADGROUP',
      'GROUP',
      rule.consumer,
      this.name,
      'COUNT',
      String(rule.batch),
      'BLOCK',
      String(this.blockMs),
      'STREAMS',
      this.key,
      '>',
    ]);
    if (r === null || r.length === 0) return [];
    return parse(r[0]![1], () => 1);
  }

  /** Claimed entries with their delivery counts (XPENDING over their range). */
  private async counted(raw: RawEntry[]): Promise<Entry[]> {
    const live = raw.filter((e) => e[1] !== null);
    // an entry trimmed away while pending has no fields: nothing to apply, acknowledge it
    const gone = raw.filter((e) => e[1] === null).map((e) => e[0]);
    if (gone.length > 0) await this.conn.sendCommand(['XACK', this.key, this.rule.consumer, ...gone]);
    if (live.length === 0) return [];
    const first = live[0]![0];
    const last = live.at(-1)![0];
    const pending = await this.conn.sendCommand<[string, string, number, number][]>([
      'XPENDING',
      this.key,
      this.rule.consumer,
      first,
      last,
      String(Math.max(live.length, 10) * 4),
      this.name,
    ]);
    const counts = new Map(pending.map((p) => [p[0], Number(p[3])]));
    return parse(live, (id) => counts.get(id) ?? 1);
  }

  /** Applies a batch in one transaction, then acknowledges, retries or dead-letters each entry. */
  private async apply(entries: Entry[]): Promise<void> {
    const { rule, log } = this.o;
    const events: { e: Entry; eventId: string; body: string }[] = [];
    for (const e of entries) {
      this.working.add(e.id);
      const eventId = storableKey(e.fields['Fraiseql-Event-Id'] || `${this.key}:${e.id}`);
      const body = e.fields[BODY_FIELD];
      if (this.o.keys !== null) {
        const refused = this.o.keys.verify(
          e.fields['Fraiseql-Event-Id'],
          rule.subject,
          Buffer.from(body ?? '', 'utf8'),
          e.fields[SIGNATURE_HEADER],
        );
        if (refused !== null) {
          // under its stream position, not the id it claims (see worker.ts)
          await this.deadLetter(e, `unverified:${this.key}:${e.id}`, body ?? '', refused);
          continue;
        }
      }
      if (body === undefined) {
        await this.deadLetter(e, eventId, '', `the entry has no "${BODY_FIELD}" field`);
        continue;
      }
      try {
        JSON.parse(body);
      } catch (err) {
        await this.deadLetter(e, eventId, body, `message body is not JSON: ${(err as Error).message}`);
        continue;
      }
      events.push({ e, eventId, body });
    }
    if (events.length === 0) return;
    let results: BatchResult[];
    for (let attempt = 0; ; attempt++) {
      try {
        results = await this.o.inbox.processBatch(
          rule.consumer,
          rule.handler,
          events.map((x) => ({ eventId: x.eventId, subject: rule.subject, body: x.body, key: null })),
        );
        break;
      } catch (err) {
        if (this.stopping()) return; // left pending: claimed again after ack_wait
        if (attempt === 0)
          log.warn({ consumer: rule.consumer, events: events.length, err: errorMessage(err) }, 'the batch failed as a whole; retrying it');
        await sleep(backoffDelay(attempt, 200, 5_000));
      }
    }
    const ack: string[] = [];
    for (let i = 0; i < events.length; i++) {
      const { e, eventId, body } = events[i]!;
      const r = results[i];
      if (r === undefined || r.outcome === 'skipped') {
        this.retryLater(e.id, backoffDelay(0, 100, 1_000));
        continue;
      }
      if (r.outcome !== 'failed') {
        ack.push(e.id);
        this.o.onOutcome(rule.consumer, r.outcome, r.seconds);
        continue;
      }
      const err = { code: r.sqlstate, message: r.message };
      if (isTransient(err)) {
        this.retryLater(e.id, backoffDelay(0, 100, 1_000));
        continue;
      }
      this.o.onOutcome(rule.consumer, 'failed', r.seconds);
      const reason = `${r.sqlstate} ${r.message}`.trim();
      if (e.deliveries >= rule.max_deliver || isUnstorable(err)) {
        await this.deadLetter(e, eventId, body, reason);
      } else {
        log.debug({ consumer: rule.consumer, event_id: eventId, deliveries: e.deliveries, err: reason }, 'handler failed; will be retried');
        this.retryLater(e.id, this.backoff(e.deliveries));
      }
    }
    await this.ack(ack);
  }

  /** XACK after the COMMIT; a failed XACK leaves them pending: redelivered after ack_wait, inbox duplicates then. */
  private async ack(ids: string[]): Promise<void> {
    if (ids.length === 0) return;
    for (const id of ids) this.working.delete(id);
    try {
      await this.conn.sendCommand(['XACK', this.key, this.rule.consumer, ...ids]);
    } catch (err) {
      this.o.log.warn({ consumer: this.rule.consumer, err: errorMessage(err) }, 'XACK failed: the entries come again after ack_wait');
    }
  }

  private backoff(failures: number): number {
    const b = this.rule.backoff;
    return b.length > 0 ? b[Math.min(failures - 1, b.length - 1)]! : Math.min(30_000, 1000 * 2 ** Math.max(0, failures - 1));
  }

  private retryLater(id: string, delay: number): void {
    const t = setTimeout(() => {
      this.retryTimers.delete(t);
      this.retries.push(id);
    }, delay);
    this.retryTimers.add(t);
  }

  /** Records the poison entry, then acknowledges it. */
  private async deadLetter(e: Entry, eventId: string, body: string, error: string): Promise<void> {
    const { rule, log } = this.o;
    const headers: Record<string, string> = {};
    for (const k in e.fields) if (k !== BODY_FIELD) headers[k] = e.fields[k]!;
    const entry: DeadLetter = {
      direction: 'inbound',
      eventId,
      subject: rule.subject,
      consumer: rule.consumer,
      handler: rule.handler,
      headers,
      body,
      error,
      attempts: e.deliveries,
    };
    for (let attempt = 0; ; attempt++) {
      try {
        await this.o.deadLetters.write(entry);
        break;
      } catch (err) {
        if (this.stopping()) return; // left pending
        if (attempt === 0) log.warn({ err: errorMessage(err) }, 'cannot record a dead letter yet; retrying');
        await sleep(backoffDelay(attempt, 200, 5_000));
      }
    }
    await this.ack([e.id]);
    this.o.onOutcome(rule.consumer, 'dead_lettered');
    log.warn({ consumer: rule.consumer, event_id: eventId, subject: rule.subject, error }, 'inbound event dead-lettered');
  }

  /** Entries being worked on are claimed again by this reader (JUSTID: the count stays): their idle time restarts. */
  private async refresh(): Promise<void> {
    const ids = [...this.working, ...this.retries];
    if (ids.length === 0) return;
    try {
      await this.o.redis.sendCommand(['XCLAIM', this.key, this.rule.consumer, this.name, '0', ...ids, 'JUSTID']);
    } catch {
      // Redis unreachable: the entries may be claimed by another reader after ack_wait (the inbox keeps them once)
    }
  }
}

function parse(raw: RawEntry[], deliveries: (id: string) => number): Entry[] {
  const out: Entry[] = [];
  for (const [id, flat] of raw) {
    if (flat === null) continue;
    const fields: Record<string, string> = {};
    for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!;
    out.push({ id, fields, deliveries: deliveries(id) });
  }
  return out;
}
