import type pg from 'pg';
import type { Config } from '../config/load.js';
import { quoteIdent, quoteQualified } from '../util/db.js';
import { UsageError } from '../util/errors.js';

/** FraiseQL's change log, the source that needs no change to a service's mutation functions. */
export const DEFAULT_CHANGE_LOG = 'core.tb_entity_change_log';

/** A table resolved to its real schema and name. */
export interface ResolvedTable {
  schema: string;
  name: string;
}

export interface RuleTableInfo extends ResolvedTable {
  /** the rule's table as written in fraiseql.toml */
  configured: string;
  /** pg_class.relreplident: d default, n nothing, f full, i index */
  replicaIdentity: string;
  hasPrimaryKey: boolean;
  /** operations rules want from this table */
  events: Set<'INSERT' | 'UPDATE' | 'DELETE'>;
  beforeImage: boolean;
  /** the rules' publication row filter (`where`), or null */
  where: string | null;
}

/**
 * Whether the table's changes need the whole old row: `before_image`, or a row filter on a table
 * whose UPDATEs or DELETEs are published (PostgreSQL evaluates the filter on the old row too, and
 * would otherwise refuse the application's own UPDATE of a column the filter reads that is not in
 * the replica identity).
 */
export function needsIdentityFull(t: Pick<RuleTableInfo, 'beforeImage' | 'where' | 'events'>): boolean {
  return t.beforeImage || (t.where !== null && (t.events.has('UPDATE') || t.events.has('DELETE')));
}

export function tablesPublication(config: Config): string {
  return `${config.relay.publication}_tables`;
}

/** Each rule's table resolved through the search path (same order as the rules). */
export async function resolveRuleTables(client: pg.Client, config: Config): Promise<{ perRule: ResolvedTable[]; tables: RuleTableInfo[] }> {
  const perRule: ResolvedTable[] = [];
  const byName = new Map<string, RuleTableInfo>();
  const missing: string[] = [];
  const whereOf = new Map<string, { rule: number; where: string | null }>();
  for (const [i, rule] of config.observers.rules.entries()) {
    const r = await client.query<{ nspname: string; relname: string; relreplident: string; has_pk: boolean }>(
      `SELECT n.nspname, c.relname, c.relreplident,
              EXISTS (SELECT 1 FROM pg_index x WHERE x.indrelid = c.oid AND x.indisprimary) AS has_pk
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p')`,
      [quoteQualified(rule.table)],
    );
    const row = r.rows[0];
    if (!row) {
      missing.push(`[[observers.rules]] #${i + 1}: table ${rule.table} does not exist (or is not a table)`);
      continue;
    }
    perRule.push({ schema: row.nspname, name: row.relname });
    const k = `${row.nspname}.${row.relname}`;
    const info = byName.get(k) ?? {
      schema: row.nspname,
      name: row.relname,
      configured: rule.table,
      replicaIdentity: row.relreplident,
      hasPrimaryKey: row.has_pk,
      events: new Set(),
      beforeImage: false,
      where: rule.where ?? null,
    };
    // one slot streams one publication: PostgreSQL applies a table's row filter to every change of
    // it, for every rule, so the rules of a table must agree on it
    const first = whereOf.get(k);
    if (first === undefined) whereOf.set(k, { rule: i + 1, where: rule.where ?? null });
    else if (first.where !== (rule.where ?? null)) {
      const show = (w: string | null) => (w === null ? 'no where' : `where = ${JSON.stringify(w)}`);
      throw new UsageError(
        `[[observers.rules]] #${first.rule} and #${i + 1} watch the same table ${k} with different row filters ` +
          `(${show(first.where)} vs ${show(rule.where ?? null)}). A row filter is the table's in the relay's one publication: PostgreSQL ` +
          `applies it to every change of the table, whichever rule it is for. Give every rule of ${k} the same where (or none), and ` +
          `use changed = [...] on UPDATE rules to publish only some updates.`,
      );
    }
    info.events.add(rule.event);
    info.beforeImage ||= rule.before_image;
    byName.set(k, info);
  }
  if (missing.length > 0) throw new UsageError(missing.join('\n') + "\n  Create the table first, or fix the rule's table name.");
  return { perRule, tables: [...byName.values()] };
}

/**
 * Why a table cannot be published for its rules, or null. UPDATE and DELETE need a replica
 * identity (a primary key, an index, or FULL): without one, PostgreSQL would reject the
 * application's own UPDATE/DELETE on a table in such a publication.
 */
export function identityProblem(t: RuleTableInfo): string | null {
  const needsIdentity = t.events.has('UPDATE') || t.events.has('DELETE');
  if (!needsIdentity || needsIdentityFull(t)) return null;
  if (t.replicaIdentity === 'f' || t.replicaIdentity === 'i') return null;
  if (t.replicaIdentity === 'd' && t.hasPrimaryKey) return null;
  const q = `${quoteIdent(t.schema)}.${quoteIdent(t.name)}`;
  return (
    `table ${t.schema}.${t.name} has no replica identity (${t.replicaIdentity === 'n' ? 'REPLICA IDENTITY NOTHING' : 'no primary key'}), ` +
    `so its ${[...t.events].filter((e) => e !== 'INSERT').join('/')} changes cannot be published; it was left out of the publication. ` +
    `Add a primary key, run ALTER TABLE ${q} REPLICA IDENTITY FULL, or set before_image = true on the rule.`
  );
}

/**
 * FraiseQL's change log, when the relay should stream it: `[relay] change_log` (must exist),
 * else `core.tb_entity_change_log` when present; `change_log = false` turns it off.
 */
export async function resolveChangeLog(client: pg.Client, config: Config): Promise<ResolvedTable | null> {
  const setting = config.relay.change_log;
  if (setting === false) return null;
  const name = setting ?? DEFAULT_CHANGE_LOG;
  const r = await client.query<{ nspname: string; relname: string }>(
    `SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)`,
    [quoteQualified(name)],
  );
  const row = r.rows[0];
  if (!row) {
    if (setting !== undefined)
      throw new UsageError(`[relay] change_log: table ${setting} does not exist; create it (FraiseQL's migrations do) or remove the key`);
    return null;
  }
  return { schema: row.nspname, name: row.relname };
}
