import pg from 'pg';
import { errorMessage, pgWhere, postgresConnectError, UsageError } from './errors.js';
import { parsePgUrl, type TargetSessionAttrs } from './pgurl.js';

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

/** One server of the database URL: its own single-host URL, as node-postgres reads it. */
interface DbTarget {
  /** `host:port`, for messages */
  label: string;
  host: string | undefined;
  port: number | undefined;
  connectionString: string;
}

/**
 * What connectionConfig() returns: node-postgres' settings for the first server, plus every server
 * of the URL and the kind of server wanted, which {@link DbClient} reads when it connects. `Client`
 * makes a `pg.Pool` built from it use DbClient for each of its connections.
 */
export type DbConfig = pg.ClientConfig & {
  Client: typeof DbClient;
  dbTargets: DbTarget[];
  targetSessionAttrs: TargetSessionAttrs;
};

/**
 * The settings of every PostgreSQL connection the relay opens, from the database URL. Use them
 * with {@link DbClient} (or `connect()`), or spread them into a `pg.Pool`: a plain `pg.Client`
 * would only ever reach the URL's first host.
 */
export function connectionConfig(url: string, extra: pg.ClientConfig = {}): DbConfig {
  let parsed;
  try {
    parsed = parsePgUrl(url);
  } catch (err) {
    throw new UsageError(`[database] url: ${(err as Error).message}`);
  }
  const single = (u: string) => withCaFile(withDbnameInPath(u));
  const targets: DbTarget[] =
    parsed === null || parsed.hosts.length === 0
      ? [{ label: pgWhere(url), host: undefined, port: undefined, connectionString: single(parsed?.withoutHostChoice ?? url) }]
      : parsed.hosts.map((h) => ({ label: h.label, host: h.host, port: h.port, connectionString: single(parsed.forHost(h)) }));
  return {
    connectionString: targets[0]!.connectionString,
    application_name: 'fraiseql-relay',
    ...extra,
    Client: DbClient,
    dbTargets: targets,
    targetSessionAttrs: parsed?.targetSessionAttrs ?? 'any',
  };
}

/** What a server said about itself at startup (ParameterStatus, PostgreSQL 14 and later). */
interface ServerState {
  inHotStandby: boolean;
  readOnly: boolean;
}

/** Why a server is not the kind `target_session_attrs` asks for (libpq's rules), or null when it is. */
function refusal(want: TargetSessionAttrs, s: ServerState): string | null {
  switch (want) {
    case 'any':
      return null;
    case 'read-write':
      return s.inHotStandby ? 'it is a standby (in recovery)' : s.readOnly ? 'its sessions are read-only' : null;
    case 'read-only':
      return s.inHotStandby || s.readOnly ? null : 'it accepts writes';
    case 'primary':
      return s.inHotStandby ? 'it is a standby (in recovery)' : null;
    case 'standby':
    case 'prefer-standby':
      return s.inHotStandby ? null : 'it is not a standby';
  }
}

/** Records `in_hot_standby` and `default_transaction_read_only` as the server reports them. */
function watchServerState(client: pg.Client): { state: () => ServerState | null } {
  const seen = new Map<string, string>();
  (client.connection as unknown as NodeJS.EventEmitter).on('parameterStatus', (m: { parameterName: string; parameterValue: string }) =>
    seen.set(m.parameterName, m.parameterValue),
  );
  return {
    state: () =>
      seen.has('in_hot_standby')
        ? { inHotStandby: seen.get('in_hot_standby') === 'on', readOnly: seen.get('default_transaction_read_only') === 'on' }
        : null,
  };
}

/** The same, asked with a query (a server before 14 does not report them); simple protocol, so it also runs on a replication connection. */
async function askServerState(client: pg.Client): Promise<ServerState> {
  const r = await client.query<{ r: string; ro: string }>(
    `SELECT pg_catalog.pg_is_in_recovery()::text AS r, pg_catalog.current_setting('default_transaction_read_only') AS ro`,
  );
  return { inHotStandby: r.rows[0]?.r === 'true', readOnly: r.rows[0]?.ro === 'on' };
}

/** How long one server of several may take to answer before the next is tried, when nothing else says. */
const PROBE_TIMEOUT_MS = 10_000;

/**
 * A `pg.Client` that follows libpq's multi-host URLs: `connect()` tries the URL's servers in
 * order and connects to the first that answers and is the kind `target_session_attrs` asks for
 * (`read-write`, `primary`: not a standby; `any`: the first that answers), as libpq does. With
 * several servers each is first asked with a short plain connection; the kind is checked again on
 * the connection itself, so a server that changed in between is refused, never used. A URL with
 * one host and no `target_session_attrs` connects exactly as `pg.Client` does.
 */
function ignoreSessionError(): void {}

export class DbClient extends pg.Client {
  private readonly targets: DbTarget[];
  private readonly want: TargetSessionAttrs;
  private readonly probeConfig: pg.ClientConfig;
  private readonly serverState: { state: () => ServerState | null };

  constructor(config: DbConfig | pg.ClientConfig | string = {}) {
    super(config);
    const c = typeof config === 'string' ? {} : (config as Partial<DbConfig>);
    this.targets = c.dbTargets ?? [];
    this.want = c.targetSessionAttrs ?? 'any';
    const {
      replication: _replication,
      dbTargets: _t,
      targetSessionAttrs: _a,
      Client: _c,
      ...rest
    } = c as DbConfig & { replication?: unknown };
    // its own application_name: a probe is not the connection (a leader lock's, say) that `status` looks for
    this.probeConfig = {
      ...rest,
      application_name: 'fraiseql-relay probe',
      connectionTimeoutMillis: c.connectionTimeoutMillis || PROBE_TIMEOUT_MS,
    };
    this.serverState = watchServerState(this);
    // The server may end a session at any time (a restart, pg_terminate_backend). node-postgres
    // emits 'error' when that happens while no query runs, and an 'error' without a listener
    // ends the process. A pool listens only while a client is idle, not while it is checked out
    // (the backfill holds one across chunks, a transaction between its statements), so every
    // connection listens from birth: the client is then not queryable, its next query rejects,
    // and a pool drops it on release. Listeners added by the caller still see the error.
    this.on('error', ignoreSessionError);
  }

  /** The server this client connected to (`host:port`), once connected. */
  server = '';
  /** end() was called: a connection still being chosen must not be opened after all */
  private ended = false;

  override end(): Promise<void>;
  override end(callback: (err: Error) => void): void;
  override end(callback?: (err: Error) => void): Promise<void> | void {
    this.ended = true;
    return callback ? super.end(callback) : super.end();
  }

  override connect(): Promise<pg.Client>;
  override connect(callback: (err: Error) => void): void;
  override connect(callback?: (err: Error) => void): Promise<pg.Client> | void {
    const done = this.connectTarget();
    if (!callback) return done;
    done.then(
      () => callback(undefined as unknown as Error),
      (err: unknown) => callback(err as Error),
    );
  }

  private async connectTarget(): Promise<pg.Client> {
    if (this.targets.length <= 1 && this.want === 'any') {
      this.server = this.targets[0]?.label ?? '';
      return super.connect();
    }
    const chosen = this.targets.length === 1 ? this.targets[0]! : await this.choose();
    // ended while the servers were asked (pg.Pool destroys the stream when its connectionTimeoutMillis passes)
    if (this.ended) throw new Error('Connection terminated');
    if ((this.connection as unknown as { stream?: { destroyed?: boolean } }).stream?.destroyed) throw new Error('timeout expired');
    // pg.Client connects to this.host and this.port (its connectionParameters hold the same, for its own use)
    const params = (this as unknown as { connectionParameters: { host?: string; port?: number } }).connectionParameters;
    if (chosen.host !== undefined) this.host = params.host = chosen.host;
    this.port = params.port = chosen.port ?? Number(pg.defaults.port ?? 5432);
    this.server = chosen.label;
    await super.connect();
    const state = this.serverState.state() ?? (await askServerState(this));
    const no = refusal(this.want, state);
    if (no !== null && this.want !== 'prefer-standby') {
      await this.end().catch(() => {});
      throw new Error(`the server at ${chosen.label} does not accept target_session_attrs=${this.want} sessions: ${no}`);
    }
    return this;
  }

  /** The first server that answers and is of the kind wanted (prefer-standby: else the first that answers). */
  private async choose(): Promise<DbTarget> {
    const failures: { label: string; why: string; code?: string }[] = [];
    let fallback: DbTarget | undefined;
    for (const t of this.targets) {
      const probe = new pg.Client({ ...this.probeConfig, connectionString: t.connectionString });
      probe.on('error', () => {});
      const seen = watchServerState(probe);
      let state: ServerState;
      try {
        await probe.connect();
        state = seen.state() ?? (await askServerState(probe));
      } catch (err) {
        failures.push({ label: t.label, why: errorMessage(err), code: (err as { code?: string }).code });
        continue;
      } finally {
        await probe.end().catch(() => {});
      }
      const no = refusal(this.want, state);
      if (no === null) return t;
      fallback ??= t;
      failures.push({ label: t.label, why: no });
    }
    if (this.want === 'prefer-standby' && fallback) return fallback;
    const codes = new Set(failures.map((f) => f.code));
    const err = new Error(
      `no server of the database URL accepts target_session_attrs=${this.want} sessions: ` +
        failures.map((f) => `${f.label}: ${f.why}`).join('; '),
    );
    // the same network error everywhere keeps its code (postgresConnectError's hints)
    const only = codes.size === 1 ? [...codes][0] : undefined;
    if (only !== undefined) (err as Error & { code?: string }).code = only;
    return Promise.reject(err);
  }
}

export async function connect(url: string, extra: pg.ClientConfig = {}): Promise<pg.Client> {
  const client = new DbClient(connectionConfig(url, extra));
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
