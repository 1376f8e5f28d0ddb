/**
 * A throwaway PostgreSQL server (wal_level=logical) in a temporary directory, for integration
 * tests, the benchmark and the `demo` command. Never touches a system cluster or port 5432.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import type { QueryResult, QueryResultRow } from 'pg';

import {
  childPids,
  findPostgresBin,
  isProcessAlive,
  MissingBinaryError,
  registerExitCleanup,
  requireCommand,
  runCommand,
  signalProcess,
  waitForProcessesGone,
} from './binaries.js';
import { getFreePort, waitForPortClosed } from './ports.js';

export interface LocalPostgresOptions {
  /** Extra server settings, passed as `-c key=value` (they override the defaults below). */
  settings?: Record<string, string>;
  /** `wal_sender_timeout`, e.g. `'5s'`. */
  walSenderTimeout?: string;
  /** `max_slot_wal_keep_size`, e.g. `'64MB'`. */
  maxSlotWalKeepSize?: string;
  /**
   * TLS: `ssl=on` with this server certificate and private key. Both are copied into the
   * server's directory, owned by the OS user PostgreSQL runs as, the key with mode 0600 (the
   * server refuses a key others can read). Clients choose whether to use it (`sslmode`).
   */
  ssl?: { certFile: string; keyFile: string };
  /** The directory with initdb, pg_ctl and postgres (default: findPostgresBin(), which reads PG_BIN). */
  binDir?: string;
}

export interface StandbyOptions {
  /** the physical slot created on the primary for the standby (`primary_slot_name`) */
  slot?: string;
  /** the standby's `application_name` on the primary, the name `synchronous_standby_names` lists */
  applicationName?: string;
  /** the database named in `primary_conninfo` (slot synchronization, PostgreSQL 17+, connects to it) */
  dbname?: string;
  /** extra settings of the standby (for example `sync_replication_slots`, `hot_standby_feedback`) */
  settings?: Record<string, string>;
}

/**
 * What a base backup leaves out of the copy (as pg_basebackup does): the lock and options files,
 * and the contents of the directories PostgreSQL rebuilds or fills again (WAL streams in from the
 * primary; replication slots are the primary's).
 */
const BACKUP_SKIPPED_FILES = new Set(['postmaster.pid', 'postmaster.opts', 'pg_internal.init', 'backup_label', 'tablespace_map']);
const BACKUP_EMPTIED_DIRS = new Set([
  'pg_wal',
  'pg_replslot',
  'pg_dynshmem',
  'pg_notify',
  'pg_serial',
  'pg_snapshots',
  'pg_stat_tmp',
  'pg_subtrans',
]);

export type PgStopMode = 'fast' | 'immediate';

/** The OS user PostgreSQL runs as when this process is root (PostgreSQL refuses to run as root). */
const PG_OS_USER = 'postgres';
const PG_CTL_TIMEOUT_S = 60;
const START_ATTEMPTS = 3;

interface OsUser {
  uid: number;
  gid: number;
}

let pgOsUser: Promise<OsUser> | undefined;

function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

const AS_ROOT = `because PostgreSQL refuses to run as root and this process is root`;

function lookupPgOsUser(): Promise<OsUser> {
  pgOsUser ??= (async () => {
    try {
      // the commands themselves first: a missing `id` or `runuser` is not a missing user
      const id = requireCommand('id', `to look up the OS user '${PG_OS_USER}' that PostgreSQL runs as, ${AS_ROOT}`, 'coreutils');
      requireCommand('runuser', `to run PostgreSQL as the OS user '${PG_OS_USER}', ${AS_ROOT}`, 'util-linux');
      const [uid, gid] = await Promise.all([runCommand(id, ['-u', PG_OS_USER]), runCommand(id, ['-g', PG_OS_USER])]);
      return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
    } catch (err) {
      pgOsUser = undefined;
      if (err instanceof MissingBinaryError) throw err;
      // `id` ran and said no: the user does not exist (exit status 1, "no such user")
      const code = (err as { exitCode?: number | null }).exitCode;
      if (code === null || code === undefined) {
        throw new Error(`could not look up the OS user '${PG_OS_USER}' (${AS_ROOT}): ${(err as Error).message}`, { cause: err });
      }
      throw new Error(
        `PostgreSQL refuses to run as root and this process is root, but the OS user '${PG_OS_USER}' ` +
          `does not exist. Create it (\`useradd --system --user-group --home-dir /var/lib/postgresql ${PG_OS_USER}\`, ` +
          'or `apt-get install -y postgresql` which creates it), or run the tests as a non-root user.',
        { cause: err },
      );
    }
  })();
  return pgOsUser;
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function tailLines(text: string, n: number): string {
  const lines = text.trimEnd().split('\n');
  return lines.slice(-n).join('\n');
}

function pgEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, LC_ALL: 'C', LANG: 'C' };
  for (const k of Object.keys(env)) {
    if (k.startsWith('PG')) delete env[k];
  }
  return env;
}

/** A throwaway PostgreSQL server. Create with `LocalPostgres.start()`; always `destroy()` it. */
export class LocalPostgres {
  /** Temporary directory holding `data/`, `log` and the unix socket. */
  readonly dir: string;
  /** The cluster's data directory (`<dir>/data`). */
  readonly dataDir: string;
  /** Server log (`<dir>/log`), appended to by every start. */
  readonly logFile: string;
  private readonly binDir: string;
  private readonly opts: LocalPostgresOptions;
  private portValue = 0;
  private running = false;
  private destroying: Promise<void> | undefined;
  private readonly unregisterCleanup: () => void;

  private constructor(dir: string, binDir: string, opts: LocalPostgresOptions) {
    this.dir = dir;
    this.dataDir = path.join(dir, 'data');
    this.logFile = path.join(dir, 'log');
    this.binDir = binDir;
    this.opts = opts;
    this.unregisterCleanup = registerExitCleanup(() => this.destroySync());
  }

  /**
   * Creates a new cluster in a temporary directory (`initdb`) and starts it on a free port of
   * 127.0.0.1 with `wal_level=logical`. Runs as the `postgres` OS user when this process is root.
   */
  static async start(opts: LocalPostgresOptions = {}): Promise<LocalPostgres> {
    return LocalPostgres.create(opts, async (server, owner, dir) => {
      await server
        .pgTool('initdb', ['-D', server.dataDir, '-U', 'postgres', '-A', 'trust', '--no-sync', '-E', 'UTF8', '--locale=C'])
        .catch((err: unknown) => {
          const hint = owner ? ` (initdb runs as OS user '${PG_OS_USER}': it must be able to write ${dir})` : '';
          throw new Error(`initdb failed${hint}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
        });
    });
  }

  /**
   * A physical streaming standby of `primary` (same binaries), started on its own free port: a
   * base backup taken with the low-level API (`pg_backup_start`/`pg_backup_stop`, which every
   * major has, where npm's server packages ship no pg_basebackup), a physical replication slot on
   * the primary (`primary_slot_name`, so the primary keeps the WAL the standby still needs),
   * `standby.signal` and a `primary_conninfo` with `application_name` and `dbname`. Resolves once
   * the standby is streaming from the primary.
   */
  static async standbyOf(primary: LocalPostgres, opts: StandbyOptions = {}): Promise<LocalPostgres> {
    const slot = opts.slot ?? 'standby1';
    const applicationName = opts.applicationName ?? slot;
    const conninfo = `host=127.0.0.1 port=${primary.port} user=postgres dbname=${opts.dbname ?? 'postgres'} application_name=${applicationName}`;
    const standbyOpts: LocalPostgresOptions = {
      ...primary.opts,
      binDir: primary.binDir,
      ssl: undefined,
      settings: {
        ...primary.opts.settings,
        primary_conninfo: conninfo,
        primary_slot_name: slot,
        hot_standby: 'on',
        ...opts.settings,
      },
    };
    await primary.query(`SELECT pg_create_physical_replication_slot($1, true)`, [slot]);
    const standby = await LocalPostgres.create(standbyOpts, async (server, owner) => {
      await primary.baseBackup(server.dataDir, owner);
      await fsp.writeFile(path.join(server.dataDir, 'standby.signal'), '');
      if (owner) await fsp.chown(path.join(server.dataDir, 'standby.signal'), owner.uid, owner.gid);
    });
    try {
      await primary.waitFor(
        `SELECT EXISTS (SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming') AS ok`,
        [applicationName],
        `standby ${applicationName} streaming from the primary`,
      );
      return standby;
    } catch (err) {
      await standby.destroy().catch(() => undefined);
      throw err;
    }
  }

  /**
   * A new cluster in a temporary directory: `makeData` fills `dataDir` (initdb, or a base backup),
   * then the server starts on a free port of 127.0.0.1, as the `postgres` OS user when this
   * process is root.
   */
  private static async create(
    opts: LocalPostgresOptions,
    makeData: (server: LocalPostgres, owner: OsUser | undefined, dir: string) => Promise<void>,
  ): Promise<LocalPostgres> {
    const binDir = opts.binDir ?? findPostgresBin();
    const owner = isRoot() ? await lookupPgOsUser() : undefined;
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'fraiseql-relay-pg-'));
    const server = new LocalPostgres(dir, binDir, opts);
    try {
      if (owner) await fsp.chown(dir, owner.uid, owner.gid);
      if (opts.ssl) await server.installSslFiles(opts.ssl, owner);
      await makeData(server, owner, dir);
      for (let attempt = 1; ; attempt++) {
        server.portValue = await getFreePort();
        try {
          await server.start();
          break;
        } catch (err) {
          const portRace = err instanceof Error && /Address already in use|could not create any TCP\/IP sockets/.test(err.message);
          if (!portRace || attempt >= START_ATTEMPTS) throw err;
        }
      }
      return server;
    } catch (err) {
      await server.destroy().catch(() => undefined);
      throw err;
    }
  }

  /**
   * Copies this running cluster into `target` as a base backup: `pg_backup_start` (`pg_start_backup`
   * before 15, non-exclusive) on one session, the data directory copied file by file while the
   * server runs, `pg_backup_stop` on the same session, and its label file written as `backup_label`
   * (recovery starts from the checkpoint it names and replays the WAL written during the copy).
   */
  private async baseBackup(target: string, owner: OsUser | undefined): Promise<void> {
    const client = new pg.Client({ connectionString: this.url() });
    client.on('error', () => undefined);
    await client.connect();
    try {
      const major = Math.floor(
        Number((await client.query<{ v: string }>(`SELECT current_setting('server_version_num') AS v`)).rows[0]!.v) / 10000,
      );
      await client.query(
        major >= 15
          ? `SELECT pg_backup_start('fraiseql-relay standby', true)`
          : `SELECT pg_start_backup('fraiseql-relay standby', true, false)`,
      );
      await copyDataDir(this.dataDir, target);
      const stop = await client.query<{ labelfile: string; spcmapfile: string | null }>(
        major >= 15
          ? `SELECT labelfile, spcmapfile FROM pg_backup_stop(false)`
          : `SELECT labelfile, spcmapfile FROM pg_stop_backup(false, false)`,
      );
      await fsp.writeFile(path.join(target, 'backup_label'), stop.rows[0]!.labelfile);
      if (stop.rows[0]!.spcmapfile) await fsp.writeFile(path.join(target, 'tablespace_map'), stop.rows[0]!.spcmapfile);
    } finally {
      await client.end().catch(() => undefined);
    }
    await fsp.chmod(target, 0o700);
    if (owner) await chownTree(target, owner);
  }

  /** Promotes a standby (`pg_promote`, waiting until it accepts writes). */
  async promote(): Promise<void> {
    const r = await this.query<{ ok: boolean }>(`SELECT pg_promote(true, 60) AS ok`);
    if (!r.rows[0]?.ok) throw new Error(`PostgreSQL on port ${this.portValue} did not finish its promotion within 60 s`);
  }

  /** Polls a query returning one row `{ ok }` until ok is true (at most `timeoutMs`). */
  async waitFor(sql: string, params: unknown[], what: string, timeoutMs = 30_000, db = 'postgres'): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = '';
    while (Date.now() < deadline) {
      try {
        if ((await this.query<{ ok: boolean }>(sql, params, db)).rows[0]?.ok) return;
        last = '';
      } catch (err) {
        last = `: ${err instanceof Error ? err.message : String(err)}`;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(
      `timed out after ${timeoutMs} ms waiting for ${what}${last}\n--- ${this.logFile} (tail) ---\n${await this.logTail(20)}`,
    );
  }

  /** TCP port on 127.0.0.1 (stable across stop/start/kill). */
  get port(): number {
    return this.portValue;
  }

  /** Whether the server was started and not stopped/killed since (as far as this object knows). */
  get isRunning(): boolean {
    return this.running;
  }

  /** `postgres://<user>@127.0.0.1:<port>/<db>` (trust authentication, no password). */
  url(db = 'postgres', user = 'postgres'): string {
    return `postgres://${encodeURIComponent(user)}@127.0.0.1:${this.portValue}/${encodeURIComponent(db)}`;
  }

  /** Runs one statement on a short-lived connection. */
  async query<R extends QueryResultRow = QueryResultRow>(sql: string, params?: unknown[], db = 'postgres'): Promise<QueryResult<R>> {
    const client = new pg.Client({ connectionString: this.url(db) });
    client.on('error', () => undefined); // the server may be killed under us; query() rejects anyway
    await client.connect();
    try {
      return await client.query<R>(sql, params);
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  /** `CREATE DATABASE <name>`; resolves with its URL. */
  async createDatabase(name: string): Promise<string> {
    await this.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`);
    return this.url(name);
  }

  /** Starts the (existing) cluster again on the same port; no-op when running. */
  async start(): Promise<void> {
    if (this.destroying) throw new Error('LocalPostgres was destroyed');
    if (this.running) return;
    const logStart = await fsp.stat(this.logFile).then(
      (s) => s.size,
      () => 0,
    );
    try {
      await this.pgTool('pg_ctl', [
        '-D',
        this.dataDir,
        '-l',
        this.logFile,
        '-w',
        '-t',
        String(PG_CTL_TIMEOUT_S),
        '-o',
        this.serverOptions(),
        'start',
      ]);
    } catch (err) {
      // pg_ctl may time out while the postmaster lives on: do not leak it.
      await this.killProcesses().catch(() => undefined);
      const log = await this.readLog(logStart);
      const msg = err instanceof Error ? err.message : String(err);
      throw new Error(
        `PostgreSQL failed to start on 127.0.0.1:${this.portValue}: ${msg}\n--- ${this.logFile} (tail) ---\n${tailLines(log, 30)}`,
        { cause: err },
      );
    }
    this.running = true;
  }

  /** `pg_ctl stop -m <mode>` and wait; no-op when not running. */
  async stop(mode: PgStopMode = 'fast'): Promise<void> {
    if (!this.running && !this.postmasterAlive()) {
      this.running = false;
      return;
    }
    try {
      await this.pgTool('pg_ctl', ['-D', this.dataDir, '-m', mode, '-w', '-t', String(PG_CTL_TIMEOUT_S), 'stop']);
    } catch (err) {
      if (this.postmasterAlive()) throw err;
    }
    this.running = false;
  }

  /** stop('fast') then start(). */
  async restart(): Promise<void> {
    await this.stop('fast');
    await this.start();
  }

  /**
   * Simulates a crash: SIGKILL the postmaster (pid from postmaster.pid) and its children, wait
   * until they are gone and the port is closed. The next start() runs crash recovery.
   */
  async kill(): Promise<void> {
    await this.killProcesses();
    this.running = false;
    await waitForPortClosed(this.portValue, '127.0.0.1', 10_000);
  }

  /** Stops (immediate) if running and removes the temporary directory. Safe to call twice. */
  destroy(): Promise<void> {
    this.destroying ??= (async () => {
      try {
        if (this.running || this.postmasterAlive()) {
          try {
            await this.pgTool('pg_ctl', ['-D', this.dataDir, '-m', 'immediate', '-w', '-t', '10', 'stop']);
          } catch {
            await this.killProcesses();
          }
        }
      } finally {
        this.running = false;
        await fsp.rm(this.dir, { recursive: true, force: true, maxRetries: 3 });
        this.unregisterCleanup();
      }
    })();
    return this.destroying;
  }

  /**
   * Synchronous last-resort cleanup (for `process.on('exit')`): SIGKILL the server, remove the
   * directory. Safe to call any number of times.
   */
  destroySync(): void {
    const pid = this.postmasterPid();
    if (pid !== undefined && isProcessAlive(pid)) {
      const children = childPids(pid);
      signalProcess(pid, 'SIGKILL');
      for (const c of children) signalProcess(c, 'SIGKILL');
    }
    this.running = false;
    this.destroying ??= Promise.resolve();
    try {
      fs.rmSync(this.dir, { recursive: true, force: true, maxRetries: 3 });
    } catch {
      // best effort
    }
    this.unregisterCleanup();
  }

  /** PID of the postmaster from `postmaster.pid` (may be stale), or undefined. */
  postmasterPid(): number | undefined {
    try {
      const first = fs.readFileSync(path.join(this.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0];
      const pid = Number(first);
      return Number.isInteger(pid) && pid > 0 ? pid : undefined;
    } catch {
      return undefined;
    }
  }

  /** The last `lines` lines of the server log. */
  async logTail(lines = 40): Promise<string> {
    return tailLines(await this.readLog(0), lines);
  }

  private postmasterAlive(): boolean {
    const pid = this.postmasterPid();
    return pid !== undefined && isProcessAlive(pid);
  }

  private async killProcesses(): Promise<void> {
    const pid = this.postmasterPid();
    if (pid === undefined) return;
    if (isProcessAlive(pid)) {
      const children = childPids(pid);
      signalProcess(pid, 'SIGKILL');
      for (const c of children) signalProcess(c, 'SIGKILL');
      if (!(await waitForProcessesGone([pid, ...children], 10_000))) {
        throw new Error(`PostgreSQL processes ${[pid, ...children].join(', ')} did not die after SIGKILL`);
      }
    }
    // The postmaster is dead (perhaps an unreaped zombie, which would make PostgreSQL believe the
    // lock files are still held): remove the stale lock files so the next start works.
    await fsp.rm(path.join(this.dataDir, 'postmaster.pid'), { force: true });
    await fsp.rm(path.join(this.dir, `.s.PGSQL.${this.portValue}.lock`), { force: true });
    await fsp.rm(path.join(this.dir, `.s.PGSQL.${this.portValue}`), { force: true });
  }

  private serverOptions(): string {
    // No synchronous_commit=off: with fsync=off a commit's WAL flush is a mere write(), and with
    // it off a commit acknowledged just before kill() is lost (the WAL writer had not written it).
    const settings: [string, string][] = [
      ['wal_level', 'logical'],
      ['fsync', 'off'],
      ['full_page_writes', 'off'],
      ['max_replication_slots', '20'],
      ['max_wal_senders', '20'],
    ];
    if (this.opts.walSenderTimeout !== undefined) settings.push(['wal_sender_timeout', this.opts.walSenderTimeout]);
    if (this.opts.maxSlotWalKeepSize !== undefined) settings.push(['max_slot_wal_keep_size', this.opts.maxSlotWalKeepSize]);
    if (this.opts.ssl) {
      settings.push(['ssl', 'on'], ['ssl_cert_file', this.sslCertFile], ['ssl_key_file', this.sslKeyFile]);
    }
    for (const [k, v] of Object.entries(this.opts.settings ?? {})) settings.push([k, v]);
    // Last, so that nothing can move the server onto a shared address or socket.
    settings.push(['listen_addresses', '127.0.0.1'], ['port', String(this.portValue)], ['unix_socket_directories', this.dir]);
    return settings
      .map(([k, v]) => {
        if (!/^[A-Za-z_][A-Za-z0-9_.]*$/.test(k)) throw new Error(`invalid PostgreSQL setting name: ${k}`);
        return `-c ${shellQuote(`${k}=${v}`)}`;
      })
      .join(' ');
  }

  private get sslCertFile(): string {
    return path.join(this.dir, 'server.crt');
  }

  private get sslKeyFile(): string {
    return path.join(this.dir, 'server.key');
  }

  /** Copies the TLS certificate and key where the server's OS user can read them (key 0600). */
  private async installSslFiles(ssl: { certFile: string; keyFile: string }, owner: OsUser | undefined): Promise<void> {
    await fsp.copyFile(ssl.certFile, this.sslCertFile);
    await fsp.copyFile(ssl.keyFile, this.sslKeyFile);
    await fsp.chmod(this.sslCertFile, 0o644);
    await fsp.chmod(this.sslKeyFile, 0o600);
    if (owner) {
      await fsp.chown(this.sslCertFile, owner.uid, owner.gid);
      await fsp.chown(this.sslKeyFile, owner.uid, owner.gid);
    }
  }

  /** Runs a PostgreSQL tool from the bin dir, as the postgres OS user when root. */
  private async pgTool(tool: string, args: string[]): Promise<void> {
    const exe = path.join(this.binDir, tool);
    const opts = { cwd: this.dir, env: pgEnv(), timeoutMs: (PG_CTL_TIMEOUT_S + 30) * 1000 };
    if (!isRoot()) {
      await runCommand(exe, args, opts);
      return;
    }
    const runuser = requireCommand('runuser', `to run PostgreSQL as the OS user '${PG_OS_USER}', ${AS_ROOT}`, 'util-linux');
    await runCommand(runuser, ['-u', PG_OS_USER, '--', exe, ...args], opts);
  }

  private async readLog(fromByte: number): Promise<string> {
    try {
      const buf = await fsp.readFile(this.logFile);
      return buf.subarray(Math.min(fromByte, buf.length)).toString('utf8');
    } catch {
      return '(no log)';
    }
  }
}

/** Copies a live data directory for a base backup: what a backup leaves out is skipped, files that vanish meanwhile are ignored. */
async function copyDataDir(from: string, to: string): Promise<void> {
  await fsp.mkdir(to, { recursive: true, mode: 0o700 });
  for (const e of await fsp.readdir(from, { withFileTypes: true })) {
    const src = path.join(from, e.name);
    const dst = path.join(to, e.name);
    if (e.isDirectory()) {
      if (BACKUP_EMPTIED_DIRS.has(e.name)) {
        await fsp.mkdir(dst, { mode: 0o700 });
        // PostgreSQL needs pg_wal/archive_status to exist
        if (e.name === 'pg_wal') await fsp.mkdir(path.join(dst, 'archive_status'), { mode: 0o700 });
        continue;
      }
      await copyDataDir(src, dst);
    } else if (e.isFile() && !BACKUP_SKIPPED_FILES.has(e.name) && !e.name.startsWith('pgsql_tmp')) {
      await fsp.copyFile(src, dst).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err; // dropped while copying: WAL replay recreates what is needed
      });
    }
  }
}

async function chownTree(dir: string, owner: OsUser): Promise<void> {
  await fsp.chown(dir, owner.uid, owner.gid);
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) await chownTree(p, owner);
    else await fsp.chown(p, owner.uid, owner.gid);
  }
}
