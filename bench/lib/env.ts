/**
 * The benchmark's own PostgreSQL and nats-server (src/local), the database it uses, and the
 * clean-up between repetitions: replication slots are created before a backlog and dropped
 * after use, streams are deleted and recreated.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import pg from 'pg';
import { connect, nanos, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { LocalPostgres } from '../../src/local/postgres.js';
import { LocalNats } from '../../src/local/nats.js';
import { loadConfig } from '../../src/config/load.js';
import { migrate } from '../../src/schema/migrate.js';
import { recordOwnedSql } from '../../src/schema/ownership.js';
import { createLogger } from '../../src/util/log.js';
import { nowMs, sleep } from './util.js';

export const ROOT = resolve(import.meta.dirname, '..', '..');

/** The subject every backlog event is emitted to, and the stream capturing it. */
export const STREAM = 'BENCH';
const STREAM_SUBJECTS = ['bench.>'];
export const SUBJECT = 'bench.order.created';
/** The relay's outbox publication (`[relay] publication` + `_outbox`). */
export const PUBLICATION = 'fraiseql_relay_outbox';

/** The relay's configuration for the benchmark; `extra` is appended (e.g. subscriptions). */
export function relayToml(opts: { slot?: string; stream?: string; subjects?: string[]; extra?: string }): string {
  return `
[project]
name = "bench"

[database]
url = "\${DATABASE_URL}"

[observers]
backend = "nats"
nats_url = "\${NATS_URL}"
${opts.extra ?? ''}
[relay]
listen = "127.0.0.1:0"
slot = "${opts.slot ?? 'fraiseql_relay'}"
publication = "fraiseql_relay"

[relay.stream]
name = "${opts.stream ?? STREAM}"
subjects = [${(opts.subjects ?? STREAM_SUBJECTS).map((s) => JSON.stringify(s)).join(', ')}]
`;
}

const BENCH_DB = 'bench';

export class BenchEnv {
  private constructor(
    readonly pg: LocalPostgres,
    readonly nats: LocalNats,
    readonly dir: string,
    readonly dbUrl: string,
    readonly nc: NatsConnection,
    readonly jsm: JetStreamManager,
    readonly db: pg.Client,
  ) {}

  static async create(extraSettings: Record<string, string> = {}): Promise<BenchEnv> {
    const [pgs, nats] = await Promise.all([
      LocalPostgres.start({
        settings: {
          ...extraSettings,
          max_replication_slots: '64',
          max_wal_senders: '64',
          max_wal_size: '8GB',
          checkpoint_timeout: '30min',
          max_connections: '200',
        },
      }),
      LocalNats.start(),
    ]);
    try {
      const dbUrl = await pgs.createDatabase(BENCH_DB);
      const dir = await mkdtemp(join(tmpdir(), 'fraiseql-relay-bench-'));
      const nc = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 200 });
      const jsm = await jetstreamManager(nc);
      const db = new pg.Client({ connectionString: dbUrl });
      db.on('error', () => {});
      await db.connect();
      return new BenchEnv(pgs, nats, dir, dbUrl, nc, jsm, db);
    } catch (err) {
      await Promise.all([pgs.destroy(), nats.destroy()]).catch(() => {});
      throw err;
    }
  }

  get env(): NodeJS.ProcessEnv {
    return { ...process.env, DATABASE_URL: this.dbUrl, NATS_URL: this.nats.url };
  }

  async sql<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, params: unknown[] = []): Promise<R[]> {
    return (await this.db.query<R>(text, params)).rows;
  }

  /** Runs a statement on its own short-lived connection (for CALLs of procedures that COMMIT). */
  async sqlOwn<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, params: unknown[] = []): Promise<R[]> {
    return (await this.pg.query<R>(text, params, BENCH_DB)).rows;
  }

  /** Writes a relay configuration file; returns its path. */
  async writeConfig(name: string, toml: string): Promise<string> {
    const file = join(this.dir, `${name}.toml`);
    await writeFile(file, toml);
    return file;
  }

  /** `fraiseql-relay migrate` for the benchmark configuration (schema, outbox, publication, default slot). */
  async migrateRelay(): Promise<void> {
    const file = await this.writeConfig('migrate', relayToml({}));
    await migrate(loadConfig(file, this.env), createLogger('silent'));
  }

  /** A slot the relay may stream from: created, and recorded as the relay's (run refuses another's). */
  async createSlot(name: string): Promise<void> {
    await this.dropSlot(name);
    await this.sql(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [name]);
    await this.sql(recordOwnedSql('fraiseql_relay', 'slot', name, 'created'));
  }

  /** Drops a slot, waiting (bounded) for a walsender that still holds it to go away. */
  async dropSlot(name: string, timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const rows = await this.sql<{ active_pid: number | null }>(`SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, [
        name,
      ]);
      const row = rows[0];
      if (!row) return;
      if (row.active_pid !== null) {
        if (Date.now() > deadline) await this.sql(`SELECT pg_terminate_backend($1)`, [row.active_pid]);
        await sleep(50);
        continue;
      }
      try {
        await this.sql(`SELECT pg_drop_replication_slot($1)`, [name]);
        return;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await sleep(50);
      }
    }
  }

  async dropSlotsLike(prefix: string): Promise<void> {
    const rows = await this.sql<{ slot_name: string }>(`SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE $1`, [
      `${prefix}%`,
    ]);
    for (const r of rows) await this.dropSlot(r.slot_name);
  }

  async deleteStream(name: string): Promise<void> {
    try {
      await this.jsm.streams.delete(name);
    } catch (err) {
      if (!/stream not found/i.test((err as Error).message)) throw err;
    }
  }

  /** A fresh, empty stream configured as the relay creates its own (file storage, 10 min dedup window). */
  async freshStream(name = STREAM, subjects = STREAM_SUBJECTS): Promise<void> {
    await this.deleteStream(name);
    await this.jsm.streams.add({ name, subjects, duplicate_window: nanos(10 * 60_000) });
  }

  /** Messages stored in a stream (0 when it does not exist). */
  async streamCount(name = STREAM): Promise<number> {
    try {
      return (await this.jsm.streams.info(name)).state.messages;
    } catch {
      return 0;
    }
  }

  async streamState(name = STREAM): Promise<{ messages: number; bytes: number } | null> {
    try {
      const s = (await this.jsm.streams.info(name)).state;
      return { messages: s.messages, bytes: s.bytes };
    } catch {
      return null;
    }
  }

  /**
   * Polls the stream's message count every `everyMs` until it reaches `n`, `timeoutMs` passes or
   * `abort()` says stop. Returns when the first message and the last one were seen.
   */
  async watchStream(
    n: number,
    opts: { name?: string; everyMs?: number; timeoutMs: number; abort?: () => string | null },
  ): Promise<{ count: number; firstAt: number; firstCount: number; lastAt: number; complete: boolean; abort: string | null }> {
    const name = opts.name ?? STREAM;
    const every = opts.everyMs ?? 20;
    const deadline = nowMs() + opts.timeoutMs;
    let firstAt = 0;
    let firstCount = 0;
    let count = 0;
    let lastAt = 0;
    for (;;) {
      const c = await this.streamCount(name);
      const t = nowMs();
      if (c > count) {
        count = c;
        lastAt = t;
      }
      if (c > 0 && firstAt === 0) {
        firstAt = t;
        firstCount = c;
      }
      if (c >= n) return { count, firstAt, firstCount, lastAt, complete: true, abort: null };
      const why = opts.abort?.() ?? null;
      if (why) return { count, firstAt, firstCount, lastAt, complete: false, abort: why };
      if (t > deadline) return { count, firstAt, firstCount, lastAt: t, complete: false, abort: null };
      await sleep(every);
    }
  }

  async destroy(): Promise<void> {
    await this.db.end().catch(() => {});
    await this.nc.close().catch(() => {});
    await Promise.all([this.pg.destroy(), this.nats.destroy()]);
    await rm(this.dir, { recursive: true, force: true });
  }
}
