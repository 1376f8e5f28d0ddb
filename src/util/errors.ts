/** An error the user must fix (configuration, usage, server settings): exit code 2, nothing was changed. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
  readonly exitCode = 2;
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

const UNTRUSTED = /unable to verify the first certificate|self[- ]signed certificate|unable to get (local )?issuer certificate|certificate has expired|Hostname\/IP does not match/i;

/**
 * A hint for a TLS failure to verify the server's certificate: which key to set. Empty when the
 * error is something else.
 */
export function tlsHint(err: unknown, caKey: string): string {
  let e: unknown = err;
  for (let i = 0; i < 3 && e; i++) {
    const msg = e instanceof Error ? e.message : String(e);
    if (UNTRUSTED.test(msg)) {
      return /Hostname\/IP does not match|expired/i.test(msg)
        ? ' (the server certificate does not match the host name, or has expired: fix the certificate or the URL\'s host)'
        : ` (the server's TLS certificate is not trusted: set ${caKey} to the CA bundle that signed it)`;
    }
    e = e instanceof Error ? e.cause : undefined;
  }
  return '';
}
