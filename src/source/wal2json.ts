/**
 * wal2json format-version 2 decoder: one JSON object per replication message, mapped onto the
 * same message union as pgoutput so the rest of the pipeline cannot tell the plugins apart.
 *
 * Actions: B (begin), C (commit), I/U/D (changes), M (logical message), T (truncate). With
 * `include-lsn`, B and C carry `lsn` (the commit record's start) and `nextlsn` (the commit end
 * LSN, the only position that may be acknowledged); with `include-xids`/`include-timestamp` the
 * transaction id and commit time. Values are made identical to what pgoutput sends in text mode:
 *
 * - strings stay as written (jsonb arrives as a string and is kept byte for byte);
 * - numbers are taken digit for digit from the JSON text (never through a JS number), whether
 *   wal2json wrote them bare or, with `numeric-data-types-as-string` (2.6+), quoted;
 * - booleans become 't'/'f'; bytea gets back the `\x` prefix wal2json strips;
 * - SQL NULL is `null`; a column an UPDATE leaves out (an unchanged TOASTed value) is `undefined`.
 *   Caveat: wal2json before 2.6 writes NaN/±Infinity of float and numeric columns as `null`.
 *
 * wal2json announces no relations: a stable `Relation` is synthesized per (schema, table, column
 * list, key flags) and looked up by `relation(id)`. Flags follow pgoutput: 1 on replica identity
 * columns (every column for REPLICA IDENTITY FULL). On INSERTs, which carry no identity, they
 * come from the catalog facts the connection read at start, else from the primary key. Old values
 * (`identity`) become `oldTuple` when they carry the whole row (REPLICA IDENTITY FULL), else
 * `keyTuple`, and like pgoutput only when the key actually changed.
 *
 * Unknown actions decode to `{ tag: 'unknown' }`; malformed JSON or a message missing a field the
 * relay depends on throws `Wal2JsonDecodeError`.
 */

import type { Lsn, PgoutputMessage, Relation, RelationColumn, Tuple, TupleValue } from './types.js';
import type { Decoder } from './decoder.js';
import { PG_EPOCH_OFFSET_MICROS, parseLsn } from './lsn.js';

/** What the catalog said about a streamed table when the stream started (plugin.ts StreamedTable). */
export interface TableFacts {
  schema: string;
  name: string;
  replicaIdentity: string;
  keys: string[];
  generated: string[];
}

export class Wal2JsonDecodeError extends Error {
  override readonly name = 'Wal2JsonDecodeError';
  constructor(
    message: string,
    /** the message's action ('I', 'B', …), '' when it could not be read */
    readonly action: string,
  ) {
    super(`wal2json ${action === '' ? 'message' : `'${action}'`}: ${message}`);
  }
}

const BYTEA_OID = 17;

/**
 * JSON.parse where every number comes back as the string of its source digits: int8, numeric
 * and float values survive exactly, as pgoutput would have sent them. Bare number tokens are
 * quoted by one scan that skips over strings; anything malformed is left for JSON.parse to reject.
 */
export function parseJsonKeepingNumbers(text: string): unknown {
  return JSON.parse(quoteNumbers(text));
}

function quoteNumbers(text: string): string {
  let out = '';
  let last = 0;
  const n = text.length;
  let i = 0;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      i++;
      for (;;) {
        const q = text.indexOf('"', i);
        if (q < 0) return text; // unterminated string
        let backslashes = 0;
        for (let k = q - 1; k >= i && text.charCodeAt(k) === 0x5c; k--) backslashes++;
        i = q + 1;
        if ((backslashes & 1) === 0) break;
      }
    } else if ((c >= 0x30 && c <= 0x39) || c === 0x2d /* - */) {
      let j = i + 1;
      for (; j < n; j++) {
        const d = text.charCodeAt(j);
        // digits . e E + -
        if (!((d >= 0x30 && d <= 0x39) || d === 0x2e || d === 0x65 || d === 0x45 || d === 0x2b || d === 0x2d)) break;
      }
      out += `${text.slice(last, i)}"${text.slice(i, j)}"`;
      last = j;
      i = j;
    } else {
      i++;
    }
  }
  return last === 0 ? text : out + text.slice(last);
}

const TS_RE = /^(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?(?:([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?)?( BC)?$/;

/**
 * A `timestamptz_to_str` text ("2026-11-22 05:22:37.44111+00", any offset) → µs since
 * 2000-01-01 UTC, exactly; null when it is not in that form.
 */
export function parsePgTimestamp(text: string): bigint | null {
  const m = TS_RE.exec(text);
  if (!m) return null;
  const [, y, mo, d, h, mi, s, frac = '', sign, oh = '0', om = '0', os = '0', bc] = m;
  let year = Number(y);
  if (bc) year = 1 - year;
  const date = new Date(0);
  date.setUTCFullYear(year, Number(mo) - 1, Number(d));
  date.setUTCHours(Number(h), Number(mi), Number(s), 0);
  const ms = date.getTime();
  if (Number.isNaN(ms)) return null;
  const micros = BigInt(ms) * 1000n + BigInt(frac.padEnd(6, '0') || '0');
  const offsetSec = sign ? (sign === '-' ? -1 : 1) * (Number(oh) * 3600 + Number(om) * 60 + Number(os)) : 0;
  return micros - BigInt(offsetSec) * 1_000_000n - PG_EPOCH_OFFSET_MICROS;
}

interface Column {
  name: string;
  typeOid: number;
  value: unknown;
}

type Obj = Record<string, unknown>;

/** A column's value as pgoutput's text: the same string, 't'/'f', null, or undefined when absent. */
function textValue(c: Column, action: string): TupleValue {
  const v = c.value;
  if (typeof v === 'string') return c.typeOid === BYTEA_OID ? `\\x${v}` : v;
  if (v === null) return null;
  if (v === true) return 't';
  if (v === false) return 'f';
  if (v === undefined) return undefined;
  throw new Wal2JsonDecodeError(`column ${c.name}: unexpected value of type ${Array.isArray(v) ? 'array' : typeof v}`, action);
}

function sameNames(a: Set<string>, b: Set<string>): boolean {
  if (a.size !== b.size) return false;
  for (const n of a) if (!b.has(n)) return false;
  return true;
}

const ALL = () => true;

export class Wal2JsonDecoder implements Decoder {
  private readonly byId = new Map<number, Relation>();
  private readonly byKey = new Map<string, Relation>();
  /** schema\0table → the table's whole column list, learned from INSERTs and full old rows */
  private readonly known = new Map<string, { name: string; typeOid: number }[]>();
  private nextId = 1;
  private readonly facts = new Map<string, TableFacts>();

  /**
   * @param tables catalog facts about the streamed tables, when known: INSERTs then flag the
   *   replica identity columns exactly as pgoutput does (wal2json only names the primary key),
   *   and stored generated columns are left out as pgoutput leaves them out
   */
  constructor(tables: readonly TableFacts[] = []) {
    for (const t of tables) this.facts.set(`${t.schema}\0${t.name}`, t);
  }

  relation(id: number): Relation | undefined {
    return this.byId.get(id);
  }

  decode(buf: Buffer): PgoutputMessage {
    let parsed: unknown;
    try {
      parsed = parseJsonKeepingNumbers(buf.toString('utf8'));
    } catch (err) {
      throw new Wal2JsonDecodeError(`malformed JSON (${(err as Error).message}) in a ${buf.length}-byte message`, '');
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      throw new Wal2JsonDecodeError('expected a JSON object', '');
    }
    const o = parsed as Obj;
    const action = o['action'];
    if (typeof action !== 'string') throw new Wal2JsonDecodeError('no "action"', '');
    switch (action) {
      case 'B':
        return {
          tag: 'begin',
          finalLsn: this.lsn(o, 'lsn', action),
          commitTime: this.time(o, action),
          xid: this.xid(o, action),
        };
      case 'C': {
        const commitLsn = this.lsn(o, 'lsn', action);
        return { tag: 'commit', flags: 0, commitLsn, endLsn: this.lsn(o, 'nextlsn', action), commitTime: this.time(o, action) };
      }
      case 'I':
        return this.insert(o, action);
      case 'U':
        return this.update(o, action);
      case 'D':
        return this.delete(o, action);
      case 'M': {
        const prefix = o['prefix'];
        const content = o['content'];
        if (typeof prefix !== 'string' || typeof content !== 'string')
          throw new Wal2JsonDecodeError('"prefix" and "content" must be strings', action);
        return {
          tag: 'message',
          transactional: o['transactional'] === true,
          lsn: this.lsn(o, 'lsn', action),
          prefix,
          content: Buffer.from(content, 'utf8'),
        };
      }
      case 'T': {
        const { schema, table } = this.names(o, action);
        const cols = this.known.get(`${schema}\0${table}`) ?? [];
        return { tag: 'truncate', options: 0, relationIds: [this.relationFor(schema, table, cols, () => false, 'd').id] };
      }
      default:
        return { tag: 'unknown', byte: action.length > 0 ? action.charCodeAt(0) : 0 };
    }
  }

  // ---- changes --------------------------------------------------------------------------

  private insert(o: Obj, action: string): PgoutputMessage {
    const { schema, table } = this.names(o, action);
    const key = `${schema}\0${table}`;
    const facts = this.facts.get(key);
    const cols = this.columns(o, 'columns', action, true, facts);
    this.known.set(key, cols.map(info));
    let rel: Relation;
    if (facts) {
      const full = facts.replicaIdentity === 'f';
      rel = this.relationFor(schema, table, cols, full ? ALL : (n) => facts.keys.includes(n), facts.replicaIdentity);
    } else {
      const pk = this.pkNames(o, action);
      rel = this.relationFor(schema, table, cols, (n) => pk.has(n), 'd');
    }
    return { tag: 'insert', relationId: rel.id, newTuple: cols.map((c) => textValue(c, action)) };
  }

  private update(o: Obj, action: string): PgoutputMessage {
    const { schema, table } = this.names(o, action);
    const key = `${schema}\0${table}`;
    const facts = this.facts.get(key);
    const news = this.columns(o, 'columns', action, true, facts);
    const ids = this.columns(o, 'identity', action, false, facts);
    const pk = this.pkNames(o, action);
    const idNames = new Set(ids.map((c) => c.name));
    const newByName = new Map(news.map((c) => [c.name, c]));
    const keyOnly = pk.size > 0 && sameNames(idNames, pk);
    if (ids.length > 0 && !keyOnly && news.every((c) => idNames.has(c.name))) {
      // REPLICA IDENTITY FULL: the old row is whole (TOASTed values included)
      this.known.set(key, ids.map(info));
      const rel = this.relationFor(schema, table, ids, ALL, 'f');
      const newTuple: Tuple = ids.map((c) => {
        const n = newByName.get(c.name);
        return n === undefined ? undefined : textValue(n, action);
      });
      return { tag: 'update', relationId: rel.id, keyTuple: null, oldTuple: ids.map((c) => textValue(c, action)), newTuple };
    }
    const base = this.baseColumns(key, news);
    const flagged = ids.length > 0 ? (n: string) => idNames.has(n) : (n: string) => pk.has(n);
    const rel = this.relationFor(schema, table, base, flagged, 'd');
    const newTuple: Tuple = base.map((c) => {
      const n = newByName.get(c.name);
      return n === undefined ? undefined : textValue(n, action);
    });
    // wal2json fills `identity` from the new row when the key did not change; pgoutput then
    // sends no old key at all, and so do we
    const changed = ids.some((c) => {
      const n = newByName.get(c.name);
      return n !== undefined && textValue(n, action) !== textValue(c, action);
    });
    let keyTuple: Tuple | null = null;
    if (changed) {
      const idByName = new Map(ids.map((c) => [c.name, c]));
      keyTuple = base.map((c) => {
        const k = idByName.get(c.name);
        return k === undefined ? null : textValue(k, action);
      });
    }
    return { tag: 'update', relationId: rel.id, keyTuple, oldTuple: null, newTuple };
  }

  private delete(o: Obj, action: string): PgoutputMessage {
    const { schema, table } = this.names(o, action);
    const key = `${schema}\0${table}`;
    const ids = this.columns(o, 'identity', action, true, this.facts.get(key));
    const pk = this.pkNames(o, action);
    const idNames = new Set(ids.map((c) => c.name));
    const known = this.known.get(key);
    const keyOnly = pk.size > 0 && sameNames(idNames, pk);
    if (ids.length > 0 && !keyOnly && (!known || known.every((c) => idNames.has(c.name)))) {
      this.known.set(key, ids.map(info));
      const rel = this.relationFor(schema, table, ids, ALL, 'f');
      return { tag: 'delete', relationId: rel.id, keyTuple: null, oldTuple: ids.map((c) => textValue(c, action)) };
    }
    const base = this.baseColumns(key, ids);
    const rel = this.relationFor(schema, table, base, (n) => idNames.has(n), 'd');
    const idByName = new Map(ids.map((c) => [c.name, c]));
    const keyTuple = base.map((c) => {
      const k = idByName.get(c.name);
      return k === undefined ? null : textValue(k, action);
    });
    return { tag: 'delete', relationId: rel.id, keyTuple, oldTuple: null };
  }

  /** The table's whole column list when `cols` fit in it, else `cols` as they are. */
  private baseColumns(key: string, cols: Column[]): { name: string; typeOid: number }[] {
    const known = this.known.get(key);
    if (known) {
      const names = new Set(known.map((c) => c.name));
      if (cols.every((c) => names.has(c.name))) return known;
    }
    return cols.map(info);
  }

  // ---- relations --------------------------------------------------------------------------

  private relationFor(
    schema: string,
    table: string,
    cols: readonly { name: string; typeOid: number }[],
    flagged: (name: string) => boolean,
    replicaIdentity: string,
  ): Relation {
    let key = `${schema}\0${table}`;
    for (const c of cols) key += `\0${c.name}\u0001${c.typeOid}\u0001${flagged(c.name) ? 1 : 0}`;
    let rel = this.byKey.get(key);
    if (rel === undefined) {
      const columns: RelationColumn[] = cols.map((c) => ({
        flags: flagged(c.name) ? 1 : 0,
        name: c.name,
        typeOid: c.typeOid,
        typeMod: -1,
      }));
      rel = { id: this.nextId++, schema, name: table, replicaIdentity, columns };
      this.byKey.set(key, rel);
      this.byId.set(rel.id, rel);
    }
    return rel;
  }

  // ---- fields -----------------------------------------------------------------------------

  private names(o: Obj, action: string): { schema: string; table: string } {
    const schema = o['schema'];
    const table = o['table'];
    if (typeof schema !== 'string' || typeof table !== 'string')
      throw new Wal2JsonDecodeError('"schema" and "table" must be strings', action);
    return { schema, table };
  }

  private columns(o: Obj, field: string, action: string, required: boolean, facts?: TableFacts): Column[] {
    const arr = o[field];
    if (arr === undefined && !required) return [];
    if (!Array.isArray(arr)) throw new Wal2JsonDecodeError(`"${field}" must be an array`, action);
    const skip = facts && facts.generated.length > 0 ? facts.generated : null;
    const out: Column[] = [];
    for (let i = 0; i < arr.length; i++) {
      const c = arr[i] as Obj | null;
      if (c === null || typeof c !== 'object' || typeof c['name'] !== 'string') {
        throw new Wal2JsonDecodeError(`"${field}"[${i}] has no "name"`, action);
      }
      if (skip?.includes(c['name'])) continue;
      const oid = c['typeoid'];
      out.push({ name: c['name'], typeOid: typeof oid === 'string' ? Number(oid) : 0, value: c['value'] });
    }
    return out;
  }

  private pkNames(o: Obj, action: string): Set<string> {
    const pk = o['pk'];
    if (pk === undefined) return new Set();
    if (!Array.isArray(pk)) throw new Wal2JsonDecodeError('"pk" must be an array', action);
    return new Set(pk.map((c: Obj) => String(c?.['name'])));
  }

  private lsn(o: Obj, field: string, action: string): Lsn {
    const v = o[field];
    if (typeof v !== 'string') throw new Wal2JsonDecodeError(`no "${field}" (the slot must stream with "include-lsn")`, action);
    try {
      return parseLsn(v);
    } catch {
      throw new Wal2JsonDecodeError(`"${field}" is not an LSN: ${JSON.stringify(v)}`, action);
    }
  }

  private xid(o: Obj, action: string): number {
    const v = o['xid'];
    const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : NaN;
    if (!(n >= 0 && n <= 0xffff_ffff)) throw new Wal2JsonDecodeError(`no valid "xid" (the slot must stream with "include-xids")`, action);
    return n;
  }

  private time(o: Obj, action: string): bigint {
    const v = o['timestamp'];
    const t = typeof v === 'string' ? parsePgTimestamp(v) : null;
    if (t === null)
      throw new Wal2JsonDecodeError(`no valid "timestamp" (the slot must stream with "include-timestamp"): ${JSON.stringify(v)}`, action);
    return t;
  }
}

function info(c: { name: string; typeOid: number }): { name: string; typeOid: number } {
  return { name: c.name, typeOid: c.typeOid };
}
