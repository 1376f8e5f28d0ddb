/**
 * A PostgreSQL failover under load (issue 17): a primary and a physical standby started by the
 * test, the relay given both (`postgres://…@primary,standby/app?target_session_attrs=read-write`),
 * events committed without pause, the primary SIGKILLed, the standby promoted.
 *
 * - With failover slots (PostgreSQL 17+): the standby keeps a synchronized copy of the slot
 *   (`sync_replication_slots`), the relay finds the promoted server by itself and streams on from
 *   that copy: every event the new primary holds is in the stream exactly once, nothing else is,
 *   and no `reconcile` was needed.
 * - Without (PostgreSQL 16 and older): the promoted server has no slot; the relay says it was lost
 *   and that `reconcile` is the way out; after `reconcile --yes` every event is in the stream once.
 *
 * Which events must arrive: replication is synchronous (`synchronous_standby_names` names the
 * standby, `synchronous_commit` is on), so every commit the writer saw acknowledged was flushed on
 * the standby before the kill, and survives the promotion. A commit in flight at the kill (the
 * writer saw an error) may or may not have reached the standby: the promoted server's outbox says
 * which, and that is the list the stream is checked against. With failover slots the primary also
 * holds decoded changes back until the standby has them (`synchronized_standby_slots`), so the
 * relay never publishes an event the promoted server does not have.
 */
import { test } from 'node:test';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import assert from 'node:assert/strict';
import type pg from 'pg';
import { TestEnv, embeddedPostgresBin, runCli, sleep, type StoredMessage, until } from './fixture.js';
import { LocalPostgres } from '../src/local/postgres.js';
import { findPostgresBin } from '../src/local/binaries.js';
import { connect } from '../src/util/db.js';
import { runReconcile } from '../src/commands/replay.js';
import { createLogger } from '../src/util/log.js';
import type { Relay } from '../src/relay/relay.js';

const SUBJECT = 'fraiseql.order.created';
const STANDBY = 'standby1';
/** events committed on the promoted server before the scenario ends */
const AFTER_PROMOTION = 100;

/** The major of the server binaries in `binDir`, read from its pg_ctl's version line. */
async function majorOf(binDir: string): Promise<number> {
  const { stdout } = await promisify(execFile)(join(binDir, 'pg_ctl'), ['--version']);
  return Number(/(\d+)(?:\.\d+)?/.exec(stdout)?.[1] ?? 0);
}

/** The default server when it is of the kind wanted, else npm's build of `fallback`. */
async function serverBinaries(wantFailoverSlots: boolean, fallback: number): Promise<{ binDir: string; major: number }> {
  const binDir = findPostgresBin();
  const major = await majorOf(binDir);
  if (major >= 17 === wantFailoverSlots) return { binDir, major };
  return { binDir: embeddedPostgresBin(fallback), major: fallback };
}

/**
 * Commits one event per transaction, without pause, through the two-host URL (so it too follows
 * the promotion), until stopped. `acked`: commits the server acknowledged; `inDoubt`: commits
 * whose answer never came (the server died under them).
 */
class Writer {
  readonly acked = new Set<number>();
  readonly inDoubt = new Set<number>();
  ackedAfterPromotion = 0;
  promoted = false;
  /** pg_current_wal_lsn() inside the last acknowledged transaction: its commit ends after it */
  lastLsn = '0/0';
  private stopped = false;
  readonly done: Promise<void>;

  constructor(private readonly url: string) {
    this.done = this.run();
  }

  stop(): Promise<void> {
    this.stopped = true;
    return this.done;
  }

  private async run(): Promise<void> {
    let n = 0;
    let client: pg.Client | null = null;
    while (!this.stopped) {
      try {
        client ??= await connect(this.url, { connectionTimeoutMillis: 5000 });
      } catch {
        await sleep(50); // no writable server yet (the primary is dead, the standby not yet promoted)
        continue;
      }
      const promoted = this.promoted;
      try {
        const r = await client.query<{ lsn: string }>(
          `SELECT fraiseql_relay.emit($1, jsonb_build_object('n', $2::int)), pg_current_wal_lsn()::text AS lsn`,
          [SUBJECT, n],
        );
        this.acked.add(n);
        this.lastLsn = r.rows[0]!.lsn;
        if (promoted) this.ackedAfterPromotion++;
      } catch {
        this.inDoubt.add(n);
        await client.end().catch(() => {});
        client = null;
      }
      n++;
    }
    await client?.end().catch(() => {});
  }
}

interface Setup {
  env: TestEnv;
  standby: LocalPostgres;
  slot: string;
  relay: Relay;
  writer: Writer;
}

/**
 * Primary, synchronous standby, relay on the two-host URL, the writer committing: everything up
 * to the moment before the kill.
 */
async function setUp(binDir: string, failoverSlots: boolean, cleanup: (() => Promise<void>)[]): Promise<Setup> {
  const env = await TestEnv.create({ pg: { binDir } });
  cleanup.push(() => env.destroy());
  await env.migrate();
  const slot = env.config().relay.slot;
  const standby = await LocalPostgres.standbyOf(env.pg, {
    slot: STANDBY,
    dbname: 'app',
    // 17+: the slot sync worker keeps a copy of every failover slot; it needs hot_standby_feedback and dbname in primary_conninfo
    settings: failoverSlots ? { sync_replication_slots: 'on', hot_standby_feedback: 'on' } : { hot_standby_feedback: 'on' },
  });
  cleanup.push(() => standby.destroy());
  // synchronous replication: a commit is acknowledged once the standby flushed it. Set with
  // ALTER SYSTEM after the base backup, so the promoted standby does not wait for a standby of its own.
  await env.pg.query(`ALTER SYSTEM SET synchronous_standby_names = '${STANDBY}'`);
  // 17+: logical walsenders send nothing the standby has not received (no event the promoted server lacks)
  if (failoverSlots) await env.pg.query(`ALTER SYSTEM SET synchronized_standby_slots = '${STANDBY}'`);
  await env.pg.query(`SELECT pg_reload_conf()`);
  await env.pg.waitFor(
    `SELECT EXISTS (SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND sync_state = 'sync') AS ok`,
    [STANDBY],
    'the standby to be synchronous',
  );

  env.databaseUrl = `postgres://postgres@127.0.0.1:${env.pg.port},127.0.0.1:${standby.port}/app?target_session_attrs=read-write`;
  const relay = await env.startRelay();
  cleanup.unshift(() => relay.stop());
  const writer = new Writer(env.databaseUrl);
  cleanup.unshift(() => writer.stop());
  return { env, standby, slot, relay, writer };
}

/** The events the promoted server holds: its outbox (event id → n). */
async function survivors(standby: LocalPostgres): Promise<Map<string, number>> {
  const r = await standby.query<{ id: string; n: number }>(
    `SELECT id::text AS id, (entity->>'n')::int AS n FROM fraiseql_relay.outbox`,
    [],
    'app',
  );
  return new Map(r.rows.map((row) => [row.id, row.n]));
}

/** The events in the stream: how many times each event id is there, and its n. */
function countIds(msgs: StoredMessage[]): { seen: Map<string, number>; nOf: Map<string, number> } {
  const seen = new Map<string, number>();
  const nOf = new Map<string, number>();
  for (const m of msgs.filter((x) => x.subject === SUBJECT)) {
    const id = m.body['event_id'] as string;
    seen.set(id, (seen.get(id) ?? 0) + 1);
    nOf.set(id, (m.body['entity'] as { n: number }).n);
  }
  return { seen, nOf };
}

async function runCleanup(cleanup: (() => Promise<void>)[]): Promise<void> {
  for (const c of cleanup) await c().catch(() => {});
}

test('failover slot (PostgreSQL 17+): the primary SIGKILLed under load, the standby promoted: the relay follows, every event once, no reconcile', async () => {
  const { binDir, major } = await serverBinaries(true, 17);
  const cleanup: (() => Promise<void>)[] = [];
  try {
    const { env, standby, slot, relay, writer } = await setUp(binDir, true, cleanup);
    const startLsn = (
      await env.pg.query<{ l: string }>(
        `SELECT confirmed_flush_lsn::text AS l FROM pg_replication_slots WHERE slot_name = $1`,
        [slot],
        'app',
      )
    ).rows[0]!.l;

    // events flowing, and the standby's copy of the slot synchronized past where the relay began
    await env.waitForStreamCount(200);
    await standby.waitFor(
      `SELECT coalesce(bool_and(synced AND NOT temporary AND confirmed_flush_lsn > $2::pg_lsn), false) AS ok
         FROM pg_replication_slots WHERE slot_name = $1`,
      [slot, startLsn],
      'the synchronized slot on the standby to move past the start',
    );
    const syncedAt = (
      await standby.query<{ l: string }>(`SELECT confirmed_flush_lsn::text AS l FROM pg_replication_slots WHERE slot_name = $1`, [slot])
    ).rows[0]!.l;

    await env.pg.kill(); // SIGKILL, the writer still committing
    await standby.promote();
    writer.promoted = true;
    await until(`${AFTER_PROMOTION} commits on the promoted server`, () => writer.ackedAfterPromotion >= AFTER_PROMOTION, 60_000);
    await writer.stop();

    // done when the slot on the promoted server is confirmed past the last transaction: everything
    // before it is acknowledged by JetStream, and nothing is left to publish
    await standby.waitFor(
      `SELECT coalesce(bool_and(confirmed_flush_lsn > $2::pg_lsn), false) AS ok FROM pg_replication_slots WHERE slot_name = $1`,
      [slot, writer.lastLsn],
      'the relay to confirm the last transaction on the promoted server',
      60_000,
      'app',
    );
    const held = await survivors(standby);
    const { seen } = countIds(await env.readStream());
    const dups = [...seen.values()].reduce((a, c) => a + c - 1, 0);
    console.log(
      `PostgreSQL ${major} failover with a synchronized slot: committed ${held.size} (${writer.acked.size} acknowledged to the writer, ` +
        `${writer.inDoubt.size} in doubt at the kill), published ${seen.size}, duplicated ${dups}; ` +
        `the copy was synchronized up to ${syncedAt}; re-sent after the promotion and dropped by JetStream: ${relay.stats.duplicates ?? 0}`,
    );

    const ns = new Set(held.values());
    for (const n of writer.acked) assert.ok(ns.has(n), `acknowledged commit ${n} survived the promotion`);
    assert.equal(dups, 0, 'no event twice in the stream');
    assert.deepEqual(
      [...held.keys()].filter((id) => !seen.has(id)),
      [],
      'every event of the promoted server is in the stream',
    );
    assert.deepEqual(
      [...seen.keys()].filter((id) => !held.has(id)),
      [],
      'nothing in the stream that the promoted server does not hold',
    );
    // the relay streamed from the synchronized copy: nobody recreated the slot, the relay never stopped on it
    const s = (
      await standby.query<{ synced: boolean; failover: boolean; active: boolean }>(
        `SELECT synced, failover, active FROM pg_replication_slots WHERE slot_name = $1`,
        [slot],
      )
    ).rows;
    assert.deepEqual(s, [{ synced: true, failover: true, active: true }], 'the relay streams from the synchronized copy');
    assert.equal(relay.fatalError, null);
    assert.equal(relay.outbound?.lastError, null, 'the relay has nothing to report');
  } finally {
    await runCleanup(cleanup);
  }
});

test('no failover slot (PostgreSQL 16 and older): after the promotion the relay says the slot is lost and explains reconcile', async () => {
  const { binDir, major } = await serverBinaries(false, 16);
  const cleanup: (() => Promise<void>)[] = [];
  try {
    const { env, standby, slot, relay, writer } = await setUp(binDir, false, cleanup);
    await env.waitForStreamCount(200);
    // the relay has recorded what it streamed (every 2 s), and the standby has the record
    await standby.waitFor(
      `SELECT EXISTS (SELECT 1 FROM fraiseql_relay.relay_state WHERE slot = $1) AS ok`,
      [slot],
      'relay_state on the standby',
      30_000,
      'app',
    );

    await env.pg.kill();
    await standby.promote();
    writer.promoted = true;
    await until(`${AFTER_PROMOTION} commits on the promoted server`, () => writer.ackedAfterPromotion >= AFTER_PROMOTION, 60_000);
    await writer.stop();
    await until('the relay to report the lost slot', () => /reconcile/.test(relay.outbound?.lastError ?? ''), 30_000);
    const said = relay.outbound!.lastError!;
    assert.match(said, new RegExp(`replication slot "${slot}" does not exist on this server, but this relay streamed from it before`));
    assert.match(said, /failed over to a standby that had no synchronized copy/);
    assert.match(said, /run `fraiseql-relay reconcile --yes`/);
    assert.match(said, /Do not create it with `migrate`/);
    assert.equal(relay.fatalError, null, 'the relay waits for the slot (and streams again once reconcile recreated it)');

    // a relay (re)started now refuses with the same explanation
    await assert.rejects(env.startRelay(), (e: Error) => {
      assert.match(
        e.message,
        new RegExp(`^run refused: replication slot "${slot}" does not exist on this server, but this relay streamed from it before`),
      );
      assert.match(e.message, /run `fraiseql-relay reconcile --yes`/);
      return true;
    });
    // and migrate refuses to create it at the current position
    await assert.rejects(env.migrate(), (e: Error) => {
      assert.match(e.message, new RegExp(`^migrate refused: replication slot "${slot}" does not exist on this server`));
      assert.match(e.message, /run `fraiseql-relay reconcile --yes`/);
      return true;
    });
    // and check fails on the slot, saying the same
    const ck = await runCli(['check', '-c', env.configFile], env.env);
    assert.match(
      ck.stdout,
      new RegExp(`^FAIL\\s+slot\\s+${slot} is missing, but this relay streamed from it .*reconcile --yes, not migrate`, 'm'),
      ck.stdout,
    );
    // what the operator does: reconcile recreates the slot and re-publishes the retained outbox rows
    await runReconcile(env.config(), createLogger('silent'), { yes: true, force: false, margin: '5m' });
    // and the running relay streams from the recreated slot by itself: one more event arrives
    const before = await env.streamCount();
    const last = await connect(env.databaseUrl!);
    await last.query(`SELECT fraiseql_relay.emit($1, jsonb_build_object('n', -1))`, [SUBJECT]).finally(() => last.end());
    await env.waitForStreamCount(before + 1, 30_000);

    const held = await survivors(standby);
    const { seen, nOf } = countIds(await env.readStream());
    const dups = [...seen.values()].reduce((a, c) => a + c - 1, 0);
    // without synchronized_standby_slots the relay may publish a commit the standby never received:
    // only one in doubt at the kill can be such a phantom
    const phantoms = [...seen.keys()].filter((id) => !held.has(id) && nOf.get(id) !== -1);
    console.log(
      `PostgreSQL ${major} failover without a failover slot, then reconcile: committed ${held.size} (${writer.acked.size} acknowledged ` +
        `to the writer, ${writer.inDoubt.size} in doubt at the kill), published ${seen.size - phantoms.length}, duplicated ${dups}, ` +
        `published but lost with the old primary ${phantoms.length}`,
    );
    const ns = new Set(held.values());
    for (const n of writer.acked) assert.ok(ns.has(n), `acknowledged commit ${n} survived the promotion`);
    assert.equal(dups, 0, 'no event twice in the stream');
    assert.deepEqual(
      [...held.keys()].filter((id) => !seen.has(id)),
      [],
      'after reconcile every event of the promoted server is in the stream',
    );
    for (const id of phantoms)
      assert.ok(writer.inDoubt.has(nOf.get(id)!), `event ${nOf.get(id)} in the stream, not on the promoted server, was a commit in doubt`);
  } finally {
    await runCleanup(cleanup);
  }
});
