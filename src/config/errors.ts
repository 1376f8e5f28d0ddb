import { UsageError } from '../util/errors.js';

/** One thing wrong with a configuration file. */
export interface ConfigProblem {
  line?: number;
  column?: number;
  /** full key path, e.g. `relay.max_in_flight` or `observers.subscribe[0].handler` */
  key?: string;
  /** what is wrong and what to do, without the `file:line:` prefix */
  message: string;
}

/**
 * A configuration the relay cannot run with. `message` is the whole report, one problem per
 * line as `file:line:column: …` (line and column when known); `file`, `line`, `column` and
 * `key` describe the first problem, `problems` all of them. A UsageError, so the CLI exits 2.
 * Never contains the value of `database.url` or `observers.nats_url`.
 */
export class ConfigError extends UsageError {
  readonly file: string;
  readonly line?: number;
  readonly column?: number;
  readonly key?: string;
  readonly problems: readonly ConfigProblem[];

  /** `secrets`: values that must not appear in the message (they are replaced by `<redacted>`). */
  constructor(file: string, problems: readonly ConfigProblem[], secrets: readonly string[] = []) {
    const clean = problems.map((p) => ({ ...p, message: redact(p.message, secrets) }));
    super(clean.map((p) => formatProblem(file, p)).join('\n'));
    this.file = file;
    this.problems = clean;
    const first = clean[0];
    if (first?.line !== undefined) this.line = first.line;
    if (first?.column !== undefined) this.column = first.column;
    if (first?.key !== undefined) this.key = first.key;
  }
}

function formatProblem(file: string, p: ConfigProblem): string {
  let where = file;
  if (p.line !== undefined) {
    where += `:${p.line}`;
    if (p.column !== undefined) where += `:${p.column}`;
  }
  return `${where}: ${p.message}`;
}

/**
 * Removes secrets from a message: the given values, passwords in `scheme://user:password@`
 * URLs and libpq `password=…` settings.
 */
function redact(message: string, secrets: readonly string[] = []): string {
  let out = message;
  for (const s of secrets) if (s.length >= 4) out = out.replaceAll(s, '<redacted>');
  return out
    .replace(/([A-Za-z][A-Za-z0-9+.-]*:\/\/[^:/@\s"']*):[^@\s"']*@/g, '$1:***@')
    .replace(/(\bpassword\s*=\s*)(?:'[^']*'|[^\s"']+)/gi, '$1***');
}
