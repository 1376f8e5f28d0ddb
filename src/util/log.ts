import { createRequire } from 'node:module';
import { hostname } from 'node:os';
import { VERSION } from './version.js';
import { pino, type Logger, type LevelWithSilent } from 'pino';

/** pino-pretty is a dev dependency: a production image (npm prune) logs plain JSON on a TTY too. */
function hasPinoPretty(): boolean {
  try {
    createRequire(import.meta.url).resolve('pino-pretty');
    return true;
  } catch {
    return false;
  }
}

export type { Logger };

/** Facts every log line of this process carries, set as they become known. */
export const logContext: { leader?: boolean } = {};

const REDACT = [
  'url',
  '*.url',
  'database_url',
  '*.database_url',
  'nats_url',
  '*.nats_url',
  'redis_url',
  '*.redis_url',
  'password',
  '*.password',
  'token',
  '*.token',
  'secret',
  '*.secret',
  'connectionString',
  '*.connectionString',
  'headers.authorization',
  '*.headers.authorization',
];

/**
 * pino JSON on stderr (fd 2, synchronous: no lost lines on a crash), so that stdout carries only
 * a command's data (`status --json`, `check --json`, …). Pretty output is the job of
 * `2>&1 | pino-pretty`; a TTY on stderr gets it automatically when pino-pretty is installed.
 */
export function createLogger(level: string = process.env['LOG_LEVEL'] ?? 'info'): Logger {
  const opts = {
    level: level as LevelWithSilent,
    base: { svc: 'fraiseql-relay', version: VERSION, pid: process.pid, hostname: hostname() },
    // each line says whether this process is the active relay (once that is known)
    mixin: () => (logContext.leader === undefined ? {} : { leader: logContext.leader }),
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: REDACT, censor: '[Redacted]' },
  };
  if (process.stderr.isTTY && process.env['NO_PRETTY'] === undefined && hasPinoPretty()) {
    return pino({ ...opts, transport: { target: 'pino-pretty', options: { colorize: true, destination: 2 } } });
  }
  return pino(opts, pino.destination({ fd: 2, sync: true }));
}
