/**
 * Slot and publication names in a shared PostgreSQL cluster, and the first-install order.
 *
 * - A relay started before `migrate` (what a new install sees first when the Deployment starts
 *   with the migration) exits 2 at once saying to run migrate first; it never takes over nor loops.
 * - `run --migrate` on a fresh database migrates and runs, two replicas started together included.
 * - Two services of one cluster with the default names get their own slots, and both flow.
 * - An installation from 0.1 (slot and publication `fraiseql_relay`, no ownership record) keeps
 *   its slot under the default names: the events its slot still holds are published, migrate
 *   creates no new slot, check and the log say so, teardown refuses; the README's move to the new
 *   names loses and repeats nothing; a 0.1 slot of another database is never taken for this one's.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { TestEnv, RelayProcess, runCli, sleep } from './fixture.js';
import { loadConfig } from '../src/config/load.js';
import { Relay } from '../src/relay/relay.js';
import { createLogger } from '../src/util/log.js';

let env: TestEnv;

before(async () => {
  env = await TestEnv.create();
});

after(async () => {
  await env?.destroy();
});

async function query<R extends pg.QueryResultRow>(url: string, text: string, params: unknown[] = []): Promise<R[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<R>(text, params)).rows;
  } finally {
    await c.end();
  }
}

/** Every slot of the cluster: [name, database]. */
async function slots(): Promise<[string, string][]> {
  const rows = await env.pg.query<{ slot_name: string; database: string }>(
    `SELECT slot_name, database FROM pg_replication_slots ORDER BY slot_name`,
  );
  return rows.rows.map((r) => [r.slot_name, r.database]);
}

/** A service publishing `subject`; `project` and `relay` lines as given (none: the defaults). */
function serviceToml(opts: { project?: string; relay?: string; subject: string }): string {
  return `${opts.project ? `[project]\nname = "${opts.project}"\n\n` : ''}[database]
type = "postgresql"
url = "\${DATABASE_URL}"

[observers]
backend = "nats"
nats_url = "\${NATS_URL}"

[[observers.publish]]
mutation = "create_thing"
subject = "${opts.subject}"

[relay]
listen = "127.0.0.1:0"
${opts.relay ?? ''}
[relay.stream]
name = "FRAISEQL"
subjects = ["fraiseql.>"]
`;
}

async function writeToml(name: string, text: string): Promise<string> {
  const file = join(env.dir, name);
  await writeFile(file, text);
  return file;
}

function emit(url: string, subject: string, from: number, count: number): Promise<unknown> {
  return query(url, `SELECT fraiseql_relay.emit($1, jsonb_build_object('n', g)) FROM generate_series($2::int, $3::int) g`, [
    subject,
    from,
    from + count - 1,
  ]);
}

/** The `n` of every message on `subject` in the stream, sorted. */
async function arrived(subject: string): Promise<number[]> {
  return (await env.readStream())
    .filter((m) => m.subject === subject)
    .map((m) => (m.body['entity'] as { n: number }).n)
    .sort((a, b) => a - b);
}

async function waitArrived(subject: string, n: number, timeoutMs = 30_000): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  let got: number[] = [];
  while (Date.now() < deadline) {
    got = await arrived(subject);
    if (got.length >= n) return got;
    await sleep(200);
  }
  assert.fail(`${got.length} of ${n} events on ${subject} arrived`);
}

const range = (from: number, count: number) => Array.from({ length: count }, (_, i) => from + i);

async function stop(relay: RelayProcess): Promise<void> {
  if (relay.child.exitCode !== null || relay.child.signalCode !== null) return;
  relay.child.kill('SIGTERM');
  assert.equal(await relay.exited, 0, relay.output().slice(-3000));
}

test('first install: run before migrate exits 2 at once; run --migrate works; two services of one cluster get their own slots and both flow', async () => {
  const relays: RelayProcess[] = [];
  try {
    // service A, the fixture's: [project] name "test-service", database "app"; nothing migrated yet
    const t0 = Date.now();
    const early = await runCli(['run', '-c', env.configFile], env.env);
    assert.equal(early.code, 2, early.stdout + early.stderr);
    assert.match(
      early.stderr,
      /run refused: database "app" is not migrated for this relay: the relay's schema fraiseql_relay does not exist/,
    );
    assert.match(early.stderr, /run `fraiseql-relay migrate` first/);
    assert.match(early.stderr, /fraiseql-relay run --migrate/);
    assert.doesNotMatch(early.stdout, /took over|relay running|is active for PID/);
    assert.ok(Date.now() - t0 < 15_000, `exited at once (${Date.now() - t0} ms)`);
    assert.deepEqual(await slots(), [], 'nothing was created');

    // check: the derived names, and the slot missing
    const c0 = await runCli(['check', '-c', env.configFile], env.env);
    assert.equal(c0.code, 1, c0.stdout);
    assert.match(
      c0.stdout,
      /^ok\s+names\s+slot fraiseql_relay_test_service_app, publication fraiseql_relay_test_service_app \(the defaults, derived from the service name "test-service" \(\[project\] name\) and the database name "app"\)$/m,
    );
    assert.match(c0.stdout, /^FAIL\s+slot\s+fraiseql_relay_test_service_app is missing: run fraiseql-relay migrate/m);

    // service B: database "billing", no [project] (the service is the database); two replicas
    // started together on the fresh database, as a Deployment's pods do, each with run --migrate
    const urlB = await env.pg.createDatabase('billing');
    const fileB = await writeToml('billing.toml', serviceToml({ subject: 'fraiseql.billing.charged' }));
    const envB = { ...env.env, DATABASE_URL: urlB };
    const b1 = new RelayProcess(join(env.dir, 'b1.log'), ['run', '--migrate', '-c', fileB], envB);
    const b2 = new RelayProcess(join(env.dir, 'b2.log'), ['run', '--migrate', '-c', fileB], envB);
    relays.push(b1, b2);
    await Promise.all([b1.waitForLog('relay running'), b2.waitForLog('relay running')]);
    assert.match(b1.output() + b2.output(), /running migrate before starting/);

    // service A the usual way: migrate, then run
    const m = await runCli(['migrate', '-c', env.configFile], env.env);
    assert.equal(m.code, 0, m.stdout + m.stderr);
    const a = env.spawnRelay('a');
    relays.push(a);
    await a.waitForLog('relay running');

    assert.deepEqual(await slots(), [
      ['fraiseql_relay_billing', 'billing'],
      ['fraiseql_relay_test_service_app', 'app'],
    ]);
    await emit(env.dbUrl, 'fraiseql.order.created', 1, 20);
    await emit(urlB, 'fraiseql.billing.charged', 1, 20);
    assert.deepEqual(await waitArrived('fraiseql.order.created', 20), range(1, 20));
    assert.deepEqual(await waitArrived('fraiseql.billing.charged', 20), range(1, 20));

    for (const [file, vars, slot] of [
      [env.configFile, env.env, 'fraiseql_relay_test_service_app'],
      [fileB, envB, 'fraiseql_relay_billing'],
    ] as const) {
      const c = await runCli(['check', '-c', file], vars);
      assert.equal(c.code, 0, c.stdout);
      assert.match(c.stdout, new RegExp(`^ok\\s+slot\\s+${slot}: plugin pgoutput, active`, 'm'));
      assert.match(c.stdout, /^ok\s+ownership\s+slot .*recorded as this relay's/m);
    }
    await sleep(300);
    assert.equal((await arrived('fraiseql.order.created')).length, 20, 'exactly once');
    assert.equal((await arrived('fraiseql.billing.charged')).length, 20, 'exactly once');
  } finally {
    for (const r of relays) await stop(r);
  }
});

test('an installation from 0.1 keeps its fraiseql_relay slot under the default names, and moves to the new ones without losing or repeating an event', async () => {
  const subject = 'fraiseql.legacy.event';
  const url = await env.pg.createDatabase('legacy');
  const vars = { ...env.env, DATABASE_URL: url };
  const OLD_NAMES = 'slot = "fraiseql_relay"\npublication = "fraiseql_relay"\n';
  const NEW_NAMES = 'slot = "fraiseql_relay_legacy_service_legacy"\npublication = "fraiseql_relay_legacy_service_legacy"\n';
  const oldFile = await writeToml('legacy-old.toml', serviceToml({ project: 'legacy-service', relay: OLD_NAMES, subject }));
  const newFile = await writeToml('legacy.toml', serviceToml({ project: 'legacy-service', subject }));
  const movingFile = await writeToml('legacy-moving.toml', serviceToml({ project: 'legacy-service', relay: NEW_NAMES, subject }));
  assert.equal(loadConfig(newFile, vars).relay.slot, 'fraiseql_relay_legacy_service_legacy', 'the default name');
  const relays: RelayProcess[] = [];
  const spawn = (name: string, file: string) => {
    const r = new RelayProcess(join(env.dir, `${name}.log`), ['run', '-c', file], vars);
    relays.push(r);
    return r;
  };
  try {
    // what 0.1 left: slot and publication fraiseql_relay, streamed from (relay_state), no ownership record
    assert.equal((await runCli(['migrate', '-c', oldFile], vars)).code, 0);
    const r0 = spawn('legacy-0', oldFile);
    await r0.waitForLog('relay running');
    await emit(url, subject, 1, 5);
    await waitArrived(subject, 5);
    await stop(r0);
    await query(url, `DROP TABLE fraiseql_relay.owned_objects; DELETE FROM fraiseql_relay.migrations WHERE id = 7`);
    assert.equal((await query(url, `SELECT 1 FROM fraiseql_relay.relay_state WHERE slot = 'fraiseql_relay'`)).length, 1);
    // committed while no relay runs: only the old slot has these
    await emit(url, subject, 6, 5);

    // another database's 0.1 slot is never taken for this one's: a neighbour gets its own
    const neighbour = await env.pg.createDatabase('neighbour');
    const nFile = await writeToml('neighbour.toml', serviceToml({ subject: 'fraiseql.neighbour.event' }));
    const nm = await runCli(['migrate', '-c', nFile], { ...env.env, DATABASE_URL: neighbour });
    assert.equal(nm.code, 0, nm.stdout + nm.stderr);
    assert.doesNotMatch(nm.stdout + nm.stderr, /fraiseql-relay 0\.1/);
    assert.ok((await slots()).some(([s, db]) => s === 'fraiseql_relay_neighbour' && db === 'neighbour'));

    // 0.2 with the default names: check says what happens and how to move
    const c = await runCli(['check', '-c', newFile], vars);
    assert.match(
      c.stdout,
      /^warn\s+names\s+this installation was made by fraiseql-relay 0\.1: it keeps streaming from its replication slot "fraiseql_relay" and publication "fraiseql_relay" \(this relay's\) instead of the default names "fraiseql_relay_legacy_service_legacy"/m,
    );
    assert.match(c.stdout, /To move to the new names/);
    assert.match(c.stdout, /^ok\s+plugin/m);

    // migrate keeps the old slot (records it), creates no new one, and says so
    const m = await runCli(['migrate', '-c', newFile], vars);
    assert.equal(m.code, 0, m.stdout + m.stderr);
    assert.match(m.stdout + m.stderr, /keeps streaming from its replication slot \\?"fraiseql_relay\\?"/);
    assert.deepEqual(
      (await slots()).filter(([, db]) => db === 'legacy'),
      [['fraiseql_relay', 'legacy']],
      'no new, empty slot',
    );
    assert.deepEqual(await query(url, `SELECT kind, name, origin FROM fraiseql_relay.owned_objects ORDER BY kind`), [
      { kind: 'publication', name: 'fraiseql_relay_outbox', origin: 'adopted' },
      { kind: 'slot', name: 'fraiseql_relay', origin: 'adopted' },
    ]);

    // teardown with the default names refuses: it would drop nothing and leave the old slot holding WAL
    const td = await runCli(['teardown', '--yes', '-c', newFile], vars);
    assert.equal(td.code, 2, td.stdout + td.stderr);
    assert.match(td.stderr, /teardown refused: this relay still streams from fraiseql-relay 0\.1's replication slot "fraiseql_relay"/);
    assert.match(td.stderr, /slot = "fraiseql_relay", publication = "fraiseql_relay"/);

    // run streams from the old slot: the events committed while no relay ran arrive, none lost
    let r = spawn('legacy-1', newFile);
    await r.waitForLog('relay running');
    assert.match(r.output(), /keeps streaming from its replication slot/);
    assert.deepEqual(await waitArrived(subject, 10), range(1, 10));

    // the move, as README "Slot and publication names" describes it: create the new names while
    // the relay runs on the old slot (a restart meanwhile keeps the old slot) ...
    const mv = await runCli(['migrate', '-c', movingFile], vars);
    assert.equal(mv.code, 0, mv.stdout + mv.stderr);
    await emit(url, subject, 11, 3);
    await stop(r);
    r = spawn('legacy-2', newFile);
    await r.waitForLog('relay running');
    assert.match(r.output(), /keeps streaming from its replication slot/, 'the new slot is not used before the move is done');
    await emit(url, subject, 14, 3);
    assert.deepEqual(await waitArrived(subject, 16), range(1, 16));
    // ... once the old slot has caught up with the new one's start, stop, advance, drop the old
    const caughtUp = async () =>
      (
        await query<{ ok: boolean }>(
          url,
          `SELECT o.confirmed_flush_lsn >= n.confirmed_flush_lsn AS ok FROM pg_replication_slots o, pg_replication_slots n
            WHERE o.slot_name = 'fraiseql_relay' AND n.slot_name = 'fraiseql_relay_legacy_service_legacy'`,
        )
      )[0]?.ok === true;
    for (const until = Date.now() + 20_000; !(await caughtUp()) && Date.now() < until;) await sleep(200);
    assert.ok(await caughtUp(), 'the old slot caught up');
    await stop(r);
    await emit(url, subject, 17, 2); // while stopped: the old slot has them, and the new one from its start
    await query(
      url,
      `SELECT pg_replication_slot_advance('fraiseql_relay_legacy_service_legacy', confirmed_flush_lsn)
         FROM pg_replication_slots WHERE slot_name = 'fraiseql_relay'`,
    );
    const drop = await runCli(['teardown', '--yes', '-c', oldFile], vars);
    assert.equal(drop.code, 0, drop.stdout + drop.stderr);
    assert.deepEqual(
      (await slots()).filter(([, db]) => db === 'legacy'),
      [['fraiseql_relay_legacy_service_legacy', 'legacy']],
    );

    // the default names again: the new slot, from exactly where the old one stopped
    const relay = new Relay(loadConfig(newFile, vars), createLogger('silent'), { backoffMinMs: 100, backoffMaxMs: 1000 });
    try {
      await relay.start();
      await emit(url, subject, 19, 2);
      assert.deepEqual(await waitArrived(subject, 20), range(1, 20));
      const ck = await runCli(['check', '-c', newFile], vars);
      assert.equal(ck.code, 0, ck.stdout);
      assert.match(
        ck.stdout,
        /^ok\s+names\s+slot fraiseql_relay_legacy_service_legacy, publication fraiseql_relay_legacy_service_legacy \(the defaults/m,
      );
      await sleep(500);
      assert.deepEqual(await arrived(subject), range(1, 20), 'every event exactly once');
      // nothing was lost (17, 18 were committed while stopped) and nothing re-sent (11–16 were published from the old slot)
      assert.deepEqual({ published: relay.stats.published, duplicates: relay.stats.duplicates ?? 0 }, { published: 4, duplicates: 0 });
    } finally {
      await relay.stop();
    }
  } finally {
    for (const r of relays) await stop(r);
  }
});

test('a derived name that changed (the service renamed) is not answered with a new, empty slot: migrate and run refuse, check says why', async () => {
  const url = await env.pg.createDatabase('renamed');
  const vars = { ...env.env, DATABASE_URL: url };
  const before = await writeToml('renamed-before.toml', serviceToml({ project: 'shop', subject: 'fraiseql.shop.event' }));
  const after = await writeToml('renamed-after.toml', serviceToml({ project: 'storefront', subject: 'fraiseql.shop.event' }));
  assert.equal((await runCli(['migrate', '-c', before], vars)).code, 0);
  const old = 'fraiseql_relay_shop_renamed';
  assert.ok((await slots()).some(([s]) => s === old));

  for (const args of [['migrate'], ['run']]) {
    const r = await runCli([...args, '-c', after], vars);
    assert.equal(r.code, 2, `${args[0]}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, new RegExp(`${args[0]} refused: this relay's replication slot "${old}" exists`));
    assert.match(r.stderr, /is now "fraiseql_relay_storefront_renamed"/);
    assert.match(r.stderr, new RegExp(`write slot = "${old}"`));
    assert.match(r.stderr, /Nothing was changed/);
  }
  assert.ok(!(await slots()).some(([s]) => s === 'fraiseql_relay_storefront_renamed'), 'no new slot');
  const c = await runCli(['check', '-c', after], vars);
  assert.equal(c.code, 1, c.stdout);
  assert.match(c.stdout, new RegExp(`^FAIL\\s+names\\s+this relay's replication slot "${old}" exists`, 'm'));

  // pinning the old names (what the message says) works
  const pinned = await writeToml(
    'renamed-pinned.toml',
    serviceToml({ project: 'storefront', subject: 'fraiseql.shop.event', relay: `slot = "${old}"\npublication = "${old}"\n` }),
  );
  const m = await runCli(['migrate', '-c', pinned], vars);
  assert.equal(m.code, 0, m.stdout + m.stderr);
  const ok = await runCli(['check', '-c', pinned], vars);
  assert.match(ok.stdout, new RegExp(`^ok\\s+names\\s+slot ${old}, publication ${old} \\(as written under \\[relay\\]\\)`, 'm'));
  assert.match(ok.stdout, new RegExp(`^ok\\s+slot\\s+${old}: plugin pgoutput, inactive`, 'm'));
  await query(url, `SELECT pg_drop_replication_slot($1)`, [old]);
});
