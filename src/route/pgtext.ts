/** Conversions of PostgreSQL text output into JSON text, without lossy re-parsing. */

import { pgMicrosToIso } from '../source/lsn.js';
import { parsePgTimestamp } from '../source/wal2json.js';

/**
 * `timestamptz` text as written with DateStyle=ISO ("2026-11-22 10:00:00.123456+00", any offset)
 * → the form `to_jsonb` gives a timestamptz in a session with TimeZone=UTC:
 * "2026-11-22T10:00:00.123456+00:00" (microseconds kept, trailing fractional zeros dropped as
 * PostgreSQL drops them; other offsets are converted to UTC exactly; ±infinity stay as they are).
 */
export function pgTimestampToIso(text: string): string {
  // the common case, "yyyy-mm-dd hh:mm:ss[.f…]+00", without a regular expression
  const n = text.length;
  if (
    n >= 22 &&
    n <= 29 &&
    text.charCodeAt(10) === 32 &&
    text.charCodeAt(4) === 45 &&
    text.charCodeAt(7) === 45 &&
    text.charCodeAt(13) === 58 &&
    text.charCodeAt(16) === 58 &&
    text.charCodeAt(n - 3) === 43 &&
    text.charCodeAt(n - 2) === 48 &&
    text.charCodeAt(n - 1) === 48 &&
    (n === 22 || (text.charCodeAt(19) === 46 && n > 23 && text.charCodeAt(n - 4) !== 48)) &&
    digitsAt(text, 20, n - 3)
  ) {
    return text.slice(0, 10) + 'T' + text.slice(11, n - 3) + '+00:00';
  }
  if (text === 'infinity' || text === '-infinity') return text;
  const micros = parsePgTimestamp(text);
  if (micros === null) return text;
  try {
    return pgMicrosToIso(micros);
  } catch {
    return text;
  }
}

function digitsAt(s: string, from: number, to: number): boolean {
  for (let i = from; i < to; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}

/** A one-dimensional text[] literal ("{a,\"b c\",NULL}") → a JSON array text. */
export function pgTextArrayToJson(text: string): string {
  if (text.length < 2 || text[0] !== '{' || text[text.length - 1] !== '}') return JSON.stringify(text);
  const out: (string | null)[] = [];
  let i = 1;
  const end = text.length - 1;
  if (end === 1) return '[]';
  while (i <= end) {
    let value = '';
    let quoted = false;
    if (text[i] === '"') {
      quoted = true;
      i++;
      while (i < end && text[i] !== '"') {
        if (text[i] === '\\') i++;
        value += text[i];
        i++;
      }
      i++; // closing quote
    } else {
      while (i < end && text[i] !== ',') {
        value += text[i];
        i++;
      }
    }
    out.push(!quoted && value === 'NULL' ? null : value);
    i++; // the comma (or past the end)
  }
  return JSON.stringify(out);
}

/**
 * A decimal number as `numeric` reads it and writes it back (what `to_jsonb` does with float and
 * JSON numbers): no exponent ("1e+20" → "100000000000000000000", "1.5e-07" → "0.00000015"),
 * the scale the text implies, and no negative zero. Null when the text is not a finite number.
 */
export function decimalToJson(text: string): string | null {
  const m = /^([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d{1,6}))?$/.exec(text);
  if (!m) return null;
  const [, sign, int = '', frac = '', e] = m;
  if (int === '' && frac === '') return null;
  if (e === undefined && /^-?(?:0|[1-9]\d*)(?:\.\d+)?$/.test(text)) {
    // already as numeric writes it, unless it is a negative zero
    return sign === '-' && /^[0.]*$/.test(text.slice(1)) ? text.slice(1) : text;
  }
  const exp = e === undefined ? 0 : Number(e);
  const digits = int + frac;
  const point = int.length + exp; // position of the decimal point within `digits`
  let whole: string;
  let fraction: string;
  if (point >= digits.length) {
    whole = digits + '0'.repeat(point - digits.length);
    fraction = '';
  } else if (point <= 0) {
    whole = '0';
    fraction = '0'.repeat(-point) + digits;
  } else {
    whole = digits.slice(0, point);
    fraction = digits.slice(point);
  }
  whole = whole.replace(/^0+(?=\d)/, '');
  const zero = /^0*$/.test(whole) && /^0*$/.test(fraction);
  return (sign === '-' && !zero ? '-' : '') + whole + (fraction ? '.' + fraction : '');
}

/**
 * `timestamp` / `timestamptz` text in the ISO DateStyle ("2024-06-01 10:00:00.5+00", "… BC")
 * → ISO 8601 as `to_jsonb` writes it ("2024-06-01T10:00:00.5+00:00"): the date and time joined
 * by a T, the offset as ±hh:mm (±hh:mm:ss when it has seconds). The value itself is unchanged.
 */
export function pgDateTimeToIso(text: string): string {
  const sp = text.indexOf(' ');
  if (sp < 0) return text; // infinity, -infinity
  let rest = text.slice(sp + 1);
  let era = '';
  if (rest.endsWith(' BC')) {
    era = ' BC';
    rest = rest.slice(0, -3);
  }
  const k = rest.search(/[+-]/);
  if (k >= 0 && rest.length - k === 3) rest += ':00';
  return text.slice(0, sp) + 'T' + rest + era;
}

/** A parsed array literal: nested arrays of element texts, null for a NULL element. */
export type ArrayTree = (string | null | ArrayTree)[];

/**
 * An array's text output (`array_out`: any number of dimensions, optional "[l:u]=" bounds,
 * quoted elements with backslash escapes, NULL) → nested arrays of element texts. `delim` is the
 * element type's delimiter (`;` for box). Null when the text is not an array literal.
 */
export function parseArrayText(text: string, delim = ','): ArrayTree | null {
  let i = 0;
  if (text.charCodeAt(0) === 0x5b /* [ */) {
    i = text.indexOf('=');
    if (i < 0) return null;
    i++;
  }
  const d = delim.charCodeAt(0);
  const n = text.length;
  const level = (): ArrayTree | null => {
    if (text.charCodeAt(i) !== 0x7b /* { */) return null;
    i++;
    const out: ArrayTree = [];
    if (text.charCodeAt(i) === 0x7d /* } */) {
      i++;
      return out;
    }
    for (;;) {
      const c = text.charCodeAt(i);
      if (c === 0x7b) {
        const sub = level();
        if (sub === null) return null;
        out.push(sub);
      } else if (c === 0x22 /* " */) {
        i++;
        let v = '';
        let from = i;
        for (;;) {
          if (i >= n) return null;
          const q = text.charCodeAt(i);
          if (q === 0x5c /* \ */) {
            v += text.slice(from, i);
            i++;
            from = i;
            i++;
          } else if (q === 0x22) {
            v += text.slice(from, i);
            i++;
            break;
          } else i++;
        }
        out.push(v);
      } else {
        const from = i;
        while (i < n && text.charCodeAt(i) !== d && text.charCodeAt(i) !== 0x7d) i++;
        if (i >= n) return null;
        const v = text.slice(from, i);
        out.push(v === 'NULL' ? null : v);
      }
      const sep = text.charCodeAt(i);
      i++;
      if (sep === 0x7d) return out;
      if (sep !== d) return null;
    }
  };
  const tree = level();
  return tree !== null && i === n ? tree : null;
}

/**
 * A composite value's text output (`record_out`: "(1,\"a b\",,\"x\"\"y\")") → its field texts,
 * null for a NULL field. Null when the text is not a record literal.
 */
export function parseRecordText(text: string): (string | null)[] | null {
  const n = text.length;
  if (n < 2 || text.charCodeAt(0) !== 0x28 /* ( */ || text.charCodeAt(n - 1) !== 0x29 /* ) */) return null;
  const out: (string | null)[] = [];
  let i = 1;
  for (;;) {
    const c = text.charCodeAt(i);
    if (c === 0x2c /* , */ || c === 0x29 /* ) */) {
      out.push(null);
    } else {
      let v = '';
      let quoted = false;
      while (i < n - 1 || quoted) {
        if (i >= n) return null;
        const q = text.charCodeAt(i);
        if (quoted) {
          if (q === 0x22 /* " */) {
            if (text.charCodeAt(i + 1) === 0x22) {
              v += '"';
              i += 2;
            } else {
              quoted = false;
              i++;
            }
          } else if (q === 0x5c /* \ */) {
            v += text.charAt(i + 1);
            i += 2;
          } else {
            v += text.charAt(i);
            i++;
          }
        } else if (q === 0x22) {
          quoted = true;
          i++;
        } else if (q === 0x2c || q === 0x29) {
          break;
        } else if (q === 0x5c) {
          v += text.charAt(i + 1);
          i += 2;
        } else {
          v += text.charAt(i);
          i++;
        }
      }
      out.push(v);
    }
    const sep = text.charCodeAt(i);
    i++;
    if (sep === 0x29) return i === n ? out : null;
    if (sep !== 0x2c) return null;
  }
}

/** An hstore's text output ("\"a\"=>\"1\", \"b\"=>NULL") → its pairs, null for a NULL value; null when malformed. */
export function parseHstoreText(text: string): [string, string | null][] | null {
  const out: [string, string | null][] = [];
  const n = text.length;
  let i = 0;
  const quoted = (): string | null => {
    if (text.charCodeAt(i) !== 0x22) return null;
    i++;
    let v = '';
    for (;;) {
      if (i >= n) return null;
      const c = text.charCodeAt(i);
      if (c === 0x5c) {
        v += text.charAt(i + 1);
        i += 2;
      } else if (c === 0x22) {
        i++;
        return v;
      } else {
        v += text.charAt(i);
        i++;
      }
    }
  };
  while (i < n) {
    const key = quoted();
    if (key === null || text.slice(i, i + 2) !== '=>') return null;
    i += 2;
    let value: string | null;
    if (text.startsWith('NULL', i)) {
      value = null;
      i += 4;
    } else {
      value = quoted();
      if (value === null) return null;
    }
    out.push([key, value]);
    if (i === n) break;
    if (text.slice(i, i + 2) !== ', ') return null;
    i += 2;
  }
  return out;
}

/**
 * A `json` value's text → the JSON `to_jsonb` makes of it (it parses json into jsonb): duplicate
 * keys keep the last value, numbers are written as numeric writes them, strings and insignificant
 * whitespace are normalised. Null when the text is not JSON.
 */
export function jsonToJsonb(text: string): string | null {
  let i = 0;
  const n = text.length;
  const ws = () => {
    for (;;) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) i++;
      else return;
    }
  };
  const str = (): string | null => {
    const from = i;
    i++;
    for (;;) {
      if (i >= n) return null;
      const c = text.charCodeAt(i);
      if (c === 0x5c) i += 2;
      else if (c === 0x22) {
        i++;
        break;
      } else i++;
    }
    try {
      return JSON.parse(text.slice(from, i)) as string;
    } catch {
      return null;
    }
  };
  const value = (): string | null => {
    ws();
    const c = text.charCodeAt(i);
    if (c === 0x7b /* { */) {
      i++;
      const entries = new Map<string, string>();
      ws();
      if (text.charCodeAt(i) === 0x7d) {
        i++;
        return '{}';
      }
      for (;;) {
        ws();
        if (text.charCodeAt(i) !== 0x22) return null;
        const k = str();
        if (k === null) return null;
        ws();
        if (text.charCodeAt(i) !== 0x3a /* : */) return null;
        i++;
        const v = value();
        if (v === null) return null;
        entries.delete(k);
        entries.set(k, v);
        ws();
        const sep = text.charCodeAt(i);
        i++;
        if (sep === 0x7d) break;
        if (sep !== 0x2c) return null;
      }
      let out = '{';
      for (const [k, v] of entries) out += (out.length > 1 ? ',' : '') + JSON.stringify(k) + ':' + v;
      return out + '}';
    }
    if (c === 0x5b /* [ */) {
      i++;
      ws();
      if (text.charCodeAt(i) === 0x5d) {
        i++;
        return '[]';
      }
      let out = '[';
      for (;;) {
        const v = value();
        if (v === null) return null;
        out += (out.length > 1 ? ',' : '') + v;
        ws();
        const sep = text.charCodeAt(i);
        i++;
        if (sep === 0x5d) return out + ']';
        if (sep !== 0x2c) return null;
      }
    }
    if (c === 0x22) {
      const s = str();
      return s === null ? null : JSON.stringify(s);
    }
    for (const lit of ['true', 'false', 'null']) {
      if (text.startsWith(lit, i)) {
        i += lit.length;
        return lit;
      }
    }
    const m = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
    m.lastIndex = i;
    const num = m.exec(text);
    if (!num) return null;
    i += num[0].length;
    return decimalToJson(num[0]);
  };
  const out = value();
  ws();
  return out !== null && i === n ? out : null;
}
