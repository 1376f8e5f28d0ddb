import pg from 'pg';
import { postgresConnectError } from './errors.js';

/**
 * Type parsers that keep every value as the text PostgreSQL sent: jsonb is forwarded as
 * written, timestamps keep their microseconds. Per client, never the global registry.
 */
export const rawTypes = {
  getTypeParser: () => (value: string | Buffer) => (typeof value === 'string' ? value : value.toString('utf8')),
} as unknown as pg.CustomTypesConfig;

let caFile: string | undefined;

/** `[relay] database_ca_file`: every connection verifies the server against this CA bundle. */
export function setDatabaseCaFile(path: string | undefined): void {
  caFile = path;
}

/**
 * TLS follows the URL (`?sslmode=require|verify-ca|verify-full`, `sslrootcert=…`, as libpq); a
 * configured CA file is added as `sslrootcert` (with `sslmode=verify-full` unless the URL sets one).
 */
export function withCaFile(url: string, ca: string | undefined = caFile): string {
  if (!ca) return url;
  try {
    const u = new URL(url);
    if (!u.searchParams.has('sslrootcert')) u.searchParams.set('sslrootcert', ca);
    if (!u.searchParams.has('sslmode')) u.searchParams.set('sslmode', 'verify-full');
    return u.toString();
  } catch {
    return url;
  }
}

/**
 * A `?dbname=` query parameter names the database, as libpq reads it (it overrides the URL's
 * path); `pg` ignores it, so it is moved into the path.
 */
export function withDbnameInPath(url: string): string {
  try {
    const u = new URL(url);
    const db = u.searchParams.get('dbname');
    if (db === null) return url;
    u.searchParams.delete('dbname');
    u.pathname = '/' + encodeURIComponent(db);
    return u.toString();
  } catch {
    return url;
  }
}

export function connectionConfig(url: string, extra: pg.ClientConfig = {}): pg.ClientConfig {
  return { connectionString: withCaFile(withDbnameInPath(url)), application_name: 'fraiseql-relay', ...extra };
}

export async function connect(url: string, extra: pg.ClientConfig = {}): Promise<pg.Client> {
  const client = new pg.Client(connectionConfig(url, extra));
  // an 'error' after connect (server restart) must not crash the process; the next query fails instead
  client.on('error', () => {});
  try {
    await client.connect();
  } catch (err) {
    throw postgresConnectError(err, url);
  }
  return client;
}

/** Runs fn with a fresh connection and always closes it. */
export async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = await connect(url);
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => {});
  }
}

/**
 * A SQL string literal for statements that carry their values inline: the migration plan (printed
 * by `migrate --dry-run` and run as printed) and queries on a replication connection, which only
 * speaks the simple query protocol and so has no bind parameters. A value with a backslash is
 * written as an E'' literal, which reads the same whatever `standard_conforming_strings` is.
 */
export function quoteLiteral(value: string): string {
  if (value.includes('\0')) throw new Error('a SQL string literal cannot contain a NUL character');
  const quoted = value.replace(/'/g, "''");
  return value.includes('\\') ? `E'${quoted.replace(/\\/g, '\\\\')}'` : `'${quoted}'`;
}

export function quoteIdent(name: string): string {
  return '"' + name.replace(/"/g, '""') + '"';
}

/** `schema.name` or `name` → a safely quoted SQL name. */
export function quoteQualified(name: string): string {
  return splitQualified(name).map(quoteIdent).join('.');
}

export function splitQualified(name: string): string[] {
  const parts: string[] = [];
  let i = 0;
  while (i < name.length) {
    if (name[i] === '"') {
      let j = i + 1;
      let s = '';
      for (;;) {
        if (j >= name.length) throw new Error(`unterminated quoted identifier in ${name}`);
        if (name[j] === '"') {
          if (name[j + 1] === '"') {
            s += '"';
            j += 2;
            continue;
          }
          break;
        }
        s += name[j];
        j++;
      }
      parts.push(s);
      i = j + 1;
    } else {
      const dot = name.indexOf('.', i);
      const end = dot === -1 ? name.length : dot;
      parts.push(name.slice(i, end).toLowerCase());
      i = end;
    }
    if (name[i] === '.') i++;
  }
  return parts;
}

/** The server's `server_version_num` (e.g. 170002 for 17.2). */
export async function serverVersionNum(client: pg.Client): Promise<number> {
  return Number((await client.query<{ v: string }>(`SELECT current_setting('server_version_num') AS v`)).rows[0]?.v ?? 0);
}
