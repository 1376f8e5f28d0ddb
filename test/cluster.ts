/**
 * A JetStream cluster for tests: n nats-server processes on free ports, routes on loopback, each
 * with its own store, that a test can SIGKILL, restart (same ports, same store) and pause
 * (SIGSTOP/SIGCONT) one by one.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as natsConnect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { findNatsServer } from '../src/local/binaries.js';
import { getFreePort, waitForPortOpen } from '../src/local/ports.js';
import { sleep } from './fixture.js';

export class Cluster {
  private readonly children: (ChildProcess | null)[];

  private constructor(
    readonly dir: string,
    private readonly ports: number[],
    private readonly routes: number[],
  ) {
    this.children = ports.map(() => null);
  }

  /** Client URLs, one per server (`urls.join(',')` is a URL list for [observers] nats_url). */
  get urls(): string[] {
    return this.ports.map((p) => `nats://127.0.0.1:${p}`);
  }

  /** `n<i>`: the server name JetStream reports as a stream's or consumer's leader. */
  static nameOf(i: number): string {
    return `n${i}`;
  }

  static async start(n = 3): Promise<Cluster> {
    const dir = await mkdtemp(join(tmpdir(), 'fraiseql-relay-cluster-'));
    const ports = await Promise.all(Array.from({ length: n }, () => getFreePort()));
    const routes = await Promise.all(Array.from({ length: n }, () => getFreePort()));
    const cluster = new Cluster(dir, ports, routes);
    try {
      for (let i = 0; i < n; i++) cluster.spawn(i);
      await Promise.all(ports.map((p) => waitForPortOpen(p)));
      await cluster.waitForJetStream(n);
    } catch (err) {
      await cluster.destroy();
      throw err;
    }
    return cluster;
  }

  private spawn(i: number): void {
    const routeUrls = this.routes.map((p) => `nats://127.0.0.1:${p}`).join(',');
    // the process is killed by kill(), destroy() or the test's exit
    this.children[i] = spawn(
      findNatsServer(),
      [
        '-a',
        '127.0.0.1',
        '-p',
        String(this.ports[i]),
        '-js',
        '-sd',
        join(this.dir, `n${i}`),
        '--server_name',
        Cluster.nameOf(i),
        '--cluster_name',
        'TEST',
        '--cluster',
        `nats://127.0.0.1:${this.routes[i]}`,
        '--routes',
        routeUrls,
      ],
      { stdio: 'ignore' },
    );
  }

  /** JetStream answers once the cluster has elected its meta leader (a replicated stream can be made). */
  async waitForJetStream(replicas: number, timeoutMs = 30_000): Promise<void> {
    const c = await natsConnect({ servers: this.urls });
    try {
      for (const until = Date.now() + timeoutMs; ; await sleep(250)) {
        try {
          const m = await jetstreamManager(c, { timeout: 2000 });
          await m.streams.add({ name: 'PROBE', subjects: ['probe'], num_replicas: replicas });
          await m.streams.delete('PROBE');
          return;
        } catch (err) {
          if (Date.now() > until) throw err;
        }
      }
    } finally {
      await c.close();
    }
  }

  /** SIGKILL server i and wait for it to exit. */
  async kill(i: number): Promise<void> {
    const c = this.children[i];
    this.children[i] = null;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill('SIGCONT');
    await new Promise<void>((r) => {
      c.once('exit', () => r());
      c.kill('SIGKILL');
    });
  }

  /** Starts server i again, with its ports and its store. */
  async restart(i: number): Promise<void> {
    await this.kill(i);
    this.spawn(i);
    await waitForPortOpen(this.ports[i]!);
  }

  pause(i: number): void {
    this.children[i]?.kill('SIGSTOP');
  }

  resume(i: number): void {
    this.children[i]?.kill('SIGCONT');
  }

  async destroy(): Promise<void> {
    await Promise.all(this.children.map((_, i) => this.kill(i)));
    await rm(this.dir, { recursive: true, force: true });
  }
}
