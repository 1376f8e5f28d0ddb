/** `[observers]`: its publish, subscribe and rules arrays, and the top-level `[[observers]]` form. */
import { z } from 'zod';
import {
  arrayOfTables,
  bool,
  checked,
  describeValue,
  duration,
  DURATION_LIMITS,
  expected,
  ignored,
  int,
  intRange,
  qualifiedName,
  type RawIssue,
  str,
  subject,
  table,
  text,
} from './fields.js';
import { OBSERVERS_IGNORED_KEYS } from './keys.js';
import { checkConsumerName, isGraphQLName, isHeaderName } from './names.js';
import { actions } from './schema-actions.js';

const OPERATIONS = ['INSERT', 'UPDATE', 'DELETE', 'CREATE', 'CUSTOM'] as const;
type ChangeOperation = (typeof OPERATIONS)[number];
const isChangeOperation = (s: string): s is ChangeOperation => (OPERATIONS as readonly string[]).includes(s);
const OPERATION_LIST = OPERATIONS.map((o) => `"${o}"`).join(', ');

export const publishShape = {
  mutation: checked('a mutation name such as "create_order"', (s) =>
    /^\S+$/.test(s) ? undefined : 'is not a mutation name (it is empty or contains whitespace)',
  ).optional(),
  entity: checked('a GraphQL type name such as "Order"', (s) =>
    isGraphQLName(s) ? undefined : 'is not a GraphQL type name (letters, digits and "_", not starting with a digit, e.g. "Order")',
  ).optional(),
  operation: str(`one of ${OPERATION_LIST}`)
    .transform((s, ctx): ChangeOperation => {
      const upper = s.trim().toUpperCase();
      // one vocabulary, FraiseQL's: CREATE is an alias of INSERT
      if (isChangeOperation(upper)) return upper === 'CREATE' ? 'INSERT' : upper;
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
  // sent to NATS, and the relay extends a message's deadline on a timer of half of it
  ack_wait: duration({
    positive: { zero: ': JetStream replaces a zero ack_wait with its default (30s)' },
    limit: DURATION_LIMITS.timer,
  }).prefault('30s'),
  // redelivery delays sent to NATS with each NAK (nanoseconds), no timer of the relay's
  backoff: z
    .array(duration({ limit: DURATION_LIMITS.nats }), { error: expected('an array of durations such as ["1s", "10s", "1m"]') })
    .default([]),
  concurrency: int(1).default(1),
  // events applied in one transaction (when one fails: a subtransaction each, at most 64 to a transaction)
  batch: intRange(1, 1000).default(100),
  // how long a batch waits for more events while a worker is free (0: not at all)
  max_wait: duration({ limit: DURATION_LIMITS.timer }).prefault('0ms'),
  // events with the same key apply in stream order: true (the entity id), a header name, or "$.a.b" in the body
  order_by: z
    .union([z.boolean(), z.string()], {
      error: expected('true, a header name such as "Fraiseql-Entity-Id", or a JSON path into the body such as "$.entity.customer_id"'),
    })
    .optional()
    .superRefine((v, ctx) => {
      if (typeof v !== 'string') return;
      const ok = v.startsWith('$.') ? /^\$(\.[A-Za-z_][A-Za-z0-9_]*)+$/.test(v) : isHeaderName(v);
      if (!ok) {
        ctx.addIssue({
          code: 'custom',
          message: `${describeValue(v)} is neither a header name nor a JSON path such as "$.entity.customer_id" (dot-separated field names after "$.")`,
          input: v,
        });
      }
    }),
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
    if (upper === 'CREATE') return 'INSERT'; // the alias publish entries accept
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
  // a publication row filter: only rows for which this SQL boolean expression is true are streamed
  where: text('a SQL boolean expression over the row, such as "status = \'shipped\'"')
    .refine((w) => !w.includes(';'), {
      error: 'must be one SQL expression, without ";" (it becomes the publication row filter WHERE (…))',
    })
    .optional(),
  // only these columns in the event's entity and entity_before
  columns: z
    .array(text('a column name'), { error: expected('an array of column names such as ["id", "status"]') })
    .min(1)
    .optional(),
  // an UPDATE is published only when one of these columns changed
  changed: z
    .array(text('a column name'), { error: expected('an array of column names such as ["status"]') })
    .min(1)
    .optional(),
  actions: actions('[[observers.rules.actions]]'),
  /** FraiseQL's `[observers.retry]`: accepted and ignored */
  retry: z.unknown().optional(),
};

const ruleSchema = z.strictObject(ruleShape, table('[[observers.rules]]')).superRefine((r, ctx) => {
  if (r.changed !== undefined && r.event !== 'UPDATE') {
    ctx.addIssue({
      code: 'custom',
      path: ['changed'],
      message: `applies to UPDATE rules only (this rule is event = "${r.event}"): an ${r.event} has no column that changed; remove it`,
      input: r.changed,
    });
  } else if (r.changed !== undefined && !r.before_image) {
    ctx.addIssue({
      code: 'custom',
      path: ['changed'],
      message:
        'needs before_image = true on this rule: only with the whole old row (REPLICA IDENTITY FULL, which migrate sets) can the ' +
        'relay tell which columns an UPDATE changed',
      input: r.changed,
    });
  }
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

const BACKENDS = ['nats', 'webhook', 'redis', 'postgres'] as const;

export const observersShape = {
  backend: z
    .enum(BACKENDS, {
      error: (iss: RawIssue) =>
        `${describeValue(iss.input)} is not a supported backend; allowed values: ${BACKENDS.map((b) => `"${b}"`).join(', ')}`,
    })
    .default('nats'),
  nats_url: text('a NATS server URL such as "nats://localhost:4222"', true).optional(),
  publish: z.array(publishSchema, arrayOfTables('[[observers.publish]]')).default([]),
  subscribe: z.array(subscribeSchema, arrayOfTables('[[observers.subscribe]]')).default([]),
  rules: z.array(ruleSchema, arrayOfTables('[[observers.rules]]')).default([]),
  ...ignored(OBSERVERS_IGNORED_KEYS),
};

export const observersSchema = z.strictObject(observersShape, table('[observers]'));

/** The top-level `[[observers]]` form: an array of table rules. */
export const legacyObserversSchema = z.array(ruleSchema);
