import { readFileSync } from 'node:fs';
import type { Config, PublishRule } from '../config/load.js';
import type { TupleValue } from '../source/types.js';
import { pgTextArrayToJson, pgTimestampToIso } from './pgtext.js';
import { envelopeBody, fanOut, headerValue, sourceJsonPrefix, type Target } from './envelope.js';
import { publishTargets } from './targets.js';
import { IGNORED, UNROUTED, tupleRecord, type RouteResult, type Router, type RowChange } from './router.js';
import type { MutationTwins } from './twins.js';

/** One operation vocabulary, FraiseQL's: INSERT, UPDATE, DELETE, CUSTOM (CREATE is INSERT); upper-cased. */
function normalOperation(op: string): string {
  const u = op.toUpperCase();
  return u === 'CREATE' ? 'INSERT' : u;
}

/** `create_order`, `createOrder` and `CreateOrder` name the same mutation. */
const normalName = (n: string) => n.replace(/_/g, '').toLowerCase();

export interface MutationInfo {
  /** the change-log `object_type`s the mutation's rows carry: its return type and, for a union, each member type */
  entities: ReadonlySet<string>;
  operation: string;
  /** the SQL function FraiseQL calls for it (`sql_source`), when the schema names one */
  sqlSource: string | null;
}

const VERB_INSERT = /^(?:create|insert|add|register|new)(?:_|$)|^(?:[Cc]reate|[Ii]nsert|[Aa]dd|[Rr]egister|[Nn]ew)[A-Z0-9]/;
const VERB_UPDATE = /^(?:update|set|edit|change|modify|patch)(?:_|$)|^(?:[Uu]pdate|[Ss]et|[Ee]dit|[Cc]hange|[Mm]odify|[Pp]atch)[A-Z0-9]/;
const VERB_DELETE = /^(?:delete|remove|archive|destroy)(?:_|$)|^(?:[Dd]elete|[Rr]emove|[Aa]rchive|[Dd]estroy)[A-Z0-9]/;

/**
 * The operation a mutation's name implies, as emit_mutation infers it: `create_order`,
 * `createOrder`, `CreateOrder` (and FraiseQL's operation kind `Insert`) → INSERT; `update…`,
 * `delete…` likewise; otherwise CUSTOM. The verb must be the name's first word.
 */
export function operationFromName(name: string): string {
  const lower = name.toLowerCase();
  // snake_case (any case) or the bare verb; then camelCase / PascalCase, where the next word starts upper-case
  if (VERB_INSERT.test(lower) || VERB_INSERT.test(name)) return 'INSERT';
  if (VERB_UPDATE.test(lower) || VERB_UPDATE.test(name)) return 'UPDATE';
  if (VERB_DELETE.test(lower) || VERB_DELETE.test(name)) return 'DELETE';
  return 'CUSTOM';
}

/** A GraphQL type reference (`[User!]!`) → its named type (`User`). */
const namedType = (t: string) => t.replace(/[[\]!\s]/g, '');

/**
 * Mutation name → (entity types, operation, SQL function) from FraiseQL's compiled schema JSON:
 * its `mutations` array of `{ name, return_type, operation?, sql_source? }` and its `unions` array
 * of `{ name, member_types }`. FraiseQL stamps a change-log row's `object_type` with the
 * function's `entity_type`, else the return type; so a mutation returning a union matches rows of
 * the union and of each member type. An operation given as a string or as a single-key object
 * (`{"Insert": {"table": …}}`, FraiseQL's serialisation) is used; otherwise it is read from the name.
 */
export function loadMutationMap(file: string): Map<string, MutationInfo> {
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`[relay] schema_file ${file}: cannot read FraiseQL's compiled schema: ${(err as Error).message}`, { cause: err });
  }
  const list = (doc as { mutations?: unknown }).mutations;
  if (!Array.isArray(list)) throw new Error(`[relay] schema_file ${file}: no "mutations" array; is this FraiseQL's compiled schema JSON?`);
  const unions = new Map<string, string[]>();
  const unionList = (doc as { unions?: unknown }).unions;
  if (Array.isArray(unionList)) {
    for (const u of unionList as Record<string, unknown>[]) {
      const members = u?.['member_types'];
      if (typeof u?.['name'] === 'string' && Array.isArray(members)) {
        unions.set(u['name'], members.filter((m): m is string => typeof m === 'string').map(namedType));
      }
    }
  }
  const map = new Map<string, MutationInfo>();
  for (const m of list as Record<string, unknown>[]) {
    const name = typeof m['name'] === 'string' ? m['name'] : null;
    const rt = typeof m['return_type'] === 'string' ? namedType(m['return_type']) : null;
    if (!name || !rt) continue;
    const op = m['operation'];
    let operation: string;
    if (typeof op === 'string') operation = operationFromName(op);
    else if (op && typeof op === 'object' && Object.keys(op).length === 1) operation = operationFromName(Object.keys(op)[0]!);
    else operation = operationFromName(name);
    const sql = m['sql_source'];
    map.set(normalName(name), {
      entities: new Set([rt, ...(unions.get(rt) ?? [])]),
      operation,
      sqlSource: typeof sql === 'string' && sql !== '' ? sql : null,
    });
  }
  return map;
}

const json = (v: TupleValue): string => (v === null || v === undefined ? 'null' : JSON.stringify(v));
const raw = (v: TupleValue): string => (v === null || v === undefined ? 'null' : v);

/**
 * W3C `traceparent` from FraiseQL's `trace_context` object `{version, trace_id, parent_id,
 * trace_flags}`: `{version}-{trace_id}-{parent_id}-{trace_flags}`, each lower-case hex of its length
 * (version not `ff`, ids not all zeros, as W3C Trace Context requires). Anything else: null.
 */
export function traceparentOf(traceContext: unknown): string | null {
  if (typeof traceContext !== 'object' || traceContext === null || Array.isArray(traceContext)) return null;
  const t = traceContext as Record<string, unknown>;
  const { version, trace_id: traceId, parent_id: parentId, trace_flags: flags } = t;
  if (typeof version !== 'string' || !/^[0-9a-f]{2}$/.test(version) || version === 'ff') return null;
  if (typeof traceId !== 'string' || !/^[0-9a-f]{32}$/.test(traceId) || /^0+$/.test(traceId)) return null;
  if (typeof parentId !== 'string' || !/^[0-9a-f]{16}$/.test(parentId) || /^0+$/.test(parentId)) return null;
  if (typeof flags !== 'string' || !/^[0-9a-f]{2}$/.test(flags)) return null;
  return `${version}-${traceId}-${parentId}-${flags}`;
}

/** A jsonb column's text as a value, or null when it is absent or not JSON. */
function parseJson(v: TupleValue): unknown {
  if (typeof v !== 'string') return null;
  try {
    return JSON.parse(v) as unknown;
  } catch {
    return null;
  }
}

interface Entry {
  rule: PublishRule;
  /** the `object_type`s it matches */
  entities: ReadonlySet<string>;
  operation: string | null;
  /** matched through the compiled schema's mutation (never by a capture-trigger row) */
  byMutation: boolean;
  targets: Target[];
}

/**
 * Rows of `core.tb_entity_change_log` → messages. A `[[observers.publish]]` entry matches by
 * `entity` (+ `operation`), or by `mutation` through the compiled schema's mutation map.
 *
 * A row FraiseQL's capture trigger wrote for a plain SQL write (`extra_metadata.cdc_source =
 * "fallback_trigger"`) is a table change, not a mutation: only entity entries match it, and it
 * carries no mutation. A row FraiseQL's executor wrote for a mutation that also called
 * emit_mutation in the same transaction (its twin, see route/twins.ts) is the same event: it is
 * not published again on the subjects the outbox event went to; on any other subject it is
 * published under the outbox event's id and mutation name; with no subject left it is dropped
 * (acknowledged and counted as unrouted).
 */
export class ChangeLogRouter implements Router {
  private readonly entries: Entry[] = [];
  private readonly subscriptionPrefix: string;

  constructor(
    config: Config,
    private readonly database: string,
    mutations: Map<string, MutationInfo> | null,
    private readonly twins: MutationTwins | null = null,
  ) {
    this.subscriptionPrefix = config.relay.subscription_prefix;
    config.observers.publish.forEach((rule, i) => {
      const targets = publishTargets(config, i);
      if (rule.entity !== undefined) {
        const operation = rule.operation ? normalOperation(rule.operation) : null;
        this.entries.push({ rule, entities: new Set([rule.entity]), operation, byMutation: false, targets });
      } else if (rule.mutation !== undefined && mutations) {
        const info = mutations.get(normalName(rule.mutation));
        if (info) this.entries.push({ rule, entities: info.entities, operation: info.operation, byMutation: true, targets });
      }
    });
  }

  /** Routes an INSERT into the change log; any other change of the table is ignored. */
  route(change: RowChange): RouteResult {
    if (change.op !== 'INSERT' || change.newTuple === null) return IGNORED;
    const r = tupleRecord(change.relation, change.newTuple);
    const rowId = r['id'];
    const objectType = r['object_type'];
    const verb = r['modification_type'];
    if (typeof rowId !== 'string' || typeof objectType !== 'string' || typeof verb !== 'string') return UNROUTED;
    const op = normalOperation(verb);
    const extra = parseJson(r['extra_metadata']);
    const fromTrigger =
      typeof extra === 'object' && extra !== null && (extra as Record<string, unknown>)['cdc_source'] === 'fallback_trigger';
    const objectId = r['object_id'];
    const twin = fromTrigger || this.twins === null ? null : this.twins.take(change.xid, objectType, objectId ?? null, op);

    const targets: Target[] = [];
    let mutation: string | null = null;
    for (const e of this.entries) {
      if (e.byMutation && fromTrigger) continue;
      if (!e.entities.has(objectType) || (e.operation !== null && e.operation !== op)) continue;
      targets.push(...e.targets);
      if (e.byMutation) mutation ??= e.rule.mutation!;
    }
    if (targets.length === 0) return UNROUTED;
    if (twin !== null) mutation = twin.mutation;
    const eventId = twin !== null ? twin.eventId : rowId;

    const updated = r['updated_fields'];
    const created = r['created_at'];
    const contact = r['fk_contact'];
    const body = envelopeBody({
      eventId: JSON.stringify(eventId),
      id: json(objectId),
      entityType: JSON.stringify(objectType),
      operation: JSON.stringify(op),
      mutation: mutation === null ? 'null' : JSON.stringify(mutation),
      entity: raw(r['object_data']),
      entityBefore: raw(r['object_data_before']),
      updatedFields: typeof updated === 'string' ? pgTextArrayToJson(updated) : 'null',
      metadata: raw(r['extra_metadata']),
      tenantId: json(r['tenant_id']),
      userId: json(contact),
      occurredAt: typeof created === 'string' ? JSON.stringify(pgTimestampToIso(created)) : 'null',
      source: sourceJsonPrefix(this.database, change.relation.schema, change.relation.name),
      lsn: change.lsn,
      xid: change.xid,
    });
    const headers: Record<string, string> = {
      'Fraiseql-Event-Id': eventId,
      'Fraiseql-Entity-Type': headerValue(objectType),
      'Fraiseql-Operation': headerValue(op),
    };
    if (mutation !== null) headers['Fraiseql-Mutation'] = headerValue(mutation);
    const tenant = r['tenant_id'];
    if (typeof tenant === 'string') headers['Fraiseql-Tenant-Id'] = tenant;
    const traceparent = traceparentOf(parseJson(r['trace_context']));
    if (traceparent !== null) headers['traceparent'] = traceparent;
    let messages = fanOut(targets, eventId, headers, body, this.subscriptionPrefix);
    if (twin !== null) {
      messages = messages.filter((m) => !twin.subjects.includes(m.subject));
      if (messages.length === 0) return UNROUTED;
    }
    return { messages, unrouted: false };
  }
}
