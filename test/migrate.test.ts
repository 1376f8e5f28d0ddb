/**
 * migrate() in-process against a real PostgreSQL: idempotent, safe to run concurrently, the
 * publication and names it creates, the SQL API (emit, emit_mutation) it installs, and the one
 * plan that `migrate --dry-run` prints and migrate runs.
 *
 * Replication slots are cluster-wide, so every database here gets its own slot name; the
 * publication is named explicitly (`fraiseql_relay`, giving `fraiseql_relay_outbox`) to keep the
 * statements below short (the default names are tested in slot-names.test.ts).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { LocalPostgres } from '../src/local/postgres.js';
import { parseConfig, type Config } from '../src/config/load.js';
import { createLogger } from '../src/util/log.js';
import { migrate, migrationPlan } from '../src/schema/migrate.js';
import { formatPlan, loadMigrations, planStatements } from '../src/schema/plan.js';

const log = createLogger('silent');
let server: LocalPostgres;
let dbCount = 0;

before(async () => {
  server = await LocalPostgres.start();
});

after(async () => {
  await server?.destroy();
});

/**
 * A fresh database and a config for it; `relay` is the body of the [relay] table, `observers`
 * more [observers] arrays (e.g. [[observers.rules]]) after the publish entry.
 */
async function fresh(relay = '', observers = ''): Promise<{ url: string; config: Config }> {
  const name = `m${++dbCount}`;
  const url = await server.createDatabase(name);
  const toml = `
[project]
name = "migrate-test"

[database]
type = "postgresql"
url = "\${DATABASE_URL}"

[observers]
backend = "nats"
nats_url = "nats://127.0.0.1:4222"

[[observers.publish]]
mutation = "create_order"
subject = "fraiseql.order.created"
${observers}
[relay]
${relay.includes('slot =') ? '' : `slot = "slot_${name}"\n`}${relay.includes('publication =') ? '' : `publication = "fraiseql_relay"\n`}${relay}
`;
  return { url, config: parseConfig(toml, `${name}.toml`, { DATABASE_URL: url }) };
}

async function withDb<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

async function rows<R extends pg.QueryResultRow>(url: string, text: string, params: unknown[] = []): Promise<R[]> {
  return withDb(url, async (c) => (await c.query<R>(text, params)).rows);
}

const ALL = loadMigrations('fraiseql_relay').map((m) => m.name);

/** The statement migrate runs right after creating (or when adopting) a slot or publication. */
const owned = (kind: 'slot' | 'publication', name: string, origin: 'created' | 'adopted') =>
  `INSERT INTO "fraiseql_relay".owned_objects (kind, name, origin) VALUES ('${kind}', '${name}', '${origin}') ON CONFLICT (kind, name) DO NOTHING`;

test('migrate twice: the second run changes nothing', async () => {
  const { url, config } = await fresh();
  const first = await migrate(config, log);
  assert.deepEqual(first.applied, ALL);
  assert.ok(ALL.length > 0);
  assert.equal(first.publicationCreated, true);
  assert.equal(first.slotCreated, true);

  const second = await migrate(config, log);
  assert.deepEqual(second.applied, []);
  assert.equal(second.publicationCreated, false);
  assert.equal(second.slotCreated, false);

  const m = await rows<{ id: number; name: string }>(url, `SELECT id, name FROM fraiseql_relay.migrations ORDER BY id`);
  assert.deepEqual(
    m.map((r) => r.name),
    ALL,
  );
});

test('concurrent migrate() calls on a fresh database all succeed and apply everything once', async () => {
  const { url, config } = await fresh();
  const results = await Promise.all([1, 2, 3, 4].map(() => migrate(config, log)));
  // together they applied each migration exactly once, and created the slot and publication once
  assert.deepEqual(results.flatMap((r) => r.applied).sort(), [...ALL].sort());
  assert.equal(results.filter((r) => r.slotCreated).length, 1);
  assert.equal(results.filter((r) => r.publicationCreated).length, 1);

  const perId = await rows<{ id: number; n: number }>(
    url,
    `SELECT id, count(*)::int AS n FROM fraiseql_relay.migrations GROUP BY id ORDER BY id`,
  );
  assert.deepEqual(
    perId,
    loadMigrations('fraiseql_relay').map((m) => ({ id: m.id, n: 1 })),
  );
  const slots = await rows(url, `SELECT slot_name FROM pg_replication_slots WHERE slot_name = $1`, [config.relay.slot]);
  assert.equal(slots.length, 1);
  const pubs = await rows(url, `SELECT pubname FROM pg_publication`);
  assert.deepEqual(pubs, [{ pubname: 'fraiseql_relay_outbox' }]);
});

test('the publication streams only inserts into the outbox, and DELETE from the outbox works', async () => {
  const { url, config } = await fresh();
  await migrate(config, log);
  const pub = await rows(
    url,
    `SELECT pubinsert, pubupdate, pubdelete, pubtruncate, puballtables FROM pg_publication WHERE pubname = 'fraiseql_relay_outbox'`,
  );
  assert.deepEqual(pub, [{ pubinsert: true, pubupdate: false, pubdelete: false, pubtruncate: false, puballtables: false }]);
  const tables = await rows(url, `SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = 'fraiseql_relay_outbox'`);
  assert.deepEqual(tables, [{ schemaname: 'fraiseql_relay', tablename: 'outbox' }]);

  // the cleanup path: published rows are deleted (and updated) without replica identity trouble
  await withDb(url, async (c) => {
    await c.query(`SELECT fraiseql_relay.emit('fraiseql.test.delete', '{"n":1}')`);
    await c.query(`SELECT fraiseql_relay.emit('fraiseql.test.delete', '{"n":2}')`);
    const u = await c.query(`UPDATE fraiseql_relay.outbox SET headers = '{}'::jsonb WHERE subject = 'fraiseql.test.delete'`);
    assert.equal(u.rowCount, 2);
    const d = await c.query(`DELETE FROM fraiseql_relay.outbox WHERE subject = 'fraiseql.test.delete'`);
    assert.equal(d.rowCount, 2);
    await c.query(`TRUNCATE fraiseql_relay.outbox`);
  });

  // a publication someone widened is put back on the next migrate
  await rows(url, `ALTER PUBLICATION fraiseql_relay_outbox SET (publish = 'insert, update, delete')`);
  await migrate(config, log);
  const again = await rows(url, `SELECT pubinsert, pubupdate, pubdelete FROM pg_publication WHERE pubname = 'fraiseql_relay_outbox'`);
  assert.deepEqual(again, [{ pubinsert: true, pubupdate: false, pubdelete: false }]);
});

test('a custom schema, slot and publication are honoured', async () => {
  const { url, config } = await fresh(`schema = "relay_x"\nslot = "relay_x_slot"\npublication = "relay_x_pub"\n`);
  assert.equal(config.relay.schema, 'relay_x');
  const r = await migrate(config, log);
  assert.deepEqual(r.applied, ALL);

  const schemas = await rows<{ nspname: string }>(
    url,
    `SELECT nspname FROM pg_namespace WHERE nspname IN ('relay_x', 'fraiseql_relay') ORDER BY 1`,
  );
  assert.deepEqual(schemas, [{ nspname: 'relay_x' }], 'everything lives in relay_x, nothing in fraiseql_relay');
  const tables = await rows<{ relname: string }>(
    url,
    `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'relay_x' AND c.relkind = 'r' ORDER BY 1`,
  );
  const names = tables.map((t) => t.relname);
  for (const t of ['dead_letter', 'inbox', 'migrations', 'outbox'])
    assert.ok(names.includes(t), `relay_x.${t} exists (have ${names.join(', ')})`);

  const slots = await rows(url, `SELECT slot_name, plugin, slot_type, database FROM pg_replication_slots WHERE slot_name LIKE 'relay_x%'`);
  assert.deepEqual(slots, [
    { slot_name: 'relay_x_slot', plugin: 'pgoutput', slot_type: 'logical', database: config.database.url.split('/').pop() },
  ]);
  const pubs = await rows(url, `SELECT pubname, schemaname, tablename FROM pg_publication_tables`);
  assert.deepEqual(pubs, [{ pubname: 'relay_x_pub_outbox', schemaname: 'relay_x', tablename: 'outbox' }]);

  // the functions write into relay_x.outbox
  const [row] = await rows<{ id: string }>(url, `SELECT relay_x.emit('fraiseql.x.created', '{"id":"1"}')::text AS id`);
  const out = await rows(url, `SELECT id::text, subject, entity_id FROM relay_x.outbox`);
  assert.deepEqual(out, [{ id: row!.id, subject: 'fraiseql.x.created', entity_id: '1' }]);

  const second = await migrate(config, log);
  assert.deepEqual(second.applied, []);
  assert.equal(second.publicationCreated, false);
  assert.equal(second.slotCreated, false);
});

test('emit() rejects an invalid subject with a clear error and records nothing', async () => {
  const { url, config } = await fresh();
  await migrate(config, log);
  for (const subject of ['bad subject', 'a.*', 'a.>', 'a..b', '.a', '']) {
    await assert.rejects(
      rows(url, `SELECT fraiseql_relay.emit($1, '{}'::jsonb)`, [subject]),
      (err: Error & { hint?: string }) => {
        assert.match(err.message, /emit: invalid NATS subject/, `subject ${JSON.stringify(subject)}`);
        assert.ok(err.message.includes(`'${subject}'`), `the error names the subject: ${err.message}`);
        assert.match(err.hint ?? '', /without spaces or wildcards/);
        return true;
      },
      `emit(${JSON.stringify(subject)}) must fail`,
    );
  }
  await assert.rejects(rows(url, `SELECT fraiseql_relay.emit(NULL, '{}'::jsonb)`), /invalid NATS subject NULL/);
  await assert.rejects(rows(url, `SELECT fraiseql_relay.emit('a.b', '{}'::jsonb, '[1]'::jsonb)`), /headers must be a JSON object/);
  const n = await rows<{ n: number }>(url, `SELECT count(*)::int AS n FROM fraiseql_relay.outbox`);
  assert.deepEqual(n, [{ n: 0 }]);
  // a valid one goes in
  await rows(url, `SELECT fraiseql_relay.emit('fraiseql.order-v2.created_1', '{}'::jsonb)`);
  assert.deepEqual(await rows(url, `SELECT count(*)::int AS n FROM fraiseql_relay.outbox`), [{ n: 1 }]);
});

test('emit and emit_mutation record fraiseql.tenant_id and fraiseql.user_id from the transaction', async () => {
  const { url, config } = await fresh();
  await migrate(config, log);
  await withDb(url, async (c) => {
    await c.query(`CREATE TYPE mutation_response AS (status text, message text, entity_id text, entity_type text,
                     entity jsonb, updated_fields text[], cascade jsonb, metadata jsonb)`);
    await c.query('BEGIN');
    await c.query(`SELECT set_config('fraiseql.tenant_id', 'tenant-1', true), set_config('fraiseql.user_id', 'user-7', true)`);
    await c.query(`SELECT fraiseql_relay.emit('fraiseql.ctx.raw', '{"k":1}')`);
    const r = await c.query<{ status: string }>(
      `SELECT (fraiseql_relay.emit_mutation('create_order', ROW('created', 'ok', '42', 'Order', '{"id":42}', NULL, NULL, NULL)::mutation_response)).status`,
    );
    assert.equal(r.rows[0]!.status, 'created', 'emit_mutation returns the response unchanged');
    await c.query('COMMIT');
    // the settings were local to that transaction: the next one has no context
    await c.query(`SELECT fraiseql_relay.emit('fraiseql.ctx.none', '{"k":2}')`);
    // session-level settings count too
    await c.query(`SET fraiseql.tenant_id = 'tenant-2'`);
    await c.query(
      `SELECT fraiseql_relay.emit_mutation('update_order', ROW('updated', 'ok', '43', 'Order', '{"id":43}', NULL, NULL, NULL)::mutation_response)`,
    );
  });
  const out = await rows(
    url,
    `SELECT coalesce(subject, mutation) AS what, operation, entity_id, tenant_id, user_id FROM fraiseql_relay.outbox ORDER BY created_at`,
  );
  assert.deepEqual(out, [
    { what: 'fraiseql.ctx.raw', operation: 'CUSTOM', entity_id: null, tenant_id: 'tenant-1', user_id: 'user-7' },
    { what: 'create_order', operation: 'INSERT', entity_id: '42', tenant_id: 'tenant-1', user_id: 'user-7' },
    { what: 'fraiseql.ctx.none', operation: 'CUSTOM', entity_id: null, tenant_id: null, user_id: null },
    { what: 'update_order', operation: 'UPDATE', entity_id: '43', tenant_id: 'tenant-2', user_id: null },
  ]);
});

// ---------------------------------------------------------------------------------------------
// one plan: migrate --dry-run prints exactly what migrate runs

const RULES = `
[[observers.rules]]
table = "tb_order"
event = "INSERT"
subject = "fraiseql.order.inserted"

[[observers.rules]]
table = "tb_order"
event = "UPDATE"
subject = "fraiseql.order.updated"
before_image = true
`;

/** What a dry run could have created: the relay's schema, the slot, any publication, the rule table's identity. */
async function footprint(url: string, slot: string) {
  return {
    schema: (await rows(url, `SELECT 1 FROM pg_namespace WHERE nspname = 'fraiseql_relay'`)).length,
    slots: (await rows(url, `SELECT 1 FROM pg_replication_slots WHERE slot_name = $1`, [slot])).length,
    publications: (await rows<{ pubname: string }>(url, `SELECT pubname FROM pg_publication ORDER BY 1`)).map((r) => r.pubname),
    identity: (await rows<{ i: string }>(url, `SELECT relreplident AS i FROM pg_class WHERE oid = 'public.tb_order'::regclass`))[0]?.i,
  };
}

test('the dry run shows exactly the statements migrate runs, in order, and changes nothing', async () => {
  const { url, config } = await fresh('', RULES);
  await withDb(url, (c) =>
    c.query(`CREATE SCHEMA core;
             CREATE TABLE core.tb_entity_change_log (pk bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, object_type text, object_data jsonb);
             CREATE TABLE public.tb_order (id integer PRIMARY KEY, status text)`),
  );
  const untouched = { schema: 0, slots: 0, publications: [], identity: 'd' };
  assert.deepEqual(await footprint(url, config.relay.slot), untouched);

  const plan = await migrationPlan(config);
  assert.equal(plan.assumption, null, 'computed from the database');
  const planned = planStatements(plan);
  assert.deepEqual(await footprint(url, config.relay.slot), untouched, 'the dry run created nothing');

  // what the plan holds, in order
  const migrations = loadMigrations('fraiseql_relay');
  assert.deepEqual(planned, [
    `CREATE SCHEMA IF NOT EXISTS "fraiseql_relay"`,
    `CREATE TABLE IF NOT EXISTS "fraiseql_relay".migrations (id integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`,
    ...migrations.flatMap((m) => [
      'BEGIN',
      m.sql.trim(),
      `INSERT INTO "fraiseql_relay".migrations (id, name) VALUES (${m.id}, '${m.name}')`,
      'COMMIT',
    ]),
    `CREATE PUBLICATION "fraiseql_relay_outbox" FOR TABLE "fraiseql_relay".outbox, "core"."tb_entity_change_log" WITH (publish = 'insert')`,
    owned('publication', 'fraiseql_relay_outbox', 'created'),
    `ALTER TABLE "public"."tb_order" REPLICA IDENTITY FULL`,
    `CREATE PUBLICATION "fraiseql_relay_tables" FOR TABLE "public"."tb_order" WITH (publish = 'insert, update')`,
    owned('publication', 'fraiseql_relay_tables', 'created'),
    `SELECT pg_create_logical_replication_slot('${config.relay.slot}', 'pgoutput')`,
    owned('slot', config.relay.slot, 'created'),
  ]);
  // the printed dry run: the lock in the header, every statement, each step explained
  const text = formatPlan(plan);
  assert.match(
    text,
    /^-- .*\n-- .*advisory lock.*\n-- {3}SELECT pg_advisory_lock\(hashtext\('fraiseql-relay\/migrate'\), hashtext\('fraiseql_relay'\)\);\n/,
  );
  for (const sql of planned) assert.ok(text.includes(sql.endsWith(';') ? sql : `${sql};`), `printed: ${sql.slice(0, 80)}`);
  assert.match(text, /-- migration 001_core\.sql/);
  assert.match(text, /-- before_image = true on public\.tb_order/);
  assert.match(text, /-- publication fraiseql_relay_outbox: .*change log core\.tb_entity_change_log/);

  const ran: string[] = [];
  const first = await migrate(config, log, { onStatement: (sql) => ran.push(sql) });
  assert.deepEqual(ran, planned, 'migrate ran exactly the planned statements');
  assert.deepEqual(first.applied, ALL);
  assert.equal(first.publicationCreated, true);
  assert.equal(first.slotCreated, true);
  assert.deepEqual(first.tableProblems, []);
  assert.deepEqual(await footprint(url, config.relay.slot), {
    schema: 1,
    slots: 1,
    publications: ['fraiseql_relay_outbox', 'fraiseql_relay_tables'],
    identity: 'f',
  });

  // migrated: nothing left to create; only the statements that keep the publications exact
  const again = planStatements(await migrationPlan(config));
  assert.deepEqual(again, [
    `ALTER PUBLICATION "fraiseql_relay_outbox" SET TABLE "fraiseql_relay".outbox, "core"."tb_entity_change_log"`,
    `ALTER PUBLICATION "fraiseql_relay_outbox" SET (publish = 'insert')`,
    `ALTER PUBLICATION "fraiseql_relay_tables" SET TABLE "public"."tb_order"`,
    `ALTER PUBLICATION "fraiseql_relay_tables" SET (publish = 'insert, update')`,
  ]);
  const ranAgain: string[] = [];
  const second = await migrate(config, log, { onStatement: (sql) => ranAgain.push(sql) });
  assert.deepEqual(ranAgain, again);
  assert.deepEqual(second.applied, []);
  assert.equal(second.publicationCreated, false);
  assert.equal(second.slotCreated, false);
});

test('a dry run that cannot reach the database prints the plan for an empty one and says so', async () => {
  const { config } = await fresh('', RULES);
  config.database.url = 'postgres://postgres@127.0.0.1:1/nowhere';
  const plan = await migrationPlan(config);
  assert.match(plan.assumption ?? '', /could not reach the database/);
  assert.match(plan.assumption ?? '', /nothing is applied yet/);
  assert.match(plan.assumption ?? '', /Rule tables are taken as written/);
  const planned = planStatements(plan);
  assert.equal(planned[0], `CREATE SCHEMA IF NOT EXISTS "fraiseql_relay"`);
  assert.equal(planned.filter((s) => s === 'BEGIN').length, ALL.length);
  assert.ok(planned.includes(`CREATE PUBLICATION "fraiseql_relay_outbox" FOR TABLE "fraiseql_relay".outbox WITH (publish = 'insert')`));
  assert.ok(planned.includes(`ALTER TABLE "tb_order" REPLICA IDENTITY FULL`));
  assert.ok(planned.includes(`CREATE PUBLICATION "fraiseql_relay_tables" FOR TABLE "tb_order" WITH (publish = 'insert, update')`));
  assert.deepEqual(planned.slice(-2), [
    `SELECT pg_create_logical_replication_slot('${config.relay.slot}', 'pgoutput')`,
    owned('slot', config.relay.slot, 'created'),
  ]);
  const text = formatPlan(plan);
  assert.match(text, /^-- could not reach the database/, 'the first line says so');
});
