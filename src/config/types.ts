/**
 * The validated configuration (DESIGN.md §3.2). Durations are milliseconds, sizes are bytes;
 * every default is filled in.
 */

/** An action run for an event, besides (or instead of) publishing it to NATS. */
export interface RuleAction {
  type: 'webhook';
  /** exactly one of `url` and `url_env` is set */
  url?: string;
  /** name of the environment variable that holds the URL (resolved when the relay starts) */
  url_env?: string;
  /** upper case, default 'POST' */
  method: string;
  /** default {} */
  headers: Record<string, string>;
  /** ms, default 30s */
  timeout: number;
  /** default 8 */
  max_attempts: number;
  /** name of the environment variable that holds the HMAC signing secret */
  signing_secret_env?: string;
}

/** `[[observers.publish]]`: after a mutation commits, publish its event. */
export interface PublishRule {
  mutation: string;
  /** a concrete NATS subject (no wildcards) */
  subject: string;
  subscription_topic?: string;
  /** default [] */
  actions: RuleAction[];
}

/** `[[observers.subscribe]]`: call a SQL function for each event on a subject. */
export interface SubscribeRule {
  /** may contain wildcards */
  subject: string;
  /** SQL function, `name` or `schema.name` (possibly double-quoted parts), taking one jsonb */
  handler: string;
  /** durable consumer name; default `defaultConsumerName(project.name, subject)` */
  consumer: string;
  /** default 5 */
  max_deliver: number;
  /** ms, default 30s */
  ack_wait: number;
  /** ms each, default [] */
  backoff: number[];
  /** default 1 */
  concurrency: number;
}

/** `[[observers.rules]]` (or a top-level `[[observers]]` element): events from table changes. */
export interface TableRule {
  /** may be schema-qualified */
  table: string;
  event: 'INSERT' | 'UPDATE' | 'DELETE';
  /** a concrete NATS subject; a rule has a subject, actions, or both */
  subject?: string;
  /** default false */
  before_image: boolean;
  /** default [] */
  actions: RuleAction[];
}

export interface StreamConfig {
  /** default 'FRAISEQL' */
  name: string;
  /** default true: create or update the stream; false: it must exist */
  create: boolean;
  /** ms, default 10m */
  duplicate_window: number;
  /** default [] */
  subjects: string[];
}

export interface RelayConfig {
  /** default 'fraiseql_relay' */
  schema: string;
  /** default 'fraiseql_relay' */
  slot: string;
  /** default 'fraiseql_relay'; the relay creates `<publication>_outbox` and `<publication>_tables` */
  publication: string;
  /** default '0.0.0.0:9464' */
  listen: string;
  /** default 1024 */
  max_in_flight: number;
  /** bytes, default 64 MiB */
  max_in_flight_bytes: number;
  /** ms, default 24h */
  retention: number;
  /** ms, default 10s */
  shutdown_timeout: number;
  stream: StreamConfig;
}

export interface ObserversConfig {
  /** default 'nats' */
  backend: 'nats' | 'webhook';
  /** set whenever backend is 'nats' and anything is published or subscribed */
  nats_url?: string;
  publish: PublishRule[];
  subscribe: SubscribeRule[];
  rules: TableRule[];
}

export interface Config {
  /** absolute path of the file */
  file: string;
  project: { name: string };
  database: { type: 'postgresql'; url: string };
  observers: ObserversConfig;
  relay: RelayConfig;
  /**
   * FraiseQL's own keys found where the relay looks (e.g. `observers.redis_url`,
   * `observers.rules[0].retry`): accepted and ignored; the CLI may warn about them.
   */
  ignoredKeys: string[];
}
