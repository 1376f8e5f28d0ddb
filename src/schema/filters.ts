/**
 * `check`'s validation of the table rules' filters against the tables themselves: `columns` and
 * `changed` name columns the table has, and `where` is a row filter PostgreSQL accepts for a
 * publication (asked of PostgreSQL itself, in a transaction that is rolled back).
 */
import type pg from 'pg';
import type { Config } from '../config/load.js';
import { quoteIdent } from '../util/db.js';
import { errorMessage } from '../util/errors.js';
import type { ResolvedTable } from './tables.js';

export interface FilterProblem {
  /** 1-based rule number */
  rule: number;
  key: 'where' | 'columns' | 'changed';
  problem: string;
}

/** PostgreSQL's error with its detail ("invalid publication WHERE expression" says little alone). */
function pgText(err: unknown): string {
  const detail = (err as { detail?: string }).detail;
  return detail ? `${errorMessage(err)} (${detail})` : errorMessage(err);
}

/** What PostgreSQL's refusal of a row filter means, in plain words. */
function explain(message: string): string {
  if (/functions are not allowed/i.test(message))
    return 'a row filter may call only built-in immutable functions (not now(), random() or a function of your own)';
  if (/user-defined types are not allowed/i.test(message)) return 'a row filter may not use a type of your own (enums included)';
  if (/user-defined operators are not allowed/i.test(message)) return 'a row filter may use only built-in operators';
  if (/system columns are not allowed/i.test(message)) return 'a row filter may not read system columns (ctid, xmin, …)';
  if (/does not exist/i.test(message)) return 'it names something the table or the database does not have';
  if (/syntax error/i.test(message)) return 'it is not a valid SQL expression';
  if (/must be type boolean|argument of WHERE/i.test(message)) return 'it must be a boolean expression (true or false for each row)';
  return 'PostgreSQL does not accept it as a publication row filter';
}

/** Problems with the rules' `where`, `columns` and `changed` (none: []). `resolved`: each rule's table. */
export async function checkRuleFilters(
  client: pg.Client,
  config: Config,
  resolved: ResolvedTable[],
  /** the server has publication row filters (PostgreSQL 15+); without them, `where` is not judged here */
  rowFilters = true,
): Promise<FilterProblem[]> {
  const problems: FilterProblem[] = [];
  for (const [i, rule] of config.observers.rules.entries()) {
    const t = resolved[i];
    if (!t) continue;
    const table = `${quoteIdent(t.schema)}.${quoteIdent(t.name)}`;
    if (rule.columns || rule.changed) {
      const cols = new Set(
        (
          await client.query<{ attname: string }>(
            `SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped`,
            [table],
          )
        ).rows.map((r) => r.attname),
      );
      for (const key of ['columns', 'changed'] as const) {
        const unknown = (rule[key] ?? []).filter((c) => !cols.has(c));
        if (unknown.length > 0) {
          problems.push({
            rule: i + 1,
            key,
            problem: `${t.schema}.${t.name} has no column ${unknown.map((c) => JSON.stringify(c)).join(', ')} (it has ${[...cols].join(', ')})`,
          });
        }
      }
    }
    if (rule.where === undefined || !rowFilters) continue;
    // PostgreSQL itself judges the filter: a publication made with it, and rolled back
    await client.query('BEGIN');
    try {
      await client.query(
        `CREATE PUBLICATION ${quoteIdent(`fraiseql_relay_check_${process.pid}`)} FOR TABLE ${table} WHERE (${rule.where})`,
      );
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === '42501') {
        // not the table's owner: at least the expression over the row
        await client.query('ROLLBACK');
        await client.query('BEGIN');
        try {
          await client.query(`SELECT 1 FROM ${table} WHERE (${rule.where}) LIMIT 0`);
        } catch (e) {
          problems.push({ rule: i + 1, key: 'where', problem: `${explain(pgText(e))}: PostgreSQL says ${pgText(e)}` });
        }
      } else {
        problems.push({ rule: i + 1, key: 'where', problem: `${explain(pgText(err))}: PostgreSQL says ${pgText(err)}` });
      }
    } finally {
      await client.query('ROLLBACK');
    }
  }
  return problems;
}
