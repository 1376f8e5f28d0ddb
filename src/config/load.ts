/**
 * Reads fraiseql.toml into a validated Config (the keys are documented in README.md):
 *
 *   text ─ scan (lines, placeholders) ─ ${VAR} interpolation ─ smol-toml ─ zod ─ defaults ─ Config
 *
 * Every failure is one ConfigError listing all the problems found at that stage, each with
 * file, line (when known), key path and what to do.
 *
 * Two spellings of table rules are accepted:
 * - `[observers]` with `[[observers.rules]]` (and `[[observers.rules.actions]]`), next to
 *   `[[observers.publish]]` / `[[observers.subscribe]]`;
 * - FraiseQL's documented top-level `[[observers]]` array (with `[[observers.actions]]`, and an
 *   ignored `[observers.retry]`) when the file has no `[observers]` table. That form has no
 *   place for `backend` / `nats_url`: the backend is "nats" and the NATS URL comes from the
 *   environment variable NATS_URL, else FRAISEQL_NATS_URL (FraiseQL's own variable).
 *
 * FraiseQL's own service files have no `[project]`, and some no `[database]`: the service name is
 * then derived from the database URL (service.ts), and a file without `[database]` connects to
 * the environment variable DATABASE_URL.
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parse, TomlError } from 'smol-toml';
import { ConfigError, type ConfigProblem } from './errors.js';
import { interpolate, type Interpolation } from './interpolate.js';
import { formatKeyPath, OBSERVERS_IGNORED_KEYS } from './keys.js';
import { defaultConsumerName } from './names.js';
import { deriveRelayNames, deriveServiceName, describeServiceNameSource } from './service.js';
import { observersMixProblem } from './observers-mix.js';
import { issuesToProblems, sortByLine } from './report.js';
import { findLine, LineIndex, scanToml, type KeyPath, type ScanResult } from './scan.js';
import { configSchema, legacyConfigSchema, type ParsedConfig } from './schema.js';
import type { Config, NatsConfig, ObserversConfig, PublishRule, RelayConfig, SubscribeRule, TableRule } from './types.js';

export { ConfigError, type ConfigProblem } from './errors.js';
export { parseByteSize, parseDuration } from './duration.js';
export { defaultConsumerName } from './names.js';
export type {
  ChangeOperation,
  Config,
  ServiceNameSource,
  NatsConfig,
  ObserversConfig,
  PublishRule,
  RedisConfig,
  RelayConfig,
  RuleAction,
  StreamConfig,
  SubscribeRule,
  TableRule,
} from './types.js';

/** Reads and validates a configuration file. Throws ConfigError. */
export function loadConfig(path: string, env: NodeJS.ProcessEnv = process.env): Config {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT'
        ? 'the file does not exist'
        : code === 'EACCES'
          ? 'permission denied'
          : code === 'EISDIR'
            ? 'it is a directory'
            : e instanceof Error
              ? e.message
              : String(e);
    throw new ConfigError(path, [
      {
        message: `cannot read the configuration file: ${why}; ` + 'pass the right file with -c/--config or set FRAISEQL_RELAY_CONFIG',
      },
    ]);
  }
  return parseConfig(text, path, env);
}

/** Validates configuration text; `file` is used in messages and resolved into `Config.file`. */
export function parseConfig(text: string, file: string, env: NodeJS.ProcessEnv = process.env): Config {
  const source = text.startsWith('\uFEFF') ? text.slice(1) : text;
  const scan = scanToml(source);

  let interpolation = interpolate(source, scan, env);
  if (interpolation.problems.length > 0) throw new ConfigError(file, interpolation.problems);

  let raw: Record<string, unknown>;
  try {
    raw = parse(interpolation.text, { unsafeKeyBehaviour: 'throw' });
  } catch (e) {
    throw new ConfigError(file, [tomlProblem(e, source, interpolation, scan, file)], secretsIn(source));
  }
  // FraiseQL's observers.redis_url is the relay's own key with backend = "redis": interpolated then
  if (usesRedis(raw)) {
    interpolation = interpolate(source, scan, env, (key) => key.length === 2 && key[0] === 'observers' && key[1] === 'redis_url');
    if (interpolation.problems.length > 0) throw new ConfigError(file, interpolation.problems);
    raw = parse(interpolation.text, { unsafeKeyBehaviour: 'throw' });
  }

  const legacy = Array.isArray(raw['observers']);
  const legacyNatsUrl = env['NATS_URL'] || env['FRAISEQL_NATS_URL'] || undefined;
  // a file without [database] (FraiseQL's service files may have none) connects to DATABASE_URL
  const envDatabaseUrl = raw['database'] === undefined ? env['DATABASE_URL'] || undefined : undefined;
  const secrets = secretsOf(raw, legacy ? legacyNatsUrl : undefined, envDatabaseUrl);
  let parsed: Omit<ParsedConfig, 'observers'>;
  let observers: ParsedConfig['observers'];
  if (legacy) {
    const r = legacyConfigSchema.safeParse(raw);
    if (!r.success) throw new ConfigError(file, issuesToProblems(r.error.issues, scan, true), secrets);
    parsed = r.data;
    observers = { backend: 'nats', nats_url: legacyNatsUrl, publish: [], subscribe: [], rules: r.data.observers };
  } else {
    const r = configSchema.safeParse(raw);
    if (!r.success) throw new ConfigError(file, issuesToProblems(r.error.issues, scan, false), secrets);
    parsed = r.data;
    observers = r.data.observers;
  }

  const problems: ConfigProblem[] = [];
  const database = parsed.database ?? (envDatabaseUrl === undefined ? undefined : { type: 'postgresql' as const, url: envDatabaseUrl });
  if (database === undefined) {
    problems.push({
      key: 'database',
      message:
        'database: is required; add a [database] table with url = "${DATABASE_URL}" ' +
        '(or set the environment variable DATABASE_URL: a file without [database] connects to it)',
    });
  }
  const where = parsed.database === undefined ? 'DATABASE_URL' : '[database] url';
  const project = serviceName(parsed.project, database?.url, where, env, scan, problems);
  const config: Config = {
    file: resolve(file),
    project,
    database: { type: 'postgresql', url: database?.url ?? '' },
    observers: buildObservers(observers, project.name, legacy, scan, problems),
    relay: buildRelay(parsed.relay, dirname(resolve(file)), relayNames(parsed.relay, project, database?.url, where, env)),
    ignoredKeys: ignoredKeys(raw, legacy).filter((k) => !(k === 'observers.redis_url' && usesRedis(raw))),
  };
  if (problems.length > 0) throw new ConfigError(file, sortByLine(problems), secrets);
  return config;
}

/**
 * `[project] name`, else the name derived from the database URL (service.ts). When it cannot be
 * known the name is empty and a problem is recorded (a missing URL is reported by the caller).
 */
function serviceName(
  project: ParsedConfig['project'],
  url: string | undefined,
  where: string,
  env: NodeJS.ProcessEnv,
  scan: ScanResult,
  problems: ConfigProblem[],
): Config['project'] {
  if (project !== undefined) return { name: project.name, source: 'project', from: describeServiceNameSource('project', where) };
  const unknown: Config['project'] = { name: '', source: 'project', from: '' };
  if (url === undefined) return unknown;
  const derived = deriveServiceName(url, env, where);
  if ('problem' in derived) {
    problems.push(
      where === 'DATABASE_URL'
        ? { key: 'database', message: `database: ${derived.problem}` }
        : located(scan, ['database', 'url'], `database.url: ${derived.problem}`),
    );
    return unknown;
  }
  return { ...derived, from: describeServiceNameSource(derived.source, where) };
}

/** `[relay] slot` and `publication` as written, else derived from the service and the database (service.ts deriveRelayNames). */
function relayNames(
  relay: ParsedConfig['relay'],
  project: Config['project'],
  url: string | undefined,
  where: string,
  env: NodeJS.ProcessEnv,
): Pick<RelayConfig, 'slot' | 'publication' | 'derivedNames'> {
  const { slot, publication } = relay;
  if (slot !== undefined && publication !== undefined) return { slot, publication };
  // the service name or the URL is missing: that problem is reported already
  if (url === undefined || project.name === '') return { slot: slot ?? '', publication: publication ?? '' };
  const derived = deriveRelayNames(project, url, env, where);
  return {
    slot: slot ?? derived.slot,
    publication: publication ?? derived.publication,
    derivedNames: { slot: slot === undefined, publication: publication === undefined, from: derived.from },
  };
}

function buildObservers(
  o: ParsedConfig['observers'],
  projectName: string,
  legacy: boolean,
  scan: ScanResult,
  problems: ConfigProblem[],
): ObserversConfig {
  const publish: PublishRule[] = o.publish.map((p) => ({
    ...(p.mutation !== undefined && { mutation: p.mutation }),
    ...(p.entity !== undefined && { entity: p.entity }),
    ...(p.operation !== undefined && { operation: p.operation }),
    subject: p.subject,
    ...(p.subscription_topic !== undefined && { subscription_topic: p.subscription_topic }),
    actions: p.actions,
  }));

  const byConsumer = new Map<string, number>();
  const subscribe: SubscribeRule[] = o.subscribe.map((s, i) => {
    const consumer = s.consumer ?? defaultConsumerName(projectName, s.subject);
    const first = byConsumer.get(consumer);
    if (first !== undefined) {
      const path: KeyPath = ['observers', 'subscribe', i, s.consumer === undefined ? 'subject' : 'consumer'];
      problems.push(
        located(
          scan,
          path,
          `observers.subscribe[${i}]: durable consumer "${consumer}" is also used by observers.subscribe[${first}] ` +
            `(each subscription needs its own consumer); set a distinct consumer = "…" on one of them`,
        ),
      );
    } else {
      byConsumer.set(consumer, i);
    }
    return {
      subject: s.subject,
      handler: s.handler,
      consumer,
      max_deliver: s.max_deliver,
      ack_wait: s.ack_wait,
      backoff: s.backoff,
      concurrency: s.concurrency,
      batch: s.batch,
      max_wait: s.max_wait,
      order_by:
        s.order_by === undefined || s.order_by === false
          ? null
          : s.order_by === true
            ? { path: ['id'] }
            : s.order_by.startsWith('$.')
              ? { path: s.order_by.slice(2).split('.') }
              : { header: s.order_by },
    };
  });

  const rules: TableRule[] = o.rules.map((r) => ({
    table: r.table,
    event: r.event,
    ...(r.subject !== undefined && { subject: r.subject }),
    before_image: r.before_image,
    ...(r.where !== undefined && { where: r.where.trim() }),
    ...(r.columns !== undefined && { columns: r.columns }),
    ...(r.changed !== undefined && { changed: r.changed }),
    actions: r.actions,
  }));

  const needsNats = publish.length > 0 || subscribe.length > 0 || rules.some((r) => r.subject !== undefined);
  if (o.backend === 'nats' && o.nats_url === undefined && needsNats) {
    problems.push(
      legacy
        ? located(
            scan,
            ['observers'],
            'observers: the rules publish to NATS but no NATS URL is known; the top-level [[observers]] form has no ' +
              'nats_url key, so export NATS_URL (or FRAISEQL_NATS_URL), or switch to an [observers] table with ' +
              'nats_url = "${NATS_URL}" and the rules in [[observers.rules]]',
          )
        : located(
            scan,
            ['observers', 'nats_url'],
            'observers.nats_url is required when backend = "nats" and anything is published or subscribed; ' +
              'add nats_url = "${NATS_URL}" under [observers]',
          ),
    );
  }

  const out: ObserversConfig = { backend: o.backend, publish, subscribe, rules };
  if (o.nats_url !== undefined) out.nats_url = o.nats_url;
  if (o.backend === 'redis') {
    const url = o.redis_url;
    if (url === undefined) {
      if (needsNats)
        problems.push(
          located(
            scan,
            ['observers', 'backend'],
            'observers.redis_url is required when backend = "redis" and anything is published or subscribed; ' +
              'add redis_url = "${REDIS_URL}" under [observers]',
          ),
        );
    } else if (typeof url !== 'string' || !/^rediss?:\/\/\S*$/.test(url)) {
      problems.push(
        located(
          scan,
          ['observers', 'redis_url'],
          'observers.redis_url must be a Redis URL such as "redis://localhost:6379" (or "rediss://…" for TLS)',
        ),
      );
    } else {
      out.redis_url = url;
    }
  }
  return out;
}

/** The relay settings, with every file path made absolute (relative to the configuration file's directory). */
function buildRelay(r: ParsedConfig['relay'], dir: string, names: Pick<RelayConfig, 'slot' | 'publication' | 'derivedNames'>): RelayConfig {
  const path = (p: string | undefined): string | undefined => (p === undefined ? undefined : resolve(dir, p));
  const { schema_file, database_ca_file, change_log, nats, slot: _slot, publication: _publication, ...rest } = r;
  const out: RelayConfig = { ...rest, slot: names.slot, publication: names.publication, nats: buildNats(nats, path) };
  if (names.derivedNames !== undefined) out.derivedNames = names.derivedNames;
  if (change_log !== undefined) out.change_log = change_log;
  const schemaFile = path(schema_file);
  if (schemaFile !== undefined) out.schema_file = schemaFile;
  const caFile = path(database_ca_file);
  if (caFile !== undefined) out.database_ca_file = caFile;
  return out;
}

function buildNats(n: ParsedConfig['relay']['nats'], path: (p: string | undefined) => string | undefined): NatsConfig {
  const out: NatsConfig = { tls: n.tls };
  for (const key of ['ca_file', 'cert_file', 'key_file', 'creds_file', 'nkey_seed_file'] as const) {
    const p = path(n[key]);
    if (p !== undefined) out[key] = p;
  }
  for (const key of ['token_env', 'user_env', 'password_env'] as const) {
    const v = n[key];
    if (v !== undefined) out[key] = v;
  }
  return out;
}

function located(scan: ScanResult, path: KeyPath, message: string): ConfigProblem {
  const problem: ConfigProblem = { message, key: formatKeyPath(path) };
  const line = findLine(scan, path);
  if (line !== undefined) problem.line = line;
  return problem;
}

function isTable(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

/** FraiseQL's own keys present where the relay looks: reported, not used. */
function ignoredKeys(raw: Record<string, unknown>, legacy: boolean): string[] {
  const out: string[] = [];
  const observers = raw['observers'];
  if (legacy && Array.isArray(observers)) {
    observers.forEach((r: unknown, i) => {
      if (isTable(r) && r['retry'] !== undefined) out.push(`observers[${i}].retry`);
    });
  } else if (isTable(observers)) {
    for (const k of OBSERVERS_IGNORED_KEYS) if (observers[k] !== undefined) out.push(`observers.${k}`);
    const rules = observers['rules'];
    if (Array.isArray(rules)) {
      rules.forEach((r: unknown, i) => {
        if (isTable(r) && r['retry'] !== undefined) out.push(`observers.rules[${i}].retry`);
      });
    }
  }
  return out;
}

/** `[observers] backend = "redis"` (observers.redis_url is then read, not ignored). */
function usesRedis(raw: Record<string, unknown>): boolean {
  const o = raw['observers'];
  return isTable(o) && o['backend'] === 'redis';
}

/** Values that must never appear in an error message. */
function secretsOf(raw: Record<string, unknown>, natsUrl: string | undefined, databaseUrl: string | undefined): string[] {
  const out: string[] = [];
  if (databaseUrl !== undefined) out.push(databaseUrl);
  const database = raw['database'];
  const observers = raw['observers'];
  if (isTable(database) && typeof database['url'] === 'string') out.push(database['url']);
  if (isTable(observers) && typeof observers['nats_url'] === 'string') out.push(observers['nats_url']);
  if (isTable(observers) && typeof observers['redis_url'] === 'string') out.push(observers['redis_url']);
  if (natsUrl !== undefined) out.push(natsUrl);
  return out;
}

/** Before parsing succeeded: the literal values of url / nats_url keys, as far as a regex sees them. */
function secretsIn(source: string): string[] {
  const out: string[] = [];
  for (const m of source.matchAll(/^\s*(?:url|nats_url|redis_url)\s*=\s*(?:"([^"\n]*)"|'([^'\n]*)')/gm)) {
    const v = m[1] ?? m[2];
    if (v && !/^\$\{[A-Za-z_][A-Za-z0-9_]*\}$/.test(v)) out.push(v);
  }
  return out;
}

/** A TOML syntax error, located in the original (not interpolated) text, with a caret. */
function tomlProblem(e: unknown, source: string, interpolation: Interpolation, scan: ScanResult, file: string): ConfigProblem {
  if (!(e instanceof TomlError)) {
    const what = e instanceof Error ? e.message : String(e);
    return observersMixProblem(scan, what) ?? { message: `invalid TOML: ${what}` };
  }
  const what = (e.message.replace(/^Invalid TOML document: /, '').split('\n\n')[0] ?? '').trim();
  const offset = new LineIndex(interpolation.text).offset(e.line, e.column);
  const { line, column } = new LineIndex(source).lineCol(interpolation.toOriginal(offset));
  const mix = observersMixProblem(scan, `${file}:${line}:${column}: ${what}`);
  if (mix) return mix;
  return { line, column, message: `invalid TOML: ${what}; ${tomlHint(what)}\n${codeBlock(source, line, column)}` };
}

function tomlHint(what: string): string {
  if (/redefine|already defined/.test(what)) {
    return 'each key and each [table] may appear only once; merge or remove the repeated one';
  }
  if (/invalid value/.test(what)) {
    return 'a value is a "quoted string", a number, true/false, a date, an [array] or an { inline = "table" }';
  }
  if (/unsafe property/.test(what)) return 'the keys __proto__ and constructor are not allowed';
  return 'fix the syntax at the caret (TOML reference: https://toml.io)';
}

/** The offending line between its neighbours, with a caret under the column (like smol-toml's). */
function codeBlock(source: string, line: number, column: number): string {
  const lines = source.split(/\r?\n/);
  const width = String(line + 1).length;
  const out: string[] = [];
  for (let n = line - 1; n <= line + 1; n++) {
    const l = lines[n - 1];
    if (l === undefined || (l === '' && n !== line)) continue;
    out.push(`  ${String(n).padEnd(width)} | ${l}`);
    if (n === line) out.push(`  ${' '.repeat(width)} | ${' '.repeat(Math.max(0, column - 1))}^`);
  }
  return out.join('\n');
}
