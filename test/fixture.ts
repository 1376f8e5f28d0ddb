/**
 * Integration-test fixture: a real PostgreSQL and a real nats-server, a database migrated for the
 * relay, and ways to run the relay in-process or as a child process that can be SIGKILLed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, symlinkSync } from 'node:fs';
import { mkdtemp, writeFile, rm, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { connect as natsConnect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type JsMsg } from '@nats-io/jetstream';
import pg from 'pg';
import { LocalPostgres, type LocalPostgresOptions } from '../src/local/postgres.js';
import { LocalNats, type LocalNatsOptions } from '../src/local/nats.js';
import { loadConfig, type Config } from '../src/config/load.js';
import { migrate } from '../src/schema/migrate.js';
import { Relay, type RelayOptions } from '../src/relay/relay.js';
import { createLogger } from '../src/util/log.js';

export const ROOT = resolve(import.meta.dirname, '..');
export const CLI = join(ROOT, 'src', 'cli.ts');

export const BASE_TOML = `
[project]
name = "test-service"

[database]
type = "postgresql"
url = "\${DATABASE_URL}"

[observers]
backend = "nats"
nats_url = "\${NATS_URL}"

[[observers.publish]]
mutation = "create_order"
subject = "fraiseql.order.created"

[relay]
listen = "127.0.0.1:0"
retention = "24h"

[relay.stream]
name = "FRAISEQL"
subjects = ["fraiseql.>"]
`;

export interface StoredMessage {
  seq: number;
  subject: string;
  headers: Record<string, string>;
  body: Record<string, unknown>;
}

export interface EnvOptions {
  toml?: string;
  pg?: LocalPostgresOptions;
  nats?: LocalNatsOptions;
}

/** The database each test environment creates for the service. */
const APP_DB = 'app';

/**
 * What every test environment has, whatever its broker: a real PostgreSQL with the service's
 * database, a temporary folder with the service's fraiseql.toml, and the relay in this process
 * or as a child process.
 */
export abstract class ServiceEnv {
  protected constructor(
    readonly pg: LocalPostgres,
    readonly dir: string,
    readonly dbUrl: string,
    readonly configFile: string,
  ) {}

  /**
   * Starts PostgreSQL (beside the broker the subclass starts with `startBroker`), creates the
   * service's database and writes its configuration. Whatever started is stopped again when
   * something fails.
   */
  protected static async prepare<B extends { destroy(): Promise<void> }>(
    toml: string,
    pgOptions: LocalPostgresOptions | undefined,
    startBroker: () => Promise<B>,
  ): Promise<{ pgs: LocalPostgres; broker: B; dir: string; dbUrl: string; configFile: string }> {
    const [pgr, br] = await Promise.allSettled([LocalPostgres.start(pgOptions), startBroker()]);
    if (pgr.status === 'rejected' || br.status === 'rejected') {
      await Promise.all([pgr.status === 'fulfilled' && pgr.value.destroy(), br.status === 'fulfilled' && br.value.destroy()]);
      throw pgr.status === 'rejected' ? pgr.reason : (br as PromiseRejectedResult).reason;
    }
    const pgs = pgr.value;
    const broker = br.value;
    try {
      const dbUrl = await pgs.createDatabase(APP_DB);
      // `npm run test:matrix` says which major it meant to start: a wrong PG_BIN must not pass silently
      // (not when the test chose the binaries itself)
      const expected = pgOptions?.binDir === undefined ? process.env['TEST_PG_MAJOR'] : undefined;
      if (expected) {
        const v = (await pgs.query<{ v: string }>(`SELECT current_setting('server_version_num') AS v`, [], APP_DB)).rows[0]!.v;
        if (Math.floor(Number(v) / 10000) !== Number(expected))
          throw new Error(`TEST_PG_MAJOR=${expected}, but the server started is ${v}`);
      }
      const dir = await mkdtemp(join(tmpdir(), 'fraiseql-relay-test-'));
      const configFile = join(dir, 'fraiseql.toml');
      await writeFile(configFile, toml);
      return { pgs, broker, dir, dbUrl, configFile };
    } catch (err) {
      await Promise.all([pgs.destroy(), broker.destroy()]);
      throw err;
    }
  }

  /** DATABASE_URL as the relay is given it: `dbUrl` unless a test points the relay elsewhere (several hosts) */
  databaseUrl: string | undefined;

  /** The broker's variables for the configuration (NATS_URL, REDIS_URL). */
  protected abstract brokerEnv(): Record<string, string>;

  /** Stops the broker and drops what the subclass holds of it. */
  protected abstract destroyBroker(): Promise<void>;

  get env(): NodeJS.ProcessEnv {
    return { ...process.env, DATABASE_URL: this.databaseUrl ?? this.dbUrl, ...this.brokerEnv() };
  }

  config(): Config {
    return loadConfig(this.configFile, this.env);
  }

  async writeConfig(toml: string): Promise<void> {
    await writeFile(this.configFile, toml);
  }

  async migrate(): Promise<void> {
    await migrate(this.config(), createLogger('silent'));
  }

  /** A relay in this process (fast reconnects for tests). */
  async startRelay(opts: RelayOptions = {}, level = process.env['TEST_LOG_LEVEL'] ?? 'silent'): Promise<Relay> {
    const relay = new Relay(this.config(), createLogger(level), { backoffMinMs: 100, backoffMaxMs: 1000, publishTimeoutMs: 2000, ...opts });
    await relay.start();
    return relay;
  }

  /** `fraiseql-relay run` as a child process; its output goes to a log file in the temp dir. */
  spawnRelay(name = 'relay'): RelayProcess {
    return new RelayProcess(join(this.dir, `${name}.log`), ['run', '-c', this.configFile], this.env);
  }

  async sql<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, params: unknown[] = []): Promise<R[]> {
    return (await this.pg.query<R>(text, params, APP_DB)).rows;
  }

  /** Where the service database's WAL ends now (what has committed so far lies before it). */
  async walInsertLsn(): Promise<string> {
    return (await this.sql<{ lsn: string }>(`SELECT pg_current_wal_insert_lsn()::text AS lsn`))[0]!.lsn;
  }

  /** Whether the relay's slot is confirmed short of `lsn`: something committed before it is not done. */
  async slotConfirmedBefore(lsn: string): Promise<boolean> {
    const [r] = await this.sql<{ before: boolean }>(
      `SELECT confirmed_flush_lsn < $1::pg_lsn AS before FROM pg_replication_slots WHERE slot_name = $2`,
      [lsn, this.config().relay.slot],
    );
    return r!.before;
  }

  async destroy(): Promise<void> {
    await Promise.all([this.pg.destroy(), this.destroyBroker()]);
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** PostgreSQL and a nats-server with JetStream. */
export class TestEnv extends ServiceEnv {
  private constructor(
    pg: LocalPostgres,
    readonly nats: LocalNats,
    dir: string,
    dbUrl: string,
    configFile: string,
  ) {
    super(pg, dir, dbUrl, configFile);
  }

  static async create(opts: EnvOptions = {}): Promise<TestEnv> {
    const p = await ServiceEnv.prepare(opts.toml ?? BASE_TOML, opts.pg, () => LocalNats.start(opts.nats));
    return new TestEnv(p.pgs, p.broker, p.dir, p.dbUrl, p.configFile);
  }

  protected brokerEnv(): Record<string, string> {
    return { NATS_URL: this.nats.url };
  }

  protected destroyBroker(): Promise<void> {
    return this.nats.destroy();
  }

  async natsClient(): Promise<NatsConnection> {
    return natsConnect({ servers: this.nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 200 });
  }

  /** Number of messages stored in a stream (0 when it does not exist yet). */
  async streamCount(stream = 'FRAISEQL'): Promise<number> {
    const nc = await this.natsClient();
    try {
      const jsm = await jetstreamManager(nc);
      return (await jsm.streams.info(stream)).state.messages;
    } catch {
      return 0;
    } finally {
      await nc.close();
    }
  }

  async waitForStreamCount(n: number, timeoutMs = 60_000, stream = 'FRAISEQL'): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    let c = 0;
    while (Date.now() < deadline) {
      c = await this.streamCount(stream);
      if (c >= n) return c;
      await sleep(100);
    }
    throw new Error(`timed out: stream ${stream} holds ${c} of ${n} messages`);
  }

  /** Every message in the stream, in stream order. */
  async readStream(stream = 'FRAISEQL'): Promise<StoredMessage[]> {
    const nc = await this.natsClient();
    try {
      const jsm = await jetstreamManager(nc);
      const info = await jsm.streams.info(stream);
      const total = info.state.messages;
      const out: StoredMessage[] = [];
      if (total === 0) return out;
      const js = jetstream(nc);
      const consumer = await js.consumers.get(stream);
      const iter = await consumer.consume({ max_messages: 2000 });
      for await (const m of iter) {
        out.push(toStored(m));
        if (m.seq >= info.state.last_seq) break;
      }
      return out;
    } finally {
      await nc.close();
    }
  }
}

function toStored(m: JsMsg): StoredMessage {
  const headers: Record<string, string> = {};
  if (m.headers) for (const [k] of m.headers) headers[k] = m.headers.get(k);
  return { seq: m.seq, subject: m.subject, headers, body: m.json<Record<string, unknown>>() };
}

export class RelayProcess {
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;

  constructor(
    readonly logFile: string,
    args: string[],
    env: NodeJS.ProcessEnv,
  ) {
    this.child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], {
      cwd: ROOT,
      env: { ...env, LOG_LEVEL: env['LOG_LEVEL'] ?? 'info', NO_PRETTY: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const chunks: Buffer[] = [];
    this.child.stdout!.on('data', (b: Buffer) => chunks.push(b));
    this.child.stderr!.on('data', (b: Buffer) => chunks.push(b));
    this.exited = new Promise((r) =>
      this.child.on('exit', (code) => {
        void writeFile(this.logFile, Buffer.concat(chunks), { flag: 'a' }).finally(() => r(code));
      }),
    );
    this.output = () => Buffer.concat(chunks).toString('utf8');
  }

  readonly output: () => string;

  /** Resolves once the log shows a line containing `text`. */
  async waitForLog(text: string, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.output().includes(text)) return;
      if (this.child.exitCode !== null)
        throw new Error(`relay exited (${this.child.exitCode}) before logging "${text}":\n${this.output()}`);
      await sleep(50);
    }
    throw new Error(`timed out waiting for "${text}" in the relay log:\n${this.output().slice(-4000)}`);
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<number | null> {
    this.child.kill(signal);
    return this.exited;
  }
}

/** Runs the CLI to completion. */
export function runCli(
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
  cwd = ROOT,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolvePromise) => {
    const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], {
      cwd,
      env: { ...env, NO_PRETTY: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    child.on('exit', (code) => resolvePromise({ code, stdout, stderr }));
  });
}

/**
 * Polls `check` every 50 ms until it holds. After `timeoutMs` it fails naming `what`, with what
 * `detail()` says about the state then, when given.
 */
export async function until(
  what: string,
  check: () => Promise<boolean> | boolean,
  timeoutMs = 30_000,
  detail?: () => unknown,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail ? `: ${JSON.stringify(await detail())}` : ''}`);
    }
    await sleep(50);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export async function readText(path: string): Promise<string> {
  return readFile(path, 'utf8');
}

/** Polls a query until it returns rows (or times out, returning the last empty result). */
export async function waitForRows<R>(q: () => Promise<R[]>, timeoutMs = 10_000): Promise<R[]> {
  const deadline = Date.now() + timeoutMs;
  let rows = await q();
  while (rows.length === 0 && Date.now() < deadline) {
    await sleep(50);
    rows = await q();
  }
  return rows;
}

/**
 * The directory with initdb, pg_ctl and postgres of npm's PostgreSQL `major` (dev dependency
 * `embedded-pg<major>`, as `npm run test:matrix` uses them). The package's postinstall script
 * restores its library symlinks; npm may not have run it, so missing ones are made here.
 */
export function embeddedPostgresBin(major: number): string {
  const pkg = join(ROOT, 'node_modules', `embedded-pg${major}`);
  if (!existsSync(join(pkg, 'native', 'bin', 'postgres'))) {
    throw new Error(`PostgreSQL ${major}'s server binaries are not installed (${pkg}): run npm ci`);
  }
  const list = join(pkg, 'native', 'pg-symlinks.json');
  if (existsSync(list)) {
    for (const { source, target } of JSON.parse(readFileSync(list, 'utf8')) as { source: string; target: string }[]) {
      const to = join(pkg, target);
      if (!existsSync(to)) symlinkSync(relative(dirname(to), join(pkg, source)), to);
    }
  }
  return join(pkg, 'native', 'bin');
}

/** PostgreSQL 15.19+ only decodes with plugins listed in output_plugin_libraries. */
export async function allowWal2json(url: string): Promise<void> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const has = await c.query(`SELECT 1 FROM pg_settings WHERE name = 'output_plugin_libraries'`);
    if (has.rowCount === 0) return;
    await c.query(`ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', 'wal2json'`);
    await c.query(`SELECT pg_reload_conf()`);
  } finally {
    await c.end();
  }
  for (const until = Date.now() + 10_000; Date.now() < until; await sleep(50)) {
    const c2 = new pg.Client({ connectionString: url });
    await c2.connect();
    const r = await c2.query<{ s: string }>(`SELECT current_setting('output_plugin_libraries') AS s`).finally(() => c2.end());
    if (r.rows[0]!.s.includes('wal2json')) return;
  }
  throw new Error('output_plugin_libraries was not reloaded');
}
