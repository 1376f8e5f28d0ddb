/**
 * The process side of a throwaway server (nats-server, redis-server) in a temporary directory:
 * spawn it with its output appended to a log file, wait until it is ready, and stop, kill, pause,
 * resume and restart it at will; a forgotten server is killed and its directory removed when the
 * process exits. What the server is and how it is ready is the subclass's.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

import { registerExitCleanup } from './binaries.js';

/** A started server process. */
export interface Running {
  child: ChildProcess;
  pid: number;
  exited: Promise<void>;
}

export abstract class LocalServer {
  /** Server output, appended to by every start. */
  readonly logFile: string;
  private proc: Running | undefined;
  private destroying: Promise<void> | undefined;
  private readonly unregisterCleanup: () => void;

  /**
   * @param name the program, for messages (`nats-server`)
   * @param bin its path
   * @param dir the temporary directory: the server's, removed by destroy()
   */
  protected constructor(
    private readonly name: string,
    protected readonly bin: string,
    readonly dir: string,
    logFile: string,
  ) {
    this.logFile = logFile;
    this.unregisterCleanup = registerExitCleanup(() => this.destroySync());
  }

  /** Whether the server process is running. */
  get isRunning(): boolean {
    return this.proc !== undefined;
  }

  /** PID of the running server, or undefined. */
  get pid(): number | undefined {
    return this.proc?.pid;
  }

  /** Starts the server (again). No-op when it runs. */
  abstract start(): Promise<void>;

  /** Throws once destroy() was called: a destroyed server is not started again. */
  protected assertUsable(): void {
    if (this.destroying) throw new Error(`${this.constructor.name} was destroyed`);
  }

  /**
   * Spawns the server with `args` (its working directory {@link dir}, its output appended to
   * {@link logFile}) and waits for `ready`; when that fails, the process is killed and the error
   * carries the tail of what it logged.
   */
  protected async launch(args: string[], ready: (running: Running) => Promise<void>): Promise<void> {
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
      await ready(running);
    } catch (err) {
      signal(running, 'SIGKILL');
      await waitExit(running, 10_000);
      const log = await this.readLog(logStart);
      throw new Error(
        `${this.name} failed to start: ${err instanceof Error ? err.message : String(err)}\n` +
          `--- ${this.logFile} (tail) ---\n${log.trimEnd().split('\n').slice(-30).join('\n')}`,
        { cause: err },
      );
    }
  }

  /** Throws when the process has exited: for a `ready` check that polls. */
  protected assertAlive(running: Running): void {
    const { exitCode, signalCode } = running.child;
    if (exitCode !== null || signalCode !== null) {
      throw new Error(`${this.name} exited during startup (${exitCode !== null ? `code ${exitCode}` : signalCode})`);
    }
  }

  /** Graceful shutdown (SIGTERM, after a SIGCONT should it be paused), waiting for the exit; SIGKILL after `timeoutMs`. */
  async stop(timeoutMs = 10_000): Promise<void> {
    const running = this.proc;
    if (!running) return;
    signal(running, 'SIGCONT');
    signal(running, 'SIGTERM');
    if (!(await waitExit(running, timeoutMs))) {
      signal(running, 'SIGKILL');
      await waitExit(running, 10_000);
    }
    this.proc = undefined;
  }

  /** Simulates a crash: SIGKILL, wait for the process to exit. */
  async kill(): Promise<void> {
    const running = this.proc;
    if (!running) return;
    signal(running, 'SIGKILL');
    await waitExit(running, 10_000);
    this.proc = undefined;
  }

  /** SIGSTOP: the server keeps its connections but answers nothing until {@link resume}. */
  pause(): void {
    if (this.proc) signal(this.proc, 'SIGSTOP');
  }

  resume(): void {
    if (this.proc) signal(this.proc, 'SIGCONT');
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
        await this.kill();
      } finally {
        await fsp.rm(this.dir, { recursive: true, force: true, maxRetries: 3 });
        this.unregisterCleanup();
      }
    })();
    return this.destroying;
  }

  /** Synchronous last-resort cleanup (for `process.on('exit')`): SIGKILL, remove the directory. */
  destroySync(): void {
    if (this.proc) signal(this.proc, 'SIGKILL');
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

  private async readLog(fromByte: number): Promise<string> {
    try {
      const buf = await fsp.readFile(this.logFile);
      return buf.subarray(Math.min(fromByte, buf.length)).toString('utf8');
    } catch {
      return '(no log)';
    }
  }
}

function signal(running: Running, sig: NodeJS.Signals): void {
  if (running.child.exitCode !== null || running.child.signalCode !== null) return;
  try {
    process.kill(running.pid, sig);
  } catch {
    // already gone
  }
}

/** Waits (keeping the event loop alive: the child is unref'ed) until the process exits; false on timeout. */
async function waitExit(running: Running, timeoutMs: number): Promise<boolean> {
  const ac = new AbortController();
  try {
    return await Promise.race([running.exited.then(() => true), sleep(timeoutMs, false, { signal: ac.signal })]);
  } finally {
    ac.abort();
  }
}
