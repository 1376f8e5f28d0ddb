/**
 * The zod schema of fraiseql.toml (DESIGN.md §3.2). Every schema carries its own error text,
 * so an issue's message already says what was expected; `report.ts` adds file, line and key.
 * Values of secret keys (URLs) are never put into messages.
 */
import { z } from 'zod';
import { DURATION_HINT, formatDuration, parseByteSize, parseDuration, SIZE_HINT } from './duration.js';
import { FRAISEQL_SECTIONS, OBSERVERS_IGNORED_KEYS } from './keys.js';
import {
  checkConsumerName,
  checkListen,
  checkPgName,
  checkStreamName,
  checkSubject,
  isEnvName,
  isGraphQLName,
  isHeaderName,
  isQualifiedIdentifier,
  isSchemaQualifiedIdentifier,
} from './names.js';

/** The message of a required key that is absent; report.ts turns it into an "add …" hint. */
export const MISSING = 'is required';

interface RawIssue {
  input?: unknown;
}

/** A short description of a value for messages; strings are quoted unless secret. */
export function describeValue(v: unknown, secret = false): string {
  if (typeof v === 'string') {
    if (secret) return 'a string';
    const q = JSON.stringify(v);
    return q.length > 60 ? `${q.slice(0, 56)}…"` : q;
  }
  if (typeof v === 'number') return `the number ${v}`;
  if (typeof v === 'boolean') return String(v);
  if (v instanceof Date) return 'a date';
  if (Array.isArray(v)) return 'an array';
  if (v === null || v === undefined) return 'nothing';
  return 'a table';
}

const expected =
  (what: string, secret = false) =>
  (iss: RawIssue): string =>
    iss.input === undefined ? MISSING : `must be ${what}, not ${describeValue(iss.input, secret)}`;

const str = (what: string, secret = false) => z.string({ error: expected(what, secret) });

/** A string that must not be blank. */
const text = (what: string, secret = false) =>
  str(what, secret).refine((s) => s.trim() !== '', { error: `must not be empty; expected ${what}` });

/** A string checked by one of names.ts's checks; the message quotes the value. */
const checked = (what: string, check: (s: string) => string | undefined) =>
  str(what).superRefine((s, ctx) => {
    const problem = check(s);
    if (problem) ctx.addIssue({ code: 'custom', message: `${describeValue(s)} ${problem}`, input: s });
  });

const int = (min: number) => {
  const err = expected(min === 1 ? 'a whole number of at least 1' : `a whole number of at least ${min}`);
  return z.int({ error: err }).min(min, { error: err });
};

/** A whole number from min to max. */
const intRange = (min: number, max: number) => {
  const err = expected(`a whole number from ${min} to ${max}`);
  return z.int({ error: err }).min(min, { error: err }).max(max, { error: err });
};

const bool = () => z.boolean({ error: expected('true or false') });

/** One of a few strings; any other value: an error listing them. */
const oneOf = <const T extends readonly [string, ...string[]]>(what: string, values: T) =>
  z.enum(values, {
    error: (iss: RawIssue) =>
      iss.input === undefined
        ? MISSING
        : `${describeValue(iss.input)} is not a supported ${what}; allowed values: ${values.map((v) => `"${v}"`).join(', ')}`,
  });

/** A file path; load.ts resolves it relative to the directory of the configuration file. */
const filePath = () =>
  text('a file path such as "certs/ca.pem"').refine((s) => !s.includes('\u0000'), {
    error: 'must not contain a NUL character',
  });

const duration = () =>
  z
    .string({
      error: (iss: RawIssue) =>
        typeof iss.input === 'number'
          ? `must be a duration with a unit such as "${iss.input}s" or "${iss.input}ms", not the bare number ${iss.input}`
          : expected(DURATION_HINT)(iss),
    })
    .transform((s, ctx) => {
      try {
        return parseDuration(s);
      } catch (e) {
        ctx.addIssue({ code: 'custom', message: e instanceof Error ? e.message : String(e), input: s });
        return z.NEVER;
      }
    });

/** A duration of at least 1 ms. */
const positiveDuration = () =>
  duration().refine((ms) => ms > 0, { error: `must be longer than zero; expected ${DURATION_HINT}` });

const byteSize = () =>
  z.unknown().transform((v, ctx) => {
    if (typeof v !== 'number' && typeof v !== 'string') {
      ctx.addIssue({ code: 'custom', message: `must be ${SIZE_HINT}, not ${describeValue(v)}`, input: v });
      return z.NEVER;
    }
    try {
      const bytes = parseByteSize(v);
      if (bytes >= 1) return bytes;
      ctx.addIssue({ code: 'custom', message: `must be at least 1 byte; expected ${SIZE_HINT}`, input: v });
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: e instanceof Error ? e.message : String(e), input: v });
    }
    return z.NEVER;
  });

const subject = (wildcards: boolean) =>
  checked(
    'a NATS subject such as "fraiseql.order.created"',
    (s) => {
      const p = checkSubject(s, wildcards);
      return p && `is not a valid NATS subject: it ${p}`;
    },
  );

const qualifiedName = (what: string, example: string) =>
  checked(`${what} such as ${example}`, (s) =>
    isQualifiedIdentifier(s)
      ? undefined
      : `is not a valid ${what}: use name or schema.name, each part letters, digits, "_" or "$" not starting ` +
        `with a digit, or a "double-quoted" identifier (e.g. ${example})`,
  );

const envName = () =>
  checked('the name of an environment variable', (s) =>
    isEnvName(s) ? undefined : 'is not an environment variable name (letters, digits and "_", not starting with a digit)',
  );

const pgName = (max = 63) =>
  checked('a PostgreSQL name such as "fraiseql_relay"', (s) => checkPgName(s, max));

/** Entries that are accepted and ignored (FraiseQL's own settings). */
function ignored<const K extends readonly string[]>(keys: K): { [P in K[number]]: z.ZodOptional<z.ZodUnknown> } {
  return Object.fromEntries(keys.map((k) => [k, z.unknown().optional()])) as {
    [P in K[number]]: z.ZodOptional<z.ZodUnknown>;
  };
}

const table = (what: string) => ({ error: expected(`a table (${what})`) });
const arrayOfTables = (what: string) => ({ error: expected(`an array of tables (${what})`) });

// ── actions ───────────────────────────────────────────────────────────────────────────────

const HTTP_URL = 'an http:// or https:// URL';

export const actionShape = {
  type: z.literal('webhook', {
    error: (iss: RawIssue) =>
      iss.input === undefined
        ? `${MISSING}; add type = "webhook"`
        : `${describeValue(iss.input)} is not a supported action type; the only type is "webhook"`,
  }),
  // a URL may carry a token: never quoted in messages
  url: z
    .string({ error: expected(HTTP_URL, true) })
    .refine(isHttpUrl, { error: `must be ${HTTP_URL} (or use url_env to keep the URL in the environment)` })
    .optional(),
  url_env: envName().optional(),
  method: checked('an HTTP method such as "POST"', (s) =>
    /^[A-Za-z]+$/.test(s) ? undefined : 'is not an HTTP method such as "POST" or "PUT"',
  )
    .transform((s) => s.toUpperCase())
    .default('POST'),
  headers: z.record(z.string(), str('a string'), table('header name = "value"')).default({}),
  timeout: duration().prefault('30s'),
  max_attempts: int(1).default(8),
  signing_secret_env: envName().optional(),
};

function isHttpUrl(s: string): boolean {
  try {
    const u = new URL(s);
    return u.protocol === 'http:' || u.protocol === 'https:';
  } catch {
    return false;
  }
}

const actionSchema = z
  .strictObject(actionShape, table('[[….actions]] with type = "webhook"'))
  .superRefine((a, ctx) => {
    if (a.url !== undefined && a.url_env !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['url'],
        message: 'is set together with url_env; keep exactly one of them (url_env keeps the URL out of the file)',
        input: a,
      });
    } else if (a.url === undefined && a.url_env === undefined) {
      ctx.addIssue({
        code: 'custom',
        message:
          'a webhook action needs a URL: add url_env = "ORDER_WEBHOOK_URL" (the URL then stays in the environment) ' +
          'or url = "https://…"',
        input: a,
      });
    }
    for (const [name, value] of Object.entries(a.headers)) {
      if (!isHeaderName(name)) {
        ctx.addIssue({ code: 'custom', path: ['headers', name], message: 'is not a valid HTTP header name', input: a });
      } else if (/[\r\n\u0000]/.test(value)) {
        ctx.addIssue({ code: 'custom', path: ['headers', name], message: 'must not contain line breaks', input: a });
      }
    }
  });

const actions = (header: string) => z.array(actionSchema, arrayOfTables(header)).default([]);

// ── observers ─────────────────────────────────────────────────────────────────────────────

const OPERATIONS = ['INSERT', 'UPDATE', 'DELETE', 'CREATE', 'CUSTOM'] as const;
type ChangeOperation = (typeof OPERATIONS)[number];
const isChangeOperation = (s: string): s is ChangeOperation => (OPERATIONS as readonly string[]).includes(s);
const OPERATION_LIST = OPERATIONS.map((o) => `"${o}"`).join(', ');

export const publishShape = {
  mutation: checked('a mutation name such as "create_order"', (s) =>
    /^\S+$/.test(s) ? undefined : 'is not a mutation name (it is empty or contains whitespace)',
  ).optional(),
  entity: checked('a GraphQL type name such as "Order"', (s) =>
    isGraphQLName(s)
      ? undefined
      : 'is not a GraphQL type name (letters, digits and "_", not starting with a digit, e.g. "Order")',
  ).optional(),
  operation: str(`one of ${OPERATION_LIST}`)
    .transform((s, ctx): ChangeOperation => {
      const upper = s.trim().toUpperCase();
      if (isChangeOperation(upper)) return upper;
      ctx.addIssue({
        code: 'custom',
        message: `${describeValue(s)} is not a change-log operation; allowed values: ${OPERATION_LIST}`,
        input: s,
      });
      return z.NEVER;
    })
    .optional(),
  subject: subject(false),
  subscription_topic: text('a subscription topic such as "order_created"').optional(),
  actions: actions('[[observers.publish.actions]]'),
};

const publishSchema = z.strictObject(publishShape, table('[[observers.publish]]')).superRefine((p, ctx) => {
  if (p.mutation === undefined && p.entity === undefined) {
    ctx.addIssue({
      code: 'custom',
      message:
        'this publish entry has neither a mutation nor an entity, so nothing would trigger it; add ' +
        'mutation = "create_order" (the events that mutation emits) or entity = "Order" (rows of FraiseQL\'s ' +
        'change log for that type, optionally narrowed by operation = "INSERT")',
      input: p,
    });
  } else if (p.mutation !== undefined && p.entity !== undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['entity'],
      message:
        'is set together with mutation; keep exactly one of them (mutation: the events that mutation emits; ' +
        'entity: the change-log rows of that type), or write two [[observers.publish]] entries',
      input: p,
    });
  } else if (p.operation !== undefined && p.entity === undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['operation'],
      message: 'only applies to an entity entry; add entity = "Order" or remove operation',
      input: p,
    });
  }
});

export const subscribeShape = {
  subject: subject(true),
  handler: qualifiedName('SQL function name', '"fn_reserve_inventory" or "inventory.fn_reserve"'),
  consumer: checked('a durable consumer name such as "inventory-service"', (s) => {
    const p = checkConsumerName(s);
    return p && `is not a valid consumer name: it ${p}`;
  }).optional(),
  max_deliver: int(1).default(5),
  ack_wait: duration().prefault('30s'),
  backoff: z.array(duration(), { error: expected('an array of durations such as ["1s", "10s", "1m"]') }).default([]),
  concurrency: int(1).default(1),
};

const subscribeSchema = z.strictObject(subscribeShape, table('[[observers.subscribe]]')).superRefine((s, ctx) => {
  if (s.backoff.length > 0 && s.max_deliver <= s.backoff.length) {
    ctx.addIssue({
      code: 'custom',
      path: ['max_deliver'],
      message:
        `(${s.max_deliver}) must be greater than the number of backoff entries (${s.backoff.length}), ` +
        'or JetStream rejects the consumer; raise max_deliver or shorten backoff',
      input: s.max_deliver,
    });
  }
});

const EVENTS = ['INSERT', 'UPDATE', 'DELETE'] as const;
type RowEvent = (typeof EVENTS)[number];
const isRowEvent = (s: string): s is RowEvent => (EVENTS as readonly string[]).includes(s);

export const ruleShape = {
  table: qualifiedName('table name', '"tb_order" or "public.tb_order"'),
  event: str('"INSERT", "UPDATE" or "DELETE"').transform((s, ctx): RowEvent => {
    const upper = s.trim().toUpperCase();
    if (isRowEvent(upper)) return upper;
    ctx.addIssue({
      code: 'custom',
      message: `${describeValue(s)} is not a row event; use "INSERT", "UPDATE" or "DELETE" (one per rule)`,
      input: s,
    });
    return z.NEVER;
  }),
  subject: subject(false).optional(),
  before_image: bool().default(false),
  actions: actions('[[observers.rules.actions]]'),
  /** FraiseQL's `[observers.retry]`: accepted and ignored */
  retry: z.unknown().optional(),
};

const ruleSchema = z.strictObject(ruleShape, table('[[observers.rules]]')).superRefine((r, ctx) => {
  if (r.subject === undefined && r.actions.length === 0) {
    ctx.addIssue({
      code: 'custom',
      message:
        'this rule has neither a subject nor actions, so it would do nothing; add subject = "fraiseql.<entity>.<event>" ' +
        'to publish the change to NATS, and/or an actions entry ([[observers.rules.actions]] with type = "webhook")',
      input: r,
    });
  }
});

const BACKENDS = ['nats', 'webhook'] as const;

export const observersShape = {
  backend: z
    .enum(BACKENDS, {
      error: (iss: RawIssue) =>
        `${describeValue(iss.input)} is not a supported backend; allowed values: ${BACKENDS.map((b) => `"${b}"`).join(', ')}` +
        (iss.input === 'redis' || iss.input === 'postgres'
          ? ` (FraiseQL's own "${iss.input}" observer backend is not used by the relay)`
          : ''),
    })
    .default('nats'),
  nats_url: text('a NATS server URL such as "nats://localhost:4222"', true).optional(),
  publish: z.array(publishSchema, arrayOfTables('[[observers.publish]]')).default([]),
  subscribe: z.array(subscribeSchema, arrayOfTables('[[observers.subscribe]]')).default([]),
  rules: z.array(ruleSchema, arrayOfTables('[[observers.rules]]')).default([]),
  ...ignored(OBSERVERS_IGNORED_KEYS),
};

const observersSchema = z.strictObject(observersShape, table('[observers]'));

/** The top-level `[[observers]]` form: an array of table rules. */
const legacyObserversSchema = z.array(ruleSchema);

// ── relay ─────────────────────────────────────────────────────────────────────────────────

export const streamShape = {
  name: checked('a stream name such as "FRAISEQL"', (s) => {
    const p = checkStreamName(s);
    return p && `is not a valid stream name: it ${p}`;
  }).default('FRAISEQL'),
  create: bool().default(true),
  duplicate_window: duration().prefault('10m'),
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
  slot: pgName().default('fraiseql_relay'),
  // the relay creates <publication>_outbox and <publication>_tables, which must fit in 63 characters
  publication: pgName(63 - '_outbox'.length).default('fraiseql_relay'),
  listen: checked('"host:port"', (s) => {
    const p = checkListen(s);
    return p && `is not a listen address: it ${p}`;
  }).default('0.0.0.0:9464'),
  max_in_flight: int(1).default(1024),
  max_in_flight_bytes: byteSize().prefault(64 * 1024 * 1024),
  retention: duration().prefault('24h'),
  shutdown_timeout: duration().prefault('10s'),
  plugin: oneOf('logical decoding plugin', ['pgoutput', 'wal2json']).default('pgoutput'),
  change_log: changeLog(),
  schema_file: filePath().optional(),
  subscription_prefix: subject(false).default('fraiseql.subscription'),
  heartbeat: positiveDuration().prefault('10s'),
  heartbeat_timeout: positiveDuration().prefault('60s'),
  max_lag: byteSize().prefault('1GiB'),
  database_ca_file: filePath().optional(),
  stream: z.strictObject(streamShape, table('[relay.stream]')).prefault({}),
  nats: natsSchema.prefault({}),
};

const relaySchema = z.strictObject(relayShape, table('[relay]')).superRefine((r, ctx) => {
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

// ── top level ─────────────────────────────────────────────────────────────────────────────

const projectSchema = z.looseObject(
  { name: text('the service name, e.g. name = "inventory-service"') },
  table('[project]'),
);

const databaseSchema = z.looseObject(
  {
    type: z
      .enum(['postgresql', 'postgres'], {
        error: (iss: RawIssue) => `${describeValue(iss.input)} is not supported; the relay needs type = "postgresql"`,
      })
      .default('postgresql')
      .transform((): 'postgresql' => 'postgresql'),
    url: text('a PostgreSQL connection URL such as "${DATABASE_URL}"', true),
  },
  table('[database]'),
);

const topShape = {
  project: projectSchema,
  database: databaseSchema,
  relay: relaySchema.prefault({}),
  ...ignored(FRAISEQL_SECTIONS),
};

export const configSchema = z.strictObject({ ...topShape, observers: observersSchema.prefault({}) });
export const legacyConfigSchema = z.strictObject({ ...topShape, observers: legacyObserversSchema });

export type ParsedConfig = z.output<typeof configSchema>;
export type ParsedLegacyConfig = z.output<typeof legacyConfigSchema>;

/** In the top-level [[observers]] form, keys of the [observers] table that end up in a rule. */
export const TABLE_FORM_KEYS: readonly string[] = Object.keys(observersShape).filter(
  (k) => !(OBSERVERS_IGNORED_KEYS as readonly string[]).includes(k),
);

/**
 * The keys allowed in the table at a path (array indexes ignored), for "did you mean" hints;
 * undefined where any key is allowed.
 */
export function knownKeys(path: readonly PropertyKey[], legacy: boolean): readonly string[] | undefined {
  const p = path.filter((s) => typeof s === 'string').join('.');
  switch (p) {
    case '':
      return Object.keys(configSchema.shape);
    case 'observers':
      return Object.keys(legacy ? ruleShape : observersShape);
    case 'observers.publish':
      return Object.keys(publishShape);
    case 'observers.subscribe':
      return Object.keys(subscribeShape);
    case 'observers.rules':
      return Object.keys(ruleShape);
    case 'observers.actions':
    case 'observers.rules.actions':
    case 'observers.publish.actions':
      return Object.keys(actionShape);
    case 'relay':
      return Object.keys(relayShape);
    case 'relay.stream':
      return Object.keys(streamShape);
    case 'relay.nats':
      return Object.keys(natsShape);
    default:
      return undefined;
  }
}

/** Keys accepted only to be ignored: not listed among the allowed keys in messages. */
export const IGNORED_KEY_NAMES: ReadonlySet<string> = new Set<string>([
  ...OBSERVERS_IGNORED_KEYS,
  ...FRAISEQL_SECTIONS,
]);
