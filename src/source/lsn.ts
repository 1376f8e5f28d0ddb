/**
 * LSN text form and PostgreSQL timestamps.
 *
 * An LSN is an unsigned 64-bit WAL position. PostgreSQL prints it as two upper-case hex
 * numbers without leading zeros, high 32 bits "/" low 32 bits (`%X/%X`), e.g. "0/16B3748".
 * Replication timestamps are signed 64-bit microseconds since 2000-01-01 00:00:00 UTC.
 */

import type { Lsn } from './types.js';

/** Milliseconds between the Unix epoch and the PostgreSQL epoch (2000-01-01T00:00:00Z). */
export const PG_EPOCH_OFFSET_MS = 946_684_800_000;

/** Microseconds between the Unix epoch and the PostgreSQL epoch. */
export const PG_EPOCH_OFFSET_MICROS = 946_684_800_000_000n;

/** Largest valid LSN (2^64 − 1), "FFFFFFFF/FFFFFFFF". */
export const MAX_LSN: Lsn = 0xffff_ffff_ffff_ffffn;

const LSN_RE = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;

/**
 * Parse PostgreSQL's textual LSN ("16/B374D848", case-insensitive, 1–8 hex digits per half).
 * Throws a `RangeError` on anything else (empty, whitespace, sign, missing slash, > 8 digits).
 */
export function parseLsn(text: string): Lsn {
  const m = LSN_RE.exec(text);
  if (m === null) {
    throw new RangeError(`invalid LSN ${JSON.stringify(text)}: expected "XXXXXXXX/XXXXXXXX" (hex)`);
  }
  const hi = Number.parseInt(m[1]!, 16);
  const lo = Number.parseInt(m[2]!, 16);
  return (BigInt(hi) << 32n) | BigInt(lo);
}

/** Format an LSN the way PostgreSQL does (`%X/%X`): upper-case hex, no zero padding. */
export function formatLsn(lsn: Lsn): string {
  if (lsn < 0n || lsn > MAX_LSN) {
    throw new RangeError(`LSN out of range: ${lsn}`);
  }
  const hi = Number(lsn >> 32n);
  const lo = Number(lsn & 0xffff_ffffn);
  return `${hi.toString(16).toUpperCase()}/${lo.toString(16).toUpperCase()}`;
}

/** Microseconds since 2000-01-01 → `Date` (sub-millisecond part truncated toward −∞). */
export function pgTimeToDate(micros: bigint): Date {
  const unixMicros = micros + PG_EPOCH_OFFSET_MICROS;
  return new Date(Number(floorDiv(unixMicros, 1000n)));
}

/**
 * Microseconds since 2000-01-01 → the form `to_jsonb` gives a timestamptz in a session with
 * TimeZone=UTC: ISO 8601 with the offset "+00:00" and the microseconds without trailing zeros,
 * e.g. `2024-05-01T12:34:56.789012+00:00`, `2024-05-01T12:34:56.5+00:00`,
 * `2024-05-01T12:34:56+00:00` (years before 1 AD as PostgreSQL writes them: `0044-03-15T…+00:00 BC`).
 * Throws `RangeError` outside the range of `Date` (this includes PostgreSQL's ±infinity timestamps).
 */
export function pgMicrosToIso(micros: bigint): string {
  const unixMicros = micros + PG_EPOCH_OFFSET_MICROS;
  const seconds = floorDiv(unixMicros, 1_000_000n);
  const frac = Number(unixMicros - seconds * 1_000_000n); // 0 … 999 999
  const d = new Date(Number(seconds) * 1000);
  const year = d.getUTCFullYear();
  if (Number.isNaN(year)) throw new RangeError(`timestamp out of range: ${micros} µs`);
  const fraction = frac === 0 ? '' : '.' + String(frac).padStart(6, '0').replace(/0+$/, '');
  return (
    `${pad(year > 0 ? year : 1 - year, 4)}-${pad(d.getUTCMonth() + 1, 2)}-${pad(d.getUTCDate(), 2)}` +
    `T${pad(d.getUTCHours(), 2)}:${pad(d.getUTCMinutes(), 2)}:${pad(d.getUTCSeconds(), 2)}${fraction}+00:00${year > 0 ? '' : ' BC'}`
  );
}

function pad(n: number, width: number): string {
  return String(n).padStart(width, '0');
}

/** Unix milliseconds (may be fractional, e.g. from `performance.timeOrigin + performance.now()`) → µs since 2000-01-01. */
export function unixMsToPgMicros(ms: number): bigint {
  return BigInt(Math.round(ms * 1000)) - PG_EPOCH_OFFSET_MICROS;
}

function floorDiv(a: bigint, b: bigint): bigint {
  const q = a / b;
  return a % b < 0n ? q - 1n : q;
}
