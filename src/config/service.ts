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
