/**
 * The zod field builders the sections of fraiseql.toml are made of. Every field carries its own
 * error text, so an issue's message already says what was expected; `report.ts` adds file, line
 * and key. Values of secret keys (URLs) are never put into messages.
 */
import { z } from 'zod';
import { DURATION_HINT, formatDuration, parseByteSize, parseDuration, SIZE_HINT } from './duration.js';
import { checkPgName, checkSubject, isEnvName, isQualifiedIdentifier } from './names.js';

/** The message of a required key that is absent; report.ts turns it into an "add …" hint. */
export const MISSING = 'is required';

/** What an error callback reads of a zod issue. */
export interface RawIssue {
  input?: unknown;
}

/** A short description of a value for messages; strings are quoted unless secret. */
export function describeValue(v: unknown, secret = false): string {
  if (typeof v === 'string') {
    if (secret) return 'a string';
    const q = JSON.stringify(v);
    return q.length > 60 ? `${q.slice(0, 56)}…"` : q;
  }
  if (typeof v === 'number') return `the number ${v}`;
  if (typeof v === 'boolean') return String(v);
  if (v instanceof Date) return 'a date';
  if (Array.isArray(v)) return 'an array';
  if (v === null || v === undefined) return 'nothing';
  return 'a table';
}

export const expected =
  (what: string, secret = false) =>
  (iss: RawIssue): string =>
    iss.input === undefined ? MISSING : `must be ${what}, not ${describeValue(iss.input, secret)}`;

export const str = (what: string, secret = false) => z.string({ error: expected(what, secret) });

/** A string that must not be blank. */
export const text = (what: string, secret = false) =>
  str(what, secret).refine((s) => s.trim() !== '', { error: `must not be empty; expected ${what}` });

/** A string checked by one of names.ts's checks; the message quotes the value. */
export const checked = (what: string, check: (s: string) => string | undefined) =>
  str(what).superRefine((s, ctx) => {
    const problem = check(s);
    if (problem) ctx.addIssue({ code: 'custom', message: `${describeValue(s)} ${problem}`, input: s });
  });

export const int = (min: number) => {
  const err = expected(min === 1 ? 'a whole number of at least 1' : `a whole number of at least ${min}`);
  return z.int({ error: err }).min(min, { error: err });
};

/** A whole number from min to max. */
export const intRange = (min: number, max: number) => {
  const err = expected(`a whole number from ${min} to ${max}`);
  return z.int({ error: err }).min(min, { error: err }).max(max, { error: err });
};

export const bool = () => z.boolean({ error: expected('true or false') });

/** One of a few strings; any other value: an error listing them. */
export const oneOf = <const T extends readonly [string, ...string[]]>(what: string, values: T) =>
  z.enum(values, {
    error: (iss: RawIssue) =>
      iss.input === undefined
        ? MISSING
        : `${describeValue(iss.input)} is not a supported ${what}; allowed values: ${values.map((v) => `"${v}"`).join(', ')}`,
  });

/** A file path; load.ts resolves it relative to the directory of the configuration file. */
export const filePath = () =>
  text('a file path such as "certs/ca.pem"').refine((s) => !s.includes('\u0000'), {
    error: 'must not contain a NUL character',
  });

/**
 * The longest delay Node.js timers (setTimeout, setInterval) honour: 2^31-1 ms, about 24.8 days.
 * A longer one is not an error to Node: it prints a TimeoutOverflowWarning and fires after 1 ms.
 */
const TIMER_MAX_MS = 2 ** 31 - 1;

/** The longest duration NATS takes: an int64 of nanoseconds (2^63-1 ns, about 292 years), in whole ms. */
const NATS_DURATION_MAX_MS = Math.floor((2 ** 63 - 1) / 1e6);

/** The longest `[relay] retention`: 100 years, "keep them" in practice. */
const RETENTION_MAX_MS = 36_500 * 86_400_000;

/** Why a duration key has an upper limit, for its error message. */
export const DURATION_LIMITS = {
  /** waited for by a Node.js timer */
  timer: {
    max: TIMER_MAX_MS,
    why: `the longest wait a Node.js timer can honour (2^31-1 ms; Node.js would fire a longer one after 1 ms)`,
  },
  /** sent to NATS as nanoseconds */
  nats: {
    max: NATS_DURATION_MAX_MS,
    why: 'the longest duration NATS can hold (2^63-1 nanoseconds)',
  },
  retention: {
    max: RETENTION_MAX_MS,
    why: 'the longest retention the relay accepts (100 years: keep the rows, in practice)',
  },
} as const;

export interface DurationBounds {
  /** the value must be longer than zero; `zero` says why (what 0 would silently turn into) */
  positive?: { zero: string };
  /** the longest value, and why */
  limit?: { max: number; why: string };
}

export const duration = (bounds: DurationBounds = {}) =>
  z
    .string({
      error: (iss: RawIssue) =>
        typeof iss.input === 'number'
          ? `must be a duration with a unit such as "${iss.input}s" or "${iss.input}ms", not the bare number ${iss.input}`
          : expected(DURATION_HINT)(iss),
    })
    .transform((s, ctx) => {
      let ms: number;
      try {
        ms = parseDuration(s);
      } catch (e) {
        ctx.addIssue({ code: 'custom', message: e instanceof Error ? e.message : String(e), input: s });
        return z.NEVER;
      }
      if (bounds.positive && ms <= 0) {
        ctx.addIssue({ code: 'custom', message: `must be longer than zero${bounds.positive.zero}; expected ${DURATION_HINT}`, input: s });
        return z.NEVER;
      }
      const limit = bounds.limit;
      if (limit && ms > limit.max) {
        ctx.addIssue({
          code: 'custom',
          message: `${describeValue(s)} is longer than ${formatDuration(limit.max)}, ${limit.why}; use at most "${formatDuration(limit.max)}"`,
          input: s,
        });
        return z.NEVER;
      }
      return ms;
    });

/** A duration of at least 1 ms. */
export const positiveDuration = (limit?: DurationBounds['limit']) => duration({ positive: { zero: '' }, ...(limit && { limit }) });

export const byteSize = () =>
  z.unknown().transform((v, ctx) => {
    if (typeof v !== 'number' && typeof v !== 'string') {
      ctx.addIssue({ code: 'custom', message: `must be ${SIZE_HINT}, not ${describeValue(v)}`, input: v });
      return z.NEVER;
    }
    try {
      const bytes = parseByteSize(v);
      if (bytes >= 1) return bytes;
      ctx.addIssue({ code: 'custom', message: `must be at least 1 byte; expected ${SIZE_HINT}`, input: v });
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: e instanceof Error ? e.message : String(e), input: v });
    }
    return z.NEVER;
  });

export const subject = (wildcards: boolean) =>
  checked('a NATS subject such as "fraiseql.order.created"', (s) => {
    const p = checkSubject(s, wildcards);
    return p && `is not a valid NATS subject: it ${p}`;
  });

export const qualifiedName = (what: string, example: string) =>
  checked(`${what} such as ${example}`, (s) =>
    isQualifiedIdentifier(s)
      ? undefined
      : `is not a valid ${what}: use name or schema.name, each part letters, digits, "_" or "$" not starting ` +
        `with a digit, or a "double-quoted" identifier (e.g. ${example})`,
  );

export const envName = () =>
  checked('the name of an environment variable', (s) =>
    isEnvName(s) ? undefined : 'is not an environment variable name (letters, digits and "_", not starting with a digit)',
  );

export const pgName = (max = 63) => checked('a PostgreSQL name such as "fraiseql_relay"', (s) => checkPgName(s, max));

/** Entries that are accepted and ignored (FraiseQL's own settings). */
export function ignored<const K extends readonly string[]>(keys: K): { [P in K[number]]: z.ZodOptional<z.ZodUnknown> } {
  return Object.fromEntries(keys.map((k) => [k, z.unknown().optional()])) as {
    [P in K[number]]: z.ZodOptional<z.ZodUnknown>;
  };
}

/** The error option of a table; `what` shows how to write it. */
export const table = (what: string) => ({ error: expected(`a table (${what})`) });
/** The error option of an array of tables; `what` shows how to write one. */
export const arrayOfTables = (what: string) => ({ error: expected(`an array of tables (${what})`) });
