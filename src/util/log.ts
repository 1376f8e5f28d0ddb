import { createRequire } from 'node:module';
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

const REDACT = [
  'url',
  '*.url',
  'database_url',
  '*.database_url',
  'nats_url',
  '*.nats_url',
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
 * pino JSON on stdout (synchronous: no lost lines on a crash). Pretty output is the job of
 * `| pino-pretty`; a TTY gets it automatically when pino-pretty is installed.
 */
export function createLogger(level: string = process.env['LOG_LEVEL'] ?? 'info'): Logger {
  const opts = {
    level: level as LevelWithSilent,
    base: { svc: 'fraiseql-relay' },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: REDACT, censor: '[Redacted]' },
  };
  if (process.stdout.isTTY && process.env['NO_PRETTY'] === undefined && hasPinoPretty()) {
    return pino({ ...opts, transport: { target: 'pino-pretty', options: { colorize: true } } });
  }
  return pino(opts);
}
