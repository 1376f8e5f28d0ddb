import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { TestEnv, BASE_TOML, waitForRows } from './fixture.js';
import type { Relay } from '../src/relay/relay.js';
import { ORDER_SERVICE_SQL } from '../src/commands/demo.js';

let env: TestEnv;
let relay: Relay;

before(async () => {
  env = await TestEnv.create();
  await env.migrate();
  await env.sql(ORDER_SERVICE_SQL);
  relay = await env.startRelay();
});

after(async () => {
  await relay?.stop();
  await env?.destroy();
});

test('a mutation event is published with its subject, headers and body', async () => {
  const before = await env.streamCount();
  const [row] = await env.sql<{ id: string }>(
    `SELECT set_config('fraiseql.tenant_id', '11111111-1111-1111-1111-111111111111', true),
            set_config('fraiseql.user_id', 'user-7', true),
            (app.fn_create_order('ada', ARRAY['SKU-1','SKU-2'])).entity_id::text AS id`,
  );
  await env.waitForStreamCount(before + 1);
  const msgs = await env.readStream();
  const m = msgs.find((x) => x.body['id'] === row!.id);
  assert.ok(m, 'the order event is in the stream');
  assert.equal(m.subject, 'fraiseql.order.created');
  const eventId = m.body['event_id'] as string;
  assert.match(eventId, /^[0-9a-f-]{36}$/);
  assert.equal(m.headers['Nats-Msg-Id'], `${eventId}:fraiseql.order.created`);
  assert.equal(m.headers['Fraiseql-Event-Id'], eventId);
  assert.equal(m.headers['Fraiseql-Mutation'], 'create_order');
  assert.equal(m.headers['Fraiseql-Entity-Type'], 'Order');
  assert.equal(m.headers['Fraiseql-Operation'], 'INSERT');
  assert.equal(m.headers['Fraiseql-Tenant-Id'], '11111111-1111-1111-1111-111111111111');
  assert.equal(m.body['entity_type'], 'Order');
  assert.equal(m.body['operation'], 'INSERT');
  assert.equal(m.body['mutation'], 'create_order');
  assert.equal(m.body['tenant_id'], '11111111-1111-1111-1111-111111111111');
  assert.equal(m.body['user_id'], 'user-7');
  assert.deepEqual(m.body['metadata'], { item_ids: ['SKU-1', 'SKU-2'] });
  assert.equal((m.body['entity'] as { customer: string }).customer, 'ada');
  assert.equal(m.body['entity_before'], null);
  assert.match(m.body['occurred_at'] as string, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?\+00:00$/);
  const source = m.body['source'] as Record<string, unknown>;
  assert.equal(source['database'], 'app');
  assert.equal(source['schema'], 'fraiseql_relay');
  assert.equal(source['table'], 'outbox');
  assert.match(source['lsn'] as string, /^[0-9A-F]+\/[0-9A-F]+$/);
  assert.equal(typeof source['xid'], 'number');
});

test('jsonb and timestamps are carried exactly as PostgreSQL wrote them', async () => {
  const before = await env.streamCount();
  await env.sql(
    `SELECT fraiseql_relay.emit('fraiseql.exact.check', '{"big": 12345678901234567890123, "f": 0.1000000000000000055511151231257827, "ts": "x"}'::jsonb)`,
  );
  await env.waitForStreamCount(before + 1);
  const msgs = await env.readStream();
  const m = msgs.find((x) => x.subject === 'fraiseql.exact.check');
  assert.ok(m);
  // re-read the raw body text: JSON.parse would round the number
  const nc = await env.natsClient();
  try {
    const { jetstreamManager } = await import('@nats-io/jetstream');
    const jsm = await jetstreamManager(nc);
    const raw = await jsm.streams.getMessage('FRAISEQL', { seq: m.seq });
    assert.ok(raw);
    assert.match(raw.string(), /"big": 12345678901234567890123/);
    assert.match(raw.string(), /"f": 0\.1000000000000000055511151231257827/);
  } finally {
    await nc.close();
  }
});

test('a rolled-back transaction publishes nothing', async () => {
  const before = await env.streamCount();
  const c = new (await import('pg')).default.Client({ connectionString: env.dbUrl });
  await c.connect();
  try {
    await c.query('BEGIN');
    await c.query(`SELECT app.fn_create_order('rolled-back', ARRAY['SKU-9'])`);
    await c.query('ROLLBACK');
    // a committed marker after it: once it arrives, the rolled-back one would have too
    await c.query(`SELECT fraiseql_relay.emit('fraiseql.marker', '{"after":"rollback"}')`);
  } finally {
    await c.end();
  }
  await env.waitForStreamCount(before + 1);
  const msgs = await env.readStream();
  assert.equal(msgs.length, before + 1);
  assert.ok(!msgs.some((m) => (m.body['entity'] as { customer?: string } | null)?.customer === 'rolled-back'));
  assert.equal(msgs.at(-1)!.subject, 'fraiseql.marker');
});

test('failed and no-op mutations record nothing; both mutation_response shapes are read', async () => {
  const rows = await env.sql<{ n: string }>(`
    WITH v2 AS (
      SELECT fraiseql_relay.emit_mutation('update_order', ROW(false, false, 'validation', NULL, 422, 'bad', NULL, 'Order', NULL, NULL, NULL, NULL, NULL)::app.mutation_response) AS a,
             fraiseql_relay.emit_mutation('update_order', ROW(true, false, NULL, NULL, 200, 'noop', NULL, 'Order', '{}'::jsonb, NULL, NULL, NULL, NULL)::app.mutation_response) AS b
    )
    SELECT (SELECT count(*) FROM fraiseql_relay.outbox WHERE mutation = 'update_order')::text AS n FROM v2`);
  assert.equal(rows[0]!.n, '0');
  await env.sql(
    `CREATE TYPE mutation_response AS (status text, message text, entity_id text, entity_type text, entity jsonb, updated_fields text[], cascade jsonb, metadata jsonb)`,
  );
  await env.sql(
    `SELECT fraiseql_relay.emit_mutation('delete_item', ROW('noop:not_found', 'x', '1', 'Item', NULL, NULL, NULL, NULL)::mutation_response)`,
  );
  await env.sql(
    `SELECT fraiseql_relay.emit_mutation('delete_item', ROW('failed:validation', 'x', '1', 'Item', NULL, NULL, NULL, NULL)::mutation_response)`,
  );
  await env.sql(
    `SELECT fraiseql_relay.emit_mutation('legacy_thing', ROW('updated', 'ok', '42', 'Item', '{"id":42}', ARRAY['name','price'], NULL, '{"k":1}')::mutation_response)`,
  );
  const out = await env.sql<{ mutation: string; operation: string; entity_id: string; updated_fields: string[] }>(
    `SELECT mutation, operation, entity_id, updated_fields FROM fraiseql_relay.outbox WHERE mutation IN ('delete_item', 'legacy_thing')`,
  );
  assert.deepEqual(out, [{ mutation: 'legacy_thing', operation: 'UPDATE', entity_id: '42', updated_fields: ['name', 'price'] }]);
});

test('an event no rule routes is acknowledged and counted, not published', async () => {
  const before = await env.streamCount();
  const unroutedBefore = relay.stats.unrouted;
  await env.sql(
    `SELECT fraiseql_relay.emit_mutation('archive_order', ROW(true, true, NULL, NULL, 200, 'ok', gen_random_uuid(), 'Order', '{}'::jsonb, NULL, NULL, NULL, NULL)::app.mutation_response)`,
  );
  await env.sql(`SELECT fraiseql_relay.emit('fraiseql.marker', '{"after":"unrouted"}')`);
  await env.waitForStreamCount(before + 1);
  const msgs = await env.readStream();
  assert.equal(msgs.length, before + 1);
  assert.equal(relay.stats.unrouted, unroutedBefore + 1);
});

test('10,000 events in 1,000 transactions arrive in commit order', async () => {
  const start = await env.streamCount();
  const pgmod = (await import('pg')).default;
  const c = new pgmod.Client({ connectionString: env.dbUrl });
  await c.connect();
  try {
    for (let t = 0; t < 1000; t++) {
      await c.query(
        `SELECT fraiseql_relay.emit('fraiseql.order.seq', jsonb_build_object('n', g)) FROM generate_series($1::int, $2::int) g`,
        [t * 10, t * 10 + 9],
      );
    }
  } finally {
    await c.end();
  }
  await env.waitForStreamCount(start + 10_000);
  const ns = (await env.readStream()).filter((m) => m.subject === 'fraiseql.order.seq').map((m) => (m.body['entity'] as { n: number }).n);
  assert.equal(ns.length, 10_000);
  for (let i = 0; i < ns.length; i++) assert.equal(ns[i], i, `event ${i} out of order`);
});

test('a message over the server max_payload is dead-lettered and does not block the stream', async () => {
  const before = await env.streamCount();
  await env.sql(`SELECT fraiseql_relay.emit('fraiseql.big', jsonb_build_object('blob', repeat('x', 2 * 1024 * 1024)))`);
  await env.sql(`SELECT fraiseql_relay.emit('fraiseql.marker', '{"after":"big"}')`);
  await env.waitForStreamCount(before + 1);
  // the dead letter is written concurrently with later publishes; the slot waits for both
  const dl = await waitForRows(() =>
    env.sql<{ direction: string; subject: string; error: string }>(
      `SELECT direction, subject, error FROM fraiseql_relay.dead_letter WHERE subject = 'fraiseql.big'`,
    ),
  );
  assert.equal(dl.length, 1);
  assert.equal(dl[0]!.direction, 'outbound');
  assert.match(dl[0]!.error, /max_payload/);
  const msgs = await env.readStream();
  assert.equal(msgs.at(-1)!.subject, 'fraiseql.marker');
  assert.ok(!msgs.some((m) => m.subject === 'fraiseql.big'));
});

test('an emit() subject no stream captures is dead-lettered', async () => {
  const before = await env.streamCount();
  await env.sql(`SELECT fraiseql_relay.emit('elsewhere.nothing', '{"a":1}')`);
  await env.sql(`SELECT fraiseql_relay.emit('fraiseql.marker', '{"after":"uncaptured"}')`);
  await env.waitForStreamCount(before + 1);
  const dl = await waitForRows(() =>
    env.sql<{ error: string }>(`SELECT error FROM fraiseql_relay.dead_letter WHERE subject = 'elsewhere.nothing'`),
  );
  assert.equal(dl.length, 1);
  assert.match(dl[0]!.error, /no JetStream stream captures subject elsewhere\.nothing/);
});

test('an event NATS cannot carry (bad header name, bad subject) is dead-lettered, and the stream goes on', async () => {
  const before = await env.streamCount();
  await env.sql(`SELECT fraiseql_relay.emit('fraiseql.badheader', '{"a":1}', '{"Bad Key": "x", "X-Fine": "y"}')`);
  // emit() refuses such a subject; a row written straight into the outbox is not checked
  await env.sql(`INSERT INTO fraiseql_relay.outbox (subject, entity) VALUES ('fraiseql.has space', '{"a":2}')`);
  await env.sql(`SELECT fraiseql_relay.emit('fraiseql.marker', '{"after":"bad"}', '{"X-Fine": " padded "}')`);
  await env.waitForStreamCount(before + 1);
  // dead letters are written concurrently with later publishes: wait until both are there
  const q = `SELECT subject, error FROM fraiseql_relay.dead_letter WHERE subject IN ('fraiseql.badheader', 'fraiseql.has space')`;
  await waitForRows(() => env.sql(`SELECT 1 FROM (${q}) d HAVING count(*) = 2`));
  const dl = await env.sql<{ subject: string; error: string }>(`${q} ORDER BY subject`);
  assert.equal(dl.length, 2);
  assert.match(dl[0]!.error, /header name "Bad Key" is not valid in NATS/);
  assert.match(dl[1]!.error, /"fraiseql\.has space" is not a valid NATS subject/);
  const last = (await env.readStream()).at(-1)!;
  assert.equal(last.subject, 'fraiseql.marker');
  assert.equal(last.headers['X-Fine'], 'padded', 'header values are trimmed as nats.js trims them');
  assert.match(last.headers['Nats-Msg-Id'] ?? '', /^[0-9a-f-]{36}:fraiseql\.marker$/);
});

test('the slot is confirmed up to what was published', async () => {
  await env.sql(`SELECT fraiseql_relay.emit('fraiseql.marker', '{"after":"slot"}')`);
  const deadline = Date.now() + 10_000;
  let lag = -1;
  while (Date.now() < deadline) {
    const [r] = await env.sql<{ lag: string }>(
      `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::text AS lag FROM pg_replication_slots WHERE slot_name = '${env.config().relay.slot}'`,
    );
    lag = Number(r!.lag);
    if (lag < 1024) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.ok(lag >= 0 && lag < 1024, `slot lag ${lag} bytes`);
  void BASE_TOML;
});
