import { jetstreamManager } from '@nats-io/jetstream';
import type { Config } from './config/load.js';
import type { Logger } from './util/log.js';
import type { Relay } from './relay/relay.js';
import { needsSlot } from './schema/migrate.js';
import { RelayMetrics } from './ops/metrics.js';
import { Health } from './ops/health.js';
import { startHttp } from './ops/http.js';
import { findStream } from './sink/stream.js';

/**
 * Connects the relay's lifecycle to /livez, /readyz and /metrics: one place that turns events
 * (took over, NATS down, slot lag, heartbeat back) into gauges, readiness and one log line per
 * state change.
 */
export async function startOps(config: Config, relay: Relay, log: Logger): Promise<{ close(): Promise<void>; metrics: RelayMetrics; health: Health; port: number }> {
  const metrics = new RelayMetrics();
  const health = new Health();
  const olog = log.child({ component: 'health' });
  const outbound = needsSlot(config);
  const nats = config.observers.backend === 'nats';
  health.register('postgres', 'not connected to PostgreSQL yet');
  if (nats) health.register('nats', 'not connected to NATS yet');
  if (outbound) {
    health.register('role', 'standby: waiting for the leader lock (another relay is active)');
    health.register('heartbeat', 'no heartbeat has come back yet');
    health.register('slot', 'slot not inspected yet');
  }

  relay.events = {
    onActive: (active) => {
      metrics.active.set(active ? 1 : 0);
      health.set('role', active, 'standby: another relay holds the leader lock');
      // a standby has no heartbeat of its own to wait for; the active one starts the clock anew
      health.set('heartbeat', !active, 'no heartbeat has come back yet');
      if (active) health.set('postgres', true);
    },
    onDurable: (lsn) => metrics.confirmed(lsn),
    onPublished: (msg) => metrics.published(msg.subject, msg.commitMs ?? 0),
    onHeartbeat: (lagMs) => {
      metrics.heartbeatReturned(lagMs / 1000);
      if (!health.ready().ready || health.ready().reasons['heartbeat']) olog.info({ lag_ms: Math.round(lagMs) }, 'heartbeat back: the data path flows');
      health.set('heartbeat', true);
    },
    onSlot: (s) => {
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
      health.set('slot', !over && s.walStatus !== 'lost', s.walStatus === 'lost' ? 'slot invalidated (wal_status = lost)' : `slot lag ${s.lagBytes} bytes exceeds [relay] max_lag (${config.relay.max_lag})`);
    },
    onReconnect: () => metrics.reconnects.inc({ target: 'postgres' }),
    onNats: (up) => {
      metrics.up.set({ target: 'nats' }, up ? 1 : 0);
      if (!up) metrics.reconnects.inc({ target: 'nats' });
      health.set('nats', up, 'NATS is unreachable');
    },
  };
  relay.inboundStats.onOutcome = (consumer, outcome) => {
    metrics.handlerCalls.inc({ consumer, outcome });
    if (outcome === 'dead_lettered') metrics.deadLetters.inc({ direction: 'inbound' });
  };

  // a loop that turns: proves liveness and samples what is cheaper to poll than to push
  let last = { deadOut: 0, unrouted: 0, hooks: { delivered: 0, retried: 0, deadLettered: 0 } };
  let stuckLogged = false;
  const tick = () => {
    health.touch();
    const runner = relay.outboundRunner;
    const st = relay.stats;
    if (st.deadLettered > last.deadOut) metrics.deadLetters.inc({ direction: 'outbound' }, st.deadLettered - last.deadOut);
    if (st.unrouted > last.unrouted) metrics.eventsUnrouted.inc(st.unrouted - last.unrouted);
    const w = relay.webhookStats;
    if (w.delivered > last.hooks.delivered) metrics.webhookDeliveries.inc({ outcome: 'delivered' }, w.delivered - last.hooks.delivered);
    if (w.retried > last.hooks.retried) metrics.webhookDeliveries.inc({ outcome: 'retried' }, w.retried - last.hooks.retried);
    if (w.deadLettered > last.hooks.deadLettered) {
      metrics.webhookDeliveries.inc({ outcome: 'dead_lettered' }, w.deadLettered - last.hooks.deadLettered);
      metrics.deadLetters.inc({ direction: 'webhook' }, w.deadLettered - last.hooks.deadLettered);
    }
    last = { deadOut: st.deadLettered, unrouted: st.unrouted, hooks: { delivered: w.delivered, retried: w.retried, deadLettered: w.deadLettered } };
    const session = runner?.currentSession;
    const inFlight = session?.sinkInFlight ?? { messages: 0, bytes: 0 };
    metrics.inFlightMessages.set(inFlight.messages);
    metrics.inFlightBytes.set(inFlight.bytes);
    metrics.up.set({ target: 'postgres' }, runner ? (runner.connected ? 1 : 0) : 1);
    if (runner?.isActive) {
      const back = runner.heartbeatBack?.at.getTime() ?? runner.activeSince;
      const silent = Date.now() - back;
      if (silent > config.relay.heartbeat_timeout) {
        const where = !runner.connected
          ? `the replication connection is down (${runner.lastError ?? 'connecting'})`
          : inFlight.messages > 0
            ? `${inFlight.messages} messages are waiting for JetStream acknowledgements`
            : 'changes are not arriving from PostgreSQL (is the walsender stuck, or the slot in use elsewhere?)';
        health.set('heartbeat', false, `no heartbeat back for ${Math.round(silent / 1000)} s: ${where}`);
        if (!stuckLogged) olog.warn({ silent_ms: silent, where }, 'no heartbeat came back in time: the data path is stuck');
        stuckLogged = true;
      } else {
        stuckLogged = false;
      }
    }
  };
  const timer = setInterval(tick, 1000);
  timer.unref();

  // consumers' pending and redelivered counts
  const consumerTimer = config.observers.subscribe.length > 0 && nats
    ? setInterval(() => void pollConsumers(), 15_000)
    : null;
  consumerTimer?.unref();
  async function pollConsumers(): Promise<void> {
    const nc = relay.natsConnection;
    if (!nc) return;
    try {
      const jsm = await jetstreamManager(nc);
      for (const sub of config.observers.subscribe) {
        const stream = await findStream(jsm, sub.subject);
        if (!stream) continue;
        const info = await jsm.consumers.info(stream, sub.consumer);
        metrics.consumerPending.set({ consumer: sub.consumer }, info.num_pending);
        metrics.consumerRedelivered.set({ consumer: sub.consumer }, info.num_redelivered);
      }
    } catch {
      // NATS down: the nats readiness component says so
    }
  }

  const http = await startHttp(config.relay.listen, { metrics, health, log: log.child({ component: 'http' }), liveStaleMs: Math.max(30_000, config.relay.heartbeat_timeout) });
  return {
    metrics,
    health,
    port: http.port,
    async close() {
      clearInterval(timer);
      if (consumerTimer) clearInterval(consumerTimer);
      await http.close();
    },
  };
}
