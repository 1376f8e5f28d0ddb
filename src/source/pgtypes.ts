/**
 * Column types as the catalog describes them: what it takes to write a value the way
 * PostgreSQL's `to_jsonb` writes it (numbers, booleans, arrays, composites, domains, …).
 *
 * A type is looked up once per process and cached: the common built-in types are known without
 * any I/O (their OIDs are fixed), anything else — enums, domains, composites, extension types,
 * arrays of those — is read from `pg_type` on a normal connection (never the replication one),
 * together with every type it is made of, in one query with inlined literals.
 */
import { connect, quoteLiteral } from '../util/db.js';

/** How `to_jsonb` writes a non-container value. */
export type ScalarKind =
  /** true / false */
  | 'bool'
  /** int2, int4, int8: a JSON number, as written */
  | 'int'
  /** float4, float8: a JSON number as numeric reads it (no exponent, no -0); NaN and ±Infinity as strings */
  | 'float'
  /** numeric: a JSON number as written; NaN and ±Infinity as strings */
  | 'numeric'
  /** json: parsed into jsonb (duplicate keys: the last wins; numbers as numeric reads them) */
  | 'json'
  /** jsonb: its text is the JSON value */
  | 'jsonb'
  /** date: ISO 8601 (the ISO DateStyle text) */
  | 'date'
  /** timestamp: ISO 8601 with a T ("2024-06-01T10:00:00.5") */
  | 'timestamp'
  /** timestamptz: ISO 8601 with a T and the offset as ±hh:mm ("2024-06-01T10:00:00.5+00:00") */
  | 'timestamptz'
  /** hstore: an object of strings (and nulls), as its cast to json makes it */
  | 'hstore'
  /** any other type: its text output as a JSON string */
  | 'text';

export type PgType =
  | { kind: 'scalar'; oid: number; name: string; scalar: ScalarKind; inexact?: string }
  /** a true array (any number of dimensions); `delim` separates its elements (the element type's typdelim) */
  | { kind: 'array'; oid: number; name: string; elem: number; delim: string }
  /** int2vector / oidvector: space-separated elements, a JSON array to to_jsonb */
  | { kind: 'vector'; oid: number; name: string; elem: number }
  /** a composite (row) type: an object by attribute */
  | { kind: 'composite'; oid: number; name: string; attributes: readonly PgAttribute[] }
  /** a domain: written as its base type */
  | { kind: 'domain'; oid: number; name: string; base: number };

interface PgAttribute {
  name: string;
  type: number;
}

/** Runs one simple-protocol query (no bind parameters) and returns its rows. */
export type CatalogQuery = (sql: string) => Promise<Record<string, unknown>[]>;

const scalar = (oid: number, name: string, kind: ScalarKind): PgType => ({ kind: 'scalar', oid, name, scalar: kind });
const array = (oid: number, name: string, elem: number): PgType => ({ kind: 'array', oid, name, elem, delim: ',' });

/**
 * Built-in types whose OIDs are fixed in every PostgreSQL (pg_type.dat): no lookup needed.
 * [oid, name, kind, array type oid]
 */
const BUILTIN_SCALARS: [number, string, ScalarKind, number][] = [
  [16, 'bool', 'bool', 1000],
  [17, 'bytea', 'text', 1001],
  [18, 'char', 'text', 1002],
  [19, 'name', 'text', 1003],
  [20, 'int8', 'int', 1016],
  [21, 'int2', 'int', 1005],
  [23, 'int4', 'int', 1007],
  [25, 'text', 'text', 1009],
  [26, 'oid', 'text', 1028],
  [114, 'json', 'json', 199],
  [142, 'xml', 'text', 143],
  [650, 'cidr', 'text', 651],
  [700, 'float4', 'float', 1021],
  [701, 'float8', 'float', 1022],
  [774, 'macaddr8', 'text', 775],
  [790, 'money', 'text', 791],
  [829, 'macaddr', 'text', 1040],
  [869, 'inet', 'text', 1041],
  [1042, 'bpchar', 'text', 1014],
  [1043, 'varchar', 'text', 1015],
  [1082, 'date', 'date', 1182],
  [1083, 'time', 'text', 1183],
  [1114, 'timestamp', 'timestamp', 1115],
  [1184, 'timestamptz', 'timestamptz', 1185],
  [1186, 'interval', 'text', 1187],
  [1266, 'timetz', 'text', 1270],
  [1560, 'bit', 'text', 1561],
  [1562, 'varbit', 'text', 1563],
  [1700, 'numeric', 'numeric', 1231],
  [2950, 'uuid', 'text', 2951],
  [3220, 'pg_lsn', 'text', 3221],
  [3614, 'tsvector', 'text', 3643],
  [3615, 'tsquery', 'text', 3645],
  [3802, 'jsonb', 'jsonb', 3807],
  [3904, 'int4range', 'text', 3905],
  [3906, 'numrange', 'text', 3907],
  [3908, 'tsrange', 'text', 3909],
  [3910, 'tstzrange', 'text', 3911],
  [3912, 'daterange', 'text', 3913],
  [3926, 'int8range', 'text', 3927],
];

/** The built-in types the relay knows without asking the catalog. */
export function builtinTypes(): Map<number, PgType> {
  const m = new Map<number, PgType>();
  for (const [oid, name, kind, arrayOid] of BUILTIN_SCALARS) {
    m.set(oid, scalar(oid, `pg_catalog.${name}`, kind));
    m.set(arrayOid, array(arrayOid, `pg_catalog._${name}`, oid));
  }
  m.set(22, { kind: 'vector', oid: 22, name: 'pg_catalog.int2vector', elem: 21 });
  m.set(30, { kind: 'vector', oid: 30, name: 'pg_catalog.oidvector', elem: 26 });
  return m;
}

/** The type OIDs PostgreSQL assigns to user-defined objects start here. */
const FIRST_NORMAL_OID = 16384;

/**
 * The catalog query: the given types and every type they are made of (array elements, domain
 * bases, composite attributes), recursively. Inlined literals only: it runs as a simple query.
 */
export function typeQuery(oids: readonly number[]): string {
  const list = quoteLiteral(`{${oids.join(',')}}`);
  return `WITH RECURSIVE ts(oid) AS (
  SELECT unnest(${list}::oid[])
  UNION
  SELECT x.oid FROM ts JOIN pg_catalog.pg_type t ON t.oid = ts.oid
   CROSS JOIN LATERAL unnest(ARRAY[t.typelem, t.typbasetype] || ARRAY(
     SELECT a.atttypid FROM pg_catalog.pg_attribute a WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped)) x(oid)
  WHERE x.oid <> 0
)
SELECT t.oid::int8::text AS oid, n.nspname || '.' || t.typname AS name, t.typtype::text AS typtype, t.typelem::int8::text AS elem,
       e.typdelim::text AS delim, t.typbasetype::int8::text AS base,
       (t.typelem <> 0 AND t.typsubscript = 'pg_catalog.array_subscript_handler'::pg_catalog.regproc) AS is_array,
       (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(a.attname, a.atttypid::int8) ORDER BY a.attnum)
          FROM pg_catalog.pg_attribute a
         WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped)::text AS attributes,
       (SELECT p.proname::text FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc
         WHERE c.castsource = t.oid AND c.casttarget = 'pg_catalog.json'::pg_catalog.regtype AND c.castmethod = 'f') AS json_cast
  FROM ts JOIN pg_catalog.pg_type t ON t.oid = ts.oid
  JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
  LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem`;
}

/** One row of {@link typeQuery} as a type description. */
export function typeFromRow(r: Record<string, unknown>): PgType {
  const oid = Number(r['oid']);
  const name = String(r['name']);
  const typtype = String(r['typtype']);
  const elem = Number(r['elem']);
  const base = Number(r['base']);
  if (typtype === 'd' && base > 0) return { kind: 'domain', oid, name, base };
  if (typtype === 'c') {
    // a composite without attributes has none to aggregate: null
    const attrs = typeof r['attributes'] === 'string' ? (JSON.parse(r['attributes']) as [string, number][]) : [];
    return { kind: 'composite', oid, name, attributes: attrs.map(([n, t]) => ({ name: n, type: Number(t) })) };
  }
  const isArray = r['is_array'] === true || r['is_array'] === 't';
  if (isArray && elem > 0) {
    if (oid === 22 || oid === 30) return { kind: 'vector', oid, name, elem };
    return { kind: 'array', oid, name, elem, delim: typeof r['delim'] === 'string' && r['delim'].length === 1 ? r['delim'] : ',' };
  }
  // to_jsonb writes a user-defined type through its cast to json when it has one
  const cast = r['json_cast'];
  if (oid >= FIRST_NORMAL_OID && typeof cast === 'string') {
    if (cast === 'hstore_to_json') return scalar(oid, name, 'hstore');
    return { kind: 'scalar', oid, name, scalar: 'text', inexact: `to_jsonb uses its cast to json (${cast})` };
  }
  const builtin = BUILTIN_SCALAR_KIND.get(oid);
  return scalar(oid, name, builtin ?? 'text');
}

const BUILTIN_SCALAR_KIND = new Map(BUILTIN_SCALARS.map(([oid, , kind]) => [oid, kind]));

/**
 * The types of a database, each looked up at most once. `load()` returns a promise only when
 * something must be read from the catalog, so a caller can stay synchronous otherwise.
 */
export class TypeCatalog {
  private readonly types = builtinTypes();
  private pending: Promise<void> | null = null;
  private version = 0;
  private invalidatedAt = 0;

  /** @param query runs the catalog query; null: only the built-in types are known */
  constructor(private readonly query: CatalogQuery | null) {}

  get(oid: number): PgType | undefined {
    return this.types.get(oid);
  }

  /** Loads the types not known yet (and what they are made of); undefined when all are known. */
  load(oids: Iterable<number>): Promise<void> | undefined {
    const missing = new Set<number>();
    for (const oid of oids) if (oid > 0 && !this.types.has(oid)) missing.add(oid);
    if (missing.size === 0) return undefined;
    const run = async (): Promise<void> => {
      const wanted = [...missing].filter((o) => !this.types.has(o));
      if (wanted.length === 0) return;
      const rows = this.query ? await this.query(typeQuery(wanted)) : [];
      for (const r of rows) {
        const t = typeFromRow(r);
        if (!this.types.has(t.oid)) this.types.set(t.oid, t);
      }
      // a type the catalog does not have (dropped since) is written as its text
      for (const oid of wanted) if (!this.types.has(oid)) this.types.set(oid, scalar(oid, `oid ${oid}`, 'text'));
    };
    const p = (this.pending ?? Promise.resolve()).then(run);
    const settled = p.then(
      () => {},
      () => {},
    );
    this.pending = settled;
    void settled.then(() => {
      if (this.pending === settled) this.pending = null;
    });
    return p;
  }

  /**
   * A value did not fit its type as cached (a composite type was altered): forget every
   * user-defined type, so the next `load()` reads them again. At most once per `minIntervalMs`,
   * so a backlog of rows written before the change does not turn into a lookup per row.
   */
  invalidate(minIntervalMs = 10_000): void {
    const now = Date.now();
    if (now - this.invalidatedAt < minIntervalMs) return;
    this.invalidatedAt = now;
    for (const oid of this.types.keys()) if (oid >= FIRST_NORMAL_OID) this.types.delete(oid);
    this.version++;
  }

  /** Changes whenever cached types were forgotten. */
  get generation(): number {
    return this.version;
  }
}

/**
 * Catalog queries on a short-lived normal connection to the database: lookups are rare (once per
 * new type per process), so no connection is held between them.
 */
export function catalogQuery(url: string, timeoutMs = 30_000): CatalogQuery {
  return async (sql) => {
    const c = await connect(url, { connectionTimeoutMillis: timeoutMs, statement_timeout: timeoutMs });
    try {
      const r = await c.query<Record<string, unknown>>(sql);
      return r.rows;
    } finally {
      await c.end().catch(() => {});
    }
  };
}
