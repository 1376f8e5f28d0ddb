/**
 * Column values (PostgreSQL text output) as the JSON `to_jsonb` makes of them, for every type:
 * numbers stay numbers digit for digit, arrays of any element type and dimension become nested
 * JSON arrays, composites objects, domains their base type, and so on (see {@link ScalarKind}).
 * What a type is comes from the {@link TypeCatalog}; a type it does not know is written as its
 * text, never as a guessed structure.
 */
import type { Relation, TupleValue } from '../source/types.js';
import type { PgType, ScalarKind, TypeCatalog } from '../source/pgtypes.js';
import { decimalToJson, jsonToJsonb, parseArrayText, parseHstoreText, parseRecordText, pgDateTimeToIso, type ArrayTree } from './pgtext.js';

/** One value's text → its JSON text. */
type ToJson = (text: string) => string;

const textJson: ToJson = (text) => JSON.stringify(text);

const INT_RE = /^-?\d+$/;
const NUMERIC_RE = /^-?\d+(?:\.\d+)?$/;

/** NaN and ±Infinity: to_jsonb writes them as strings. */
function special(text: string): boolean {
  return text === 'NaN' || text === 'Infinity' || text === '-Infinity';
}

const SCALARS: Record<ScalarKind, ToJson> = {
  bool: (t) => (t === 't' ? 'true' : t === 'f' ? 'false' : JSON.stringify(t)),
  int: (t) => (INT_RE.test(t) ? t : JSON.stringify(t)),
  numeric: (t) => (NUMERIC_RE.test(t) ? t : JSON.stringify(t)),
  float: (t) => (special(t) ? JSON.stringify(t) : (decimalToJson(t) ?? JSON.stringify(t))),
  json: (t) => jsonToJsonb(t) ?? JSON.stringify(t),
  jsonb: (t) => t,
  date: textJson,
  timestamp: (t) => JSON.stringify(pgDateTimeToIso(t)),
  timestamptz: (t) => JSON.stringify(pgDateTimeToIso(t)),
  hstore: (t) => {
    const pairs = parseHstoreText(t);
    if (pairs === null) return JSON.stringify(t);
    let out = '{';
    for (const [k, v] of pairs) out += (out.length > 1 ? ',' : '') + JSON.stringify(k) + ':' + (v === null ? 'null' : JSON.stringify(v));
    return out + '}';
  },
  text: textJson,
};

/** Writes values of the catalog's types; converters are built once per type and cached. */
export class ValueWriter {
  private readonly byType = new Map<number, ToJson>();
  private generation: number;

  constructor(private readonly types: TypeCatalog) {
    this.generation = types.generation;
  }

  /** The converter for a type OID (a type the catalog does not know: its text, not cached). */
  converter(oid: number): ToJson {
    if (this.generation !== this.types.generation) {
      this.byType.clear();
      this.generation = this.types.generation;
    }
    let c = this.byType.get(oid);
    if (c !== undefined) return c;
    const t = this.types.get(oid);
    if (t === undefined) return textJson;
    c = this.build(t);
    this.byType.set(oid, c);
    return c;
  }

  private build(t: PgType): ToJson {
    switch (t.kind) {
      case 'scalar':
        return SCALARS[t.scalar];
      case 'domain':
        return this.converter(t.base);
      case 'array': {
        const elem = this.converter(t.elem);
        const delim = t.delim;
        const write = (node: string | null | ArrayTree): string =>
          node === null ? 'null' : typeof node === 'string' ? elem(node) : '[' + node.map(write).join(',') + ']';
        return (text) => {
          const tree = parseArrayText(text, delim);
          return tree === null ? JSON.stringify(text) : write(tree);
        };
      }
      case 'vector': {
        const elem = this.converter(t.elem);
        return (text) => (text === '' ? '[]' : '[' + text.split(' ').map(elem).join(',') + ']');
      }
      case 'composite': {
        const attrs = t.attributes;
        const keys = attrs.map((a) => JSON.stringify(a.name) + ':');
        const convs = attrs.map((a) => this.converter(a.type));
        return (text) => {
          if (attrs.length === 0 && text === '()') return '{}';
          const fields = parseRecordText(text);
          if (fields === null || fields.length !== attrs.length) {
            // the type changed since it was read (ALTER TYPE): its text now, the catalog again later
            this.types.invalidate();
            return JSON.stringify(text);
          }
          let out = '{';
          for (let i = 0; i < fields.length; i++) {
            const f = fields[i]!;
            out += (i > 0 ? ',' : '') + keys[i]! + (f === null ? 'null' : convs[i]!(f));
          }
          return out + '}';
        };
      }
    }
  }
}

export interface RowJson {
  /** the row as a JSON object text */
  json: string;
  /** columns left out because pgoutput did not send them (unchanged TOAST) */
  missing: string[];
}

/**
 * A tuple as a JSON object. An unchanged TOASTed value (undefined) is taken from `fallback`
 * (the old row, when the replica identity provides it), else left out and reported.
 */
export function rowToJson(
  rel: Relation,
  values: readonly TupleValue[],
  writer: ValueWriter,
  fallback?: readonly TupleValue[] | null,
  onlyKey = false,
  /** a rule's `columns`: only these (null: all) */
  only: ReadonlySet<string> | null = null,
): RowJson {
  let json = '{';
  const missing: string[] = [];
  let first = true;
  const cols = rel.columns;
  for (let i = 0; i < cols.length; i++) {
    const col = cols[i]!;
    if (onlyKey && (col.flags & 1) === 0) continue;
    if (only !== null && !only.has(col.name)) continue;
    let v = values[i];
    if (v === undefined && fallback) v = fallback[i];
    if (v === undefined) {
      missing.push(col.name);
      continue;
    }
    json += (first ? '' : ',') + JSON.stringify(col.name) + ':' + (v === null ? 'null' : writer.converter(col.typeOid)(v));
    first = false;
  }
  return { json: json + '}', missing };
}
