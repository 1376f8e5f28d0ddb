import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TestEnv, sleep, type StoredMessage } from './fixture.js';
import type { Relay } from '../src/relay/relay.js';

const TOML = `
[project]
name = "fraiseql-v2-service"

[database]
url = "\${DATABASE_URL}"

[observers]
nats_url = "\${NATS_URL}"

[[observers.publish]]
entity = "Order"
operation = "INSERT"
subject = "fraiseql.order.created"
subscription_topic = "order_created"

[[observers.publish]]
mutation = "update_order"
subject = "fraiseql.order.updated"

[relay]
listen = "127.0.0.1:0"
schema_file = "schema.compiled.json"
`;

/** FraiseQL's change log contract (migration 08), and a mutation function that knows nothing of the relay. */
const FRAISEQL = `
CREATE SCHEMA core;
CREATE SEQUENCE core.seq_entity_change_log;
CREATE TABLE core.tb_entity_change_log (
  pk_entity_change_log BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  object_type TEXT NOT NULL, modification_type TEXT NOT NULL,
  id UUID NOT NULL DEFAULT gen_random_uuid(), created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  tenant_id UUID, fk_customer_org BIGINT, fk_contact BIGINT, object_id UUID,
  object_data JSONB, object_data_before JSONB, updated_fields TEXT[], cascade JSONB, duration_ms INTEGER,
  started_at TIMESTAMPTZ, commit_time TIMESTAMPTZ, seq BIGINT DEFAULT nextval('core.seq_entity_change_log'),
  actor_type TEXT, acting_for UUID, schema_version TEXT, trace_id TEXT, trace_context JSONB,
  change_status TEXT, extra_metadata JSONB, nats_published_at TIMESTAMPTZ, nats_event_id UUID);
ALTER TABLE core.tb_entity_change_log ENABLE ROW LEVEL SECURITY;
CREATE SCHEMA app;
CREATE TABLE app.tb_order (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), customer text, status text DEFAULT 'new');
CREATE TYPE app.mutation_response AS (succeeded boolean, state_changed boolean, error_class text, status_detail text,
  http_status smallint, message text, entity_id uuid, entity_type text, entity jsonb, updated_fields text[], cascade jsonb,
  error_detail jsonb, metadata jsonb);
CREATE FUNCTION app.fn_create_order(p_customer text) RETURNS app.mutation_response LANGUAGE plpgsql AS $$
DECLARE o app.tb_order;
BEGIN
  INSERT INTO app.tb_order (customer) VALUES (p_customer) RETURNING * INTO o;
  RETURN ROW(true, true, NULL, NULL, 201, 'created', o.id, 'Order', to_jsonb(o), NULL, NULL, NULL, NULL)::app.mutation_response;
END $$;
CREATE FUNCTION app.fn_update_order(p_id uuid, p_status text) RETURNS app.mutation_response LANGUAGE plpgsql AS $$
DECLARE o app.tb_order;
BEGIN
  UPDATE app.tb_order SET status = p_status WHERE id = p_id RETURNING * INTO o;
  RETURN ROW(true, true, NULL, NULL, 200, 'updated', o.id, 'Order', to_jsonb(o), ARRAY['status'], NULL, NULL, NULL)::app.mutation_response;
END $$;
`;

/** The FraiseQL executor's outbox CTE: the function runs once, the change-log row only on success. */
const executorCte = (call: string, verb: string) => `
WITH r AS MATERIALIZED (SELECT * FROM ${call}),
log AS (
  INSERT INTO core.tb_entity_change_log (object_type, modification_type, object_id, object_data, updated_fields, cascade,
                                         tenant_id, trace_context, extra_metadata, commit_time)
  SELECT coalesce(r.entity_type, 'Order'), '${verb}', r.entity_id, r.entity, r.updated_fields, r.cascade,
         '22222222-2222-2222-2222-222222222222',
         '{"version": "00", "trace_id": "0af7651916cd43dd8448eb211c80319c", "parent_id": "b7ad6b7169203331", "trace_flags": "01"}',
         '{"duration_calc_version": 2}', clock_timestamp()
    FROM r WHERE r.succeeded AND r.state_changed
)
SELECT entity_id::text FROM r`;

let env: TestEnv;
let relay: Relay;

async function waitFor(subject: string): Promise<StoredMessage> {
  for (const until = Date.now() + 15_000; Date.now() < until; await sleep(50)) {
    const m = (await env.readStream()).find((x) => x.subject === subject);
    if (m) return m;
  }
  throw new Error(`no message on ${subject}`);
}

before(async () => {
  env = await TestEnv.create({ toml: TOML });
  await writeFile(
    join(env.dir, 'schema.compiled.json'),
    JSON.stringify({
      types: [],
      queries: [],
      mutations: [{ name: 'updateOrder', return_type: 'Order', sql_source: 'app.fn_update_order', operation: 'update' }],
    }),
  );
  await env.sql(FRAISEQL);
  await env.migrate();
  relay = await env.startRelay();
});

after(async () => {
  await relay?.stop();
  await env?.destroy();
});

test("migrate adds FraiseQL's change log to the insert-only publication", async () => {
  const t = await env.sql<{ t: string }>(
    `SELECT schemaname || '.' || tablename AS t FROM pg_publication_tables WHERE pubname = '${env.config().relay.publication}_outbox' ORDER BY 1`,
  );
  assert.deepEqual(
    t.map((r) => r.t),
    ['core.tb_entity_change_log', 'fraiseql_relay.outbox'],
  );
});

test('a change-log row written by the executor CTE is published without any emit call', async () => {
  const [{ entity_id: id }] = (await env.sql<{ entity_id: string }>(executorCte(`app.fn_create_order('ada')`, 'INSERT'))) as [
    { entity_id: string },
  ];
  const m = await waitFor('fraiseql.order.created');
  const [log] = await env.sql<{ id: string }>(`SELECT id::text FROM core.tb_entity_change_log WHERE object_id = $1`, [id]);
  const b = m.body;
  assert.equal(b['event_id'], log!.id, 'the change-log id is the event id');
  assert.equal(b['id'], id);
  assert.equal(b['entity_type'], 'Order');
  assert.equal(b['operation'], 'INSERT');
  assert.equal((b['entity'] as { customer: string }).customer, 'ada');
  assert.equal(b['tenant_id'], '22222222-2222-2222-2222-222222222222');
  assert.deepEqual(b['metadata'], { duration_calc_version: 2 });
  assert.equal((b['source'] as { table: string }).table, 'tb_entity_change_log');
  assert.equal(m.headers['Nats-Msg-Id'], `${log!.id}:fraiseql.order.created`);
  assert.equal(m.headers['Fraiseql-Tenant-Id'], '22222222-2222-2222-2222-222222222222');
  assert.equal(m.headers['traceparent'], '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', "from FraiseQL's trace_context");
  assert.equal(m.headers['Fraiseql-Subscription-Topic'], 'order_created');
});

test('a subscription topic also publishes on fraiseql.subscription.<topic>', async () => {
  const m = await waitFor('fraiseql.subscription.order_created');
  assert.equal(m.headers['Fraiseql-Subscription-Topic'], 'order_created');
  assert.equal(m.body['entity_type'], 'Order');
  assert.equal(m.headers['Nats-Msg-Id'], `${String(m.body['event_id'])}:fraiseql.subscription.order_created`);
});

test('a publish entry by mutation matches through the compiled schema', async () => {
  const [{ entity_id: id }] = (await env.sql<{ entity_id: string }>(`SELECT (app.fn_create_order('bob')).entity_id::text`)) as [
    { entity_id: string },
  ];
  await env.sql(executorCte(`app.fn_update_order('${id}', 'paid')`, 'UPDATE'));
  const m = await waitFor('fraiseql.order.updated');
  assert.equal(m.body['mutation'], 'update_order');
  assert.equal(m.headers['Fraiseql-Mutation'], 'update_order');
  assert.equal(m.body['operation'], 'UPDATE');
  assert.deepEqual(m.body['updated_fields'], ['status']);
});

test('a change-log row no entry matches is not published', async () => {
  const before = relay.stats.unrouted;
  await env.sql(
    `INSERT INTO core.tb_entity_change_log (object_type, modification_type, object_id) VALUES ('Invoice', 'DELETE', gen_random_uuid())`,
  );
  for (const until = Date.now() + 10_000; relay.stats.unrouted === before && Date.now() < until;) await sleep(20);
  assert.equal(relay.stats.unrouted, before + 1);
  assert.ok(!(await env.readStream()).some((m) => m.body['entity_type'] === 'Invoice'));
});
