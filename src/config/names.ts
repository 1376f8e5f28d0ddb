/**
 * Checks for the names that appear in fraiseql.toml: SQL identifiers, NATS subjects, stream
 * and consumer names, environment variable names, `host:port`. Each check returns undefined
 * when the name is fine, or a sentence saying what is wrong and what a good one looks like.
 */

/** One part of a SQL identifier: unquoted, or double-quoted with `""` for a quote. */
const IDENT_PART = String.raw`(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"\u0000]|"")+")`;
const QUALIFIED_IDENT = new RegExp(`^${IDENT_PART}(?:\\.${IDENT_PART})?$`);

/** `name` or `schema.name`; each part `[A-Za-z_][A-Za-z0-9_$]*` or a double-quoted identifier. */
export function isQualifiedIdentifier(s: string): boolean {
  return QUALIFIED_IDENT.test(s);
}

const SCHEMA_QUALIFIED_IDENT = new RegExp(`^${IDENT_PART}\\.${IDENT_PART}$`);

/** `schema.name` (the schema is required); each part as in isQualifiedIdentifier. */
export function isSchemaQualifiedIdentifier(s: string): boolean {
  return SCHEMA_QUALIFIED_IDENT.test(s);
}

/** A GraphQL type name such as `Order`: letters, digits and "_", not starting with a digit. */
export function isGraphQLName(s: string): boolean {
  return /^[_A-Za-z][_0-9A-Za-z]*$/.test(s);
}

/** Names the relay creates in PostgreSQL (schema, slot, publication). */
const PG_NAME = /^[a-z_][a-z0-9_]*$/;

export function checkPgName(s: string, max = 63): string | undefined {
  if (!PG_NAME.test(s)) {
    return 'must start with a lower-case letter or "_" and contain only lower-case letters, digits and "_"';
  }
  if (s.length > max) return `is ${s.length} characters long; the limit here is ${max}`;
  return undefined;
}

/**
 * A NATS subject: non-empty tokens separated by ".", no whitespace. With `wildcards`, a token
 * may be `*` (one token) or `>` (the rest, last token only).
 */
export function checkSubject(s: string, wildcards: boolean): string | undefined {
  if (s === '') return 'is empty';
  if (/[\s\u0000-\u001f\u007f]/.test(s)) return 'contains whitespace or a control character';
  const tokens = s.split('.');
  if (tokens.some((t) => t === '')) return 'has an empty token (a leading, trailing or doubled ".")';
  for (const [i, t] of tokens.entries()) {
    if (!t.includes('*') && !t.includes('>')) continue;
    if (!wildcards) {
      return 'contains a wildcard ("*" or ">"), which only subscribe and stream subjects may use; publish to a concrete subject';
    }
    if (t !== '*' && t !== '>') return `has the token "${t}": a wildcard must be a whole token ("*" or ">")`;
    if (t === '>' && i !== tokens.length - 1) return 'has ">" before the last token; ">" may only be the last token';
  }
  return undefined;
}

/** JetStream stream names: no whitespace, ".", "*", ">", "/" or "\". */
export function checkStreamName(s: string): string | undefined {
  if (s === '') return 'is empty';
  if (/[\s.*>/\\\u0000-\u001f\u007f]/.test(s)) {
    return 'must not contain whitespace, ".", "*", ">", "/" or "\\"; use letters, digits, "_" and "-"';
  }
  return undefined;
}

/** Durable consumer names: the same restrictions as stream names. */
export function checkConsumerName(s: string): string | undefined {
  return checkStreamName(s);
}

/**
 * The default durable consumer name: `<project.name>-<subject>`, with every character outside
 * `[A-Za-z0-9_-]` replaced by `_` (so `fraiseql.order.created` becomes `fraiseql_order_created`).
 */
export function defaultConsumerName(projectName: string, subject: string): string {
  return `${projectName}-${subject}`.replace(/[^A-Za-z0-9_-]/g, '_');
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function isEnvName(s: string): boolean {
  return ENV_NAME.test(s);
}

/** `host:port`, `:port` or `[ipv6]:port`, port 0–65535. */
export function checkListen(s: string): string | undefined {
  const m = /^(\[[0-9A-Fa-f:.]+\]|[^\s:[\]]*):(\d{1,5})$/.exec(s);
  if (!m || Number(m[2]) > 65535) {
    return 'must be "host:port" (e.g. "0.0.0.0:9464", ":9464" or "[::]:9464")';
  }
  return undefined;
}

/** HTTP header names (RFC 9110 tokens). */
export function isHeaderName(s: string): boolean {
  return /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(s);
}
