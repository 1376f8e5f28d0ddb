/**
 * Finding, running and reaping the server binaries used by the throwaway local servers
 * (integration tests, the benchmark and the `demo` command).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

/** A server binary needed by the local servers is not installed (or the override points nowhere). */
export class MissingBinaryError extends Error {
  override readonly name = 'MissingBinaryError';
  /** Like a usage error: the user must install something, nothing was changed. */
  readonly exitCode = 2;
  constructor(
    /** The missing binary, e.g. `nats-server` or `initdb`. */
    readonly binary: string,
    message: string,
  ) {
    super(message);
  }
}

function isExecutableFile(file: string): boolean {
  try {
    if (!fs.statSync(file).isFile()) return false;
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Absolute path of `name` on PATH, or undefined. */
function whichSync(name: string): string | undefined {
  for (const dir of (process.env['PATH'] ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    if (isExecutableFile(candidate)) return path.resolve(candidate);
  }
  return undefined;
}

/**
 * Absolute path of a system command (`id`, `runuser`) on PATH.
 * @throws MissingBinaryError saying the command itself is missing, what it is needed for and how to fix it.
 */
export function requireCommand(name: string, neededFor: string, packageName: string): string {
  const found = whichSync(name);
  if (found !== undefined) return found;
  const pathValue = process.env['PATH'];
  throw new MissingBinaryError(
    name,
    `the \`${name}\` command was not found on PATH (${pathValue ? `PATH=${pathValue}` : 'PATH is empty or unset'}); ` +
      `it is needed ${neededFor}. Restore PATH (it usually includes /usr/sbin:/usr/bin:/sbin:/bin) or install ${packageName}.`,
  );
}

const PG_TOOLS = ['initdb', 'pg_ctl', 'postgres'] as const;
const PG_INSTALL_HINT =
  'Install PostgreSQL with `apt-get install -y postgresql` (Debian/Ubuntu; the binaries land in ' +
  '/usr/lib/postgresql/<version>/bin), or set PG_BIN to the directory containing initdb, pg_ctl and postgres.';

function missingPgTools(dir: string): string[] {
  return PG_TOOLS.filter((t) => !isExecutableFile(path.join(dir, t)));
}

/**
 * Directory containing `initdb`, `pg_ctl` and `postgres`: `$PG_BIN`, else the highest version
 * under `/usr/lib/postgresql/<version>/bin`, else the directory of `pg_ctl` on PATH.
 * @throws MissingBinaryError naming the missing binary and how to install it.
 */
export function findPostgresBin(): string {
  const override = process.env['PG_BIN'];
  if (override !== undefined && override !== '') {
    const missing = missingPgTools(override);
    if (missing.length > 0) {
      throw new MissingBinaryError(
        missing[0] ?? 'postgres',
        `PostgreSQL binaries not found: PG_BIN=${override} has no executable ${missing.join(', ')}. ${PG_INSTALL_HINT}`,
      );
    }
    return path.resolve(override);
  }

  const root = '/usr/lib/postgresql';
  let versions: string[] = [];
  try {
    versions = fs.readdirSync(root).filter((v) => /^\d+(\.\d+)?$/.test(v));
  } catch {
    // not a Debian-style layout
  }
  versions.sort((a, b) => Number.parseFloat(b) - Number.parseFloat(a));
  for (const v of versions) {
    const dir = path.join(root, v, 'bin');
    if (missingPgTools(dir).length === 0) return dir;
  }

  const onPath = whichSync('pg_ctl');
  if (onPath !== undefined) {
    const dir = path.dirname(onPath);
    if (missingPgTools(dir).length === 0) return dir;
  }
  const firstMissing = PG_TOOLS.find((t) => whichSync(t) === undefined) ?? 'initdb';
  throw new MissingBinaryError(
    firstMissing,
    `PostgreSQL server binaries (initdb, pg_ctl, postgres) not found under ${root}/*/bin nor on PATH ` +
      `(${firstMissing} is missing). ${PG_INSTALL_HINT}`,
  );
}

/**
 * Path of `nats-server`: `$NATS_SERVER_BIN`, else PATH, else `/usr/sbin/nats-server`.
 * @throws MissingBinaryError naming `nats-server` and how to install it.
 */
export function findNatsServer(): string {
  const hint =
    'Install it with `apt-get install -y nats-server` (or download a release from ' +
    'https://github.com/nats-io/nats-server/releases), or set NATS_SERVER_BIN to its path.';
  const override = process.env['NATS_SERVER_BIN'];
  if (override !== undefined && override !== '') {
    if (isExecutableFile(override)) return path.resolve(override);
    throw new MissingBinaryError(
      'nats-server',
      `nats-server binary not found: NATS_SERVER_BIN=${override} is not an executable file. ${hint}`,
    );
  }
  const onPath = whichSync('nats-server');
  if (onPath !== undefined) return onPath;
  const fallback = '/usr/sbin/nats-server';
  if (isExecutableFile(fallback)) return fallback;
  throw new MissingBinaryError('nats-server', `nats-server binary not found on PATH nor at ${fallback}. ${hint}`);
}

/** A command exited with a non-zero status, was killed, or could not be started. */
class CommandError extends Error {
  override readonly name = 'CommandError';
  constructor(
    message: string,
    readonly stdout: string,
    readonly stderr: string,
    readonly exitCode: number | null,
  ) {
    super(message);
  }
}

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Kill the command after this long (ms); default 120 s. */
  timeoutMs?: number;
}

/** Runs a command to completion (no shell); resolves with its output, rejects with a CommandError. */
export function runCommand(file: string, args: readonly string[], opts: RunOptions = {}): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(
      file,
      args,
      {
        cwd: opts.cwd,
        env: opts.env ?? process.env,
        timeout: opts.timeoutMs ?? 120_000,
        maxBuffer: 16 * 1024 * 1024,
        encoding: 'utf8',
      },
      (err, stdout, stderr) => {
        if (err === null) {
          resolve({ stdout, stderr });
          return;
        }
        if (err.code === 'ENOENT' && !err.killed && (opts.cwd === undefined || fs.existsSync(opts.cwd))) {
          // the command itself is missing, which is not a failure of what it was asked to do
          reject(
            new MissingBinaryError(file, `\`${file}\` could not be run: no such executable${path.isAbsolute(file) ? '' : ' on PATH'}`),
          );
          return;
        }
        const code = typeof err.code === 'number' ? err.code : null;
        const how =
          code !== null
            ? `exited with code ${code}`
            : err.signal
              ? `was killed by ${err.signal}${err.killed ? ' (timeout)' : ''}`
              : `could not be run: ${err.message}`;
        const output = [stderr.trim(), stdout.trim()].filter((s) => s !== '').join('\n');
        reject(new CommandError(`\`${[file, ...args].join(' ')}\` ${how}${output ? `:\n${output}` : ''}`, stdout, stderr, code));
      },
    );
  });
}

// ---------------------------------------------------------------------------------------------
// Process helpers

/** `/proc/<pid>/stat` fields after the command name: [state, ppid, ...], or undefined. */
function procStat(pid: number): string[] | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

const HAVE_PROC = fs.existsSync('/proc/self/stat');

/** True when `pid` is a live process (zombies count as dead). */
export function isProcessAlive(pid: number): boolean {
  if (HAVE_PROC) {
    const stat = procStat(pid);
    if (stat === undefined) return false;
    return stat[0] !== 'Z' && stat[0] !== 'X';
  }
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** PIDs whose parent is `pid` (Linux /proc; empty elsewhere). */
export function childPids(pid: number): number[] {
  if (!HAVE_PROC) return [];
  const out: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = procStat(Number(entry));
    if (stat !== undefined && Number(stat[1]) === pid) out.push(Number(entry));
  }
  return out;
}

/** Sends `signal`, ignoring "no such process". */
export function signalProcess(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

/** Waits until none of `pids` is alive; returns false on timeout. */
export async function waitForProcessesGone(pids: readonly number[], timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (pids.every((p) => !isProcessAlive(p))) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
}

// ---------------------------------------------------------------------------------------------
// Last-resort cleanup: never leave servers running after this process exits.

const exitCleanups = new Set<() => void>();
let handlersInstalled = false;
const TERMINATING_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

function runExitCleanups(): void {
  for (const fn of [...exitCleanups]) {
    try {
      fn();
    } catch {
      // best effort: the process is going away
    }
  }
  exitCleanups.clear();
}

function onTerminatingSignal(signal: NodeJS.Signals): void {
  // Someone else handles this signal (e.g. the CLI's graceful shutdown): they will exit, and
  // the 'exit' handler cleans up. Otherwise emulate the default action after cleaning up.
  if (process.listenerCount(signal) > 1) return;
  runExitCleanups();
  for (const s of TERMINATING_SIGNALS) process.removeListener(s, onTerminatingSignal);
  process.kill(process.pid, signal);
}

/**
 * Registers a synchronous cleanup run when the process exits (also on SIGINT/SIGTERM/SIGHUP when
 * nobody else handles them). Returns a function that unregisters it.
 */
export function registerExitCleanup(fn: () => void): () => void {
  if (!handlersInstalled) {
    handlersInstalled = true;
    process.on('exit', runExitCleanups);
    for (const s of TERMINATING_SIGNALS) process.on(s, onTerminatingSignal);
  }
  exitCleanups.add(fn);
  return () => {
    exitCleanups.delete(fn);
  };
}
