import type { Config, TableRule } from '../config/load.js';
import type { Relation, Tuple } from '../source/types.js';
import { parseLsn, pgMicrosToIso } from '../source/lsn.js';
import type { OutboundMessage } from '../sink/sink.js';
import { rowToJson, ValueWriter } from './values.js';
import { TypeCatalog } from '../source/pgtypes.js';
import { envelopeBody, sourceJsonPrefix } from './envelope.js';
import { UNROUTED, type RouteResult, type Router, type RowChange } from './router.js';

import type { ResolvedTable } from '../schema/tables.js';
import type { MessageKeys } from '../sink/signing.js';

/** `tb_order` → `Order`, `order_line` → `OrderLine`: FraiseQL's table ↔ type convention. */
export function entityTypeOf(table: string): string {
  const base = table.replace(/^(tb|t|tv|v)_/, '');
  return base
    .split('_')
    .filter(Boolean)
    .map((p) => p[0]!.toUpperCase() + p.slice(1))
    .join('');
}

/**
 * A stable event id for a row change: the change's WAL position (which redelivery keeps) and
 * transaction id, plus a hash of the database name, written as a version 8 UUID so consumers
 * can store it like an outbox id. Without `keys` the id is predictable (anyone who can guess the
 * WAL position can compute it); with `[relay] signing_key_env` set it is a keyed hash of the
 * same inputs, which only holders of the signing key can compute.
 */
export function walEventId(lsn: bigint, xid: number, database = '', keys: MessageKeys | null = null): string {
  if (keys !== null) return keys.eventId(lsn, xid, database);
  const l = lsn.toString(16).padStart(16, '0');
  const x = (xid >>> 0).toString(16).padStart(8, '0');
  let h = 0x811c9dc5;
  for (let i = 0; i < database.length; i++) h = Math.imul(h ^ database.charCodeAt(i), 0x01000193) >>> 0;
  const d = (h >>> 8).toString(16).padStart(6, '0');
  return `${l.slice(0, 8)}-${l.slice(8, 12)}-8${l.slice(12, 15)}-8${l.slice(15, 16)}${x.slice(0, 2)}-${x.slice(2)}${d}`;
}

interface RuleTarget {
  rule: TableRule;
  subjects: string[];
  /** `columns`: only these in entity / entity_before (null: all) */
  only: ReadonlySet<string> | null;
  /** `changed`: an UPDATE is published only when one of these changed (null: always) */
  changed: ReadonlySet<string> | null;
}

const key = (schema: string, name: string, op: string) => `${schema}\u0000${name}\u0000${op}`;

/** Events straight from table changes (`[[observers.rules]]`): the row after, the row before when the replica identity gives it. */
export class TableRouter implements Router {
  private readonly byTableOp = new Map<string, RuleTarget[]>();
  private readonly values: ValueWriter;
  /** relation ▶ the catalog generation its column types were last known in */
  private readonly ready = new WeakMap<Relation, number>();

  /**
   * @param resolved each rule's table resolved to schema and name (same order as the rules)
   * @param webhookSubject the JetStream subject a webhook action's deliveries go through, if any
   * @param types the database's column types (default: only the built-in types, no lookups)
   */
  constructor(
    config: Config,
    resolved: ResolvedTable[],
    private readonly database: string,
    webhookSubject: (ruleIndex: number, actionIndex: number) => string | null = () => null,
    private readonly types: TypeCatalog = new TypeCatalog(null),
    /** `[relay] signing_key_env`: event ids keyed with the signing key (unpredictable) */
    private readonly keys: MessageKeys | null = null,
  ) {
    this.values = new ValueWriter(types);
    config.observers.rules.forEach((rule, i) => {
      const t = resolved[i]!;
      const subjects: string[] = [];
      if (rule.subject && config.observers.backend !== 'webhook') subjects.push(rule.subject);
      rule.actions.forEach((_, j) => {
        const s = webhookSubject(i, j);
        if (s) subjects.push(s);
      });
      const k = key(t.schema, t.name, rule.event);
      const list = this.byTableOp.get(k) ?? [];
      list.push({
        rule,
        subjects,
        only: rule.columns ? new Set(rule.columns) : null,
        changed: rule.changed ? new Set(rule.changed) : null,
      });
      this.byTableOp.set(k, list);
    });
  }

  /** True when some rule watches this relation. */
  watches(rel: Relation): boolean {
    for (const op of ['INSERT', 'UPDATE', 'DELETE']) if (this.byTableOp.has(key(rel.schema, rel.name, op))) return true;
    return false;
  }

  /** Reads the relation's column types from the catalog when some are not known yet. */
  prepare(rel: Relation): Promise<void> | undefined {
    const generation = this.types.generation;
    if (this.ready.get(rel) === generation) return undefined;
    if (!this.watches(rel)) return undefined;
    const loading = this.types.load(rel.columns.map((c) => c.typeOid));
    if (loading === undefined) {
      this.ready.set(rel, generation);
      return undefined;
    }
    return loading.then(() => {
      this.ready.set(rel, generation);
    });
  }

  route(change: RowChange): RouteResult {
    const rel = change.relation;
    const targets = this.byTableOp.get(key(rel.schema, rel.name, change.op));
    if (!targets || targets.length === 0) return UNROUTED;
    const eventId = walEventId(parseLsn(change.lsn), change.xid, this.database, this.keys);
    const messages = this.messages(change.op, rel, targets, change.newTuple, change.oldTuple, change.oldIsKey, eventId, change, null, null);
    return { messages, unrouted: messages.length === 0 };
  }

  /**
   * A backfilled row (operation READ) as messages: by default on the subjects of the table's
   * INSERT rules (a READ says "this row exists", as an INSERT does), or of its UPDATE rules when it
   * has no INSERT rule; with `subject`, on that one of any of its rules. Each rule's `columns`
   * applies. `at` is the chunk's high watermark: its position, transaction and commit time stand
   * for the moment the row was read.
   */
  read(
    rel: Relation,
    row: Tuple,
    eventId: string,
    at: { lsn: string; xid: number; commitTime: bigint },
    subject: string | null,
    backfillId: number,
  ): OutboundMessage[] {
    return this.messages(
      'READ',
      rel,
      this.readTargets(rel.schema, rel.name, subject),
      row,
      null,
      false,
      eventId,
      at,
      subject,
      `{"backfill_id":${backfillId}}`,
    );
  }

  /** The subjects a backfill of the table publishes to (see {@link read}); empty: none. */
  readSubjects(schema: string, name: string, subject: string | null = null): string[] {
    const out = new Set<string>();
    for (const t of this.readTargets(schema, name, subject)) for (const s of t.subjects) if (subject === null || s === subject) out.add(s);
    return [...out];
  }

  private readTargets(schema: string, name: string, subject: string | null): RuleTarget[] {
    const of = (op: string) => this.byTableOp.get(key(schema, name, op)) ?? [];
    if (subject !== null) return [...of('INSERT'), ...of('UPDATE'), ...of('DELETE')].filter((t) => t.subjects.includes(subject));
    const inserts = of('INSERT').filter((t) => t.subjects.length > 0);
    return inserts.length > 0 ? inserts : of('UPDATE');
  }

  private messages(
    op: RowChange['op'] | 'READ',
    rel: Relation,
    targets: readonly RuleTarget[],
    newTuple: Tuple | null,
    oldTuple: Tuple | null,
    oldIsKeyOnly: boolean,
    eventId: string,
    at: { lsn: string; xid: number; commitTime: bigint },
    onlySubject: string | null,
    metadata: string | null,
  ): OutboundMessage[] {
    const idIndex = rel.columns.findIndex((c) => c.name === 'id');
    const keyIndex = idIndex >= 0 ? idIndex : rel.columns.findIndex((c) => (c.flags & 1) !== 0);
    const idValue = keyIndex < 0 ? null : (newTuple?.[keyIndex] ?? oldTuple?.[keyIndex] ?? null);

    let updatedNames: string[] | null = null;
    if (op === 'UPDATE' && newTuple && oldTuple && !oldIsKeyOnly) {
      updatedNames = [];
      rel.columns.forEach((c, i) => {
        const n = newTuple[i];
        if (n !== undefined && n !== oldTuple[i]) updatedNames!.push(c.name);
      });
    }
    const entityType = entityTypeOf(rel.name);
    const headers: Record<string, string> = {
      'Fraiseql-Event-Id': eventId,
      'Fraiseql-Entity-Type': entityType,
      'Fraiseql-Operation': op,
    };
    // one body per distinct column list
    const bodies = new Map<string, Buffer>();
    const bodyFor = (only: ReadonlySet<string> | null): Buffer => {
      const k = only === null ? '' : [...only].join('\u0000');
      const made = bodies.get(k);
      if (made !== undefined) return made;
      const after = newTuple ? rowToJson(rel, newTuple, this.values, oldIsKeyOnly ? null : oldTuple, false, only) : null;
      const before = oldTuple ? rowToJson(rel, oldTuple, this.values, null, oldIsKeyOnly, only) : null;
      const updated = updatedNames === null ? null : only === null ? updatedNames : updatedNames.filter((n) => only.has(n));
      const missing = after?.missing ?? [];
      const body = envelopeBody({
        eventId: JSON.stringify(eventId),
        id: idValue === null || idValue === undefined ? 'null' : JSON.stringify(idValue),
        entityType: JSON.stringify(entityType),
        operation: JSON.stringify(op),
        mutation: 'null',
        entity: after ? after.json : 'null',
        entityBefore: before ? before.json : 'null',
        updatedFields: updated === null ? 'null' : JSON.stringify(updated),
        metadata: missing.length > 0 ? JSON.stringify({ unchanged_toast: missing }) : (metadata ?? 'null'),
        tenantId: 'null',
        userId: 'null',
        occurredAt: JSON.stringify(pgMicrosToIso(at.commitTime)),
        source: sourceJsonPrefix(this.database, rel.schema, rel.name),
        lsn: at.lsn,
        xid: at.xid,
      });
      bodies.set(k, body);
      return body;
    };
    const messages: OutboundMessage[] = [];
    const seen = new Set<string>();
    for (const t of targets) {
      // `changed`: only an UPDATE of one of these columns (an old row without them cannot tell: published)
      if (t.changed !== null && updatedNames !== null && !updatedNames.some((n) => t.changed!.has(n))) continue;
      for (const subject of t.subjects) {
        if (seen.has(subject) || (onlySubject !== null && subject !== onlySubject)) continue;
        seen.add(subject);
        messages.push({ subject, eventId, headers, body: bodyFor(t.only) });
      }
    }
    return messages;
  }
}
