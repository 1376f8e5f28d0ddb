/** `[relay]` with its `[relay.stream]` and `[relay.nats]` sub-tables. */
import { z } from 'zod';
import { formatDuration } from './duration.js';
import {
  bool,
  byteSize,
  checked,
  describeValue,
  duration,
  DURATION_LIMITS,
  envName,
  expected,
  filePath,
  int,
  intRange,
  oneOf,
  pgName,
  positiveDuration,
  subject,
  table,
} from './fields.js';
import { checkListen, checkStreamName, isSchemaQualifiedIdentifier } from './names.js';
import { MAX_PUBLICATION_NAME } from './service.js';
import { redisSchema } from './schema-redis.js';

export const streamShape = {
  name: checked('a stream name such as "FRAISEQL"', (s) => {
    const p = checkStreamName(s);
    return p && `is not a valid stream name: it ${p}`;
  }).default('FRAISEQL'),
  create: bool().default(true),
  // sent to NATS in nanoseconds; a zero window would be JetStream's default instead
  duplicate_window: duration({
    positive: { zero: ': JetStream replaces a zero duplicate window with its default (2m)' },
    limit: DURATION_LIMITS.nats,
  }).prefault('10m'),
  subjects: z.array(subject(true), { error: expected('an array of NATS subjects such as ["fraiseql.>"]') }).default([]),
  storage: oneOf('stream storage', ['file', 'memory']).default('file'),
  replicas: intRange(1, 5).default(1),
};

export const natsShape = {
  tls: bool().default(false),
  ca_file: filePath().optional(),
  cert_file: filePath().optional(),
  key_file: filePath().optional(),
  creds_file: filePath().optional(),
  nkey_seed_file: filePath().optional(),
  token_env: envName().optional(),
  user_env: envName().optional(),
  password_env: envName().optional(),
};

/** Keys that only make sense together: each names its partner and why. */
const NATS_PAIRS = [
  ['cert_file', 'key_file', 'a client certificate needs its private key'],
  ['key_file', 'cert_file', 'a private key needs its client certificate'],
  ['user_env', 'password_env', 'user/password authentication needs both'],
  ['password_env', 'user_env', 'user/password authentication needs both'],
] as const;

const natsSchema = z.strictObject(natsShape, table('[relay.nats]')).superRefine((n, ctx) => {
  for (const [key, partner, why] of NATS_PAIRS) {
    if (n[key] !== undefined && n[partner] === undefined) {
      ctx.addIssue({ code: 'custom', path: [key], message: `is set without ${partner}; ${why}: add ${partner} = …`, input: n });
    }
  }
});

/** `change_log`: a schema-qualified table name, or false. */
const changeLog = () =>
  z
    .unknown()
    .transform((v, ctx): string | false => {
      const example = '"core.tb_entity_change_log"';
      if (v === false) return false;
      if (typeof v === 'string' && isSchemaQualifiedIdentifier(v)) return v;
      ctx.addIssue({
        code: 'custom',
        message:
          typeof v === 'string'
            ? `${describeValue(v)} is not a schema-qualified table name: use schema.name, each part letters, digits, ` +
              `"_" or "$" not starting with a digit, or a "double-quoted" identifier (e.g. ${example})`
            : v === true
              ? `cannot be true: leave it out to detect ${example} automatically, name the table, or set false ` +
                'to not read a change log'
              : `must be a schema-qualified table name such as ${example}, or false, not ${describeValue(v)}`,
        input: v,
      });
      return z.NEVER;
    })
    .optional();

export const relayShape = {
  schema: pgName().default('fraiseql_relay'),
  // default: derived from the service and the database (load.ts, service.ts deriveRelayNames)
  slot: pgName().optional(),
  // the relay creates <publication>_outbox and <publication>_tables, which must fit in 63 characters
  publication: pgName(MAX_PUBLICATION_NAME).optional(),
  listen: checked('"host:port"', (s) => {
    const p = checkListen(s);
    return p && `is not a listen address: it ${p}`;
  }).default('0.0.0.0:9464'),
  max_in_flight: int(1).default(1024),
  max_in_flight_bytes: byteSize().prefault(64 * 1024 * 1024),
  // compared with the rows' age (the cleanup runs every min(60s, retention/4)), never a timer
  retention: duration({ limit: DURATION_LIMITS.retention }).prefault('24h'),
  shutdown_timeout: duration({ limit: DURATION_LIMITS.timer }).prefault('10s'),
  plugin: oneOf('logical decoding plugin', ['pgoutput', 'wal2json']).default('pgoutput'),
  change_log: changeLog(),
  schema_file: filePath().optional(),
  subscription_prefix: subject(false).default('fraiseql.subscription'),
  heartbeat: positiveDuration(DURATION_LIMITS.timer).prefault('10s'), // a setInterval
  // compared with the time since the last heartbeat came back, never a timer: > heartbeat is its only bound
  heartbeat_timeout: positiveDuration().prefault('60s'),
  max_lag: byteSize().prefault('1GiB'),
  database_ca_file: filePath().optional(),
  signing_key_env: envName().optional(),
  stream: z.strictObject(streamShape, table('[relay.stream]')).prefault({}),
  nats: natsSchema.prefault({}),
  redis: redisSchema.prefault({}),
};

export const relaySchema = z.strictObject(relayShape, table('[relay]')).superRefine((r, ctx) => {
  if (r.heartbeat_timeout <= r.heartbeat) {
    ctx.addIssue({
      code: 'custom',
      path: ['heartbeat_timeout'],
      message:
        `(${formatDuration(r.heartbeat_timeout)}) must be greater than heartbeat (${formatDuration(r.heartbeat)}), ` +
        'or a connection would be given up before its next heartbeat is due; raise heartbeat_timeout or lower heartbeat',
      input: r.heartbeat_timeout,
    });
  }
});
