/**
 * A throwaway redis-server in a temporary directory, for integration tests, the benchmark and
 * `demo --backend redis`. It listens on a free port of 127.0.0.1 (never the machine's Redis on
 * 6379) with its append-only file on and fsynced on every write, so what it acknowledged survives
 * a SIGKILL: stop, kill, pause and restart it at will.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { MissingBinaryError } from './binaries.js';
import { getFreePort } from './ports.js';
import { LocalServer, type Running } from './server.js';

export interface LocalRedisOptions {
  /** default true: `appendonly yes`, `appendfsync always`; false: no persistence at all (what `check` warns about) */
  persistence?: boolean;
}

const READY_TIMEOUT_MS = 15_000;

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
export class LocalRedis extends LocalServer {
  private portValue = 0;

  private constructor(
    dir: string,
    bin: string,
    private readonly persistence: boolean,
  ) {
    super('redis-server', bin, dir, path.join(dir, 'redis.log'));
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

  /**
   * Starts the server (again): the first time on a free port, afterwards on the same port with the
   * same directory, so clients reconnect to the same URL and find what the append-only file kept.
   */
  async start(): Promise<void> {
    this.assertUsable();
    if (this.isRunning) return;
    // the free port may be taken between the look-up and the bind: try another (first start only)
    for (let attempt = 0; ; attempt++) {
      const fresh = this.portValue === 0;
      if (fresh) this.portValue = await getFreePort();
      try {
        await this.launch(this.args(), (running) => this.waitForPong(running));
        return;
      } catch (err) {
        if (!fresh || attempt >= 4 || !/Address already in use/i.test(String(err))) throw err;
        this.portValue = 0;
      }
    }
  }

  private args(): string[] {
    return [
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
  }

  /** Until the server answers PING with PONG (not LOADING while it replays its append-only file). */
  private async waitForPong(running: Running): Promise<void> {
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      this.assertAlive(running);
      if ((await ping(this.portValue)) === '+PONG') return;
      if (Date.now() > deadline) throw new Error(`no PONG within ${READY_TIMEOUT_MS} ms`);
      await sleep(25);
    }
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
