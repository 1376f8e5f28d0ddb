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
 *   └─ PublishRefusedError   JetStream answered a publish with an error
 */
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
