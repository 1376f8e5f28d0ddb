/**
 * migrate() in-process against a real PostgreSQL: idempotent, safe to run concurrently, the
 * publication and names it creates, and the SQL API (emit, emit_mutation) it installs.
 *
 * Replication slots are cluster-wide, so every database here gets its own slot name.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { LocalPostgres } from '../src/local/postgres.js';
import { parseConfig, type Config } from '../src/config/load.js';
import { createLogger } from '../src/util/log.js';
import { loadMigrations, migrate } from '../src/schema/migrate.js';

const log = createLogger('silent');
let server: LocalPostgres;
let dbCount = 0;

before(async () => {
  server = await LocalPostgres.start();
});

after(async () => {
  await server?.destroy();
});

/** A fresh database and a config for it; `relay` is the body of the [relay] table. */
async function fresh(relay = ''): Promise<{ url: string; config: Config }> {
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

[relay]
${relay.includes('slot =') ? '' : `slot = "slot_${name}"\n`}${relay}
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
  assert.deepEqual(m.map((r) => r.name), ALL);
});

test('concurrent migrate() calls on a fresh database all succeed and apply everything once', async () => {
  const { url, config } = await fresh();
  const results = await Promise.all([1, 2, 3, 4].map(() => migrate(config, log)));
  // together they applied each migration exactly once, and created the slot and publication once
  assert.deepEqual(results.flatMap((r) => r.applied).sort(), [...ALL].sort());
  assert.equal(results.filter((r) => r.slotCreated).length, 1);
  assert.equal(results.filter((r) => r.publicationCreated).length, 1);

  const perId = await rows<{ id: number; n: number }>(url, `SELECT id, count(*)::int AS n FROM fraiseql_relay.migrations GROUP BY id ORDER BY id`);
  assert.deepEqual(perId, loadMigrations('fraiseql_relay').map((m) => ({ id: m.id, n: 1 })));
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

  const schemas = await rows<{ nspname: string }>(url, `SELECT nspname FROM pg_namespace WHERE nspname IN ('relay_x', 'fraiseql_relay') ORDER BY 1`);
  assert.deepEqual(schemas, [{ nspname: 'relay_x' }], 'everything lives in relay_x, nothing in fraiseql_relay');
  const tables = await rows<{ relname: string }>(
    url,
    `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'relay_x' AND c.relkind = 'r' ORDER BY 1`,
  );
  const names = tables.map((t) => t.relname);
  for (const t of ['dead_letter', 'inbox', 'migrations', 'outbox']) assert.ok(names.includes(t), `relay_x.${t} exists (have ${names.join(', ')})`);

  const slots = await rows(url, `SELECT slot_name, plugin, slot_type, database FROM pg_replication_slots WHERE slot_name LIKE 'relay_x%'`);
  assert.deepEqual(slots, [{ slot_name: 'relay_x_slot', plugin: 'pgoutput', slot_type: 'logical', database: config.database.url.split('/').pop() }]);
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
    await c.query(`SELECT fraiseql_relay.emit_mutation('update_order', ROW('updated', 'ok', '43', 'Order', '{"id":43}', NULL, NULL, NULL)::mutation_response)`);
  });
  const out = await rows(
    url,
    `SELECT coalesce(subject, mutation) AS what, operation, entity_id, tenant_id, user_id FROM fraiseql_relay.outbox ORDER BY created_at`,
  );
  assert.deepEqual(out, [
    { what: 'fraiseql.ctx.raw', operation: 'CUSTOM', entity_id: null, tenant_id: 'tenant-1', user_id: 'user-7' },
    { what: 'create_order', operation: 'CREATE', entity_id: '42', tenant_id: 'tenant-1', user_id: 'user-7' },
    { what: 'fraiseql.ctx.none', operation: 'CUSTOM', entity_id: null, tenant_id: null, user_id: null },
    { what: 'update_order', operation: 'UPDATE', entity_id: '43', tenant_id: 'tenant-2', user_id: null },
  ]);
});
