import { Registry, Counter, Gauge, Histogram, collectDefaultMetrics } from 'prom-client';

/** Every metric name, the Node default ones included, starts with this. */
export const METRIC_PREFIX = 'fraiseql_relay_';

/** `pg_replication_slots.wal_status` values, each one series of {@link RelayMetrics.slotWalStatus}. */
const WAL_STATUSES = ['reserved', 'extended', 'unreserved', 'lost'] as const;

export interface RelayMetricsOptions {
  now?: () => number;
  /** false: the relay uses no NATS (backend = "webhook"): no `up{target="nats"}` series */
  nats?: boolean;
  /** true: backend = "redis": an `up{target="redis"}` series (and no nats one) */
  redis?: boolean;
  /** true: backend = "postgres": no broker, so no series with a nats or redis target at all */
  postgres?: boolean;
  /** the package version, for `build_info` */
  version?: string;
  /** configured durable consumers: their counters start at 0 */
  consumers?: readonly string[];
  /** configured publish subjects: their counters start at 0 */
  subjects?: readonly string[];
  /** rows of the dead-letter table by direction, read at scrape time */
  deadLetterCounts?: () => Promise<Partial<Record<string, number>>>;
}

const DEAD_LETTER_DIRECTIONS = ['outbound', 'inbound', 'webhook'] as const;
const HANDLER_OUTCOMES = ['applied', 'duplicate', 'failed', 'dead_lettered'] as const;
/** Handler and webhook duration buckets, seconds: 1 ms to 30 s. */
const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** Publish latency buckets, seconds: 0.5 ms to 60 s. */
export const PUBLISH_LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/**
 * The relay's Prometheus metrics, in a registry of their own (never prom-client's global one,
 * so several relays, or tests, in one process do not collide), together with Node's default
 * metrics, all named `fraiseql_relay_*`.
 *
 * Conventions an operator relies on:
 * - `slot_safe_wal_bytes` is -1 when `max_slot_wal_keep_size` is unlimited (PostgreSQL reports
 *   `safe_wal_size` as NULL): alert on `0 <= x < threshold`, never on `x < threshold` alone.
 * - `slot_wal_status{status}` is 1 for the slot's current `wal_status` and 0 for the other
 *   three (all 0 when the slot does not exist); `lost` = 1 means the slot was invalidated.
 * - `confirmed_lsn` is the last confirmed LSN as a number of bytes; a float64 holds it exactly
 *   up to 2^53 (8 PiB of WAL), beyond that the low bits are lost, which is fine for graphs and
 *   rates (use `status` for the exact value).
 * - `last_confirmed_lsn_age_seconds` and `heartbeat_age_seconds` are computed at scrape time;
 *   before the first confirmation (or the first heartbeat back) they count from the moment this
 *   object was created, so a relay that never confirms anything shows a growing age. Only an
 *   active relay confirms: combine with `fraiseql_relay_active == 1` in alerts.
 */
export class RelayMetrics {
  readonly registry: Registry;

  /** Events published to JetStream (acknowledged), by subject. */
  readonly eventsPublished: Counter<'subject'>;
  /** Decoded events that matched no route and were not published. */
  readonly eventsUnrouted: Counter<string>;
  /** Seconds from the event's commit to the JetStream acknowledgement. */
  readonly publishLatency: Histogram<string>;
  /** Publish failures; kind is 'transient' (retried) or 'permanent'. */
  readonly publishErrors: Counter<'kind'>;

  /** Messages published but not yet acknowledged. */
  readonly inFlightMessages: Gauge<string>;
  /** Payload bytes published but not yet acknowledged. */
  readonly inFlightBytes: Gauge<string>;

  /** Bytes between the server's current WAL position and the slot's confirmed position. */
  readonly slotLagBytes: Gauge<string>;
  /** WAL bytes the slot keeps on disk (from restart_lsn). */
  readonly slotRetainedBytes: Gauge<string>;
  /** Remaining WAL budget before the slot is invalidated (safe_wal_size); -1 when unlimited. */
  readonly slotSafeWalBytes: Gauge<string>;
  /** 1 for the slot's current wal_status, 0 for the others. */
  readonly slotWalStatus: Gauge<'status'>;
  /** Seconds since the relay last confirmed an LSN to PostgreSQL (computed at scrape). */
  readonly lastConfirmedLsnAgeSeconds: Gauge<string>;
  /** Last confirmed LSN as a number (exact up to 2^53). */
  readonly confirmedLsn: Gauge<string>;

  /** End-to-end heartbeat lag: emitted in PostgreSQL → decoded → published/confirmed. */
  readonly heartbeatLagSeconds: Gauge<string>;
  /** Seconds since the last heartbeat came back (computed at scrape). */
  readonly heartbeatAgeSeconds: Gauge<string>;

  /** Inbound handler calls by consumer and outcome (applied|duplicate|failed|dead_lettered). */
  readonly handlerCalls: Counter<'consumer' | 'outcome'>;
  /** Messages written to a dead-letter destination, by direction (e.g. outbound|inbound|webhook). */
  readonly deadLetters: Counter<'direction'>;
  /** Webhook deliveries by outcome (delivered|retried|dead_lettered). */
  readonly webhookDeliveries: Counter<'outcome'>;
  /** JetStream consumer num_pending, by consumer. */
  readonly consumerPending: Gauge<'consumer'>;
  /** JetStream consumer num_redelivered, by consumer. */
  readonly consumerRedelivered: Gauge<'consumer'>;
  /** 1 while a configured durable consumer does not exist (its stream was lost), else 0. */
  readonly consumerMissing: Gauge<'consumer'>;

  /** Reconnections, by target (postgres|nats). */
  readonly reconnects: Counter<'target'>;
  /** 1 while this replica is the active relay (the leader), 0 while standby. */
  readonly active: Gauge<string>;
  /** The same as `active`, under the name operators look for. */
  readonly leader: Gauge<string>;
  /** 1 while connected to the target (postgres|nats), else 0. */
  readonly up: Gauge<'target'>;
  /** Always 1, labelled with the version. */
  readonly buildInfo: Gauge<'version' | 'node_version'>;
  /** Seconds per inbound handler call, by consumer. */
  readonly handlerDuration: Histogram<'consumer'>;
  /** Seconds per webhook request. */
  readonly webhookDuration: Histogram<string>;
  /** Rows in the dead-letter table, by direction. */
  readonly deadLetterBacklog: Gauge<'direction'>;
  /** Seconds since the newest commit known to be published (heartbeat-based). */
  readonly lagSeconds: Gauge<string>;
  /** Rows of backfills done, by result (published as READ events, skipped because they changed while read). */
  readonly backfillRows: Counter<'result'>;
  /** Rows the running backfill has still to read (0 when none runs). */
  readonly backfillRemaining: Gauge<string>;

  private readonly now: () => number;
  private readonly pendingPublished = new Map<string, number>();
  private lastLatencySample = 0;
  private lastConfirmedAt: number;
  private lastHeartbeatAt: number;
  /** emission time (ms) of the newest heartbeat that came back; null while none did, or on a standby */
  private heartbeatEmittedAt: number | null = null;

  constructor(opts: RelayMetricsOptions = {}) {
    this.now = opts.now ?? Date.now;
    this.lastConfirmedAt = this.now();
    this.lastHeartbeatAt = this.lastConfirmedAt;
    const register = new Registry();
    this.registry = register;
    // Node's process metrics under their standard names (process_*, nodejs_*), as stock dashboards expect
    collectDefaultMetrics({ register });
    const reg = [register];
    const p = METRIC_PREFIX;
    // collect callbacks run at scrape time; arrow functions reach this object's timestamps
    const ageOf = (at: number) => Math.max(0, (this.now() - at) / 1000);

    this.eventsPublished = new Counter({
      name: `${p}events_published_total`,
      help: 'Events published to JetStream and acknowledged, by subject',
      labelNames: ['subject'] as const,
      registers: reg,
      // counts of published() are added at scrape time: one map update per event instead of a label lookup
      collect: () => {
        for (const [subject, n] of this.pendingPublished) this.eventsPublished.inc({ subject }, n);
        this.pendingPublished.clear();
      },
    });
    this.eventsUnrouted = new Counter({
      name: `${p}events_unrouted_total`,
      help: 'Decoded events that matched no route and were not published',
      registers: reg,
    });
    this.publishLatency = new Histogram({
      name: `${p}publish_latency_seconds`,
      help: "Seconds from the event's commit in PostgreSQL to its JetStream acknowledgement (sampled: at most one event per millisecond)",
      buckets: PUBLISH_LATENCY_BUCKETS,
      registers: reg,
    });
    this.publishErrors = new Counter({
      name: `${p}publish_errors_total`,
      help: 'Publish failures, by kind (transient: retried; permanent)',
      labelNames: ['kind'] as const,
      registers: reg,
    });

    this.inFlightMessages = new Gauge({
      name: `${p}in_flight_messages`,
      help: 'Messages published but not yet acknowledged',
      registers: reg,
    });
    this.inFlightBytes = new Gauge({
      name: `${p}in_flight_bytes`,
      help: 'Payload bytes published but not yet acknowledged',
      registers: reg,
    });

    this.slotLagBytes = new Gauge({
      name: `${p}slot_lag_bytes`,
      help: "Bytes of WAL between the server's current position and the slot's confirmed position",
      registers: reg,
    });
    this.slotRetainedBytes = new Gauge({
      name: `${p}slot_retained_bytes`,
      help: 'Bytes of WAL the slot keeps on disk (from its restart_lsn)',
      registers: reg,
    });
    this.slotSafeWalBytes = new Gauge({
      name: `${p}slot_safe_wal_bytes`,
      help: 'Bytes of WAL that can still be written before the slot is invalidated (safe_wal_size); -1 when max_slot_wal_keep_size is unlimited',
      registers: reg,
    });
    this.slotWalStatus = new Gauge({
      name: `${p}slot_wal_status`,
      help: "The slot's wal_status: 1 for the current one, 0 for the others (lost = invalidated)",
      labelNames: ['status'] as const,
      registers: reg,
    });
    for (const s of WAL_STATUSES) this.slotWalStatus.set({ status: s }, 0);
    this.lastConfirmedLsnAgeSeconds = new Gauge({
      name: `${p}last_confirmed_lsn_age_seconds`,
      help: 'Seconds since the relay last confirmed an LSN to PostgreSQL (from start while none was)',
      registers: reg,
      collect: () => {
        this.lastConfirmedLsnAgeSeconds.set(ageOf(this.lastConfirmedAt));
      },
    });
    this.confirmedLsn = new Gauge({
      name: `${p}confirmed_lsn`,
      help: 'Last LSN confirmed to PostgreSQL, as a number of bytes (exact up to 2^53)',
      registers: reg,
    });

    this.heartbeatLagSeconds = new Gauge({
      name: `${p}heartbeat_lag_seconds`,
      help: 'End-to-end lag of the last heartbeat: emitted in PostgreSQL, decoded, published',
      registers: reg,
    });
    this.heartbeatAgeSeconds = new Gauge({
      name: `${p}heartbeat_age_seconds`,
      help: 'Seconds since the last heartbeat came back through the pipeline (from start while none did)',
      registers: reg,
      collect: () => {
        this.heartbeatAgeSeconds.set(ageOf(this.lastHeartbeatAt));
      },
    });

    this.handlerCalls = new Counter({
      name: `${p}handler_calls_total`,
      help: 'Inbound handler calls, by consumer and outcome (applied, duplicate, failed, dead_lettered)',
      labelNames: ['consumer', 'outcome'] as const,
      registers: reg,
    });
    this.deadLetters = new Counter({
      name: `${p}dead_letters_total`,
      help: 'Messages dead-lettered, by direction',
      labelNames: ['direction'] as const,
      registers: reg,
    });
    this.webhookDeliveries = new Counter({
      name: `${p}webhook_deliveries_total`,
      help: 'Webhook deliveries, by outcome (delivered, retried, dead_lettered)',
      labelNames: ['outcome'] as const,
      registers: reg,
    });
    this.consumerPending = new Gauge({
      name: `${p}consumer_pending_messages`,
      help: 'JetStream messages pending for the consumer',
      labelNames: ['consumer'] as const,
      registers: reg,
    });
    this.consumerRedelivered = new Gauge({
      name: `${p}consumer_redelivered_messages`,
      help: 'JetStream messages redelivered to the consumer and not yet acknowledged',
      labelNames: ['consumer'] as const,
      registers: reg,
    });
    this.consumerMissing = new Gauge({
      name: `${p}consumer_missing`,
      help: '1 while a configured durable consumer does not exist (its stream was deleted or NATS lost its store)',
      labelNames: ['consumer'] as const,
      registers: reg,
    });

    this.reconnects = new Counter({
      name: `${p}reconnects_total`,
      help: 'Reconnections, by target (postgres, nats)',
      labelNames: ['target'] as const,
      registers: reg,
    });
    this.active = new Gauge({
      name: `${p}active`,
      help: '1 while this replica is the active relay, 0 while it is a standby',
      registers: reg,
    });
    this.active.set(0);
    this.leader = new Gauge({
      name: `${p}leader`,
      help: '1 while this replica holds the leader lock and streams the slot, 0 while it is a standby (readiness does not depend on it)',
      registers: reg,
    });
    this.leader.set(0);
    this.up = new Gauge({
      name: `${p}up`,
      help: '1 while connected to the target (postgres, nats), else 0',
      labelNames: ['target'] as const,
      registers: reg,
    });
    this.up.set({ target: 'postgres' }, 0);
    // a relay without NATS (backend = "webhook") has no nats series at all, rather than a 0 that never changes
    if (opts.nats !== false) this.up.set({ target: 'nats' }, 0);
    if (opts.redis === true) this.up.set({ target: 'redis' }, 0);

    this.buildInfo = new Gauge({
      name: `${p}build_info`,
      help: 'Always 1; the labels say which fraiseql-relay and Node.js run',
      labelNames: ['version', 'node_version'] as const,
      registers: reg,
    });
    this.buildInfo.set({ version: opts.version ?? 'unknown', node_version: process.versions.node }, 1);
    this.handlerDuration = new Histogram({
      name: `${p}handler_duration_seconds`,
      help: 'Seconds one inbound handler call took (its transaction with the inbox row), by consumer',
      labelNames: ['consumer'] as const,
      buckets: DURATION_BUCKETS,
      registers: reg,
    });
    this.webhookDuration = new Histogram({
      name: `${p}webhook_duration_seconds`,
      help: 'Seconds one webhook request took, until the response or the failure',
      buckets: DURATION_BUCKETS,
      registers: reg,
    });
    this.deadLetterBacklog = new Gauge({
      name: `${p}dead_letter_backlog`,
      help: 'Rows in the dead-letter table, by direction (read at scrape time)',
      labelNames: ['direction'] as const,
      registers: reg,
      collect: async () => {
        if (!opts.deadLetterCounts) return;
        try {
          const counts = await opts.deadLetterCounts();
          for (const d of DEAD_LETTER_DIRECTIONS) this.deadLetterBacklog.set({ direction: d }, counts[d] ?? 0);
        } catch {
          // PostgreSQL unreachable: keep the last values (the up metric says why)
        }
      },
    });
    this.lagSeconds = new Gauge({
      name: `${p}lag_seconds`,
      help:
        'Seconds between now and the newest commit known to be published: the emission time of the last heartbeat that came back ' +
        '(so it grows during an outage; precision one heartbeat interval); 0 on a standby',
      registers: reg,
      collect: () => {
        this.lagSeconds.set(this.heartbeatEmittedAt === null ? 0 : ageOf(this.heartbeatEmittedAt));
      },
    });

    this.backfillRows = new Counter({
      name: `${p}backfill_rows_total`,
      help: 'Rows of backfills done, by result: published (as READ events) or skipped (changed while its chunk was read: the change was published)',
      labelNames: ['result'] as const,
      registers: reg,
    });
    this.backfillRemaining = new Gauge({
      name: `${p}backfill_remaining_rows`,
      help: 'Rows the backfill this relay works on has still to read (0 when none runs)',
      registers: reg,
    });
    this.backfillRemaining.set(0);

    // every labelled counter exists at 0 from the start for the label values known now, so a
    // rate() or increase() alert sees the first increment after a restart
    for (const d of DEAD_LETTER_DIRECTIONS) this.deadLetters.inc({ direction: d }, 0);
    for (const k of ['transient', 'permanent']) this.publishErrors.inc({ kind: k }, 0);
    const broker = opts.postgres === true ? [] : [opts.redis === true ? 'redis' : 'nats'];
    for (const t of ['postgres', ...broker]) this.reconnects.inc({ target: t }, 0);
    for (const o of ['delivered', 'retried', 'dead_lettered']) this.webhookDeliveries.inc({ outcome: o }, 0);
    for (const r of ['published', 'skipped']) this.backfillRows.inc({ result: r }, 0);
    for (const consumer of opts.consumers ?? []) {
      for (const outcome of HANDLER_OUTCOMES) this.handlerCalls.inc({ consumer, outcome }, 0);
      this.consumerMissing.set({ consumer }, 0);
    }
    for (const subject of opts.subjects ?? []) this.eventsPublished.inc({ subject }, 0);
  }

  /** Records a confirmed LSN: sets `confirmed_lsn` and restarts the confirmed-LSN age. */
  /**
   * One event acknowledged by JetStream (the hot path): counted exactly, and its commit-to-ack
   * latency observed for at most one event per millisecond, which keeps the distribution while
   * the relay publishes tens of thousands of events per second.
   */
  published(subject: string, commitMs: number): void {
    this.pendingPublished.set(subject, (this.pendingPublished.get(subject) ?? 0) + 1);
    if (commitMs > 0) {
      const now = this.now();
      if (now !== this.lastLatencySample) {
        this.lastLatencySample = now;
        this.publishLatency.observe(Math.max(0, now - commitMs) / 1000);
      }
    }
  }

  confirmed(lsn: bigint): void {
    this.lastConfirmedAt = this.now();
    // exact below 2^53 (8 PiB of WAL); above, Number() rounds to the nearest float64
    this.confirmedLsn.set(Number(lsn));
  }

  /** Records a heartbeat that came back, with its end-to-end lag in seconds; restarts its age. */
  heartbeatReturned(lagSeconds: number): void {
    this.lastHeartbeatAt = this.now();
    this.heartbeatEmittedAt = this.lastHeartbeatAt - lagSeconds * 1000;
    this.heartbeatLagSeconds.set(lagSeconds);
  }

  /** This replica stood down: it has no lag of its own. */
  standby(): void {
    this.heartbeatEmittedAt = null;
  }

  /** Sets `slot_wal_status`: 1 for `status`, 0 for the other values; all 0 for null (no slot). */
  setWalStatus(status: string | null): void {
    for (const s of WAL_STATUSES) this.slotWalStatus.set({ status: s }, s === status ? 1 : 0);
  }

  /** Sets `slot_safe_wal_bytes`; null (max_slot_wal_keep_size unlimited) is reported as -1. */
  setSafeWalBytes(bytes: number | null): void {
    this.slotSafeWalBytes.set(bytes === null ? -1 : bytes);
  }

  /** The Prometheus text exposition of every metric in this registry. */
  async text(): Promise<string> {
    return this.registry.metrics();
  }

  /** Content-Type of {@link text} (Prometheus text format 0.0.4). */
  get contentType(): string {
    return this.registry.contentType;
  }
}
