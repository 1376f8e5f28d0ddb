/**
 * A throwaway nats-server with JetStream in a temporary directory, for integration tests, the
 * benchmark and the `demo` command. Never touches a system server or port 4222.
 */
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { findNatsServer } from './binaries.js';
import { waitForPortOpen } from './ports.js';
import { LocalServer, type Running } from './server.js';

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

/** A throwaway nats-server with JetStream. Create with `LocalNats.start()`; always `destroy()` it. */
export class LocalNats extends LocalServer {
  /** JetStream store directory (`<dir>/js`), kept across stop/start/kill. */
  readonly storeDir: string;
  private readonly configFile: string | undefined;
  private readonly tlsArgs: string[];
  private readonly serverName: string;
  private portValue = 0;

  private constructor(dir: string, bin: string, configFile: string | undefined, tls: LocalNatsOptions['tls']) {
    super('nats-server', bin, dir, path.join(dir, 'nats.log'));
    this.storeDir = path.join(dir, 'js');
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

  /**
   * Starts the server (again): the first time on a random port, afterwards on the same port with
   * the same store directory, so clients reconnect to the same URL and JetStream data survives.
   * No-op when running.
   */
  async start(): Promise<void> {
    this.assertUsable();
    if (this.isRunning) return;
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
    await this.launch(args, async (running) => {
      const port = await this.waitForPortsFile(running);
      if (this.portValue !== 0 && port !== this.portValue) {
        throw new Error(`nats-server listens on port ${port}, expected ${this.portValue}`);
      }
      this.portValue = port;
      await waitForPortOpen(port, '127.0.0.1', READY_TIMEOUT_MS);
    });
  }

  /** Waits for `<exe>_<pid>.ports` (`{"nats":["nats://127.0.0.1:35131"]}`) and returns the port. */
  private async waitForPortsFile(running: Running): Promise<number> {
    const suffix = `_${running.pid}.ports`;
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      this.assertAlive(running);
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
