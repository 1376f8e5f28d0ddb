/**
 * Which database errors are worth retrying in place (the handler did nothing wrong) and which
 * are the handler's own failure (retried through redelivery, then dead-lettered).
 */
const TRANSIENT_STATES = new Set([
  '40001', // serialization_failure
  '40P01', // deadlock_detected
  '55P03', // lock_not_available
  '57P01', // admin_shutdown
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now
  '57014', // query_canceled (statement timeout, pg_cancel_backend)
  '53300', // too_many_connections
]);

function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

/**
 * The value given to PostgreSQL cannot be stored at all, so every retry fails alike: a character
 * the encoding cannot hold (a NUL in text or jsonb), or a value over a built-in limit (an index
 * entry too large).
 */
const UNSTORABLE_STATES = new Set([
  '22P05', // untranslatable_character (jsonb \u0000)
  '22021', // character_not_in_repertoire (a NUL byte, invalid UTF-8)
  '54000', // program_limit_exceeded (index row size exceeds the btree maximum)
]);

export function isUnstorable(err: unknown): boolean {
  const state = sqlState(err);
  return state !== undefined && UNSTORABLE_STATES.has(state);
}

export function isTransient(err: unknown): boolean {
  const state = sqlState(err);
  if (state === undefined) return true; // no SQLSTATE: the connection broke (ECONNREFUSED, terminated, timeout)
  return TRANSIENT_STATES.has(state) || state.startsWith('08') || state.startsWith('53');
}
