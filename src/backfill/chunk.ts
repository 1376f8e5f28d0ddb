/**
 * Reading a backfilled table: what it streams (its columns as pgoutput would announce them, its
 * key) and one chunk of its rows in key order, with the snapshot the chunk was read in.
 */
import type pg from 'pg';
import { quoteIdent, quoteLiteral, rawTypes, serverVersionNum } from '../util/db.js';
import { UsageError } from '../util/errors.js';
import type { Relation, Tuple } from '../source/types.js';
import { keyOf, type ChunkRow } from './windows.js';

export interface BackfillTable {
  schema: string;
  name: string;
  /** the columns pgoutput streams, key columns flagged, as a Relation message would say */
  relation: Relation;
  /** the key the chunks follow: the primary key, or the replica identity index */
  keyColumns: string[];
  /** each key column's type, for the cast of the last key's text */
  keyTypes: string[];
}

/**
 * The table's streamed columns and key. A backfill needs a key that every change of the table
 * carries: the primary key (replica identity DEFAULT or FULL) or the replica identity index.
 */
export async function describeTable(c: pg.Client, schema: string, name: string, publication: string): Promise<BackfillTable> {
  const where = `${schema}.${name}`;
  const r = await c.query<{ oid: number; ident: string; pk: string | null; idx: string | null }>(
    `SELECT c.oid, c.relreplident AS ident,
            (SELECT json_agg(a.attname::text ORDER BY k.ord) FROM pg_index i
               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = c.oid AND i.indisprimary)::text AS pk,
            (SELECT json_agg(a.attname::text ORDER BY k.ord) FROM pg_index i
               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = c.oid AND i.indisreplident)::text AS idx
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')`,
    [schema, name],
  );
  const t = r.rows[0];
  if (!t) throw new UsageError(`table ${where} does not exist (or is not a table)`);
  const pk = t.pk === null ? null : (JSON.parse(t.pk) as string[]);
  const idx = t.idx === null ? null : (JSON.parse(t.idx) as string[]);
  let keyColumns: string[] | null = null;
  if (t.ident === 'i') keyColumns = idx;
  else if (t.ident === 'd' || t.ident === 'f') keyColumns = pk;
  if (t.ident === 'n') {
    throw new UsageError(
      `table ${where} has REPLICA IDENTITY NOTHING: its DELETEs carry no key, so a backfill could not tell a deleted row from a live one. ` +
        `Run ALTER TABLE ${quoteIdent(schema)}.${quoteIdent(name)} REPLICA IDENTITY DEFAULT (with a primary key) first.`,
    );
  }
  if (keyColumns === null || keyColumns.length === 0) {
    throw new UsageError(
      `table ${where} has no primary key: a backfill reads a table in key order and matches its rows to the stream's changes by key. ` +
        `Add a primary key (or a unique index used as REPLICA IDENTITY USING INDEX).`,
    );
  }
  // the columns pgoutput sends: the publication's column list where PostgreSQL has one (15+), else the non-generated ones
  let names: string[] | null = null;
  if ((await serverVersionNum(c)) >= 150000) {
    const p = await c.query<{ cols: string | null }>(
      `SELECT array_to_json(attnames)::text AS cols FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3`,
      [publication, schema, name],
    );
    if (p.rows[0]?.cols) names = JSON.parse(p.rows[0].cols) as string[];
  }
  const cols = await c.query<{ attname: string; atttypid: number; atttypmod: number; attgenerated: string; type: string }>(
    `SELECT a.attname, a.atttypid::int AS atttypid, a.atttypmod, a.attgenerated::text AS attgenerated,
            format_type(a.atttypid, a.atttypmod) AS type
       FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`,
    [t.oid],
  );
  const streamed = cols.rows.filter((a) => (names === null ? a.attgenerated === '' : names.includes(a.attname)));
  const key = new Set(keyColumns);
  const relation: Relation = {
    id: 0,
    schema,
    name,
    replicaIdentity: t.ident,
    columns: streamed.map((a) => ({ name: a.attname, typeOid: a.atttypid, typeMod: a.atttypmod, flags: key.has(a.attname) ? 1 : 0 })),
  };
  const keyTypes = keyColumns.map((k) => cols.rows.find((a) => a.attname === k)!.type);
  return { schema, name, relation, keyColumns, keyTypes };
}

/** The rows a chunk selects, as SQL: `$1…$n` are the last key's values (absent for the first chunk). */
function chunkQuery(t: BackfillTable, filters: readonly string[], after: boolean, limit: number): string {
  const q = (n: string) => quoteIdent(n);
  const cols = t.relation.columns.map((c) => q(c.name)).join(', ');
  const conds = [...filters.map((f) => `(${f})`)];
  if (after) {
    const k = t.keyColumns.map(q).join(', ');
    const v = t.keyTypes.map((type, i) => `$${i + 1}::${type}`).join(', ');
    conds.unshift(`(${k}) > (${v})`);
  }
  return (
    `SELECT ${cols} FROM ${q(t.schema)}.${q(t.name)}` +
    (conds.length > 0 ? ` WHERE ${conds.join(' AND ')}` : '') +
    ` ORDER BY ${t.keyColumns.map(q).join(', ')} LIMIT ${limit}`
  );
}

export interface ReadChunk {
  rows: ChunkRow[];
  /** low 32 bits of the xids the chunk's snapshot saw as running */
  running: Set<number>;
}

/**
 * One chunk, read in a read-only REPEATABLE READ transaction whose snapshot is recorded first:
 * the rows, each with its key text (as the stream's changes give it), and the running xids.
 */
export async function readChunk(
  c: pg.Client,
  t: BackfillTable,
  filters: readonly string[],
  lastKey: readonly (string | null)[] | null,
  limit: number,
): Promise<ReadChunk> {
  await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
  try {
    const snap = await c.query<{ s: string }>('SELECT pg_current_snapshot()::text AS s');
    const res = await c.query<string[]>({
      text: chunkQuery(t, filters, lastKey !== null, limit),
      values: lastKey === null ? [] : [...lastKey],
      rowMode: 'array',
      types: rawTypes,
    });
    await c.query('COMMIT');
    const idx = t.keyColumns.map((k) => t.relation.columns.findIndex((col) => col.name === k));
    const rows = (res.rows as unknown as Tuple[]).map((tuple) => ({ key: keyOf(tuple, idx), tuple }));
    return { rows, running: runningXids(snap.rows[0]!.s) };
  } catch (err) {
    await c.query('ROLLBACK').catch(() => {});
    throw err;
  }
}

/** The xip list of a `pg_current_snapshot()` text (`xmin:xmax:xip,…`), as 32-bit xids. */
export function runningXids(snapshot: string): Set<number> {
  const xip = snapshot.split(':')[2] ?? '';
  const out = new Set<number>();
  for (const x of xip.split(',')) if (x !== '') out.add(Number(BigInt(x) & 0xffffffffn));
  return out;
}

/** Rows the backfill will read (exact: counted once when it starts). */
export async function countRows(c: pg.Client, t: BackfillTable, filters: readonly string[]): Promise<number> {
  const w = filters.length > 0 ? ` WHERE ${filters.map((f) => `(${f})`).join(' AND ')}` : '';
  const r = await c.query<{ n: string }>(`SELECT count(*) AS n FROM ${quoteIdent(t.schema)}.${quoteIdent(t.name)}${w}`);
  return Number(r.rows[0]!.n);
}

/** Has PostgreSQL judge a `--where` against the table (nothing is read). Null when valid, else why not. */
export async function whereProblem(c: pg.Client, schema: string, name: string, where: string): Promise<string | null> {
  try {
    await c.query('BEGIN READ ONLY');
    await c.query(`EXPLAIN SELECT 1 FROM ${quoteIdent(schema)}.${quoteIdent(name)} WHERE (${where})`);
    return null;
  } catch (err) {
    return `--where ${quoteLiteral(where)} is not a valid condition on ${schema}.${name}: ${(err as Error).message}`;
  } finally {
    await c.query('ROLLBACK').catch(() => {});
  }
}
