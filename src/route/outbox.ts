import type { Config } from '../config/load.js';
import type { Relation, Tuple, TupleValue } from '../source/types.js';
import { pgTextArrayToJson, pgTimestampToIso } from './pgtext.js';
import { envelopeBody, fanOut, headerValue, sourceJsonPrefix, type Target } from './envelope.js';
import { publishTargets } from './targets.js';
import { IGNORED, UNROUTED, type RouteResult, type Router, type RowChange } from './router.js';
import type { MutationClaim, MutationTwins } from './twins.js';
import type { OutboundMessage } from '../sink/sink.js';
import { appHeaderProblem } from '../sink/limits.js';

/** The outbox columns the router reads, in one fixed shape (text as PostgreSQL wrote it). */
interface OutboxValues {
  id: TupleValue;
  subject: TupleValue;
  mutation: TupleValue;
  operation: TupleValue;
  entityType: TupleValue;
  entityId: TupleValue;
  entity: TupleValue;
  entityBefore: TupleValue;
  updatedFields: TupleValue;
  metadata: TupleValue;
  headers: TupleValue;
  tenantId: TupleValue;
  userId: TupleValue;
  traceparent: TupleValue;
  createdAt: TupleValue;
}

/** The outbox columns an event is built from (replay SELECTs them by these names, in this order). */
export const OUTBOX_COLUMNS = [
  'id',
  'subject',
  'mutation',
  'operation',
  'entity_type',
  'entity_id',
  'entity',
  'entity_before',
  'updated_fields',
  'metadata',
  'headers',
  'tenant_id',
  'user_id',
  'traceparent',
  'created_at',
] as const;

/** Where each of OUTBOX_COLUMNS sits in a relation's tuples (-1: not there), and its source prefix. */
interface RelationLayout {
  index: Int16Array;
  source: string;
}

const json = (v: TupleValue): string => (v === null || v === undefined ? 'null' : JSON.stringify(v));
/** `create_order`, `createOrder` and `CreateOrder` name the same mutation. */
const normalName = (n: string): string => n.replace(/_/g, '').toLowerCase();
const raw = (v: TupleValue): string => (v === null || v === undefined ? 'null' : v);

/**
 * Turns an outbox row into its message(s) (the envelope in route/envelope.ts): an explicit subject (emit) or the
 * `[[observers.publish]]` entries of its mutation (several entries fan out).
 *
 * This is the relay's hot path: a row is read by column position (no per-row record), the body
 * is built as one string, and what only depends on the relation is computed once per relation.
 */
export class OutboxRouter implements Router {
  private readonly byMutation = new Map<string, Target[]>();
  /** the same targets by normalName, for a row whose mutation is spelled in another case */
  private readonly byNormalName = new Map<string, Target[]>();
  private readonly layouts = new WeakMap<Relation, RelationLayout>();
  private readonly subscriptionPrefix: string;

  /**
   * `twins`: when FraiseQL's change log is streamed too, each emit_mutation row is recorded there so
   * the change-log row the executor writes for the same mutation is not published a second time.
   */
  constructor(
    config: Config,
    private readonly database: string,
    private readonly twins: MutationTwins | null = null,
  ) {
    this.subscriptionPrefix = config.relay.subscription_prefix;
    config.observers.publish.forEach((p, i) => {
      if (p.mutation === undefined) return;
      const targets = publishTargets(config, i);
      this.byMutation.set(p.mutation, [...(this.byMutation.get(p.mutation) ?? []), ...targets]);
      const n = normalName(p.mutation);
      this.byNormalName.set(n, [...(this.byNormalName.get(n) ?? []), ...targets]);
    });
  }

  /** Routes an INSERT into the outbox; any other change of the outbox is ignored. */
  route(change: RowChange): RouteResult {
    const t = change.newTuple;
    if (change.op !== 'INSERT' || t === null) return IGNORED;
    const l = this.layout(change.relation);
    const x = l.index;
    return this.build(
      {
        id: at(t, x[0]!),
        subject: at(t, x[1]!),
        mutation: at(t, x[2]!),
        operation: at(t, x[3]!),
        entityType: at(t, x[4]!),
        entityId: at(t, x[5]!),
        entity: at(t, x[6]!),
        entityBefore: at(t, x[7]!),
        updatedFields: at(t, x[8]!),
        metadata: at(t, x[9]!),
        headers: at(t, x[10]!),
        tenantId: at(t, x[11]!),
        userId: at(t, x[12]!),
        traceparent: at(t, x[13]!),
        createdAt: at(t, x[14]!),
      },
      l.source,
      change.lsn,
      change.xid,
    );
  }

  private layout(relation: Relation): RelationLayout {
    let l = this.layouts.get(relation);
    if (!l) {
      const names = relation.columns.map((c) => c.name);
      l = {
        index: Int16Array.from(OUTBOX_COLUMNS, (c) => names.indexOf(c)),
        source: sourceJsonPrefix(this.database, relation.schema, relation.name),
      };
      this.layouts.set(relation, l);
    }
    return l;
  }

  private build(r: OutboxValues, source: string, lsn: string, xid: number): RouteResult {
    const eventId = r.id;
    if (typeof eventId !== 'string') return UNROUTED;
    const explicit = r.subject;
    const mutation = r.mutation;
    let targets: readonly Target[];
    if (typeof explicit === 'string') targets = [{ subject: explicit }];
    else if (typeof mutation === 'string') targets = this.byMutation.get(mutation) ?? this.byNormalName.get(normalName(mutation)) ?? [];
    else targets = [];
    // rows written before migration 004 say CREATE: one vocabulary on the way out
    const op = r.operation === 'CREATE' ? 'INSERT' : r.operation;
    if (targets.length === 0) {
      if (this.twins !== null && typeof mutation === 'string' && typeof explicit !== 'string') {
        this.twins.claim(xid, claimOf(eventId, mutation, r, op, []));
      }
      return UNROUTED;
    }

    const updated = r.updatedFields;
    const created = r.createdAt;
    const body = envelopeBody({
      eventId: JSON.stringify(eventId),
      id: json(r.entityId),
      entityType: json(r.entityType),
      operation: json(op),
      mutation: json(mutation),
      entity: raw(r.entity),
      entityBefore: raw(r.entityBefore),
      updatedFields: typeof updated === 'string' ? pgTextArrayToJson(updated) : 'null',
      metadata: raw(r.metadata),
      tenantId: json(r.tenantId),
      userId: json(r.userId),
      occurredAt: typeof created === 'string' ? JSON.stringify(pgTimestampToIso(created)) : 'null',
      source,
      lsn,
      xid,
    });

    const headers: Record<string, string> = {};
    const userHeaders = r.headers;
    // a row written without emit() can carry a name the broker or the relay owns: never published
    let refused: string | undefined;
    if (typeof userHeaders === 'string') {
      const parsed: unknown = JSON.parse(userHeaders);
      if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) {
        for (const [k, v] of Object.entries(parsed as Record<string, unknown>)) {
          if (v === null || v === undefined) continue;
          refused ??= appHeaderProblem(k) ?? undefined;
          headers[k] = headerValue(typeof v === 'string' ? v : JSON.stringify(v));
        }
      }
    }
    headers['Fraiseql-Event-Id'] = eventId;
    if (typeof mutation === 'string') headers['Fraiseql-Mutation'] = headerValue(mutation);
    const et = r.entityType;
    if (typeof et === 'string') headers['Fraiseql-Entity-Type'] = headerValue(et);
    if (typeof op === 'string') headers['Fraiseql-Operation'] = headerValue(op);
    const tenant = r.tenantId;
    if (typeof tenant === 'string') headers['Fraiseql-Tenant-Id'] = headerValue(tenant);
    const tp = r.traceparent;
    if (typeof tp === 'string') headers['traceparent'] = headerValue(tp);

    const messages = fanOut(targets, eventId, headers, body, this.subscriptionPrefix);
    if (refused !== undefined) for (const m of messages) m.refused = refused;
    if (this.twins !== null && typeof mutation === 'string' && typeof explicit !== 'string') {
      this.twins.claim(xid, claimOf(eventId, mutation, r, op, messages));
    }
    return { messages, unrouted: false };
  }
}

function claimOf(eventId: string, mutation: string, r: OutboxValues, op: TupleValue, messages: readonly OutboundMessage[]): MutationClaim {
  const entityId = r.entityId;
  const entityType = r.entityType;
  return {
    eventId,
    mutation,
    entityType: typeof entityType === 'string' ? entityType : null,
    entityId: typeof entityId === 'string' ? entityId.toLowerCase() : null,
    operation: typeof op === 'string' ? op.toUpperCase() : 'CUSTOM',
    subjects: messages.map((m) => m.subject), // not the messages: a claim must not hold their bodies
  };
}

const replayRelations = new Map<string, Relation>();

/**
 * An outbox row read by SELECT (replay), as the change the router reads from the stream: the row's
 * values in {@link OUTBOX_COLUMNS} order, at WAL position `lsn` in transaction `xid`.
 */
export function outboxRowChange(schema: string, row: Readonly<Record<string, TupleValue>>, lsn = '0/0', xid = 0): RowChange {
  let relation = replayRelations.get(schema);
  if (!relation) {
    const columns = OUTBOX_COLUMNS.map((name) => ({ flags: 0, name, typeOid: 25, typeMod: -1 }));
    relation = { id: 0, schema, name: 'outbox', replicaIdentity: 'd', columns };
    replayRelations.set(schema, relation);
  }
  return {
    op: 'INSERT',
    relation,
    newTuple: OUTBOX_COLUMNS.map((c) => row[c] ?? null),
    oldTuple: null,
    oldIsKey: false,
    lsn,
    xid,
    commitTime: 0n,
  };
}

/** The value at column `i`, or null when the relation has no such column. */
const at = (t: Tuple, i: number): TupleValue => (i < 0 ? null : t[i]);
