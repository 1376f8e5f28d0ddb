import type { NatsConnection } from '@nats-io/transport-node';
import type { Config } from '../config/load.js';
import type { Logger } from '../util/log.js';
import { setDatabaseCaFile, withClient } from '../util/db.js';
import { connectNats } from '../sink/nats.js';
import { natsAuthOptions } from '../sink/natsauth.js';
import { ensureStream, findStream } from '../sink/stream.js';
import { jetstreamManager } from '@nats-io/jetstream';
import { needsSlot } from '../schema/migrate.js';
import { resolveChangeLog, resolveRuleTables } from '../schema/tables.js';
import { TableRouter, type ResolvedTable } from '../route/tables.js';
import { ChangeLogRouter, loadMutationMap } from '../route/changelog.js';
import { InboxExecutor, checkHandler } from '../inbound/inbox.js';
import { ensureConsumer } from '../inbound/durable.js';
import { InboundWorker, type InboundStats } from '../inbound/worker.js';
import { WebhookWorker } from '../webhook/worker.js';
import { WebhookSink } from '../webhook/sink.js';
import { resolveWebhookTarget, type WebhookTarget } from '../webhook/deliver.js';
import type { Sink } from '../sink/sink.js';
import { ruleWebhookSubject, webhookRoutes, type WebhookRoute } from '../webhook/route.js';
import { JetStreamSink } from '../sink/jetstream.js';
import { DeadLetterWriter } from '../sink/deadletter.js';
import type { OutboundStats } from '../outbound/session.js';
import { OutboundRunner, type RunnerEvents } from '../outbound/runner.js';
import { UsageError } from '../util/errors.js';
import { formatLsn } from '../source/lsn.js';
import { backoffDelay } from '../util/backoff.js';

export { backoffDelay };

export interface RelayOptions {
  /** first and longest pause between reconnection attempts */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** PubAck timeout */
  publishTimeoutMs?: number;
  /** default true: one active relay per slot through a PostgreSQL advisory lock */
  leaderElection?: boolean;
  leaderPollMs?: number;
  slotPollMs?: number;
}

/**
 * The daemon: builds the pipeline from the configuration and keeps it running. Any failure ends
 * the replication session; after a jittered pause a new one starts from the slot's confirmed
 * position, so nothing is retried out of order and nothing unacknowledged is confirmed.
 */
export class Relay {
  readonly inboundStats: InboundStats = { applied: 0, duplicates: 0, failed: 0, deadLettered: 0 };
  readonly webhookStats = { delivered: 0, failed: 0, retried: 0, deadLettered: 0 };
  private inbox: InboxExecutor | null = null;
  private tables: TableRouter | null = null;
  private changeLog: { table: ResolvedTable; router: ChangeLogRouter } | null = null;
  private readonly workers: { stop(timeoutMs: number): Promise<void> }[] = [];
  private nc: NatsConnection | null = null;
  private deadLetters: DeadLetterWriter | null = null;
  private outbound: OutboundRunner | null = null;
  private stopping = false;
  private fatalError: Error | null = null;
  private fatalResolve!: (e: Error) => void;
  /** resolves when the relay hit a condition it must not run on (exit non-zero) */
  readonly fatal: Promise<Error> = new Promise((r) => (this.fatalResolve = r));
  /** lifecycle hooks (metrics, health) */
  events: RunnerEvents & { onNats?: (up: boolean) => void } = {};
  natsUp = false;

  get stats(): OutboundStats {
    return this.outbound?.stats ?? { published: 0, unrouted: 0, deadLettered: 0, transactions: 0 };
  }

  get confirmedLsn(): bigint {
    return this.outbound?.confirmedLsn ?? 0n;
  }

  get outboundRunner(): OutboundRunner | null {
    return this.outbound;
  }

  get natsConnection(): NatsConnection | null {
    return this.nc;
  }

  constructor(private readonly config: Config, private readonly log: Logger, private readonly opts: RelayOptions = {}) {}

  /** Connects, prepares the stream and starts streaming. Rejects on configuration problems. */
  async start(): Promise<void> {
    const { config, log } = this;
    // every PostgreSQL connection of the process verifies against [relay] database_ca_file (the CLI sets it too)
    if (config.relay.database_ca_file !== undefined) setDatabaseCaFile(config.relay.database_ca_file);
    const nats = config.observers.backend === 'nats';
    if (!nats && config.observers.subscribe.length > 0) {
      throw new UsageError('[[observers.subscribe]] needs NATS: with backend = "webhook" there is nothing to consume; use backend = "nats"');
    }
    if (nats && !config.observers.nats_url) throw new UsageError('[observers] nats_url is required with backend = "nats"');
    const database = await withClient(config.database.url, async (c) => {
      const r = await c.query<{ db: string }>('SELECT current_database() AS db');
      return r.rows[0]!.db;
    });
    // webhook targets resolve their URLs and secrets from the environment now: a missing
    // variable is a configuration error at start, not a dead letter later
    const webhooks = webhookRoutes(config).map((r) => ({ route: r, target: resolveWebhookTarget(r.action, process.env) }));
    let streamSubjects: string[] = [];
    if (nats) {
      log.info({ database }, 'connecting to NATS');
      this.nc = await connectNats({
        url: config.observers.nats_url!,
        auth: natsAuthOptions(config.relay.nats),
        log: log.child({ component: 'nats' }),
        onStatus: (up) => {
          this.natsUp = up;
          this.events.onNats?.(up);
        },
      });
      streamSubjects = await ensureStream(this.nc, config, log.child({ component: 'stream' }));
    }
    this.deadLetters = new DeadLetterWriter(config.database.url, config.relay.schema);
    if (config.observers.rules.length > 0) {
      const { perRule } = await withClient(config.database.url, (c) => resolveRuleTables(c, config));
      this.tables = new TableRouter(config, perRule, database, ruleWebhookSubject(config));
    }
    const changeLog = await withClient(config.database.url, (c) => resolveChangeLog(c, config));
    if (changeLog) {
      const mutations = config.relay.schema_file ? loadMutationMap(config.relay.schema_file) : null;
      this.changeLog = { table: changeLog, router: new ChangeLogRouter(config, database, mutations) };
      log.info({ table: `${changeLog.schema}.${changeLog.name}` }, "streaming FraiseQL's change log");
    }
    if (needsSlot(config)) {
      const targets = new Map(webhooks.map((w) => [w.route.subject, w.target]));
      let first = true;
      const makeSink = async (): Promise<Sink> => {
        if (!nats) return new WebhookSink(targets, this.deadLetters!, config.relay.max_in_flight, log.child({ component: 'webhook' }), this.webhookStats);
        const subjects = first ? streamSubjects : await this.streamSubjects();
        first = false;
        return new JetStreamSink(this.nc!, {
          maxInFlight: config.relay.max_in_flight,
          maxInFlightBytes: config.relay.max_in_flight_bytes,
          timeoutMs: this.opts.publishTimeoutMs ?? 10_000,
          streamSubjects: subjects,
          log: log.child({ component: 'publisher' }),
        });
      };
      this.outbound = new OutboundRunner(
        config,
        { config, deadLetters: this.deadLetters, database, tables: this.tables, changeLog: this.changeLog },
        makeSink,
        log,
        {
          backoffMinMs: this.opts.backoffMinMs ?? 500,
          backoffMaxMs: this.opts.backoffMaxMs ?? 30_000,
          leaderElection: this.opts.leaderElection ?? true,
          leaderPollMs: this.opts.leaderPollMs ?? 2000,
          slotPollMs: this.opts.slotPollMs ?? 10_000,
        },
        { ...this.events, onFatal: (err) => {
          this.events.onFatal?.(err);
          this.die(err);
        } },
      );
      this.outbound.start();
    }
    if (nats) {
      await this.startWebhookWorkers(webhooks);
      if (config.observers.subscribe.length > 0) await this.startInbound();
    }
  }

  /** backend = "nats": one durable consumer and in-order deliverer per webhook action. */
  private async startWebhookWorkers(webhooks: { route: WebhookRoute; target: WebhookTarget }[]): Promise<void> {
    if (webhooks.length === 0) return;
    const log = this.log.child({ component: 'webhook' });
    const jsm = await jetstreamManager(this.nc!);
    for (const { route, target } of webhooks) {
      const stream = await findStream(jsm, route.subject);
      if (!stream) throw new UsageError(`no JetStream stream captures webhook subject ${route.subject}`);
      await ensureConsumer(
        jsm,
        stream,
        { subject: route.subject, consumer: route.consumer, handler: '', max_deliver: target.maxAttempts, ack_wait: Math.max(30_000, target.timeoutMs * 2), backoff: [], concurrency: 1 },
        log,
      );
      const w = new WebhookWorker(this.nc!, stream, route.consumer, target, this.deadLetters!, this.webhookStats, log.child({ consumer: route.consumer }));
      w.start();
      this.workers.push(w);
    }
  }

  /** One durable consumer and worker per [[observers.subscribe]]. */
  private async startInbound(): Promise<void> {
    const { config } = this;
    const log = this.log.child({ component: 'inbound' });
    const subs = config.observers.subscribe;
    const problems: string[] = [];
    await withClient(config.database.url, async (c) => {
      for (const s of subs) {
        const p = await checkHandler(c, s.handler);
        if (p) problems.push(`[[observers.subscribe]] subject ${s.subject}: ${p}`);
      }
    });
    if (problems.length > 0) throw new UsageError(problems.join('\n'));
    const jsm = await jetstreamManager(this.nc!);
    this.inbox = new InboxExecutor(config.database.url, config.relay.schema, subs.reduce((a, s) => a + s.concurrency, 0) + 1);
    for (const rule of subs) {
      const stream = await findStream(jsm, rule.subject);
      if (!stream) throw new UsageError(`no JetStream stream captures subscribed subject ${rule.subject}`);
      await ensureConsumer(jsm, stream, rule, log);
      const w = new InboundWorker(this.nc!, stream, rule, this.inbox, this.deadLetters!, this.inboundStats, log.child({ consumer: rule.consumer }));
      w.start();
      this.workers.push(w);
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
    const bound = this.config.relay.shutdown_timeout;
    await Promise.all([this.outbound?.stop(bound), ...this.workers.map((w) => w.stop(bound))]);
    await this.inbox?.close();
    await this.deadLetters?.close();
    await this.nc?.drain().catch(() => {});
    this.log.info({ confirmed: formatLsn(this.confirmedLsn), outbound: this.stats, inbound: this.inboundStats, webhooks: this.webhookStats }, 'relay stopped');
  }

  /** A condition the relay must not run on (an invalidated slot): stop, and tell `run`. */
  private die(err: Error): void {
    if (this.fatalError) return;
    this.fatalError = err;
    this.fatalResolve(err);
  }
}
