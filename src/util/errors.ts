/**
 * The errors the relay raises on purpose, so that the code that decides (exit code, retry or
 * stop, dead letter) tests a class, never a message's text:
 *
 *   RelayError
 *   ├─ UsageError            the user must fix something: exit code 2, nothing was changed
 *   │  └─ ConfigError        (config/errors.ts) fraiseql.toml, with file, line and key
 *   ├─ SlotError             the replication slot is missing or unusable: retrying cannot help until it is fixed
 *   │  └─ SlotLostError      the slot was invalidated (wal_status = lost): the relay must not go on
 *   ├─ StreamMissingError    no JetStream stream captures a subject
 *   ├─ PublishFailedError    a publish failed for a reason of NATS: the session reconnects
 *   └─ PublishRefusedError   JetStream answered a publish with an error
 */
import { parsePgUrl } from './pgurl.js';

export class RelayError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** An error the user must fix (configuration, usage, server settings): exit code 2, nothing was changed. */
export class UsageError extends RelayError {
  readonly exitCode = 2;
}

/** The replication slot is missing or unusable: retrying will not help until it is fixed. */
export class SlotError extends RelayError {}

/** The slot was invalidated (wal_status = lost): events may be missing, so the relay must not go on. */
export class SlotLostError extends SlotError {}

/** No JetStream stream captures `subject` (a publish got 503 no responders, or a lookup found none). */
export class StreamMissingError extends RelayError {
  constructor(
    readonly subject: string,
    message = `no JetStream stream captures subject ${subject}`,
  ) {
    super(message);
  }
}

/** A publish failed in a way that ends the replication session (NATS, not PostgreSQL, is the cause). */
export class PublishFailedError extends RelayError {}

/** JetStream answered a publish with an error; `code` is its `err_code` (e.g. 10071 wrong last sequence). */
export class PublishRefusedError extends RelayError {
  constructor(
    readonly subject: string,
    readonly code: number | null,
    readonly description: string,
  ) {
    super(`JetStream error ${code ?? '?'}: ${description}`);
  }
}

/** `host:port/database` of a PostgreSQL URL, for messages (no user, no password). */
export function pgWhere(url: string): string {
  try {
    // several hosts (libpq's `host1:port1,host2:port2`): every one of them
    const parsed = parsePgUrl(url);
    if (parsed && parsed.hosts.length > 1) {
      return `${parsed.hosts.map((h) => h.label).join(',')}${parsed.path.length > 1 ? parsed.path : ''}`;
    }
    const u = new URL(url);
    return `${u.hostname || 'localhost'}${u.port ? ':' + u.port : ''}${u.pathname && u.pathname !== '/' ? u.pathname : ''}`;
  } catch {
    return 'the configured server';
  }
}

/**
 * A failed PostgreSQL connection, said with where and what to do; the original error is its
 * cause and its SQLSTATE stays on `code`.
 */
export function postgresConnectError(err: unknown, url: string): Error {
  const e = err as { code?: string; message?: string };
  const code = e.code;
  const hint =
    code === 'ENOTFOUND' || code === 'EAI_AGAIN'
      ? 'the host name does not resolve: check the host in [database] url (DATABASE_URL)'
      : code === 'ECONNREFUSED'
        ? 'nothing accepts connections there: is PostgreSQL running, and are the host and port in [database] url right?'
        : code === 'ETIMEDOUT'
          ? 'the connection timed out: is the host reachable (network, firewall)?'
          : code === '28P01' || code === '28000'
            ? 'PostgreSQL refused the credentials: check the user and password in [database] url (DATABASE_URL)'
            : code === '3D000'
              ? 'the database does not exist: check the database name in [database] url'
              : null;
  const out = new Error(
    `PostgreSQL at ${pgWhere(url)}: ${errorMessage(err)}${hint ? ` (${hint})` : ''}${tlsHint(err, '[relay] database_ca_file')}`,
    {
      cause: err,
    },
  );
  if (code !== undefined) (out as Error & { code?: string }).code = code;
  return out;
}

/** A failed NATS connection, said with where and what to do. */
export function natsConnectError(err: unknown, servers: readonly string[]): Error {
  const msg = errorMessage(err);
  const name = (err as { name?: string } | null)?.name ?? '';
  const code = (err as { code?: string } | null)?.code;
  const hint = /Authorization Violation|AuthorizationError/i.test(`${name} ${msg}`)
    ? "the server refused this relay's credentials: check [relay.nats] (creds_file, nkey_seed_file, token_env, user_env and password_env)"
    : /ENOTFOUND|EAI_AGAIN/.test(`${code ?? ''} ${msg}`)
      ? 'the host name does not resolve: check [observers] nats_url (NATS_URL)'
      : /ECONNREFUSED|CONNECTION_REFUSED/i.test(`${code ?? ''} ${msg}`)
        ? 'nothing accepts connections there: is nats-server running, and is [observers] nats_url right?'
        : null;
  return new Error(
    `NATS at ${servers.map(redactUrl).join(',')}: ${msg}${hint ? ` (${hint})` : ''}${tlsHint(err, '[relay.nats] ca_file')}`,
    {
      cause: err,
    },
  );
}

/** Hides the password (and any token-looking query parameter) of a connection URL. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    for (const k of [...u.searchParams.keys()]) {
      if (/pass|secret|token|key/i.test(k)) u.searchParams.set(k, '***');
    }
    return u.toString();
  } catch {
    return url.replace(/\/\/([^:/@]+):[^@]*@/, '//$1:***@');
  }
}

/** Message of an unknown thrown value, with secrets in URLs redacted. */
export function errorMessage(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return msg.replace(/(\w+:\/\/[^:/@\s]+):[^@\s]*@/g, '$1:***@');
}

const UNTRUSTED =
  /unable to verify the first certificate|self[- ]signed certificate|unable to get (local )?issuer certificate|certificate has expired|Hostname\/IP does not match/i;

/**
 * A hint for a TLS failure to verify the server's certificate: which key to set. Empty when the
 * error is something else.
 */
export function tlsHint(err: unknown, caKey: string): string {
  let e: unknown = err;
  for (let i = 0; i < 3 && e; i++) {
    const msg = e instanceof Error ? e.message : typeof e === 'string' ? e : '';
    if (UNTRUSTED.test(msg)) {
      return /Hostname\/IP does not match|expired/i.test(msg)
        ? " (the server certificate does not match the host name, or has expired: fix the certificate or the URL's host)"
        : ` (the server's TLS certificate is not trusted: set ${caKey} to the CA bundle that signed it)`;
    }
    e = e instanceof Error ? e.cause : undefined;
  }
  return '';
}
