/**
 * The service name when fraiseql.toml has no `[project]` table (FraiseQL's own service files have
 * none): the name of the database the service connects to, as libpq resolves it from the URL.
 *
 *   1. the `dbname` query parameter, else the URL's path (`postgresql://host/orders?…` → `orders`);
 *   2. the URL names no database: PGDATABASE from the environment;
 *   3. neither: PostgreSQL's default database, the user's name: the `user` query parameter, else
 *      the URL's `user@`, else PGUSER from the environment.
 *
 * Nothing else: the operating-system user (libpq's last resort) differs between a laptop and a
 * container, so a URL with none of these is a configuration error asking for `[project] name`.
 * Percent-encoding is decoded; the name is kept as written (the default consumer name replaces
 * characters outside `[A-Za-z0-9_-]`).
 */
import { createHash } from 'node:crypto';
import type { ServiceNameSource } from './types.js';

interface UrlParts {
  user?: string;
  database?: string;
}

/** The user and database a `postgres://` / `postgresql://` URL names (query parameters win, as in libpq); undefined when it is not such a URL. */
function urlParts(url: string): UrlParts | undefined {
  const m = /^postgres(?:ql)?:\/\/(?:([^@/?#]*)@)?[^/?#]*(?:\/([^?#]*))?(?:\?([^#]*))?(?:#.*)?$/i.exec(url.trim());
  if (!m) return undefined;
  const [, userinfo, path, query] = m;
  const out: UrlParts = {};
  const user = decode(userinfo?.split(':')[0]);
  if (user) out.user = user;
  const database = decode(path);
  if (database) out.database = database;
  for (const pair of (query ?? '').split('&')) {
    const eq = pair.indexOf('=');
    if (eq < 0) continue;
    const key = decode(pair.slice(0, eq));
    const value = decode(pair.slice(eq + 1));
    if (!value) continue;
    if (key === 'dbname') out.database = value;
    else if (key === 'user') out.user = value;
  }
  return out;
}

function decode(s: string | undefined): string | undefined {
  if (s === undefined) return undefined;
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

export type DerivedServiceName = { name: string; source: Exclude<ServiceNameSource, 'project'> } | { problem: string };

/**
 * The service name derived from the database URL (after `${VAR}` interpolation); `where` names
 * the URL in messages (`[database] url` or `DATABASE_URL`).
 */
export function deriveServiceName(url: string, env: NodeJS.ProcessEnv, where: string): DerivedServiceName {
  const parts = urlParts(url);
  if (parts === undefined) {
    return {
      problem:
        `the service name cannot be derived from ${where}: it is not a postgresql:// URL; ` +
        'add [project] with name = "<service name>" (it names the durable consumers)',
    };
  }
  if (parts.database) return { name: parts.database, source: 'database' };
  const pgDatabase = env['PGDATABASE'];
  if (pgDatabase) return { name: pgDatabase, source: 'PGDATABASE' };
  if (parts.user) return { name: parts.user, source: 'user' };
  const pgUser = env['PGUSER'];
  if (pgUser) return { name: pgUser, source: 'PGUSER' };
  return {
    problem:
      `the service name cannot be derived from ${where}: the URL names no database and no user ` +
      '(and PGDATABASE and PGUSER are unset); name the database in the URL (postgresql://host/<database>) ' +
      'or add [project] with name = "<service name>" (it names the durable consumers)',
  };
}

/** Where a service name came from, for `check` and logs. */
export function describeServiceNameSource(source: ServiceNameSource, where: string): string {
  switch (source) {
    case 'project':
      return '[project] name';
    case 'database':
      return `the database name in ${where}`;
    case 'PGDATABASE':
      return `PGDATABASE (${where} names no database)`;
    case 'user':
      return `the user name in ${where} (it names no database, so PostgreSQL uses the one named after the user)`;
    case 'PGUSER':
      return `PGUSER (${where} names no database and no user, so PostgreSQL uses the database named after the user)`;
  }
}

/**
 * The name fraiseql-relay 0.1 gave every service's slot and publication. An installation from then
 * keeps it (schema/names.ts) until it is moved; nothing new is created under it by default.
 */
export const LEGACY_RELAY_NAME = 'fraiseql_relay';

/** The prefix of every derived slot and publication name. */
const PREFIX = 'fraiseql_relay';

/** The first 8 hex digits of the SHA-256 of `s`. */
const hash8 = (s: string): string => createHash('sha256').update(s, 'utf8').digest('hex').slice(0, 8);

/**
 * One part of a derived name as PostgreSQL allows it in a slot name: lower case, every run of
 * characters other than `a-z`, `0-9` and `_` replaced by one `_`, without leading or trailing `_`;
 * a part left empty (a name of only such characters) is the hash of the original.
 */
function namePart(s: string): string {
  const part = s
    .toLowerCase()
    .replace(/[^a-z0-9_]+/g, '_')
    .replace(/^_+|_+$/g, '');
  return part === '' ? hash8(s) : part;
}

/**
 * The default `[relay] slot` (max 63) or `publication` (max 56, for `_outbox` and `_tables`):
 * `fraiseql_relay_<service>`, or `fraiseql_relay_<service>_<database>` when `database` is given
 * (the service name came from `[project]`, which several databases of a cluster may share) and
 * differs from the service name. Each part as namePart makes it; a name longer than `max` is cut
 * to `max - 9` characters and ends in `_` and the first 8 hex digits of the SHA-256 of the whole name.
 */
export function defaultRelayName(service: string, database: string | null, max: number): string {
  const svc = namePart(service);
  const db = database === null ? null : namePart(database);
  const full = db === null || db === svc ? `${PREFIX}_${svc}` : `${PREFIX}_${svc}_${db}`;
  if (full.length <= max) return full;
  return `${full.slice(0, max - 9).replace(/_+$/, '')}_${hash8(full)}`;
}

/** The longest publication name: the relay creates `<publication>_outbox` and `<publication>_tables`. */
export const MAX_PUBLICATION_NAME = 63 - '_outbox'.length;

/**
 * The default slot and publication names of a service (see defaultRelayName): from the service
 * name alone when it is the database's name (no `[project]`), else from `[project] name` and the
 * name of the database `url` connects to, read the way deriveServiceName reads it. When that name
 * cannot be read (a `key=value` connection string, a URL with no database and no user) it is left
 * out. `from` says what the names came from in words, for `check`.
 */
export function deriveRelayNames(
  project: { name: string; source: ServiceNameSource },
  url: string,
  env: NodeJS.ProcessEnv,
  where: string,
): { slot: string; publication: string; from: string } {
  const names = (database: string | null) => ({
    slot: defaultRelayName(project.name, database, 63),
    publication: defaultRelayName(project.name, database, MAX_PUBLICATION_NAME),
  });
  if (project.source !== 'project') {
    return { ...names(null), from: `the service name "${project.name}", which is the database's name` };
  }
  const db = deriveServiceName(url, env, where);
  if ('problem' in db) {
    return {
      ...names(null),
      from:
        `the service name "${project.name}" ([project] name) alone: ${where} does not name the database, so the names do not ` +
        `include it; if other databases of this PostgreSQL cluster run the same service, set slot and publication under [relay]`,
    };
  }
  return {
    ...names(db.name),
    from:
      namePart(project.name) === namePart(db.name)
        ? `the service name "${project.name}" ([project] name), which is also the database's name`
        : `the service name "${project.name}" ([project] name) and the database name "${db.name}"`,
  };
}
