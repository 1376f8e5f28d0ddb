/**
 * fraiseql-relay as a library: what a service needs to run the relay inside its own process.
 *
 * ```ts
 * import { loadConfig, migrate, Relay } from 'fraiseql-relay';
 * const config = loadConfig('fraiseql.toml');
 * await migrate(config);
 * const relay = new Relay(config);
 * relay.on('published', (msg) => console.log('published', msg.subject));
 * await relay.start();
 * // … on shutdown:
 * await relay.stop();
 * ```
 *
 * The command line (`fraiseql-relay run`, `migrate`, …) is a thin layer over these.
 */
export { Relay, type RelayOptions } from './relay/relay.js';
export type { ConsumerState, InboundStats, OutboundState, RelayEvents, WebhookStats } from './relay/events.js';
export type { OutboundStats } from './outbound/session.js';
export type { OutboundMessage } from './sink/sink.js';
export type { SlotStats } from './schema/slot.js';
export type { HandlerOutcome } from './inbound/worker.js';
export type { WebhookOutcome } from './webhook/deliver.js';

export {
  ConfigError,
  loadConfig,
  parseConfig,
  parseByteSize,
  parseDuration,
  type ChangeOperation,
  type Config,
  type ConfigProblem,
  type NatsConfig,
  type ObserversConfig,
  type PublishRule,
  type RelayConfig,
  type RuleAction,
  type ServiceNameSource,
  type StreamConfig,
  type SubscribeRule,
  type TableRule,
} from './config/load.js';

export { migrate, migrationPlan, type MigrateResult } from './schema/migrate.js';

// backfills: request, list and cancel them through the database (the active relay does the work)
export { BackfillStore, type Backfill, type BackfillRequest, type BackfillState } from './backfill/store.js';
export type { ChunkOutcome } from './backfill/windows.js';

export { startDaemon, observeRelay, type Daemon } from './daemon.js';
export { RelayMetrics, METRIC_PREFIX } from './ops/metrics.js';
export { Health, type HealthComponent, type Readiness } from './ops/health.js';
export { startHttp, type HttpServer, type HttpDeps } from './ops/http.js';

export { createLogger, type Logger } from './util/log.js';
export { PublishRefusedError, RelayError, SlotError, SlotLostError, StreamMissingError, UsageError } from './util/errors.js';
