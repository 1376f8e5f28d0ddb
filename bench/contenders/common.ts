/**
 * Child-process side of the benchmark: arguments come as JSON in BENCH_ARGS, results go to
 * stdout as `READY …` / `DONE {json}` lines, SIGTERM asks for a clean stop.
 */
import { nowMs } from '../lib/util.js';

export function args<T>(): T {
  const raw = process.env['BENCH_ARGS'];
  if (!raw) throw new Error('BENCH_ARGS is not set');
  return JSON.parse(raw) as T;
}

export function say(line: string): void {
  process.stdout.write(`${line}\n`);
}

export function ready(): void {
  say(`READY ${JSON.stringify({ at: nowMs() })}`);
}

export function done(result: Record<string, unknown>): void {
  say(`DONE ${JSON.stringify(result)}`);
}

/** Resolves on SIGTERM/SIGINT. */
export const stopRequested: Promise<void> = new Promise((resolve) => {
  process.once('SIGTERM', () => resolve());
  process.once('SIGINT', () => resolve());
});

/** Runs `main`; any error is printed as `FAILED <message>` and exits 1. */
export function runMain(main: () => Promise<void>): void {
  main().then(
    () => process.exit(0),
    (err: unknown) => {
      say(`FAILED ${err instanceof Error ? err.message : String(err)}`.replace(/\n/g, ' '));
      process.exit(1);
    },
  );
}

/**
 * The minimal envelope the reference contenders publish: the outbox row's id, subject, payload
 * (raw jsonb text, not re-serialised) and creation time.
 */
export function minimalBody(id: string, subject: string, payload: string, createdAt: string): string {
  return `{"id":"${id}","subject":"${subject}","data":${payload},"occurred_at":"${createdAt}"}`;
}
