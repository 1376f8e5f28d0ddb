/**
 * A throwaway redis-server in a temporary directory, for integration tests, the benchmark and
 * `demo --backend redis`. It listens on a free port of 127.0.0.1 (never the machine's Redis on
 * 6379) with its append-only file on and fsynced on every write, so what it acknowledged survives
 * a SIGKILL: stop, kill, pause and restart it at will.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { MissingBinaryError, registerExitCleanup } from './binaries.js';
import { getFreePort } from './ports.js';

export interface LocalRedisOptions {
  /** default true: `appendonly yes`, `appendfsync always`; false: no persistence at all (what `check` warns about) */
  persistence?: boolean;
}

const READY_TIMEOUT_MS = 15_000;

interface Running {
  child: ChildProcess;
  pid: number;
  exited: Promise<void>;
}

/**
 * Path of `redis-server`: `$REDIS_SERVER_BIN`, else PATH, else `/usr/bin/redis-server`.
 * @throws MissingBinaryError naming `redis-server` and how to install it.
 */
function findRedisServer(): string {
  const hint = 'Install it with `apt-get install -y redis-server` (Debian/Ubuntu), or set REDIS_SERVER_BIN to its path.';
  const executable = (f: string) => {
    try {
      fs.accessSync(f, fs.constants.X_OK);
      return fs.statSync(f).isFile();
    } catch {
      return false;
    }
  };
  const override = process.env['REDIS_SERVER_BIN'];
  if (override !== undefined && override !== '') {
    if (executable(override)) return path.resolve(override);
    throw new MissingBinaryError(
      'redis-server',
      `redis-server binary not found: REDIS_SERVER_BIN=${override} is not an executable file. ${hint}`,
    );
  }
  for (const dir of [...(process.env['PATH'] ?? '').split(path.delimiter), '/usr/bin', '/usr/sbin']) {
    if (dir && executable(path.join(dir, 'redis-server'))) return path.resolve(dir, 'redis-server');
  }
  throw new MissingBinaryError('redis-server', `redis-server binary not found on PATH nor in /usr/bin. ${hint}`);
}

/** A throwaway redis-server. Create with `LocalRedis.start()`; always `destroy()` it. */
export class LocalRedis {
  /** Temporary directory holding the append-only file and the log. */
  readonly dir: string;
  /** Server output (`<dir>/redis.log`), appended to by every start. */
  readonly logFile: string;
  private portValue = 0;
  private proc: Running | undefined;
  private destroying: Promise<void> | undefined;
  private readonly unregisterCleanup: () => void;

  private constructor(
    dir: string,
    private readonly bin: string,
    private readonly persistence: boolean,
  ) {
    this.dir = dir;
    this.logFile = path.join(dir, 'redis.log');
    this.unregisterCleanup = registerExitCleanup(() => this.destroySync());
  }

  static async start(opts: LocalRedisOptions = {}): Promise<LocalRedis> {
    const bin = findRedisServer();
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'fraiseql-relay-redis-'));
    const server = new LocalRedis(dir, bin, opts.persistence ?? true);
    try {
      await server.start();
      return server;
    } catch (err) {
      await server.destroy().catch(() => undefined);
      throw err;
    }
  }

  get port(): number {
    return this.portValue;
  }

  /** `redis://127.0.0.1:<port>` */
  get url(): string {
    return `redis://127.0.0.1:${this.portValue}`;
  }

  get isRunning(): boolean {
    return this.proc !== undefined;
  }

  /**
   * Starts the server (again): the first time on a free port, afterwards on the same port with the
   * same directory, so clients reconnect to the same URL and find what the append-only file kept.
   */
  async start(): Promise<void> {
    if (this.destroying) throw new Error('LocalRedis was destroyed');
    if (this.proc) return;
    // the free port may be taken between the look-up and the bind: try another (first start only)
    for (let attempt = 0; ; attempt++) {
      const fresh = this.portValue === 0;
      if (fresh) this.portValue = await getFreePort();
      try {
        await this.spawnOnce();
        return;
      } catch (err) {
        if (!fresh || attempt >= 4 || !/Address already in use/i.test(String(err))) throw err;
        this.portValue = 0;
      }
    }
  }

  private async spawnOnce(): Promise<void> {
    const args = [
      '--port',
      String(this.portValue),
      '--bind',
      '127.0.0.1',
      '--protected-mode',
      'no',
      '--dir',
      this.dir,
      '--save',
      '',
      '--daemonize',
      'no',
      ...(this.persistence ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no']),
    ];
    const logStart = await fsp.stat(this.logFile).then(
      (s) => s.size,
      () => 0,
    );
    const out = fs.openSync(this.logFile, 'a');
    let child: ChildProcess;
    try {
      child = spawn(this.bin, args, { cwd: this.dir, stdio: ['ignore', out, out] });
    } finally {
      fs.closeSync(out);
    }
    const spawned = new Promise<number>((resolve, reject) => {
      child.once('spawn', () => resolve(child.pid ?? 0));
      child.once('error', reject);
    });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.unref();
    let pid: number;
    try {
      pid = await spawned;
    } catch (err) {
      throw new Error(`could not run ${this.bin}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
    const running: Running = { child, pid, exited };
    this.proc = running;
    exited.then(
      () => {
        if (this.proc === running) this.proc = undefined;
      },
      () => undefined,
    );
    try {
      await this.waitForPong(running);
    } catch (err) {
      kill(running, 'SIGKILL');
      await waitExit(running, 10_000);
      const log = await this.readLog(logStart);
      throw new Error(
        `redis-server failed to start: ${err instanceof Error ? err.message : String(err)}\n` +
          `--- ${this.logFile} (tail) ---\n${log.trimEnd().split('\n').slice(-30).join('\n')}`,
        { cause: err },
      );
    }
  }

  /** Until the server answers PING with PONG (not LOADING while it replays its append-only file). */
  private async waitForPong(running: Running): Promise<void> {
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      const { exitCode, signalCode } = running.child;
      if (exitCode !== null || signalCode !== null) {
        throw new Error(`redis-server exited during startup (${exitCode !== null ? `code ${exitCode}` : signalCode})`);
      }
      if ((await ping(this.portValue)) === '+PONG') return;
      if (Date.now() > deadline) throw new Error(`no PONG within ${READY_TIMEOUT_MS} ms`);
      await sleep(25);
    }
  }

  /** Graceful shutdown (SIGTERM: Redis flushes its append-only file), SIGKILL after `timeoutMs`. */
  async stop(timeoutMs = 10_000): Promise<void> {
    const running = this.proc;
    if (!running) return;
    kill(running, 'SIGCONT');
    kill(running, 'SIGTERM');
    if (!(await waitExit(running, timeoutMs))) {
      kill(running, 'SIGKILL');
      await waitExit(running, 10_000);
    }
    this.proc = undefined;
  }

  /** Simulates a crash: SIGKILL, wait for the process to exit. */
  async kill(): Promise<void> {
    const running = this.proc;
    if (!running) return;
    kill(running, 'SIGKILL');
    await waitExit(running, 10_000);
    this.proc = undefined;
  }

  /** SIGSTOP: the server keeps its connections but answers nothing until {@link resume}. */
  pause(): void {
    if (this.proc) kill(this.proc, 'SIGSTOP');
  }

  resume(): void {
    if (this.proc) kill(this.proc, 'SIGCONT');
  }

  /** Kills the server if running and removes the temporary directory. Safe to call twice. */
  destroy(): Promise<void> {
    this.destroying ??= (async () => {
      try {
        const running = this.proc;
        if (running) {
          kill(running, 'SIGKILL');
          await waitExit(running, 10_000);
          this.proc = undefined;
        }
      } finally {
        await fsp.rm(this.dir, { recursive: true, force: true, maxRetries: 3 });
        this.unregisterCleanup();
      }
    })();
    return this.destroying;
  }

  /** Synchronous last-resort cleanup (for `process.on('exit')`): SIGKILL, remove the directory. */
  destroySync(): void {
    if (this.proc) kill(this.proc, 'SIGKILL');
    this.proc = undefined;
    this.destroying ??= Promise.resolve();
    try {
      fs.rmSync(this.dir, { recursive: true, force: true, maxRetries: 3 });
    } catch {
      // best effort
    }
    this.unregisterCleanup();
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

function kill(running: Running, signal: NodeJS.Signals): void {
  if (running.child.exitCode !== null || running.child.signalCode !== null) return;
  try {
    process.kill(running.pid, signal);
  } catch {
    // already gone
  }
}

/** The first line of the server's answer to PING, or '' when it does not answer within a second. */
function ping(port: number): Promise<string> {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host: '127.0.0.1' });
    let buf = '';
    const done = (line: string) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(line);
    };
    const timer = setTimeout(() => done(''), 1000);
    sock.once('connect', () => sock.write('PING\r\n'));
    sock.on('data', (b: Buffer) => {
      buf += b.toString('latin1');
      const i = buf.indexOf('\r\n');
      if (i >= 0) done(buf.slice(0, i));
    });
    sock.once('error', () => done(''));
  });
}

async function waitExit(running: Running, timeoutMs: number): Promise<boolean> {
  const ac = new AbortController();
  try {
    return await Promise.race([running.exited.then(() => true), sleep(timeoutMs, false, { signal: ac.signal })]);
  } finally {
    ac.abort();
  }
}
