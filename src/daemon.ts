import type { Config } from './config/load.js';
import { logContext, type Logger } from './util/log.js';
import { needsSlot } from './schema/plan.js';
import { Relay, type RelayOptions } from './relay/relay.js';
import { RelayMetrics } from './ops/metrics.js';
import { Health } from './ops/health.js';
import { startHttp } from './ops/http.js';
import { VERSION } from './util/version.js';
import { requiredSubjects } from './route/targets.js';

/** A relay with its health and metrics served over HTTP at `[relay] listen`. */
export interface Daemon {
  relay: Relay;
  metrics: RelayMetrics;
  health: Health;
  /** the HTTP port actually bound (`listen = ":0"` picks a free one) */
  port: number;
  /** Stops the relay (bounded by `[relay] shutdown_timeout`), then the HTTP server. */
  stop(): Promise<void>;
}

/**
 * Turns the relay's events into gauges, counters, readiness and one log line per state change,
 * and watches that heartbeats keep coming back. Returns what stops the watching.
 */
export function observeRelay(config: Config, relay: Relay, metrics: RelayMetrics, health: Health, log: Logger): () => void {
  const olog = log.child({ component: 'health' });
  const outbound = needsSlot(config);
  const nats = config.observers.backend === 'nats';
  const redis = config.observers.backend === 'redis';
  health.register('postgres', 'not connected to PostgreSQL yet');
  if (nats) health.register('nats', 'not connected to NATS yet');
  if (redis) health.register('redis', 'not connected to Redis yet');
  if (outbound) {
    health.register('heartbeat', 'no heartbeat has come back yet');
    health.register('slot', 'slot not inspected yet');
  }

  // whether PostgreSQL answered the last time it was asked (leader election, slot inspection)
  let pgReachable = true;
  relay.on('active', (active) => {
    logContext.leader = active;
    metrics.active.set(active ? 1 : 0);
    metrics.leader.set(active ? 1 : 0);
    if (!active) metrics.standby();
    // a standby has no heartbeat of its own to wait for; the active one starts the clock anew
    health.set('heartbeat', !active, 'no heartbeat has come back yet');
    if (active) health.set('postgres', true);
  });
  relay.on('durable', (lsn) => metrics.confirmed(lsn));
  relay.on('published', (msg) => metrics.published(msg.subject, msg.commitMs ?? 0));
  relay.on('unrouted', () => metrics.eventsUnrouted.inc());
  relay.on('deadLetter', (direction) => metrics.deadLetters.inc({ direction }));
  relay.on('heartbeat', (lagMs) => {
    metrics.heartbeatReturned(lagMs / 1000);
    if (!health.ready().ready || health.ready().reasons['heartbeat'])
      olog.info({ lag_ms: Math.round(lagMs) }, 'heartbeat back: the data path flows');
    health.set('heartbeat', true);
  });
  relay.on('slot', (s) => {
    pgReachable = true;
    health.set('postgres', true);
    if (!s.exists) {
      health.set('slot', false, `replication slot ${config.relay.slot} does not exist: run fraiseql-relay migrate`);
      return;
    }
    metrics.slotLagBytes.set(s.lagBytes);
    metrics.slotRetainedBytes.set(s.retainedBytes);
    metrics.setSafeWalBytes(s.safeWalBytes);
    metrics.setWalStatus(s.walStatus);
    const over = s.lagBytes > config.relay.max_lag;
    health.set(
      'slot',
      !over && s.walStatus !== 'lost',
      s.walStatus === 'lost'
        ? 'slot invalidated (wal_status = lost)'
        : `slot lag ${s.lagBytes} bytes exceeds [relay] max_lag (${config.relay.max_lag})`,
    );
  });
  relay.on('reconnect', (target) => metrics.reconnects.inc({ target }));
  relay.on('postgres', (up, reason) => {
    pgReachable = up;
    health.set('postgres', up, reason ?? 'PostgreSQL is unreachable');
  });
  relay.on('nats', (up) => {
    metrics.up.set({ target: 'nats' }, up ? 1 : 0);
    if (!up) metrics.reconnects.inc({ target: 'nats' });
    health.set('nats', up, 'NATS is unreachable');
  });
  relay.on('redis', (up) => {
    metrics.up.set({ target: 'redis' }, up ? 1 : 0);
    if (!up) metrics.reconnects.inc({ target: 'redis' });
    health.set('redis', up, 'Redis is unreachable');
  });
  relay.on('handler', (consumer, outcome, seconds) => {
    metrics.handlerCalls.inc({ consumer, outcome });
    if (seconds !== null) metrics.handlerDuration.observe({ consumer }, seconds);
  });
  relay.on('webhookRequest', (seconds) => metrics.webhookDuration.observe(seconds));
  relay.on('consumer', (consumer, present, reason) => {
    metrics.consumerMissing.set({ consumer }, present ? 0 : 1);
    const missing = relay.missingConsumers;
    health.set('consumers', missing.size === 0, [...missing.values()].join('; '));
    if (present) olog.info({ consumer }, 'durable consumer exists again');
    else olog.error({ consumer, reason }, 'durable consumer missing: its events are not being handled');
  });
  relay.on('webhook', (outcome) => metrics.webhookDeliveries.inc({ outcome }));
  relay.on('backfill', (b, outcome) => {
    if (outcome !== null) {
      metrics.backfillRows.inc({ result: 'published' }, outcome.published);
      metrics.backfillRows.inc({ result: 'skipped' }, outcome.skipped);
    }
    const left = b.state === 'running' && b.rowsTotal !== null ? Math.max(0, b.rowsTotal - b.rowsPublished - b.rowsSkipped) : 0;
    metrics.backfillRemaining.set(left);
  });

  // a loop that turns: proves liveness, samples the in-flight gauges and notices a stuck data path
  let stuckLogged = false;
  const tick = () => {
    health.touch();
    const o = relay.outbound;
    metrics.inFlightMessages.set(o?.inFlight.messages ?? 0);
    metrics.inFlightBytes.set(o?.inFlight.bytes ?? 0);
    // the active relay streams from PostgreSQL; a standby only polls it for the leader lock
    metrics.up.set({ target: 'postgres' }, o?.active ? (o.connected ? 1 : 0) : pgReachable ? 1 : 0);
    if (!o?.active) return;
    const back = o.heartbeatBack?.at.getTime() ?? o.activeSince;
    const silent = Date.now() - back;
    if (silent > config.relay.heartbeat_timeout) {
      const where =
        o.lastFailure === 'nats' && o.lastError
          ? `publishing to ${redis ? 'Redis' : 'JetStream'} fails (${o.lastError})`
          : !o.connected
            ? `the replication connection is down (${o.lastError ?? 'connecting'})`
            : o.inFlight.messages > 0
              ? `${o.inFlight.messages} messages are waiting for ${redis ? 'Redis' : 'JetStream'} acknowledgements`
              : 'changes are not arriving from PostgreSQL (is the walsender stuck, or the slot in use elsewhere?)';
      health.set('heartbeat', false, `no heartbeat back for ${Math.round(silent / 1000)} s: ${where}`);
      if (!stuckLogged) olog.warn({ silent_ms: silent, where }, 'no heartbeat came back in time: the data path is stuck');
      stuckLogged = true;
    } else {
      stuckLogged = false;
    }
  };
  const timer = setInterval(tick, 1000);
  timer.unref();

  // consumers' pending and redelivered counts
  const consumerTimer =
    config.observers.subscribe.length > 0 && (nats || redis)
      ? setInterval(() => {
          relay.consumers().then(
            (list) => {
              for (const c of list) {
                metrics.consumerPending.set({ consumer: c.consumer }, c.pending);
                metrics.consumerRedelivered.set({ consumer: c.consumer }, c.redelivered);
              }
            },
            () => {}, // NATS down: the nats readiness component says so
          );
        }, 15_000)
      : null;
  consumerTimer?.unref();
  return () => {
    clearInterval(timer);
    if (consumerTimer) clearInterval(consumerTimer);
  };
}

/**
 * A relay, not started yet, with `/livez`, `/readyz` and `/metrics` already served at
 * `[relay] listen` (readiness says what it waits for while it starts).
 */
async function openDaemon(config: Config, log: Logger, opts: RelayOptions): Promise<Daemon> {
  const relay = new Relay(config, log, opts);
  const metrics = new RelayMetrics({
    version: VERSION,
    nats: config.observers.backend === 'nats',
    redis: config.observers.backend === 'redis',
    postgres: config.observers.backend === 'postgres',
    consumers: config.observers.subscribe.map((s) => s.consumer),
    subjects: requiredSubjects(config).filter((s) => !/[*>]/.test(s)),
    deadLetterCounts: () => relay.deadLetterCounts(),
  });
  const health = new Health();
  const unobserve = observeRelay(config, relay, metrics, health, log);
  let http;
  try {
    http = await startHttp(config.relay.listen, {
      metrics,
      health,
      log: log.child({ component: 'http' }),
      liveStaleMs: Math.max(30_000, config.relay.heartbeat_timeout),
    });
  } catch (err) {
    unobserve();
    throw err;
  }
  const stop = async () => {
    await relay.stop();
    unobserve();
    await http.close();
  };
  return { relay, metrics, health, port: http.port, stop };
}

/** Starts `relay`; when it cannot start, closes what it opened (a NATS connection would keep the process alive). */
async function startRelay(daemon: Daemon, until: Promise<unknown> = new Promise(() => {})): Promise<void> {
  try {
    await Promise.race([daemon.relay.start(), until]);
  } catch (err) {
    await daemon.stop().catch(() => {});
    throw err;
  }
}

/**
 * Starts a relay with `/livez`, `/readyz` and `/metrics` at `[relay] listen`. Rejects (with
 * everything it opened closed again) when the relay cannot start.
 */
export async function startDaemon(config: Config, log: Logger, opts: RelayOptions = {}): Promise<Daemon> {
  const daemon = await openDaemon(config, log, opts);
  await startRelay(daemon);
  daemon.health.set('postgres', true);
  return daemon;
}

/**
 * `fraiseql-relay run`: runs until SIGTERM/SIGINT, then stops cleanly (exit code 0). A condition
 * the relay must not run on (an invalidated slot) stops it with exit code 1 and the explanation
 * on stderr. A second signal exits at once. `migrate`: `run --migrate`, migrate first; without it a
 * database migrate has not prepared exits 2 at once, saying to run it.
 */
export async function runDaemon(config: Config, log: Logger, opts: Pick<RelayOptions, 'migrate'> = {}): Promise<number> {
  let signalled: NodeJS.Signals | null = null;
  const stopped = new Promise<'signal'>((resolve) => {
    const onSignal = (sig: NodeJS.Signals) => {
      if (signalled) {
        log.warn({ signal: sig }, 'second signal: exiting now');
        process.exit(1);
      }
      signalled = sig;
      log.info({ signal: sig }, 'stopping');
      resolve('signal');
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
  const daemon = await openDaemon(config, log, opts);
  const failed = new Promise<Error>((resolve) => daemon.relay.once('fatal', resolve));
  await startRelay(daemon, stopped);
  if (!signalled) {
    daemon.health.set('postgres', true);
    log.info({ project: config.project.name, http: daemon.port }, 'relay running');
  }
  const why = await Promise.race([stopped, failed]);
  await daemon.stop();
  if (why instanceof Error) {
    process.stderr.write(`fraiseql-relay: ${why.message}\n`);
    return 1;
  }
  return 0;
}
