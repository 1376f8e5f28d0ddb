/** Full-jitter exponential backoff: a delay between min/2 and min·2^attempt, capped at max. */
export function backoffDelay(attempt: number, minMs: number, maxMs: number): number {
  const cap = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 16));
  return Math.round(minMs / 2 + Math.random() * (cap - minMs / 2));
}
