/** Conversions of PostgreSQL text output into JSON text, without lossy re-parsing. */

/**
 * `timestamptz` text as written with TimeZone=UTC and DateStyle=ISO
 * ("2026-11-22 10:00:00.123456+00") → RFC 3339 UTC ("2026-11-22T10:00:00.123456Z").
 * Microseconds are kept; other offsets are converted exactly.
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
    (n === 22 || text.charCodeAt(19) === 46) &&
    digitsAt(text, 20, n - 3)
  ) {
    const frac = n === 22 ? '.' : text.slice(19, n - 3);
    return text.slice(0, 10) + 'T' + text.slice(11, 19) + (frac + '000000').slice(0, 7) + 'Z';
  }
  const m = /^(\d{4,}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2})(\.\d+)?([+-]\d{2})(?::?(\d{2}))?(?::?(\d{2}))?$/.exec(text);
  if (!m) return text;
  const [, date, time, frac = '', oh, om = '00', os = '00'] = m;
  const fraction = (frac + '000000').slice(0, 7).padEnd(7, '0');
  const micros = fraction === '.000000' || fraction === '0000000' ? '.000000' : fraction;
  if (oh === '+00' && om === '00' && os === '00') return `${date}T${time}${micros}Z`;
  const sign = oh!.startsWith('-') ? -1 : 1;
  const offsetSec = sign * (Math.abs(Number(oh)) * 3600 + Number(om) * 60 + Number(os));
  const ms = Date.parse(`${date}T${time}Z`) - offsetSec * 1000;
  const iso = new Date(ms).toISOString(); // yyyy-mm-ddThh:mm:ss.sssZ
  return `${iso.slice(0, 19)}${micros}Z`;
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
