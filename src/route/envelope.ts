import type { OutboundMessage } from '../sink/sink.js';

/** Fields of the message body (README, "The message"), each already JSON text. */
export interface EnvelopeJson {
  eventId: string;
  id: string;
  entityType: string;
  operation: string;
  mutation: string;
  entity: string;
  entityBefore: string;
  updatedFields: string;
  metadata: string;
  tenantId: string;
  userId: string;
  occurredAt: string;
  /** `sourceJsonPrefix(database, schema, table)` (computed once per table by a hot caller) */
  source: string;
  /** the change's LSN as PostgreSQL prints it */
  lsn: string;
  xid: number;
}

/** The body, built as text so jsonb values pass through exactly as PostgreSQL wrote them. */
export function envelopeBody(e: EnvelopeJson): Buffer {
  return Buffer.from(
    '{"event_id":' +
      e.eventId +
      ',"id":' +
      e.id +
      ',"entity_type":' +
      e.entityType +
      ',"operation":' +
      e.operation +
      ',"mutation":' +
      e.mutation +
      ',"entity":' +
      e.entity +
      ',"entity_before":' +
      e.entityBefore +
      ',"updated_fields":' +
      e.updatedFields +
      ',"metadata":' +
      e.metadata +
      ',"tenant_id":' +
      e.tenantId +
      ',"user_id":' +
      e.userId +
      ',"occurred_at":' +
      e.occurredAt +
      e.source +
      e.lsn +
      '","xid":' +
      e.xid +
      '}}',
    'utf8',
  );
}

/** The body's `source` object up to the LSN's opening quote (the same for every row of a table). */
export function sourceJsonPrefix(database: string, schema: string, table: string): string {
  return (
    ',"source":{"database":' +
    JSON.stringify(database) +
    ',"schema":' +
    JSON.stringify(schema) +
    ',"table":' +
    JSON.stringify(table) +
    ',"lsn":"'
  );
}

/** Where a routed event goes: a subject, and optionally a GraphQL subscription topic. */
export interface Target {
  subject: string;
  subscriptionTopic?: string;
}

/** Header values cannot hold line breaks. */
export const headerValue = (v: string): string => (v.indexOf('\r') < 0 && v.indexOf('\n') < 0 ? v : v.replace(/[\r\n]+/g, ' '));

/**
 * One message per target subject. A target with a subscription topic also carries the
 * `Fraiseql-Subscription-Topic` header, and the event is published once more on
 * `<subscriptionPrefix>.<topic>` for GraphQL subscription bridges.
 */
export function fanOut(
  targets: readonly Target[],
  eventId: string,
  headers: Record<string, string>,
  body: Buffer,
  subscriptionPrefix: string,
): OutboundMessage[] {
  if (targets.length === 1 && targets[0]!.subscriptionTopic === undefined) {
    return [{ subject: targets[0]!.subject, eventId, headers, body, commitMs: 0 }]; // the common case
  }
  const out: OutboundMessage[] = [];
  const seen = new Set<string>();
  const push = (subject: string, h: Record<string, string>) => {
    if (seen.has(subject)) return;
    seen.add(subject);
    out.push({ subject, eventId, headers: h, body, commitMs: 0 });
  };
  for (const t of targets) {
    if (t.subscriptionTopic === undefined) {
      push(t.subject, headers);
    } else {
      const h = { ...headers, 'Fraiseql-Subscription-Topic': headerValue(t.subscriptionTopic) };
      push(t.subject, h);
      push(`${subscriptionPrefix}.${t.subscriptionTopic}`, h);
    }
  }
  return out;
}
