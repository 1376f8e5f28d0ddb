import type { Relation, TupleValue } from '../source/types.js';
import { pgTextArrayToJson } from './pgtext.js';

/** Type OIDs whose text form is already a JSON value (numbers are forwarded digit for digit). */
const NUMERIC = new Set([20, 21, 23, 26, 700, 701, 1700]);
const JSON_TYPES = new Set([114, 3802]);
const BOOL = 16;
/** one-dimensional arrays whose elements are strings (text, varchar, uuid, name, char) */
const TEXT_ARRAYS = new Set([1009, 1015, 2951, 1003, 1014]);
/** integer and float arrays */
const NUMBER_ARRAYS = new Set([1005, 1007, 1016, 1021, 1022, 1231]);

/** One column value (PostgreSQL text output) as JSON text, without lossy re-parsing. */
function valueToJson(value: string | null, typeOid: number): string {
  if (value === null) return 'null';
  if (NUMERIC.has(typeOid)) return /^-?\d+(\.\d+)?(e[+-]?\d+)?$/i.test(value) ? value : JSON.stringify(value);
  if (JSON_TYPES.has(typeOid)) return value;
  if (typeOid === BOOL) return value === 't' ? 'true' : value === 'f' ? 'false' : JSON.stringify(value);
  if (TEXT_ARRAYS.has(typeOid) && !value.startsWith('[')) return pgTextArrayToJson(value);
  if (NUMBER_ARRAYS.has(typeOid) && /^\{[-\d.,e]*\}$/i.test(value)) return '[' + value.slice(1, -1) + ']';
  return JSON.stringify(value);
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
export function rowToJson(rel: Relation, values: readonly TupleValue[], fallback?: readonly TupleValue[] | null, onlyKey = false): RowJson {
  let json = '{';
  const missing: string[] = [];
  let first = true;
  const cols = rel.columns;
  for (let i = 0; i < cols.length; i++) {
    const col = cols[i]!;
    if (onlyKey && (col.flags & 1) === 0) continue;
    let v = values[i];
    if (v === undefined && fallback) v = fallback[i];
    if (v === undefined) {
      missing.push(col.name);
      continue;
    }
    json += (first ? '' : ',') + JSON.stringify(col.name) + ':' + valueToJson(v, col.typeOid);
    first = false;
  }
  return { json: json + '}', missing };
}
