/**
 * The validated configuration. Durations are milliseconds, sizes are bytes;
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

/** An operation of a row of FraiseQL's change log, as written (upper-cased). */
export type ChangeOperation = 'INSERT' | 'UPDATE' | 'DELETE' | 'CREATE' | 'CUSTOM';

/**
 * `[[observers.publish]]`: publish an event after a mutation commits (`mutation`), or for each
 * row of FraiseQL's change log about a type (`entity`, optionally `operation`). Exactly one of
 * `mutation` and `entity` is set.
 */
export interface PublishRule {
  /** the mutation whose emitted events (outbox rows) are published */
  mutation?: string;
  /** GraphQL type name (e.g. 'Order') matched against the change log's rows */
  entity?: string;
  /** only with `entity`: the change-log operation to match; absent: every operation */
  operation?: ChangeOperation;
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
  /** events applied in one transaction, 1 to 64; default 32 */
  batch: number;
  /** ms a batch waits for more events while a worker is free; default 0 */
  max_wait: number;
  /** events with the same key apply in stream order; null: no order */
  order_by: OrderBy | null;
}

/** Where an event's ordering key is read: a header, or a path of field names into the body. */
type OrderBy = { header: string } | { path: string[] };

/** `[[observers.rules]]` (or a top-level `[[observers]]` element): events from table changes. */
export interface TableRule {
  /** may be schema-qualified */
  table: string;
  event: 'INSERT' | 'UPDATE' | 'DELETE';
  /** a concrete NATS subject; a rule has a subject, actions, or both */
  subject?: string;
  /** default false */
  before_image: boolean;
  /** a publication row filter (SQL boolean expression over the row); every rule of a table has the same */
  where?: string;
  /** only these columns in `entity` / `entity_before` */
  columns?: string[];
  /** UPDATE rules: published only when one of these columns changed (needs before_image) */
  changed?: string[];
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
  /** default 'file' */
  storage: 'file' | 'memory';
  /** default 1 (1..5) */
  replicas: number;
}

/** `[relay.nats]`: TLS and authentication for the NATS connection; paths are absolute. */
export interface NatsConfig {
  /** default false: require TLS to the NATS server */
  tls: boolean;
  /** absolute path of a CA bundle that verifies the NATS server */
  ca_file?: string;
  /** absolute path of a client certificate; set together with `key_file` */
  cert_file?: string;
  /** absolute path of the client certificate's private key; set together with `cert_file` */
  key_file?: string;
  /** absolute path of a NATS credentials file (JWT and nkey seed) */
  creds_file?: string;
  /** absolute path of a file holding an nkey seed */
  nkey_seed_file?: string;
  /** name of the environment variable that holds an authentication token */
  token_env?: string;
  /** name of the environment variable that holds the user name; set together with `password_env` */
  user_env?: string;
  /** name of the environment variable that holds the password; set together with `user_env` */
  password_env?: string;
}

export interface RelayConfig {
  /** default 'fraiseql_relay' */
  schema: string;
  /**
   * the logical replication slot; default derived from the service and the database:
   * `fraiseql_relay_<service>`, or `fraiseql_relay_<service>_<database>` when the service name is
   * `[project] name` (see README "Slot and publication names")
   */
  slot: string;
  /** the relay creates `<publication>_outbox` and `<publication>_tables`; default derived like `slot` (at most 56 characters) */
  publication: string;
  /**
   * which of `slot` and `publication` are the derived defaults (not written in the file), and what
   * they were derived from in words; absent when both are written (or the Config was built by hand).
   * Only derived names fall back to fraiseql-relay 0.1's `fraiseql_relay` slot of an installation
   * that still has it (schema/names.ts).
   */
  derivedNames?: { slot: boolean; publication: boolean; from: string };
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
  /** logical decoding plugin of the slot, default 'pgoutput' */
  plugin: 'pgoutput' | 'wal2json';
  /** schema-qualified change-log table; false: none; absent: auto-detect `core.tb_entity_change_log` */
  change_log?: string | false;
  /** absolute path of FraiseQL's compiled schema JSON */
  schema_file?: string;
  /** NATS subject prefix of GraphQL subscription events, default 'fraiseql.subscription' */
  subscription_prefix: string;
  /** ms, default 10s */
  heartbeat: number;
  /** ms, default 60s; always greater than `heartbeat` */
  heartbeat_timeout: number;
  /** bytes, default 1 GiB: slot lag above this makes /readyz fail */
  max_lag: number;
  /** absolute path of a CA bundle for TLS to PostgreSQL */
  database_ca_file?: string;
  /**
   * name of the environment variable holding the message-signing key(s), comma-separated: the
   * first signs published messages and keys table-rule event ids, every one verifies subscribed
   * messages (unsigned or mis-signed ones are dead-lettered before the inbox)
   */
  signing_key_env?: string;
  stream: StreamConfig;
  /** always present, defaults filled in */
  nats: NatsConfig;
  /** `[relay.redis]`, always present, defaults filled in (used with backend = "redis") */
  redis: RedisConfig;
}

/** `[relay.redis]`: stream keys, de-duplication and trimming of backend = "redis". */
export interface RedisConfig {
  /** default '': a subject's stream key is `<stream_prefix><subject>` */
  stream_prefix: string;
  /** XADD MAXLEN ~ max_len (at most one of max_len and max_age) */
  max_len?: number;
  /** ms: XADD MINID ~ (now - max_age) */
  max_age?: number;
  /** ms, default 10m: how long `<stream_prefix>dedup:<event id>:<subject>` is kept */
  duplicate_window: number;
}

export interface ObserversConfig {
  /** default 'nats'; 'postgres': no broker, subscriptions applied straight from the slot */
  backend: 'nats' | 'webhook' | 'redis' | 'postgres';
  /** set whenever backend is 'nats' and anything is published or subscribed */
  nats_url?: string;
  /** set whenever backend is 'redis' and anything is published or subscribed */
  redis_url?: string;
  publish: PublishRule[];
  subscribe: SubscribeRule[];
  rules: TableRule[];
}

/**
 * Where the service name came from: `[project] name`, or (no `[project]`) the database the URL
 * connects to: its database name (`dbname` parameter or path), PGDATABASE, its user name (PostgreSQL's
 * default database), PGUSER.
 */
export type ServiceNameSource = 'project' | 'database' | 'PGDATABASE' | 'user' | 'PGUSER';

export interface Config {
  /** absolute path of the file */
  file: string;
  /** the service name: default consumer names, the webhook subject prefix, log fields */
  project: {
    name: string;
    source: ServiceNameSource;
    /** where the name came from, in words (e.g. "the database name in [database] url") */
    from: string;
  };
  /** `url`: `[database] url`, or the environment variable DATABASE_URL when the file has no `[database]` */
  database: { type: 'postgresql'; url: string };
  observers: ObserversConfig;
  relay: RelayConfig;
  /**
   * FraiseQL's own keys found where the relay looks (e.g. `observers.redis_url`,
   * `observers.rules[0].retry`): accepted and ignored; the CLI may warn about them.
   */
  ignoredKeys: string[];
}
