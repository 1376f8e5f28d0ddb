import type { NatsConnection } from '@nats-io/transport-node';
import type { Config } from './config/load.js';
import type { Logger } from './log.js';
import { withClient } from './db.js';
import { connectNats } from './sink/nats.js';
import { ensureStream } from './sink/stream.js';
import { JetStreamSink } from './sink/jetstream.js';
import { DeadLetterWriter } from './sink/deadletter.js';
import { OutboundSession, type OutboundStats } from './outbound.js';
import { OutboxRetention } from './retention.js';
import { SlotError } from './source/replication.js';
import { UsageError, errorMessage } from './errors.js';
import { formatLsn } from './source/lsn.js';

export interface RelayOptions {
  /** first and longest pause between reconnection attempts */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** PubAck timeout */
  publishTimeoutMs?: number;
}

/** Full-jitter exponential backoff. */
export function backoffDelay(attempt: number, minMs: number, maxMs: number): number {
  const cap = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 16));
  return Math.round(minMs / 2 + Math.random() * (cap - minMs / 2));
}

/**
 * The daemon: builds the pipeline from the configuration and keeps it running. Any failure ends
 * the replication session; after a jittered pause a new one starts from the slot's confirmed
 * position, so nothing is retried out of order and nothing unacknowledged is confirmed.
 */
export class Relay {
  readonly stats: OutboundStats = { published: 0, unrouted: 0, deadLettered: 0, transactions: 0 };
  private nc: NatsConnection | null = null;
  private deadLetters: DeadLetterWriter | null = null;
  private retention: OutboxRetention | null = null;
  private session: OutboundSession | null = null;
  private stopping = false;
  private loop: Promise<void> | null = null;
  private wake: (() => void) | null = null;
  private confirmed = 0n;
  lastError: string | null = null;

  constructor(private readonly config: Config, private readonly log: Logger, private readonly opts: RelayOptions = {}) {}

  get confirmedLsn(): bigint {
    return this.confirmed;
  }

  /** Connects, prepares the stream and starts streaming. Rejects on configuration problems. */
  async start(): Promise<void> {
    const { config, log } = this;
    const natsUrl = config.observers.nats_url;
    if (!natsUrl) throw new UsageError('[observers] nats_url is required to publish to NATS JetStream (backend = "nats")');
    const database = await withClient(config.database.url, async (c) => {
      const r = await c.query<{ db: string }>('SELECT current_database() AS db');
      return r.rows[0]!.db;
    });
    log.info({ database }, 'connecting to NATS');
    this.nc = await connectNats({ url: natsUrl, log: log.child({ component: 'nats' }) });
    const streamSubjects = await ensureStream(this.nc, config, log.child({ component: 'stream' }));
    this.deadLetters = new DeadLetterWriter(config.database.url, config.relay.schema);
    this.retention = new OutboxRetention(config.database.url, config.relay.schema, config.relay.retention, () => this.confirmed, log.child({ component: 'retention' }));
    this.retention.start();
    const sink = new JetStreamSink(this.nc, {
      maxInFlight: config.relay.max_in_flight,
      maxInFlightBytes: config.relay.max_in_flight_bytes,
      timeoutMs: this.opts.publishTimeoutMs ?? 10_000,
      streamSubjects,
      log: log.child({ component: 'publisher' }),
    });
    this.loop = this.runLoop(sink, database);
  }

  private async runLoop(firstSink: JetStreamSink, database: string): Promise<void> {
    const { config } = this;
    const log = this.log.child({ component: 'outbound' });
    const min = this.opts.backoffMinMs ?? 500;
    const max = this.opts.backoffMaxMs ?? 30_000;
    let attempt = 0;
    let sink = firstSink;
    while (!this.stopping) {
      const session = new OutboundSession({
        config,
        log,
        sink,
        deadLetters: this.deadLetters!,
        database,
        stats: this.stats,
        onDurable: (lsn) => {
          this.confirmed = lsn;
          attempt = 0;
        },
      });
      this.session = session;
      try {
        await session.run();
        if (this.stopping) break;
      } catch (err) {
        if (this.stopping) break;
        this.lastError = errorMessage(err);
        if (err instanceof SlotError) {
          log.error({ err: this.lastError }, 'replication slot unusable; retrying until it is fixed');
        } else {
          log.warn({ err: this.lastError, confirmed: formatLsn(this.confirmed) }, 'outbound stream interrupted; reconnecting from the confirmed position');
        }
      }
      this.session = null;
      const delay = backoffDelay(attempt++, min, max);
      await new Promise<void>((r) => {
        const t = setTimeout(r, delay);
        this.wake = () => {
          clearTimeout(t);
          r();
        };
      });
      this.wake = null;
      // a fresh sink per session: nothing from the failed one can be confused with new work
      sink = new JetStreamSink(this.nc!, {
        maxInFlight: config.relay.max_in_flight,
        maxInFlightBytes: config.relay.max_in_flight_bytes,
        timeoutMs: this.opts.publishTimeoutMs ?? 10_000,
        streamSubjects: await this.streamSubjects(),
        log: this.log.child({ component: 'publisher' }),
      });
    }
  }

  private async streamSubjects(): Promise<string[]> {
    try {
      return await ensureStream(this.nc!, this.config, this.log.child({ component: 'stream' }));
    } catch {
      return [];
    }
  }

  /** Stops reading, waits (bounded) for in-flight acks, confirms, closes. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.wake?.();
    await this.session?.stop(this.config.relay.shutdown_timeout);
    await this.loop?.catch(() => {});
    await this.retention?.stop();
    await this.deadLetters?.close();
    await this.nc?.drain().catch(() => {});
    this.log.info({ confirmed: formatLsn(this.confirmed), ...this.stats }, 'relay stopped');
  }
}
