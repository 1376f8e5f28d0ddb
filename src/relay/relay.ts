import { EventEmitter } from 'node:events';
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import type { Config, SubscribeRule } from '../config/load.js';
import { createLogger, type Logger } from '../util/log.js';
import { setDatabaseCaFile, withClient } from '../util/db.js';
import { errorMessage, StreamMissingError, UsageError } from '../util/errors.js';
import { within } from '../util/sleep.js';
import { formatLsn } from '../source/lsn.js';
import { connectNats } from '../sink/nats.js';
import { natsAuthOptions } from '../sink/natsauth.js';
import { ensureStream, findStream } from '../sink/stream.js';
import { loadAppendScript } from '../sink/redis.js';
import { closeRedis, connectRedis, type RedisLink } from '../sink/redis-client.js';
import { DeadLetterWriter } from '../sink/deadletter.js';
import { MessageKeys } from '../sink/signing.js';
import type { Sink } from '../sink/sink.js';
import { needsSlot, outboxPublication } from '../schema/plan.js';
import { resolveChangeLog, resolveRuleTables, tablesPublication } from '../schema/tables.js';
import { assertRunOwnership } from '../schema/ownership.js';
import { assertMigrated, legacyNotice, resolveNames } from '../schema/names.js';
import { migrate } from '../schema/migrate.js';
import { OutboxRouter } from '../route/outbox.js';
import { TableRouter } from '../route/tables.js';
import { TypeCatalog, catalogQuery } from '../source/pgtypes.js';
import { ChangeLogRouter, loadMutationMap } from '../route/changelog.js';
import { MutationTwins } from '../route/twins.js';
import type { Router, RouterFor } from '../route/router.js';
import { requiredSubjects } from '../route/targets.js';
import { InboxExecutor, checkHandler } from '../inbound/inbox.js';
import { ensureConsumer } from '../inbound/durable.js';
import type { DurableUpkeep } from '../inbound/loop.js';
import { InboundWorker, type HandlerOutcome } from '../inbound/worker.js';
import { RedisInboundWorker, redisGroups } from '../inbound/redis.js';
import { WebhookWorker } from '../webhook/worker.js';
import { resolveWebhookTarget, type WebhookOutcome, type WebhookTarget } from '../webhook/deliver.js';
import { ruleWebhookSubject, webhookRoutes, type WebhookRoute } from '../webhook/route.js';
import type { OutboundStats } from '../outbound/session.js';
import { OutboundRunner } from '../outbound/runner.js';
import { backendSink } from '../outbound/sinks.js';
import { BackfillWindows } from '../backfill/windows.js';
import { BackfillRunner } from '../backfill/runner.js';
import type { Backfill } from '../backfill/store.js';
import type { ConsumerState, InboundStats, OutboundState, RelayEvents, WebhookStats } from './events.js';

export interface RelayOptions {
  /** where the relay logs; default: nothing is logged */
  log?: Logger;
  /** first and longest pause between reconnection attempts */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** PubAck timeout */
  publishTimeoutMs?: number;
  /** default true: one active relay per slot through a PostgreSQL advisory lock */
  leaderElection?: boolean;
  leaderPollMs?: number;
  slotPollMs?: number;
  /**
   * run `migrate` (under its advisory lock, so concurrent replicas apply each step once) before
   * starting, as `run --migrate` does; without it, a database `migrate` has not prepared makes
   * `start()` reject with a UsageError saying to run it first
   */
  migrate?: boolean;
}

/**
 * A running relay, built from a configuration: the outbound side (replication slot ▶ routers ▶
 * JetStream or webhooks ▶ slot confirmation) and the inbound side (durable consumers ▶ SQL
 * handlers, webhook deliverers). It tells what happens through typed events (see
 * {@link RelayEvents}); `start()` connects, `stop()` drains and closes.
 *
 * Any failure of the outbound stream ends its replication session; after a jittered pause a new
 * one starts from the slot's confirmed position, so nothing is retried out of order and nothing
 * unacknowledged is confirmed.
 */
export class Relay extends EventEmitter<RelayEvents> {
  private readonly inbound: InboundStats = { applied: 0, duplicates: 0, failed: 0, deadLettered: 0 };
  private readonly webhooks: WebhookStats = { delivered: 0, retried: 0, deadLettered: 0 };
  private readonly log: Logger;
  private inbox: InboxExecutor | null = null;
  private readonly workers: { stop(timeoutMs: number): Promise<void> }[] = [];
  private nc: NatsConnection | null = null;
  private deadLetters: DeadLetterWriter | null = null;
  private runner: OutboundRunner | null = null;
  private stopping = false;
  private failure: Error | null = null;
  private readonly missing = new Map<string, string>();
  private natsUp = false;
  /** backend = "redis": the connection every Redis command of the relay goes through (blocking reads have their own) */
  private redis: RedisLink | null = null;
  /** `[relay] signing_key_env`, read from the environment at start */
  private keys: MessageKeys | null = null;
  /** table rules: backfills run beside the stream on the active relay */
  private readonly backfillWindows = new BackfillWindows();
  private backfills: BackfillRunner | null = null;

  constructor(
    /** replaced by start() with the slot and publication names it resolved (schema/names.ts) */
    private config: Config,
    log?: Logger,
    private readonly opts: RelayOptions = {},
  ) {
    super();
    this.log = log ?? opts.log ?? createLogger('silent');
  }

  /** Counters of the outbound side since start. */
  get stats(): OutboundStats {
    return { ...(this.runner?.stats ?? { published: 0, unrouted: 0, deadLettered: 0, transactions: 0 }) };
  }

  /** Counters of the handler calls since start. */
  get inboundStats(): InboundStats {
    return { ...this.inbound };
  }

  /** Counters of the webhook deliveries since start. */
  get webhookStats(): WebhookStats {
    return { ...this.webhooks };
  }

  /** The position up to which the slot is confirmed (0 before the first confirmation). */
  get confirmedLsn(): bigint {
    return this.runner?.confirmedLsn ?? 0n;
  }

  /** The outbound side now, or null when the configuration streams nothing outbound. */
  get outbound(): OutboundState | null {
    const r = this.runner;
    if (!r) return null;
    return {
      active: r.isActive,
      activeSince: r.activeSince,
      connected: r.connected,
      lastError: r.lastError,
      lastFailure: r.lastFailure,
      confirmedLsn: r.confirmedLsn,
      heartbeatBack: r.heartbeatBack,
      inFlight: r.currentSession?.sinkInFlight ?? { messages: 0, bytes: 0 },
    };
  }

  /** The condition the relay stopped on (an invalidated slot), or null. */
  get fatalError(): Error | null {
    return this.failure;
  }

  /** Connects, prepares the stream and starts streaming. Rejects on configuration problems. */
  async start(): Promise<void> {
    const { log } = this;
    let config = this.config;
    // every PostgreSQL connection of the process verifies against [relay] database_ca_file (the CLI sets it too)
    if (config.relay.database_ca_file !== undefined) setDatabaseCaFile(config.relay.database_ca_file);
    const nats = config.observers.backend === 'nats';
    const redis = config.observers.backend === 'redis';
    // backend = "postgres": the subscriptions are applied straight from this database's slot
    const direct = config.observers.backend === 'postgres';
    if (config.observers.backend === 'webhook' && config.observers.subscribe.length > 0) {
      throw new UsageError(
        '[[observers.subscribe]] needs a broker: with backend = "webhook" there is nothing to consume; use backend = "nats", ' +
          'or backend = "postgres" when the events come from this same database',
      );
    }
    if (nats && !config.observers.nats_url) throw new UsageError('[observers] nats_url is required with backend = "nats"');
    if (redis && !config.observers.redis_url) throw new UsageError('[observers] redis_url is required with backend = "redis"');
    if (this.opts.migrate) {
      log.info({ schema: config.relay.schema }, 'running migrate before starting (run --migrate)');
      await migrate(config, log.child({ component: 'migrate' }));
    }
    const { database, names } = await withClient(config.database.url, async (c) => {
      const r = await c.query<{ db: string }>('SELECT current_database() AS db');
      // the default names, or fraiseql-relay 0.1's slot of an installation that still streams from it
      return { database: r.rows[0]!.db, names: await resolveNames(c, config) };
    });
    const notice = legacyNotice(names);
    if (notice) log.warn({ slot: names.config.relay.slot, publication: names.config.relay.publication }, notice);
    config = this.config = names.config;
    // before anything changes: the slot and publications it would stream must be this relay's
    await assertRunOwnership(config);
    // and there must be something to stream from: only migrate creates it, so waiting would loop for nothing
    const outdated = await withClient(config.database.url, (c) => assertMigrated(c, names));
    if (outdated) log.warn({ schema: config.relay.schema }, outdated);
    // webhook targets resolve their URLs and secrets from the environment now: a missing
    // variable is a configuration error at start, not a dead letter later
    const webhooks = webhookRoutes(config).map((r) => ({ route: r, target: resolveWebhookTarget(r.action, process.env) }));
    // so are the message-signing keys: a configured key that is missing must not turn verification off
    const signing = config.relay.signing_key_env;
    this.keys = signing === undefined ? null : MessageKeys.fromEnv(signing, process.env);
    if (this.keys !== null) {
      log.info({ key_fingerprints: this.keys.fingerprints, env: signing }, 'message signing on: the first key signs, any of them verifies');
    }
    let streamSubjects: string[] = [];
    if (nats) {
      log.info({ database }, 'connecting to NATS');
      this.nc = await connectNats({
        url: config.observers.nats_url!,
        auth: natsAuthOptions(config.relay.nats),
        log: log.child({ component: 'nats' }),
        onStatus: (up) => {
          this.natsUp = up;
          this.emit('nats', up);
        },
      });
      streamSubjects = await ensureStream(this.nc, config, requiredSubjects(config), log.child({ component: 'stream' }));
    }
    if (redis) {
      log.info({ database }, 'connecting to Redis');
      this.redis = await connectRedis({
        url: config.observers.redis_url!,
        log: log.child({ component: 'redis' }),
        onStatus: (up) => this.emit('redis', up),
      });
    }
    this.deadLetters = new DeadLetterWriter(config.database.url, config.relay.schema);
    if (direct) {
      await this.checkHandlers();
      this.inbox = new InboxExecutor(config.database.url, config.relay.schema, 2);
    }
    if (needsSlot(config)) {
      const routerFor = await this.routers(database, tablesPublication(config));
      const targets = new Map(webhooks.map((w) => [w.route.subject, w.target]));
      let first = true;
      const makeSink = async (): Promise<Sink> => {
        // each Redis session starts with the append script in the server's cache (a restarted Redis has none)
        if (redis) {
          await loadAppendScript(this.redis!).catch((err: unknown) =>
            log.warn({ err: errorMessage(err) }, 'could not load the append script into Redis: the session will retry'),
          );
        }
        let subjects: string[] = [];
        if (nats) {
          subjects = first ? streamSubjects : await this.streamSubjects();
          first = false;
        }
        return backendSink({
          config,
          log,
          keys: this.keys,
          deadLetters: this.deadLetters!,
          webhooks: targets,
          maxInFlight: config.relay.max_in_flight,
          timeoutMs: this.opts.publishTimeoutMs ?? 10_000,
          ...(this.nc ? { nc: this.nc } : {}),
          streamSubjects: subjects,
          ...(this.redis ? { redis: this.redis } : {}),
          ...(this.inbox ? { inbox: this.inbox } : {}),
          onWebhook: (o) => this.onWebhook(o),
          onWebhookRequest: (seconds) => this.emit('webhookRequest', seconds),
          onHandler: (consumer, outcome, seconds) => this.onHandler(consumer, outcome, seconds),
          onUnsubscribed: () => this.emit('unrouted'),
        });
      };
      const publications =
        config.observers.rules.length > 0 ? [outboxPublication(config), tablesPublication(config)] : [outboxPublication(config)];
      this.runner = new OutboundRunner(
        config,
        { config, deadLetters: this.deadLetters, database, publications, routerFor, backfill: this.backfillWindows },
        makeSink,
        log,
        {
          backoffMinMs: this.opts.backoffMinMs ?? 500,
          backoffMaxMs: this.opts.backoffMaxMs ?? 30_000,
          leaderElection: this.opts.leaderElection ?? true,
          leaderPollMs: this.opts.leaderPollMs ?? 2000,
          slotPollMs: this.opts.slotPollMs ?? 10_000,
        },
        {
          onActive: (active) => {
            this.emit('active', active);
            // backfills run on the active relay only; a standby that takes over resumes them
            if (active) this.backfills?.start();
            else void this.backfills?.pause();
          },
          onDurable: (lsn) => this.emit('durable', lsn),
          onPublished: (msg) => this.emit('published', msg),
          onDeadLetter: (msg) => this.emit('deadLetter', 'outbound', msg.subject),
          onUnrouted: () => this.emit('unrouted'),
          onHeartbeat: (lagMs) => this.emit('heartbeat', lagMs),
          onSlot: (s) => this.emit('slot', s),
          // a failed handler call or webhook delivery (backend = "postgres") is PostgreSQL's or the endpoint's, never NATS's
          onReconnect: (cause) => this.emit('reconnect', cause !== 'nats' ? cause : redis ? 'redis' : direct ? 'postgres' : cause),
          onPostgres: (problem) => this.emit('postgres', problem === null, problem),
          onFatal: (err) => this.die(err),
        },
      );
      this.runner.start();
    }
    if (nats) {
      await this.startWebhookWorkers(webhooks);
      if (config.observers.subscribe.length > 0) await this.startInbound();
    }
    if (redis && config.observers.subscribe.length > 0) await this.startRedisInbound();
  }

  /** Every [[observers.subscribe]] handler exists (a UsageError naming those that do not). */
  private async checkHandlers(): Promise<void> {
    const { config } = this;
    const problems: string[] = [];
    await withClient(config.database.url, async (c) => {
      for (const s of config.observers.subscribe) {
        const p = await checkHandler(c, s.handler);
        if (p) problems.push(`[[observers.subscribe]] subject ${s.subject}: ${p}`);
      }
    });
    if (problems.length > 0) throw new UsageError(problems.join('\n'));
  }

  /** backend = "redis": one consumer group and `concurrency` readers per [[observers.subscribe]]. */
  private async startRedisInbound(): Promise<void> {
    const { config } = this;
    const log = this.log.child({ component: 'inbound' });
    const subs = config.observers.subscribe;
    const problems: string[] = [];
    for (const s of subs) {
      if (/[*>]/.test(s.subject)) {
        problems.push(`[[observers.subscribe]] subject ${s.subject}: with backend = "redis" a subject names one stream: no wildcards`);
      }
      if (s.order_by !== null) {
        problems.push(`[[observers.subscribe]] subject ${s.subject}: order_by is not supported with backend = "redis" yet`);
      }
    }
    await withClient(config.database.url, async (c) => {
      for (const s of subs) {
        const p = await checkHandler(c, s.handler);
        if (p) problems.push(`[[observers.subscribe]] subject ${s.subject}: ${p}`);
      }
    });
    if (problems.length > 0) throw new UsageError(problems.join('\n'));
    this.inbox = new InboxExecutor(config.database.url, config.relay.schema, subs.reduce((a, s) => a + s.concurrency, 0) + 1);
    for (const rule of subs) {
      const w = new RedisInboundWorker({
        redis: this.redis!,
        config: config.relay.redis,
        rule,
        inbox: this.inbox,
        deadLetters: this.deadLetters!,
        onOutcome: (consumer, outcome, seconds) => this.onHandler(consumer, outcome, seconds),
        log: log.child({ consumer: rule.consumer }),
        keys: this.keys,
      });
      await w.start();
      this.workers.push(w);
    }
  }

  private onHandler(consumer: string, outcome: HandlerOutcome, seconds?: number): void {
    const s = this.inbound;
    if (outcome === 'applied') s.applied++;
    else if (outcome === 'duplicate') s.duplicates++;
    else if (outcome === 'failed') s.failed++;
    else s.deadLettered++;
    this.emit('handler', consumer, outcome, seconds ?? null);
    if (outcome === 'dead_lettered') this.emit('deadLetter', 'inbound', null);
  }

  /** backend = "redis": the relay's Redis connection (null before start, and with any other backend). */
  get redisClient(): RedisLink | null {
    return this.redis;
  }

  /** The backfill being worked on by this relay (with its progress), or null. */
  get backfill(): Backfill | null {
    return this.backfills?.current ?? null;
  }

  /** Which router each relation's changes go to: the outbox, rule tables, FraiseQL's change log. */
  private async routers(database: string, tablesPub: string): Promise<RouterFor> {
    const { config, log } = this;
    const table = await withClient(config.database.url, (c) => resolveChangeLog(c, config));
    // with the change log streamed, one event per mutation: see route/twins.ts
    const twins = table ? new MutationTwins() : null;
    const outbox = new OutboxRouter(config, database, twins);
    let tables: TableRouter | null = null;
    if (config.observers.rules.length > 0) {
      const { perRule } = await withClient(config.database.url, (c) => resolveRuleTables(c, config));
      // column types beyond the built-in ones are read from the catalog once, on a normal connection
      const types = new TypeCatalog(catalogQuery(config.database.url));
      tables = new TableRouter(config, perRule, database, ruleWebhookSubject(config), types, this.keys);
      const ruleWhere = new Map(perRule.map((t, i) => [`${t.schema}.${t.name}`, config.observers.rules[i]!.where ?? null]));
      this.backfills = new BackfillRunner({
        url: config.database.url,
        schema: config.relay.schema,
        publication: tablesPub,
        database,
        windows: this.backfillWindows,
        router: tables,
        ruleWhere,
        keys: this.keys,
        log: log.child({ component: 'backfill' }),
        onChunk: (b, outcome) => this.emit('backfill', b, outcome),
        onState: (b) => this.emit('backfill', b, null),
      });
    }
    let changeLog: { schema: string; name: string; router: Router } | null = null;
    if (table) {
      const mutations = config.relay.schema_file ? loadMutationMap(config.relay.schema_file) : null;
      changeLog = { ...table, router: new ChangeLogRouter(config, database, mutations, twins) };
      log.info({ table: `${table.schema}.${table.name}` }, "streaming FraiseQL's change log");
    }
    return (rel) => {
      if (rel.schema === config.relay.schema && rel.name === 'outbox') return outbox;
      if (tables?.watches(rel)) return tables;
      if (changeLog && rel.schema === changeLog.schema && rel.name === changeLog.name) return changeLog.router;
      return null;
    };
  }

  /** backend = "nats": one durable consumer and in-order deliverer per webhook action. */
  private async startWebhookWorkers(webhooks: { route: WebhookRoute; target: WebhookTarget }[]): Promise<void> {
    if (webhooks.length === 0) return;
    const log = this.log.child({ component: 'webhook' });
    const jsm = await jetstreamManager(this.nc!);
    for (const { route, target } of webhooks) {
      const stream = await findStream(jsm, route.subject);
      if (!stream) throw new UsageError(`no JetStream stream captures webhook subject ${route.subject}`);
      const rule: SubscribeRule = {
        subject: route.subject,
        consumer: route.consumer,
        handler: '',
        max_deliver: target.maxAttempts,
        ack_wait: Math.max(30_000, target.timeoutMs * 2),
        backoff: [],
        concurrency: 1,
        batch: 1,
        max_wait: 0,
        order_by: null,
      };
      await ensureConsumer(jsm, stream, rule, log);
      const w = new WebhookWorker(
        this.nc!,
        stream,
        route.consumer,
        target,
        this.deadLetters!,
        (o) => this.onWebhook(o),
        (seconds) => this.emit('webhookRequest', seconds),
        this.durableUpkeep(jsm, rule, log),
        log.child({ consumer: route.consumer }),
      );
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
    const onOutcome = (consumer: string, outcome: HandlerOutcome, seconds?: number) => {
      const s = this.inbound;
      if (outcome === 'applied') s.applied++;
      else if (outcome === 'duplicate') s.duplicates++;
      else if (outcome === 'failed') s.failed++;
      else s.deadLettered++;
      this.emit('handler', consumer, outcome, seconds ?? null);
      if (outcome === 'dead_lettered') this.emit('deadLetter', 'inbound', null);
    };
    for (const rule of subs) {
      const stream = await findStream(jsm, rule.subject);
      if (!stream) throw new UsageError(`no JetStream stream captures subscribed subject ${rule.subject}`);
      await ensureConsumer(jsm, stream, rule, log);
      const w = new InboundWorker(
        this.nc!,
        stream,
        rule,
        this.inbox,
        this.deadLetters!,
        onOutcome,
        this.durableUpkeep(jsm, rule, log),
        log.child({ consumer: rule.consumer }),
        this.keys,
        // an ordered subscription is consumed by one replica at a time
        rule.order_by !== null ? config.database.url : null,
      );
      w.start();
      this.workers.push(w);
    }
  }

  /**
   * A worker's durable consumer, kept: recreated with its configuration on whichever stream
   * captures its subject once one does again, its presence told as `consumer` events.
   */
  private durableUpkeep(jsm: JetStreamManager, rule: SubscribeRule, log: Logger): DurableUpkeep {
    return {
      recreate: async () => {
        const stream = await findStream(jsm, rule.subject);
        if (!stream) {
          throw new StreamMissingError(
            rule.subject,
            `no JetStream stream captures ${rule.subject} (it was deleted, or NATS lost its store); create it again ` +
              `(the publishing service's relay does when it publishes), then this consumer is recreated`,
          );
        }
        await ensureConsumer(jsm, stream, rule, log);
        return stream;
      },
      onPresence: (present, reason) => {
        const was = !this.missing.has(rule.consumer);
        if (present) this.missing.delete(rule.consumer);
        else this.missing.set(rule.consumer, reason ?? `durable consumer ${rule.consumer} is missing`);
        if (present !== was) this.emit('consumer', rule.consumer, present, reason);
      },
    };
  }

  /** Durable consumers that are missing now, with the reason. */
  get missingConsumers(): ReadonlyMap<string, string> {
    return this.missing;
  }

  private onWebhook(outcome: WebhookOutcome): void {
    const w = this.webhooks;
    if (outcome === 'delivered') w.delivered++;
    else if (outcome === 'retried') w.retried++;
    else w.deadLettered++;
    this.emit('webhook', outcome);
    if (outcome === 'dead_lettered') this.emit('deadLetter', 'webhook', null);
  }

  /** Rows of the dead-letter table by direction (asks PostgreSQL). */
  async deadLetterCounts(): Promise<Record<string, number>> {
    return this.deadLetters ? this.deadLetters.counts() : {};
  }

  /**
   * Pending and redelivered counts of the subscriptions' durable consumers (asks NATS). With
   * backend = "redis", of their consumer groups: pending = entries not yet delivered to the group
   * (its lag) plus those delivered and not acknowledged; redelivered = entries of that pending list delivered more than once.
   */
  async consumers(): Promise<ConsumerState[]> {
    if (this.redis) return redisGroups(this.redis, this.config);
    const nc = this.nc;
    if (!nc) return [];
    const jsm = await jetstreamManager(nc);
    const out: ConsumerState[] = [];
    for (const sub of this.config.observers.subscribe) {
      const stream = await findStream(jsm, sub.subject);
      if (!stream) continue;
      const info = await jsm.consumers.info(stream, sub.consumer);
      out.push({ consumer: sub.consumer, stream, pending: info.num_pending, redelivered: info.num_redelivered });
    }
    return out;
  }

  private async streamSubjects(): Promise<string[]> {
    try {
      return await ensureStream(this.nc!, this.config, requiredSubjects(this.config), this.log.child({ component: 'stream' }));
    } catch {
      return [];
    }
  }

  /** Stops reading, waits (bounded by `[relay] shutdown_timeout`) for in-flight acks, confirms, closes. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    // the whole stop fits in the bound: what is not acknowledged by then stays unconfirmed in the
    // slot (and unacknowledged in JetStream) and is delivered again after the restart
    const bound = this.config.relay.shutdown_timeout;
    const deadline = Date.now() + bound;
    const left = (floor: number) => Math.max(floor, deadline - Date.now());
    await within(Promise.all([this.runner?.stop(bound), this.backfills?.close(), ...this.workers.map((w) => w.stop(bound))]), bound);
    await within(Promise.all([this.inbox?.close(), this.deadLetters?.close()]), left(500));
    closeRedis(this.redis);
    if (this.nc) {
      // draining needs the server: with NATS down it would wait for a reconnection that may never come
      if (this.natsUp)
        await within(
          this.nc.drain().catch(() => {}),
          Math.min(2_000, left(250)),
        );
      if (!this.nc.isClosed())
        await within(
          this.nc.close().catch(() => {}),
          500,
        );
    }
    this.log.info(
      { confirmed: formatLsn(this.confirmedLsn), outbound: this.stats, inbound: this.inbound, webhooks: this.webhooks },
      'relay stopped',
    );
  }

  /** A condition the relay must not run on (an invalidated slot): say so once; the owner stops it. */
  private die(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    this.emit('fatal', err);
  }
}
