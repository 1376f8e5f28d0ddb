/**
 * Two services whose databases share a PostgreSQL cluster, both naming their slot `fraiseql_relay`
 * (every service's default in 0.1; the default names now differ, see slot-names.test.ts, so the
 * collision needs names written in [relay]): service 1 migrates and publishes; service 2's `migrate`, `teardown --yes`,
 * `reconcile --yes` and `run` all refuse (exit 2) naming the other owner, without touching
 * service 1's slot, and service 1's events keep flowing. Then the same within one database (two
 * relay schemas), and the adoption of an installation migrated before ownership was recorded.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { TestEnv, BASE_TOML, runCli, sleep } from './fixture.js';
import { parseConfig } from '../src/config/load.js';
import { migrate, migrationPlan } from '../src/schema/migrate.js';
import { planStatements } from '../src/schema/plan.js';
import { createLogger } from '../src/util/log.js';

const log = createLogger('silent');
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

interface SlotRow {
  slot_name: string;
  database: string;
  active: boolean;
  confirmed_flush_lsn: string;
}

async function slots(): Promise<SlotRow[]> {
  return (
    await env.pg.query<SlotRow>(
      `SELECT slot_name, database, active, confirmed_flush_lsn::text FROM pg_replication_slots ORDER BY slot_name, database`,
    )
  ).rows;
}

/** The fixture's service with 0.1's names written under [relay]. */
const SHARED_NAMES = BASE_TOML.replace('[relay]\n', '[relay]\nslot = "fraiseql_relay"\npublication = "fraiseql_relay"\n');

test('two databases of one cluster, both with the slot name fraiseql_relay: service 2 refuses everything, service 1 keeps flowing', async () => {
  // service 1: database "app" (the fixture's), migrated and running
  await env.writeConfig(SHARED_NAMES);
  await env.migrate();
  const relay1 = env.spawnRelay('service1');
  try {
    await relay1.waitForLog('relay running');
    await env.sql(`SELECT fraiseql_relay.emit('fraiseql.order.created', jsonb_build_object('n', 0))`);
    await env.waitForStreamCount(1);

    // service 2: database "app2" of the same cluster, the same slot and publication names
    const url2 = await env.pg.createDatabase('app2');
    const file2 = join(env.dir, 'service2.toml');
    await writeFile(file2, SHARED_NAMES.replace('name = "test-service"', 'name = "service-2"'));
    const env2 = { ...env.env, DATABASE_URL: url2 };
    const slot1 = await slots();
    assert.deepEqual(
      slot1.map((s) => [s.slot_name, s.database]),
      [['fraiseql_relay', 'app']],
    );

    const refusals: Record<string, string[]> = {
      migrate: ['migrate'],
      'migrate --dry-run': ['migrate', '--dry-run'],
      teardown: ['teardown', '--yes'],
      reconcile: ['reconcile', '--yes'],
      'reconcile --force': ['reconcile', '--yes', '--force'],
      run: ['run'],
    };
    for (const [what, args] of Object.entries(refusals)) {
      const r = await runCli([...args, '-c', file2], env2);
      assert.equal(r.code, 2, `${what}: exit 2\n${r.stdout}\n${r.stderr}`);
      assert.match(r.stderr, /refused/, what);
      assert.match(
        r.stderr,
        /replication slot "fraiseql_relay" belongs to database "app"/,
        `${what} names the other database:\n${r.stderr}`,
      );
      assert.match(r.stderr, /not to "app2"/, what);
      assert.match(r.stderr, /Nothing was changed/, what);
      if (what !== 'teardown') assert.match(r.stderr, /slot = "fraiseql_relay_app2"/, `${what} says what to do:\n${r.stderr}`);
      assert.doesNotMatch(r.stdout, /relay running/, what);
      // service 1's slot is untouched, and still streams
      const now = await slots();
      assert.deepEqual(
        now.map((s) => [s.slot_name, s.database]),
        [['fraiseql_relay', 'app']],
        `${what} left service 1's slot alone`,
      );
    }
    // nothing was created in service 2's database either
    assert.deepEqual(await query(url2, `SELECT nspname FROM pg_namespace WHERE nspname = 'fraiseql_relay'`), []);
    assert.deepEqual(await query(url2, `SELECT pubname FROM pg_publication`), []);

    // check says the same, and exits 1
    const c = await runCli(['check', '-c', file2], env2);
    assert.equal(c.code, 1, c.stdout + c.stderr);
    assert.match(c.stdout, /^FAIL\s+ownership\s+.*replication slot "fraiseql_relay" belongs to database "app"/m);
    assert.match(c.stdout, /^FAIL\s+slot\s+fraiseql_relay is not this relay's/m);

    // service 1's events keep flowing: 100 more, all published
    const before = await env.streamCount();
    await env.sql(`SELECT fraiseql_relay.emit('fraiseql.order.created', jsonb_build_object('n', g)) FROM generate_series(1, 100) g`);
    await env.waitForStreamCount(before + 100, 30_000);
    await sleep(300);
    const ns = (await env.readStream()).map((m) => (m.body['entity'] as { n: number }).n);
    assert.equal(ns.length, 101, 'every event of service 1 exactly once');
    assert.deepEqual(
      [...new Set(ns)].sort((a, b) => a - b),
      Array.from({ length: 101 }, (_, i) => i),
    );
    const [s1] = await slots();
    assert.equal(s1?.active, true, "service 1's relay still streams from its slot");

    // service 2 with its own slot name (what the refusal said) works
    await writeFile(
      file2,
      SHARED_NAMES.replace('name = "test-service"', 'name = "service-2"').replace(
        'slot = "fraiseql_relay"',
        'slot = "fraiseql_relay_app2"',
      ),
    );
    const m = await runCli(['migrate', '-c', file2], env2);
    assert.equal(m.code, 0, m.stdout + m.stderr);
    assert.deepEqual(
      (await slots()).map((s) => [s.slot_name, s.database]),
      [
        ['fraiseql_relay', 'app'],
        ['fraiseql_relay_app2', 'app2'],
      ],
    );
    const owned2 = await query<{ kind: string; name: string; origin: string }>(
      url2,
      `SELECT kind, name, origin FROM fraiseql_relay.owned_objects ORDER BY kind, name`,
    );
    assert.deepEqual(owned2, [
      { kind: 'publication', name: 'fraiseql_relay_outbox', origin: 'created' },
      { kind: 'slot', name: 'fraiseql_relay_app2', origin: 'created' },
    ]);
    // and its teardown drops only its own slot
    const td = await runCli(['teardown', '--yes', '-c', file2], env2);
    assert.equal(td.code, 0, td.stdout + td.stderr);
    assert.deepEqual(
      (await slots()).map((s) => [s.slot_name, s.database]),
      [['fraiseql_relay', 'app']],
    );
    assert.deepEqual(await query(url2, `SELECT kind, name FROM fraiseql_relay.owned_objects`), [], 'teardown forgets what it dropped');

    relay1.child.kill('SIGTERM');
    assert.equal(await relay1.exited, 0, relay1.output().slice(-2000));
  } finally {
    if (relay1.child.exitCode === null && relay1.child.signalCode === null) await relay1.kill();
    await env.writeConfig(BASE_TOML);
  }
});

/** A config for a database of the fixture's cluster; `relay` goes into [relay]. */
function configFor(url: string, relay: string) {
  return parseConfig(
    `[project]\nname = "own"\n[database]\nurl = "\${DATABASE_URL}"\n[observers]\nnats_url = "nats://127.0.0.1:4222"\n` +
      `[[observers.publish]]\nmutation = "create_order"\nsubject = "fraiseql.order.created"\n[relay]\n${relay}\n`,
    'own.toml',
    { DATABASE_URL: url },
  );
}

test('two relay schemas in one database with the same slot and publication names: the second refuses, naming the first', async () => {
  const url = await env.pg.createDatabase('shared');
  const a = configFor(url, 'schema = "relay_a"\nslot = "shared_slot"\npublication = "shared_pub"');
  const b = configFor(url, 'schema = "relay_b"\nslot = "shared_slot"\npublication = "shared_pub"');
  await migrate(a, log);
  await assert.rejects(migrate(b, log), (err: Error & { exitCode?: number }) => {
    assert.equal(err.exitCode, 2);
    assert.match(err.message, /^migrate refused/);
    assert.match(err.message, /publication "shared_pub_outbox" belongs to the relay of schema relay_a in this database/);
    assert.match(err.message, /replication slot "shared_slot" belongs to this database, but to the relay of schema relay_a/);
    assert.match(err.message, /slot = "shared_slot_relay_b"/);
    assert.match(err.message, /publication = "shared_pub_relay_b"/);
    return true;
  });
  assert.deepEqual(await query(url, `SELECT nspname FROM pg_namespace WHERE nspname = 'relay_b'`), [], 'nothing was created');
  const pub = await query(url, `SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = 'shared_pub_outbox'`);
  assert.deepEqual(pub, [{ schemaname: 'relay_a', tablename: 'outbox' }], "relay_a's publication was not altered");
  await query(url, `SELECT pg_drop_replication_slot('shared_slot')`);
});

test('a slot of this database that the relay did not create is refused', async () => {
  const url = await env.pg.createDatabase('handmade');
  await query(url, `SELECT pg_create_logical_replication_slot('handmade_slot', 'pgoutput')`);
  const config = configFor(url, 'slot = "handmade_slot"');
  await assert.rejects(
    migrationPlan(config),
    /replication slot "handmade_slot" belongs to this database \(handmade\), but this relay \(schema fraiseql_relay\) did not create it/,
  );
  await assert.rejects(migrate(config, log), /did not create it/);
  assert.deepEqual(await query(url, `SELECT nspname FROM pg_namespace WHERE nspname = 'fraiseql_relay'`), [], 'nothing was created');
  await query(url, `SELECT pg_drop_replication_slot('handmade_slot')`);
});

/** Turns a migrated database back into one migrated before sql/007 (no ownership record). */
async function beforeOwnership(url: string): Promise<void> {
  await query(url, `DROP TABLE fraiseql_relay.owned_objects; DELETE FROM fraiseql_relay.migrations WHERE id = 7`);
}

test('an installation migrated before ownership was recorded is adopted: by its relay_state, or by its publication', async () => {
  for (const proof of ['relay_state', 'publication'] as const) {
    const url = await env.pg.createDatabase(`old_${proof}`);
    const slot = `old_${proof}_slot`;
    const config = configFor(url, `slot = "${slot}"`);
    await migrate(config, log);
    await beforeOwnership(url);
    if (proof === 'relay_state') await query(url, `INSERT INTO fraiseql_relay.relay_state (slot, holder) VALUES ($1, 'old/1')`, [slot]);

    const plan = planStatements(await migrationPlan(config));
    const adopted = (kind: string, name: string) =>
      `INSERT INTO "fraiseql_relay".owned_objects (kind, name, origin) VALUES ('${kind}', '${name}', 'adopted') ON CONFLICT (kind, name) DO NOTHING`;
    assert.ok(plan.includes(adopted('slot', slot)), plan.join('\n'));
    const pub = `${config.relay.publication}_outbox`;
    assert.ok(plan.includes(adopted('publication', pub)), plan.join('\n'));
    assert.ok(!plan.some((s) => s.includes('pg_create_logical_replication_slot')), 'the slot is kept, not recreated');

    const r = await migrate(config, log);
    assert.deepEqual(r.applied, ['007_owned_objects.sql']);
    assert.deepEqual(r.adopted.sort(), [`publication ${pub}`, `slot ${slot}`]);
    const owned = await query(url, `SELECT kind, name, origin FROM fraiseql_relay.owned_objects ORDER BY kind`);
    assert.deepEqual(owned, [
      { kind: 'publication', name: pub, origin: 'adopted' },
      { kind: 'slot', name: slot, origin: 'adopted' },
    ]);
    const again = await migrate(config, log);
    assert.deepEqual(again.adopted, [], 'recorded once');
    await query(url, `SELECT pg_drop_replication_slot($1)`, [slot]);
  }
});
