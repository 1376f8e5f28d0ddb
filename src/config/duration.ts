/**
 * Durations ("500ms", "10s", "1h30m", "7d") and byte sizes (67108864, "64MiB", "16MB") as they
 * appear in fraiseql.toml, turned into plain numbers (milliseconds, bytes).
 */

const DURATION_UNITS: Record<string, number> = {
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

const DURATION_PART = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/y;

/** What a duration looks like, for error messages. */
export const DURATION_HINT = 'a duration such as "500ms", "30s", "10m", "1h30m", "24h" or "7d"';

/**
 * Parses a duration into milliseconds: one or more `<number><unit>` parts with the units
 * ms, s, m, h, d (e.g. "500ms", "10s", "1h30m", "1.5s"). Surrounding whitespace is ignored.
 * Throws an Error (message says what was expected) on anything else, including a bare number.
 */
export function parseDuration(s: string): number {
  const text = s.trim();
  if (text === '') throw new Error(`empty duration; expected ${DURATION_HINT}`);
  let total = 0;
  let pos = 0;
  DURATION_PART.lastIndex = 0;
  while (pos < text.length) {
    DURATION_PART.lastIndex = pos;
    const m = DURATION_PART.exec(text);
    if (!m) {
      const bare = /^\d+(?:\.\d+)?$/.test(text);
      throw new Error(
        bare ? `"${text}" has no unit; expected ${DURATION_HINT}` : `"${text}" is not a valid duration; expected ${DURATION_HINT}`,
      );
    }
    const [, amount, unit] = m;
    total += Number(amount) * (DURATION_UNITS[unit ?? ''] ?? Number.NaN);
    pos = DURATION_PART.lastIndex;
  }
  const ms = Math.round(total);
  if (!Number.isSafeInteger(ms)) throw new Error(`"${text}" is too long a duration`);
  return ms;
}

/** Milliseconds as a short duration for messages: "60s", "1m30s", "250ms". */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0s';
  let rest = ms;
  let out = '';
  for (const [unit, size] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1_000],
    ['ms', 1],
  ] as const) {
    const n = Math.floor(rest / size);
    if (n > 0) {
      out += `${n}${unit}`;
      rest -= n * size;
    }
  }
  return out;
}

const SIZE_UNITS: Record<string, number> = {
  b: 1,
  kb: 1_000,
  mb: 1_000_000,
  gb: 1_000_000_000,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
};

/** What a byte size looks like, for error messages. */
export const SIZE_HINT = 'a number of bytes or a size such as "512KiB", "64MiB", "16MB" or "1GiB"';

/**
 * Parses a byte size: a non-negative integer, or a string `<number><unit>` with the units
 * B, KB, MB, GB (powers of 1000) and KiB, MiB, GiB (powers of 1024), case-insensitive,
 * optionally separated by a space ("64MiB", "16 MB", "1.5GiB"). Returns whole bytes.
 */
export function parseByteSize(v: string | number): number {
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v) || v < 0) throw new Error(`${v} is not a whole number of bytes`);
    return v;
  }
  const m = /^(\d+(?:\.\d+)?)\s*([A-Za-z]*)$/.exec(v.trim());
  const factor = m ? SIZE_UNITS[(m[2] ?? '').toLowerCase() || 'b'] : undefined;
  if (!m || factor === undefined) throw new Error(`"${v}" is not a valid size; expected ${SIZE_HINT}`);
  const bytes = Math.round(Number(m[1]) * factor);
  if (!Number.isSafeInteger(bytes)) throw new Error(`"${v}" is too large`);
  return bytes;
}
