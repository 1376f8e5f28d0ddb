import type { Config } from '../config/load.js';
import type { Logger } from '../util/log.js';
import { AckWatermark, type TxnTicket } from './watermark.js';
import { ReplicationConnection } from '../source/replication.js';
import type { Decoder } from '../source/decoder.js';
import type { PgoutputMessage, Relation } from '../source/types.js';
import { createDecoder } from '../source/plugin.js';
import { parseFrame, xlogMessage, xlogStartText } from '../source/frames.js';
import { formatLsn, PG_EPOCH_OFFSET_MS } from '../source/lsn.js';
import type { Router, RouterFor } from '../route/router.js';
import type { OutboundMessage, Sink } from '../sink/sink.js';
import type { DeadLetterWriter } from '../sink/deadletter.js';
import { errorMessage, PublishFailedError, RelayError } from '../util/errors.js';
import { UndeliverableError } from '../sink/limits.js';
import { heartbeatTime } from './heartbeat.js';
import { BACKFILL_PREFIX, type BackfillWindows } from '../backfill/windows.js';
import { sleep, within } from '../util/sleep.js';

type RowMessage = Extract<PgoutputMessage, { tag: 'insert' | 'update' | 'delete' }>;

/**
 * Per relay (keyed by the stats object its sessions share): the message ids (`<event id>:<subject>`)
 * a session had sent without an answer when it failed, or whose answer never came. JetStream may
 * have stored them: when the answer of a failed session's message still comes, it settles the
 * question; when the next session's re-send is acknowledged as a duplicate first, that is the first
 * acknowledgement this relay sees for it, so it counts as its publication. Bounded; emptied as the
 * answers come.
 */
const unacknowledged = new WeakMap<OutboundStats, Set<string>>();
const MAX_UNACKNOWLEDGED = 100_000;

export interface OutboundStats {
  /** messages JetStream stored (a re-sent duplicate is not counted) */
  published: number;
  /** re-sent messages JetStream already held (after a reconnect): acknowledged, not stored again */
  duplicates?: number;
  unrouted: number;
  deadLettered: number;
  transactions: number;
}

export interface OutboundDeps {
  config: Config;
  log: Logger;
  sink: Sink;
  deadLetters: DeadLetterWriter;
  database: string;
  stats: OutboundStats;
  /** called with each newly durable position */
  onDurable?: (lsn: bigint) => void;
  /** a heartbeat's transaction became durable: it was emitted at `emittedAt` (ms) */
  onHeartbeat?: (emittedAt: number) => void;
  /** a message was acknowledged by the sink and stored (not called for a re-sent duplicate) */
  onPublished?: (msg: OutboundMessage) => void;
  /** a message could never be published and was recorded in the dead-letter table */
  onDeadLetter?: (msg: OutboundMessage) => void;
  /** a change was read that no rule routes */
  onUnrouted?: () => void;
  /** the publications streamed (pgoutput reads them; wal2json is given their tables) */
  publications: string[];
  /** which router a relation's changes go to */
  routerFor: RouterFor;
  /** backfill chunks in progress: their watermarks and the changes of their tables */
  backfill?: BackfillWindows;
}

/**
 * One replication session: source ▶ route ▶ sink ▶ ack. It ends when stopped (resolves) or at
 * the first failure (rejects); the caller then reconnects from the slot's confirmed position,
 * so nothing is ever retried out of order.
 */
export class OutboundSession {
  private conn!: ReplicationConnection;
  private decoder!: Decoder;
  private readonly watermark: AckWatermark;
  /** relation id ▶ its router (null: nothing watches it), learned from Relation messages */
  private readonly routers = new Map<number, Router | null>();
  private txn: TxnTicket | null = null;
  private commitTime = 0n;
  private commitMs = 0;
  private failure: Error | null = null;
  private stopping = false;
  private paused = false;
  private asyncWork: Promise<void> | null = null;
  private settleRun!: (err?: Error) => void;
  private readonly finished: Promise<void>;
  /** messages sent and not yet answered (for {@link unacknowledged} when the session fails) */
  private readonly sending = new Set<OutboundMessage>();

  constructor(private readonly deps: OutboundDeps) {
    this.watermark = new AckWatermark(
      0n,
      (lsn) => {
        this.conn.confirm(lsn);
        deps.onDurable?.(lsn);
      },
      (at) => deps.onHeartbeat?.(at),
    );
    this.finished = new Promise<void>((resolve, reject) => {
      this.settleRun = (err) => (err ? reject(err) : resolve());
    });
    this.finished.catch(() => {});
  }

  /** Opens the replication connection and streams until stop() or a failure. */
  async run(): Promise<void> {
    const { config, log } = this.deps;
    this.conn = await ReplicationConnection.open({
      url: config.database.url,
      slot: config.relay.slot,
      plugin: config.relay.plugin,
      publications: this.deps.publications,
      log,
    });
    this.decoder = createDecoder(config.relay.plugin, this.conn.tables);
    if (this.stopping) {
      // stop() came while connecting: nothing was read, leave the slot as it is
      await this.conn.close();
      return;
    }
    log.info({ slot: config.relay.slot }, 'replication connected');
    const stream = this.conn.stream;
    stream.on('data', (buf: Buffer) => this.onData(buf));
    void this.conn.ended.then((err) => {
      if (err) this.fail(err);
    });
    try {
      await this.finished;
    } finally {
      if (this.failure) this.conn.abort();
    }
  }

  /** Stops reading, waits (bounded) for in-flight messages, sends the final confirmation. */
  async stop(timeoutMs: number): Promise<void> {
    if (this.stopping || this.failure) return;
    this.stopping = true;
    this.conn?.stream.pause();
    const deadline = Date.now() + timeoutMs;
    if (this.asyncWork)
      await within(
        this.asyncWork.catch(() => {}),
        timeoutMs,
      );
    while (!this.watermark.idle && this.watermark.backlog > 0 && Date.now() < deadline && !this.failure) {
      if (this.watermark.open && this.deps.sink.messagesInFlight === 0) break; // a partial txn cannot complete
      await sleep(10);
    }
    const drained = this.watermark.open === null && this.watermark.backlog === 0;
    this.deps.log.info(
      { confirmed: formatLsn(this.watermark.durableLsn), drained, inFlight: this.deps.sink.messagesInFlight },
      'outbound stopped',
    );
    await this.conn?.close();
    this.deps.backfill?.sessionEnded();
    this.settleRun();
  }

  get sinkInFlight(): { messages: number; bytes: number } {
    const s = this.deps.sink;
    return { messages: s.messagesInFlight, bytes: s.bytesInFlight };
  }

  /** Ends the session at once without a final confirmation (leadership lost). */
  abort(reason: string): void {
    this.fail(new Error(reason));
  }

  private fail(err: Error): void {
    if (this.failure || this.stopping) return;
    this.failure = err;
    for (const m of this.sending) this.unanswered(m);
    this.sending.clear();
    this.conn?.stream.pause();
    this.deps.backfill?.sessionEnded();
    this.settleRun(err);
  }

  private resume(): void {
    if (!this.paused || this.failure || this.stopping || this.asyncWork) return;
    if (!this.deps.sink.hasCapacity) {
      this.deps.sink.waitForCapacity().then(
        () => this.resume(),
        () => {},
      );
      return;
    }
    this.paused = false;
    this.conn.stream.resume();
  }

  private pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.conn.stream.pause();
  }

  private onData(buf: Buffer): void {
    if (this.failure || this.stopping) return;
    try {
      const work = this.handleFrame(buf);
      if (work) {
        this.pause();
        this.asyncWork = work;
        work.then(
          () => {
            this.asyncWork = null;
            this.resume();
          },
          (err: unknown) => this.fail(err instanceof Error ? err : new Error(String(err))),
        );
      } else if (!this.deps.sink.hasCapacity) {
        this.pause();
        this.deps.sink.waitForCapacity().then(
          () => this.resume(),
          () => {},
        );
      }
    } catch (err) {
      this.fail(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private handleFrame(buf: Buffer): Promise<void> | undefined {
    const data = xlogMessage(buf);
    if (data === null) {
      const f = parseFrame(buf);
      if (f.kind === 'keepalive') {
        this.watermark.idleAdvance(f.walEnd);
        if (f.replyRequested) this.conn.sendStatus(false);
      }
      return undefined;
    }
    const m = this.decoder.decode(data);
    switch (m.tag) {
      case 'begin':
        this.txn = this.watermark.begin(m.xid);
        this.commitTime = m.commitTime;
        this.commitMs = Number(m.commitTime / 1000n) + PG_EPOCH_OFFSET_MS;
        return undefined;
      case 'commit': {
        const t = this.txn;
        if (!t) throw new Error(`pgoutput Commit at ${formatLsn(m.endLsn)} without Begin`);
        this.txn = null;
        this.deps.stats.transactions++;
        this.watermark.commit(t, m.endLsn);
        return undefined;
      }
      case 'relation': {
        const rel = m.relation;
        this.routers.set(rel.id, this.deps.routerFor(rel));
        return undefined;
      }
      case 'insert':
      case 'update':
      case 'delete': {
        let router = this.routers.get(m.relationId);
        if (router === undefined) {
          // a decoder that announces relations implicitly (wal2json) is routed on first sight
          const rel = this.decoder.relation(m.relationId);
          router = rel ? this.deps.routerFor(rel) : null;
          this.routers.set(m.relationId, router);
        }
        if (router === null) return undefined;
        const t = this.txn;
        if (!t) throw new Error(`pgoutput ${m.tag} outside a transaction`);
        const rel = this.decoder.relation(m.relationId)!;
        const r = router;
        // a router that must first read the catalog: the stream stays paused until it has
        const lsn = xlogStartText(buf);
        const ready = r.prepare?.(rel);
        if (ready) return ready.then(() => this.routeChange(r, rel, m, t, lsn));
        return this.routeChange(r, rel, m, t, lsn);
      }
      case 'message': {
        const t = this.txn;
        if (m.transactional && t) {
          if (m.prefix === BACKFILL_PREFIX && this.deps.backfill) {
            // a chunk's high watermark: its rows go out here, in this transaction, in stream order
            const reads = this.deps.backfill.marker(m.content, t, { lsn: xlogStartText(buf), xid: t.xid, commitTime: this.commitTime });
            return reads === null || reads.length === 0 ? undefined : this.send(t, reads);
          }
          const at = heartbeatTime(m.prefix, m.content);
          if (at !== null) t.heartbeatAt = at;
        }
        return undefined;
      }
      default:
        // origin, type, truncate, unknown tags: not needed here
        return undefined;
    }
  }

  private routeChange(router: Router, relation: Relation, m: RowMessage, t: TxnTicket, lsn: string): Promise<void> | undefined {
    const newTuple = m.tag === 'delete' ? null : m.newTuple;
    const oldTuple = m.tag === 'insert' ? null : (m.oldTuple ?? m.keyTuple);
    const backfill = this.deps.backfill;
    if (backfill?.active) backfill.noteChange(relation, newTuple, oldTuple, t.xid);
    const routed = router.route({
      op: m.tag === 'insert' ? 'INSERT' : m.tag === 'update' ? 'UPDATE' : 'DELETE',
      relation,
      newTuple,
      oldTuple,
      oldIsKey: m.tag !== 'insert' && m.oldTuple === null,
      lsn,
      xid: t.xid,
      commitTime: this.commitTime,
    });
    if (routed.unrouted) {
      this.deps.stats.unrouted++;
      this.deps.onUnrouted?.();
      return undefined;
    }
    return routed.messages.length === 0 ? undefined : this.send(t, routed.messages);
  }

  /** Publishes messages in order; returns a promise only when a check needs I/O. */
  private send(t: TxnTicket, messages: readonly OutboundMessage[]): Promise<void> | undefined {
    const { sink } = this.deps;
    for (let i = 0; i < messages.length; i++) {
      const msg = messages[i]!;
      // the router's refusal (a reserved header) holds for every sink
      const problem = msg.refused ?? sink.check(msg);
      if (problem === null) {
        this.publish(t, msg);
      } else if (typeof problem === 'string') {
        this.deadLetter(t, msg, problem);
      } else {
        const rest = messages.slice(i + 1);
        return problem.then((p) => {
          if (p === null) this.publish(t, msg);
          else this.deadLetter(t, msg, p);
          const more = this.send(t, rest);
          return more;
        });
      }
    }
    return undefined;
  }

  /**
   * Publishes one message; its transaction's ticket is settled exactly once: when it is
   * acknowledged, or when a refusal that will not change on retry (UndeliverableError) has been
   * written to the dead-letter table. Any other error ends the session unsettled, so the message
   * is read again from the slot, in order.
   */
  private publish(t: TxnTicket, msg: OutboundMessage): void {
    this.watermark.add(t);
    msg.commitMs = this.commitMs;
    this.sending.add(msg);
    this.deps.sink.publish(msg, (err, duplicate) => {
      this.sending.delete(msg);
      if (err instanceof UndeliverableError) this.recordDeadLetter(t, msg, err.reason);
      else if (err) {
        // no answer (a timeout, the connection): JetStream may have stored it; a refusal says it did not
        if (!(err instanceof RelayError)) this.unanswered(msg);
        this.fail(new PublishFailedError(`publish to ${msg.subject} failed: ${errorMessage(err)}`, { cause: err }));
      } else {
        const stats = this.deps.stats;
        // a failed session's message answered late: counted only if JetStream stored it now
        const first = this.answered(msg) && !this.failure;
        if (duplicate === true && !first) stats.duplicates = (stats.duplicates ?? 0) + 1;
        else {
          stats.published++;
          this.deps.onPublished?.(msg);
        }
        // a failed session confirms nothing more: the next one reads this transaction again
        if (!this.failure) this.watermark.settle(t);
      }
    });
  }

  /** Remembers a message whose answer this session will not see (see {@link unacknowledged}). */
  private unanswered(msg: OutboundMessage): void {
    let ids = unacknowledged.get(this.deps.stats);
    if (!ids) unacknowledged.set(this.deps.stats, (ids = new Set()));
    if (ids.size >= MAX_UNACKNOWLEDGED) ids.delete(ids.values().next().value!);
    ids.add(`${msg.eventId}:${msg.subject}`);
  }

  /** Was `msg` sent by a failed session that never saw its answer? (forgets it: it is answered now) */
  private answered(msg: OutboundMessage): boolean {
    const ids = unacknowledged.get(this.deps.stats);
    if (ids === undefined || ids.size === 0) return false;
    return ids.delete(`${msg.eventId}:${msg.subject}`);
  }

  /** A message that can never be published: one more message of `t`, settled once it is recorded. */
  private deadLetter(t: TxnTicket, msg: OutboundMessage, reason: string): void {
    this.watermark.add(t);
    this.recordDeadLetter(t, msg, reason);
  }

  /** Writes the dead letter of a message already counted in `t`, then settles it (a failed write ends the session). */
  private recordDeadLetter(t: TxnTicket, msg: OutboundMessage, reason: string): void {
    // a session that already failed is read again from the slot: the next one records it
    if (this.failure) return;
    this.answered(msg);
    this.deps.log.warn({ event_id: msg.eventId, subject: msg.subject.slice(0, 256), reason }, 'outbound event dead-lettered');
    this.deps.deadLetters
      .write({
        direction: 'outbound',
        eventId: msg.eventId,
        subject: msg.subject,
        headers: msg.headers,
        body: msg.body.toString('utf8'),
        error: reason,
        attempts: 1,
      })
      .then(
        () => {
          this.deps.stats.deadLettered++;
          this.deps.onDeadLetter?.(msg);
          if (!this.failure) this.watermark.settle(t);
        },
        (err: unknown) => this.fail(new Error(`could not record a dead letter: ${errorMessage(err)}`)),
      );
  }
}
