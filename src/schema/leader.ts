import { hostname } from 'node:os';
import type pg from 'pg';
import { connectionConfig, DbClient } from '../util/db.js';
import type { Logger } from '../util/log.js';
import { errorMessage, postgresConnectError } from '../util/errors.js';

/**
 * The leader connection's `application_name`: `fraiseql-relay leader <pid> <host>`, which is how
 * `status` names the relay holding the lock and those standing by (PostgreSQL keeps 63 bytes: the
 * pid comes first so that a long host name is what gets cut).
 */
function leaderApplicationName(): string {
  return `fraiseql-relay leader ${process.pid} ${hostname()}`;
}

/**
 * Exactly one active relay per slot, with no infrastructure beyond PostgreSQL: the active one
 * holds a session advisory lock on a dedicated connection. When that process dies (SIGKILL) or
 * its connection is cut, PostgreSQL releases the lock and a standby polling for it takes over.
 * The slot's own single-consumer rule ("replication slot is active for PID n") is the second
 * fence against two writers.
 */
export class LeaderLock {
  private client: pg.Client | null = null;
  private stopped = false;
  private timer: NodeJS.Timeout | null = null;
  private held = false;

  constructor(
    private readonly url: string,
    private readonly slot: string,
    private readonly log: Logger,
    private readonly onAcquire: () => void,
    private readonly onLose: (reason: string) => void,
    private readonly pollMs = 2000,
    /** told after each attempt whether PostgreSQL answered (null) or why not */
    private readonly onReach: (problem: string | null) => void = () => {},
    /**
     * what the lock is for: `active` (the slot's relay, the default) or another namespace (an
     * ordered subscription's only consumer); the lock is (namespace, `slot`)
     */
    private readonly namespace = 'active',
  ) {}

  get isActive(): boolean {
    return this.held;
  }

  start(): void {
    void this.attempt();
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.attempt(), this.pollMs);
  }

  private async attempt(): Promise<void> {
    if (this.stopped || this.held) return;
    try {
      if (!this.client) {
        const c = new DbClient(connectionConfig(this.url, { application_name: leaderApplicationName() }));
        c.on('error', () => {});
        c.on('end', () => this.lost('the leader connection to PostgreSQL closed'));
        await c.connect().catch((err: unknown) => {
          throw postgresConnectError(err, this.url);
        });
        // detect a cut connection quickly even when idle
        this.client = c;
      }
      const r = await this.client.query<{ ok: boolean }>(`SELECT pg_try_advisory_lock(hashtext($2), hashtext($1)) AS ok`, [
        this.slot,
        `fraiseql-relay/${this.namespace}`,
      ]);
      if (r.rows[0]?.ok) {
        this.held = true;
        this.log.info(
          { slot: this.slot },
          this.namespace === 'active' ? 'took over: this relay is active' : `took over: this relay holds ${this.namespace} ${this.slot}`,
        );
        this.onAcquire();
        this.onReach(null);
        this.watch();
        return;
      }
      this.onReach(null);
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, 'leader election: PostgreSQL unreachable');
      this.onReach(errorMessage(err));
      const c = this.client;
      this.client = null;
      await c?.end().catch(() => {});
    }
    this.schedule();
  }

  /** While active, a cheap query proves the lock's connection is still there. */
  private watch(): void {
    if (this.stopped || !this.held) return;
    this.timer = setTimeout(() => {
      const c = this.client;
      if (!c) return;
      c.query('SELECT 1').then(
        () => this.watch(),
        (err: unknown) => this.lost(`the leader connection failed: ${errorMessage(err)}`),
      );
    }, this.pollMs);
  }

  private lost(reason: string): void {
    const c = this.client;
    this.client = null;
    c?.end().catch(() => {});
    if (!this.held) return;
    this.held = false;
    if (this.stopped) return;
    this.log.warn({ reason }, 'lost the leader lock: standing by');
    this.onLose(reason);
    this.schedule();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    const c = this.client;
    this.client = null;
    this.held = false;
    await c?.end().catch(() => {});
  }
}
