/**
 * A throwaway nats-server with JetStream in a temporary directory, for integration tests, the
 * benchmark and the `demo` command. Never touches a system server or port 4222.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { findNatsServer, registerExitCleanup } from './binaries.js';
import { waitForPortOpen } from './ports.js';

export interface LocalNatsOptions {
  /** Server `max_payload` in bytes (default: the server's, 1 MiB). */
  maxPayload?: number;
  /**
   * TLS for client connections (`--tls --tlscert --tlskey`): every client must then use TLS.
   * With `clientCaFile`, clients must also present a certificate signed by that CA
   * (`--tlsverify --tlscacert`).
   */
  tls?: { certFile: string; keyFile: string; clientCaFile?: string };
}

const READY_TIMEOUT_MS = 15_000;

interface Running {
  child: ChildProcess;
  pid: number;
  exited: Promise<void>;
}

/** A throwaway nats-server with JetStream. Create with `LocalNats.start()`; always `destroy()` it. */
export class LocalNats {
  /** Temporary directory holding the store, the log and the ports file. */
  readonly dir: string;
  /** JetStream store directory (`<dir>/js`), kept across stop/start/kill. */
  readonly storeDir: string;
  /** Server output (`<dir>/nats.log`), appended to by every start. */
  readonly logFile: string;
  private readonly bin: string;
  private readonly configFile: string | undefined;
  private readonly tlsArgs: string[];
  private readonly serverName: string;
  private portValue = 0;
  private proc: Running | undefined;
  private destroying: Promise<void> | undefined;
  private readonly unregisterCleanup: () => void;

  private constructor(dir: string, bin: string, configFile: string | undefined, tls: LocalNatsOptions['tls']) {
    this.dir = dir;
    this.storeDir = path.join(dir, 'js');
    this.logFile = path.join(dir, 'nats.log');
    this.bin = bin;
    this.configFile = configFile;
    this.tlsArgs = tls
      ? [
          '--tls',
          '--tlscert',
          path.resolve(tls.certFile),
          '--tlskey',
          path.resolve(tls.keyFile),
          ...(tls.clientCaFile !== undefined ? ['--tlsverify', '--tlscacert', path.resolve(tls.clientCaFile)] : []),
        ]
      : [];
    this.serverName = `local-${path.basename(dir)}`;
    this.unregisterCleanup = registerExitCleanup(() => this.destroySync());
  }

  /** Starts nats-server with JetStream on a free port of 127.0.0.1 (`-p -1`, read from the ports file). */
  static async start(opts: LocalNatsOptions = {}): Promise<LocalNats> {
    const bin = findNatsServer();
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'fraiseql-relay-nats-'));
    let configFile: string | undefined;
    if (opts.maxPayload !== undefined) {
      if (!Number.isInteger(opts.maxPayload) || opts.maxPayload <= 0) {
        await fsp.rm(dir, { recursive: true, force: true });
        throw new Error(`maxPayload must be a positive integer, got ${opts.maxPayload}`);
      }
      configFile = path.join(dir, 'nats.conf');
      await fsp.writeFile(configFile, `max_payload: ${opts.maxPayload}\n`);
    }
    const server = new LocalNats(dir, bin, configFile, opts.tls);
    try {
      await server.start();
      return server;
    } catch (err) {
      await server.destroy().catch(() => undefined);
      throw err;
    }
  }

  /** Client port on 127.0.0.1 (stable across stop/start/kill). */
  get port(): number {
    return this.portValue;
  }

  /** `nats://127.0.0.1:<port>` */
  get url(): string {
    return `nats://127.0.0.1:${this.portValue}`;
  }

  /** Whether the server process is running. */
  get isRunning(): boolean {
    return this.proc !== undefined;
  }

  /** PID of the running server, or undefined. */
  get pid(): number | undefined {
    return this.proc?.pid;
  }

  /**
   * Starts the server (again): the first time on a random port, afterwards on the same port with
   * the same store directory, so clients reconnect to the same URL and JetStream data survives.
   * No-op when running.
   */
  async start(): Promise<void> {
    if (this.destroying) throw new Error('LocalNats was destroyed');
    if (this.proc) return;
    await this.removePortsFiles();
    const args = [
      ...(this.configFile ? ['-c', this.configFile] : []),
      ...this.tlsArgs,
      '-a',
      '127.0.0.1',
      '-p',
      this.portValue === 0 ? '-1' : String(this.portValue),
      '-n',
      this.serverName,
      '-js',
      '-sd',
      this.storeDir,
      '--ports_file_dir',
      this.dir,
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
    child.unref(); // a forgotten server must not keep the process alive; the exit cleanup kills it
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
      const port = await this.waitForPortsFile(running);
      if (this.portValue !== 0 && port !== this.portValue) {
        throw new Error(`nats-server listens on port ${port}, expected ${this.portValue}`);
      }
      this.portValue = port;
      await waitForPortOpen(port, '127.0.0.1', READY_TIMEOUT_MS);
    } catch (err) {
      this.killChild(running);
      await waitExit(running, 10_000);
      const log = await this.readLog(logStart);
      throw new Error(
        `nats-server failed to start: ${err instanceof Error ? err.message : String(err)}\n` +
          `--- ${this.logFile} (tail) ---\n${log.trimEnd().split('\n').slice(-30).join('\n')}`,
        { cause: err },
      );
    }
  }

  /** Graceful shutdown (SIGTERM), waiting for the process to exit; SIGKILL after `timeoutMs`. */
  async stop(timeoutMs = 10_000): Promise<void> {
    const running = this.proc;
    if (!running) return;
    running.child.kill('SIGTERM');
    if (!(await waitExit(running, timeoutMs))) {
      this.killChild(running);
      await waitExit(running, 10_000);
    }
    this.proc = undefined;
  }

  /** Simulates a crash: SIGKILL, wait for the process to exit. */
  async kill(): Promise<void> {
    const running = this.proc;
    if (!running) return;
    this.killChild(running);
    await waitExit(running, 10_000);
    this.proc = undefined;
  }

  /** stop() then start(). */
  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** Kills the server if running and removes the temporary directory. Safe to call twice. */
  destroy(): Promise<void> {
    this.destroying ??= (async () => {
      try {
        const running = this.proc;
        if (running) {
          this.killChild(running);
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
    const running = this.proc;
    if (running) this.killChild(running);
    this.proc = undefined;
    this.destroying ??= Promise.resolve();
    try {
      fs.rmSync(this.dir, { recursive: true, force: true, maxRetries: 3 });
    } catch {
      // best effort
    }
    this.unregisterCleanup();
  }

  /** The last `lines` lines of the server output. */
  async logTail(lines = 40): Promise<string> {
    return (await this.readLog(0)).trimEnd().split('\n').slice(-lines).join('\n');
  }

  private killChild(running: Running): void {
    if (running.child.exitCode !== null || running.child.signalCode !== null) return;
    try {
      process.kill(running.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }

  /** Waits for `<exe>_<pid>.ports` (`{"nats":["nats://127.0.0.1:35131"]}`) and returns the port. */
  private async waitForPortsFile(running: Running): Promise<number> {
    const suffix = `_${running.pid}.ports`;
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      const { exitCode, signalCode } = running.child;
      if (exitCode !== null || signalCode !== null) {
        throw new Error(`nats-server exited during startup (${exitCode !== null ? `code ${exitCode}` : signalCode})`);
      }
      const name = (await fsp.readdir(this.dir)).find((f) => f.endsWith(suffix));
      if (name !== undefined) {
        try {
          const parsed: unknown = JSON.parse(await fsp.readFile(path.join(this.dir, name), 'utf8'));
          const port = portFromPortsFile(parsed);
          if (port !== undefined) return port;
        } catch {
          // partially written: retry
        }
      }
      if (Date.now() > deadline) throw new Error(`no ports file after ${READY_TIMEOUT_MS} ms`);
      await sleep(20);
    }
  }

  private async removePortsFiles(): Promise<void> {
    let entries: string[];
    try {
      entries = await fsp.readdir(this.dir);
    } catch {
      return;
    }
    await Promise.all(entries.filter((f) => f.endsWith('.ports')).map((f) => fsp.rm(path.join(this.dir, f), { force: true })));
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

/**
 * Waits (keeping the event loop alive: the child is unref'ed) until the process exits; false on
 * timeout.
 */
async function waitExit(running: Running, timeoutMs: number): Promise<boolean> {
  const ac = new AbortController();
  try {
    return await Promise.race([running.exited.then(() => true), sleep(timeoutMs, false, { signal: ac.signal })]);
  } finally {
    ac.abort();
  }
}

function portFromPortsFile(parsed: unknown): number | undefined {
  if (typeof parsed !== 'object' || parsed === null || !('nats' in parsed)) return undefined;
  const urls = parsed.nats;
  if (!Array.isArray(urls)) return undefined;
  for (const u of urls) {
    if (typeof u !== 'string') continue;
    const m = /:(\d+)$/.exec(u);
    if (m?.[1] !== undefined) return Number(m[1]);
  }
  return undefined;
}
