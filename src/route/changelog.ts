import { readFileSync } from 'node:fs';
import type { Config, PublishRule } from '../config/load.js';
import type { TupleValue } from '../source/types.js';
import { pgTextArrayToJson, pgTimestampToIso } from './pgtext.js';
import { envelopeBody, fanOut, headerValue, sourceJsonPrefix, type Target } from './envelope.js';
import { publishTargets } from './targets.js';
import { IGNORED, UNROUTED, tupleRecord, type RouteResult, type Router, type RowChange } from './router.js';

/** INSERT/CREATE are one operation; everything is compared upper-case. */
function normalOperation(op: string): string {
  const u = op.toUpperCase();
  return u === 'CREATE' ? 'INSERT' : u;
}

/** `create_order`, `createOrder` and `CreateOrder` name the same mutation. */
const normalName = (n: string) => n.replace(/_/g, '').toLowerCase();

export interface MutationInfo {
  entity: string;
  operation: string;
}

function operationFromName(name: string): string {
  const n = name.toLowerCase();
  if (/^(create|add|insert|register|new)/.test(n)) return 'INSERT';
  if (/^(update|edit|set|change|modify|patch)/.test(n)) return 'UPDATE';
  if (/^(delete|remove|archive|destroy)/.test(n)) return 'DELETE';
  return 'CUSTOM';
}

/**
 * Mutation name → (return type, operation) from FraiseQL's compiled schema JSON: its
 * `mutations` array of `{ name, return_type, operation? }`. An operation given as a string or
 * as a single-key object (`{"Insert": …}`) is used; otherwise it is read from the name.
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
  const map = new Map<string, MutationInfo>();
  for (const m of list as Record<string, unknown>[]) {
    const name = typeof m['name'] === 'string' ? m['name'] : null;
    const rt = typeof m['return_type'] === 'string' ? m['return_type'] : null;
    if (!name || !rt) continue;
    const op = m['operation'];
    let operation: string;
    if (typeof op === 'string') operation = operationFromName(op);
    else if (op && typeof op === 'object' && Object.keys(op).length === 1) operation = operationFromName(Object.keys(op)[0]!);
    else operation = operationFromName(name);
    map.set(normalName(name), { entity: rt.replace(/[[\]!]/g, ''), operation });
  }
  return map;
}

const json = (v: TupleValue): string => (v === null || v === undefined ? 'null' : JSON.stringify(v));
const raw = (v: TupleValue): string => (v === null || v === undefined ? 'null' : v);

/**
 * Rows of `core.tb_entity_change_log` → messages. A `[[observers.publish]]` entry matches by
 * `entity` (+ `operation`), or by `mutation` through the compiled schema's mutation map.
 */
export class ChangeLogRouter implements Router {
  private readonly entries: { rule: PublishRule; entity: string; operation: string | null; targets: Target[] }[] = [];
  private readonly subscriptionPrefix: string;

  constructor(
    config: Config,
    private readonly database: string,
    mutations: Map<string, MutationInfo> | null,
  ) {
    this.subscriptionPrefix = config.relay.subscription_prefix;
    config.observers.publish.forEach((rule, i) => {
      const targets = publishTargets(config, i);
      if (rule.entity !== undefined) {
        this.entries.push({ rule, entity: rule.entity, operation: rule.operation ? normalOperation(rule.operation) : null, targets });
      } else if (rule.mutation !== undefined && mutations) {
        const info = mutations.get(normalName(rule.mutation));
        if (info) this.entries.push({ rule, entity: info.entity, operation: info.operation, targets });
      }
    });
  }

  /** Routes an INSERT into the change log; any other change of the table is ignored. */
  route(change: RowChange): RouteResult {
    if (change.op !== 'INSERT' || change.newTuple === null) return IGNORED;
    const r = tupleRecord(change.relation, change.newTuple);
    const eventId = r['id'];
    const objectType = r['object_type'];
    const verb = r['modification_type'];
    if (typeof eventId !== 'string' || typeof objectType !== 'string' || typeof verb !== 'string') return UNROUTED;
    const op = normalOperation(verb);
    const targets: Target[] = [];
    let mutation: string | null = null;
    for (const e of this.entries) {
      if (e.entity !== objectType || (e.operation !== null && e.operation !== op)) continue;
      targets.push(...e.targets);
      if (e.rule.mutation !== undefined) mutation ??= e.rule.mutation;
    }
    if (targets.length === 0) return UNROUTED;

    let traceparent: string | null = null;
    const tc = r['trace_context'];
    if (typeof tc === 'string') {
      try {
        const parsed = JSON.parse(tc) as { traceparent?: unknown };
        if (typeof parsed.traceparent === 'string') traceparent = parsed.traceparent;
      } catch {
        // not JSON: no trace context
      }
    }
    const updated = r['updated_fields'];
    const created = r['created_at'];
    const contact = r['fk_contact'];
    const body = envelopeBody({
      eventId: JSON.stringify(eventId),
      id: json(r['object_id']),
      entityType: JSON.stringify(objectType),
      operation: JSON.stringify(verb.toUpperCase()),
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
      'Fraiseql-Operation': headerValue(verb.toUpperCase()),
    };
    if (mutation !== null) headers['Fraiseql-Mutation'] = headerValue(mutation);
    const tenant = r['tenant_id'];
    if (typeof tenant === 'string') headers['Fraiseql-Tenant-Id'] = tenant;
    if (traceparent) headers['traceparent'] = headerValue(traceparent);
    return { messages: fanOut(targets, eventId, headers, body, this.subscriptionPrefix), unrouted: false };
  }
}
