import type { Config } from '../config/load.js';
import type { Change, OutboundMessage, TupleValue } from '../types.js';
import { formatLsn } from '../source/lsn.js';
import { pgTextArrayToJson, pgTimestampToIso } from './pgtext.js';
import { envelopeBody, fanOut, headerValue, type Target } from './envelope.js';
import { publishTargets } from './webhooks.js';

export interface RouteResult {
  messages: OutboundMessage[];
  /** the event was read but no rule routes it (acknowledged and counted, not published) */
  unrouted: boolean;
}

const json = (v: TupleValue): string => (v === null || v === undefined ? 'null' : JSON.stringify(v));
const raw = (v: TupleValue): string => (v === null || v === undefined ? 'null' : v);


/**
 * Turns an outbox row into the message(s) of DESIGN.md §3.4: an explicit subject (emit) or the
 * `[[observers.publish]]` entries of its mutation (several entries fan out).
 */
export class OutboxRouter {
  private readonly byMutation = new Map<string, Target[]>();

  private readonly subscriptionPrefix: string;

  constructor(config: Config, private readonly database: string) {
    this.subscriptionPrefix = config.relay.subscription_prefix;
    config.observers.publish.forEach((p, i) => {
      if (p.mutation === undefined) return;
      this.byMutation.set(p.mutation, [...(this.byMutation.get(p.mutation) ?? []), ...publishTargets(config, i)]);
    });
  }

  /** Every subject the configuration can publish to (for the stream). */
  static configuredSubjects(config: Config): string[] {
    return [...new Set(config.observers.publish.map((p) => p.subject))];
  }

  route(change: Change): RouteResult {
    const r = change.row;
    const eventId = r['id'];
    if (typeof eventId !== 'string') return { messages: [], unrouted: true };
    const explicit = r['subject'];
    const mutation = r['mutation'];
    let targets: Target[];
    if (typeof explicit === 'string') targets = [{ subject: explicit }];
    else if (typeof mutation === 'string') targets = this.byMutation.get(mutation) ?? [];
    else targets = [];
    if (targets.length === 0) return { messages: [], unrouted: true };

    const updated = r['updated_fields'];
    const created = r['created_at'];
    const body = envelopeBody({
      eventId: JSON.stringify(eventId),
      id: json(r['entity_id']),
      entityType: json(r['entity_type']),
      operation: json(r['operation']),
      mutation: json(mutation),
      entity: raw(r['entity']),
      entityBefore: raw(r['entity_before']),
      updatedFields: typeof updated === 'string' ? pgTextArrayToJson(updated) : 'null',
      metadata: raw(r['metadata']),
      tenantId: json(r['tenant_id']),
      userId: json(r['user_id']),
      occurredAt: typeof created === 'string' ? JSON.stringify(pgTimestampToIso(created)) : 'null',
      source: { database: this.database, schema: change.relation.schema, table: change.relation.name, lsn: formatLsn(change.lsn), xid: change.xid },
    });

    const base: Record<string, string> = {};
    const userHeaders = r['headers'];
    if (typeof userHeaders === 'string') {
      const parsed: unknown = JSON.parse(userHeaders);
      if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) {
        for (const [k, v] of Object.entries(parsed as Record<string, unknown>)) {
          if (v !== null && v !== undefined) base[k] = headerValue(typeof v === 'string' ? v : JSON.stringify(v));
        }
      }
    }
    base['Fraiseql-Event-Id'] = eventId;
    if (typeof mutation === 'string') base['Fraiseql-Mutation'] = headerValue(mutation);
    const et = r['entity_type'];
    if (typeof et === 'string') base['Fraiseql-Entity-Type'] = headerValue(et);
    const op = r['operation'];
    if (typeof op === 'string') base['Fraiseql-Operation'] = headerValue(op);
    const tenant = r['tenant_id'];
    if (typeof tenant === 'string') base['Fraiseql-Tenant-Id'] = headerValue(tenant);
    const tp = r['traceparent'];
    if (typeof tp === 'string') base['traceparent'] = headerValue(tp);

    const messages = fanOut(targets, eventId, base, body, this.subscriptionPrefix);
    return { messages, unrouted: false };
  }
}
