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
}

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
    const binDir = findPostgresBin();
    const owner = isRoot() ? await lookupPgOsUser() : undefined;
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'fraiseql-relay-pg-'));
    const server = new LocalPostgres(dir, binDir, opts);
    try {
      if (owner) await fsp.chown(dir, owner.uid, owner.gid);
      if (opts.ssl) await server.installSslFiles(opts.ssl, owner);
      await server
        .pgTool('initdb', ['-D', server.dataDir, '-U', 'postgres', '-A', 'trust', '--no-sync', '-E', 'UTF8', '--locale=C'])
        .catch((err: unknown) => {
          const hint = owner ? ` (initdb runs as OS user '${PG_OS_USER}': it must be able to write ${dir})` : '';
          throw new Error(`initdb failed${hint}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
        });
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
