import { hostname } from 'node:os';
import type pg from 'pg';
import type { Config } from '../config/load.js';
import type { Logger } from '../util/log.js';
import { quoteIdent } from '../util/db.js';
import { OutboundSession, type OutboundDeps, type OutboundStats } from './session.js';
import type { OutboundMessage, Sink } from '../sink/sink.js';
import { OutboxRetention } from './retention.js';
import { errorMessage, SlotError, SlotLostError, tlsHint, PublishFailedError } from '../util/errors.js';
import { formatLsn } from '../source/lsn.js';
import { backoffDelay } from '../util/backoff.js';
import { sleep } from '../util/sleep.js';
import { LeaderLock } from '../schema/leader.js';
import { HeartbeatEmitter } from './heartbeat.js';
import { lostSlotMessage, readSlot, slotPool, type SlotStats } from '../schema/slot.js';

export interface RunnerOptions {
  backoffMinMs: number;
  backoffMaxMs: number;
  /** false: no leader election (one relay per slot is guaranteed some other way) */
  leaderElection: boolean;
  /** how often a standby tries to take over */
  leaderPollMs: number;
  /** how often the slot is inspected */
  slotPollMs: number;
}

/** What the outbound side tells its owner, as it happens. */
export interface RunnerEvents {
  /** this relay took over (true) or stood down (false) */
  onActive?: (active: boolean) => void;
  /** the slot may be confirmed up to this position */
  onDurable?: (lsn: bigint) => void;
  /** JetStream (or the webhook) acknowledged a message */
  onPublished?: (msg: OutboundMessage) => void;
  /** a message could never be published: it is in the dead-letter table */
  onDeadLetter?: (msg: OutboundMessage) => void;
  /** a change was read that no rule routes */
  onUnrouted?: () => void;
  /** a heartbeat came back through the whole path, `lagMs` after it was emitted */
  onHeartbeat?: (lagMs: number) => void;
  /** the slot was inspected */
  onSlot?: (s: SlotStats) => void;
  /** the replication session failed and will be reconnected */
  onReconnect?: (cause: 'postgres' | 'nats') => void;
  /** PostgreSQL answered (null) or could not be reached, and why (leader election) */
  onPostgres?: (problem: string | null) => void;
  /** the relay cannot continue (slot invalidated): it should stop and exit non-zero */
  onFatal?: (err: Error) => void;
}

type SessionDeps = Pick<OutboundDeps, 'config' | 'deadLetters' | 'database' | 'publications' | 'routerFor' | 'backfill'>;

/**
 * The outbound side's lifecycle: win the leader lock (or stand by), then keep a replication
 * session running, reconnecting from the slot's confirmed position after any failure, with the
 * heartbeat, outbox retention and the relay_state record alongside. Losing the lock ends the
 * session at once.
 */
export class OutboundRunner {
  readonly stats: OutboundStats = { published: 0, unrouted: 0, deadLettered: 0, transactions: 0 };
  private active = false;
  /** onActive(false) was told for the current standby period */
  private standbyAnnounced = false;
  private stopping = false;
  private session: OutboundSession | null = null;
  private loop: Promise<void> | null = null;
  private wake: (() => void) | null = null;
  private confirmed = 0n;
  private leader: LeaderLock | null = null;
  private readonly heartbeat: HeartbeatEmitter;
  private readonly retention: OutboxRetention;
  private readonly monitor: pg.Pool;
  private timers: NodeJS.Timeout[] = [];
  private lastEvent: OutboundMessage | null = null;
  private lastEventAt = 0;
  private lastHeartbeat: { at: Date; lagMs: number } | null = null;
  private stateDirty = false;
  activeSince = 0;
  lastError: string | null = null;
  /** what the last session failure was about: the replication stream, or publishing to NATS */
  lastFailure: 'postgres' | 'nats' | null = null;
  connected = false;

  constructor(
    private readonly config: Config,
    private readonly base: SessionDeps,
    private readonly makeSink: () => Promise<Sink>,
    private readonly log: Logger,
    private readonly opts: RunnerOptions,
    private readonly events: RunnerEvents = {},
  ) {
    this.heartbeat = new HeartbeatEmitter(config.database.url, config.relay.heartbeat, log.child({ component: 'heartbeat' }));
    this.retention = new OutboxRetention(
      config.database.url,
      config.relay.schema,
      config.relay.retention,
      () => this.confirmed,
      log.child({ component: 'retention' }),
    );
    this.monitor = slotPool(config.database.url);
  }

  get isActive(): boolean {
    return this.active;
  }

  get confirmedLsn(): bigint {
    return this.confirmed;
  }

  get heartbeatBack(): { at: Date; lagMs: number } | null {
    return this.lastHeartbeat;
  }

  get currentSession(): OutboundSession | null {
    return this.session;
  }

  start(): void {
    this.timers.push(setInterval(() => void this.pollSlot(), this.opts.slotPollMs));
    this.timers.push(setInterval(() => void this.writeState(), 2000));
    void this.pollSlot();
    if (!this.opts.leaderElection) {
      this.becomeActive();
      return;
    }
    this.leader = new LeaderLock(
      this.config.database.url,
      this.config.relay.slot,
      this.log.child({ component: 'leader' }),
      () => this.becomeActive(),
      (reason) => this.standDown(reason),
      this.opts.leaderPollMs,
      (problem) => {
        this.events.onPostgres?.(problem);
        // PostgreSQL answered and the lock is another relay's: this one is a standby (said once)
        if (problem === null && !this.active && !this.standbyAnnounced) {
          this.standbyAnnounced = true;
          this.events.onActive?.(false);
        }
      },
    );
    this.log.info({ slot: this.config.relay.slot }, 'standing by until this relay holds the leader lock');
    this.leader.start();
  }

  private becomeActive(): void {
    if (this.stopping || this.active) return;
    this.active = true;
    this.standbyAnnounced = false;
    this.activeSince = Date.now();
    this.events.onActive?.(true);
    this.heartbeat.start();
    this.retention.start();
    this.loop = this.runLoop();
  }

  private standDown(reason: string): void {
    if (!this.active) return;
    this.active = false;
    this.standbyAnnounced = true;
    this.events.onActive?.(false);
    this.heartbeat.stop();
    this.session?.abort(`leadership lost: ${reason}`);
    this.wake?.();
  }

  private async runLoop(): Promise<void> {
    const log = this.log.child({ component: 'outbound' });
    let attempt = 0;
    while (!this.stopping && this.active) {
      const sink = await this.makeSink();
      const session = new OutboundSession({
        ...this.base,
        config: this.config,
        log,
        sink,
        stats: this.stats,
        onDurable: (lsn) => {
          this.confirmed = lsn;
          this.stateDirty = true;
          attempt = 0;
          // progress: the last failure is over
          this.lastError = null;
          this.lastFailure = null;
          this.events.onDurable?.(lsn);
        },
        onHeartbeat: (at) => {
          const lagMs = Date.now() - at;
          this.lastHeartbeat = { at: new Date(), lagMs };
          this.stateDirty = true;
          this.events.onHeartbeat?.(lagMs);
        },
        onPublished: (msg) => {
          this.lastEvent = msg;
          this.lastEventAt = Date.now();
          this.stateDirty = true;
          this.events.onPublished?.(msg);
        },
        onDeadLetter: (msg) => this.events.onDeadLetter?.(msg),
        onUnrouted: () => this.events.onUnrouted?.(),
      });
      this.session = session;
      try {
        this.connected = true;
        await session.run();
        if (this.stopping || !this.active) break;
      } catch (err) {
        this.connected = false;
        if (this.stopping || !this.active) break;
        this.lastFailure = err instanceof PublishFailedError ? 'nats' : 'postgres';
        this.lastError = errorMessage(err) + (this.lastFailure === 'postgres' ? tlsHint(err, '[relay] database_ca_file') : '');
        if (err instanceof SlotLostError) {
          this.fatal(new Error(lostSlotMessage(this.config.relay.slot)));
          break;
        }
        if (err instanceof SlotError) log.error({ err: this.lastError }, 'replication slot unusable; retrying until it is fixed');
        else
          log.warn(
            { err: this.lastError, confirmed: formatLsn(this.confirmed) },
            'outbound stream interrupted; reconnecting from the confirmed position',
          );
        this.events.onReconnect?.(this.lastFailure);
      } finally {
        this.connected = false;
        sink.close();
      }
      this.session = null;
      const delay = backoffDelay(attempt++, this.opts.backoffMinMs, this.opts.backoffMaxMs);
      const wake = new AbortController();
      this.wake = () => wake.abort();
      await sleep(delay, wake.signal);
      this.wake = null;
    }
    this.session = null;
  }

  private fatal(err: Error): void {
    this.log.fatal({ slot: this.config.relay.slot }, err.message);
    this.events.onFatal?.(err);
  }

  private async pollSlot(): Promise<void> {
    try {
      const s = await readSlot(this.monitor, this.config.relay.slot);
      this.events.onSlot?.(s);
      if (s.walStatus === 'lost') {
        this.fatal(new Error(lostSlotMessage(this.config.relay.slot)));
      }
    } catch {
      // PostgreSQL unreachable: the session reports it
    }
  }

  private async writeState(): Promise<void> {
    if (!this.active || !this.stateDirty) return;
    this.stateDirty = false;
    const s = quoteIdent(this.config.relay.schema);
    try {
      await this.monitor.query(
        `INSERT INTO ${s}.relay_state (slot, holder, confirmed_lsn, last_event_id, last_event_subject, last_published_at, heartbeat_at, heartbeat_lag_ms, updated_at)
         VALUES ($1, $2, $3::pg_lsn, $4, $5, $6, $7, $8, now())
         ON CONFLICT (slot) DO UPDATE SET holder = EXCLUDED.holder, confirmed_lsn = EXCLUDED.confirmed_lsn,
           last_event_id = coalesce(EXCLUDED.last_event_id, ${s}.relay_state.last_event_id),
           last_event_subject = coalesce(EXCLUDED.last_event_subject, ${s}.relay_state.last_event_subject),
           last_published_at = coalesce(EXCLUDED.last_published_at, ${s}.relay_state.last_published_at),
           heartbeat_at = coalesce(EXCLUDED.heartbeat_at, ${s}.relay_state.heartbeat_at),
           heartbeat_lag_ms = coalesce(EXCLUDED.heartbeat_lag_ms, ${s}.relay_state.heartbeat_lag_ms),
           updated_at = now()`,
        [
          this.config.relay.slot,
          `${hostname()}/${process.pid}`,
          formatLsn(this.confirmed),
          this.lastEvent?.eventId ?? null,
          this.lastEvent?.subject ?? null,
          this.lastEvent ? new Date(this.lastEventAt) : null,
          this.lastHeartbeat?.at ?? null,
          this.lastHeartbeat?.lagMs ?? null,
        ],
      );
    } catch {
      this.stateDirty = true; // try again next time
    }
  }

  /** Stops reading, waits (bounded) for in-flight acks, confirms, releases the lock. */
  async stop(timeoutMs: number): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.wake?.();
    for (const t of this.timers) clearInterval(t);
    this.heartbeat.stop();
    await this.session?.stop(timeoutMs);
    await this.loop?.catch(() => {});
    this.stateDirty = this.active;
    await this.writeState();
    this.active = false;
    await this.leader?.stop();
    await this.retention.stop();
    await this.heartbeat.close();
    await this.monitor.end().catch(() => {});
  }
}
