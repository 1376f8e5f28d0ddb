/**
 * `replay`, `reconcile` and `dlq retry` re-publish through the relay's own sink for every backend,
 * not NATS only: Redis appends (de-duplicated by the append script), `backend = "postgres"`
 * handlers (de-duplicated by the inbox), webhook deliveries. And `reconcile` opens the broker
 * before it drops the slot: a broker that is down fails the command with the slot untouched.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RedisEnv } from './redis-fixture.js';
import { TestEnv, runCli } from './fixture.js';
import { endpoint } from './webhook-endpoint.js';

async function slotPosition(sql: (q: string) => Promise<{ lsn: string | null }[]>): Promise<string | null> {
  const rows = await sql(`SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name LIKE 'fraiseql_relay%'`);
  assert.equal(rows.length, 1, 'one slot');
  return rows[0]!.lsn;
}

test('backend = "redis": replay appends once (a second replay finds every id), dlq retry appends, reconcile refuses while Redis is down and leaves the slot as it was', async (t) => {
  const env = await RedisEnv.create();
  t.after(() => env.destroy());
  await env.migrate();
  await env.sql(`SELECT fraiseql_relay.emit('fraiseql.order.created', jsonb_build_object('n', g)) FROM generate_series(1, 40) g`);
  // a header the Redis entry cannot carry: dead-lettered as `run` would, the rest goes on
  await env.sql(
    `INSERT INTO fraiseql_relay.outbox (subject, operation, entity, headers) VALUES ('fraiseql.order.created', 'CUSTOM', '{"bad": true}', '{"body": "x"}')`,
  );

  for (let run = 1; run <= 2; run++) {
    const r = await runCli(['replay', '--since', '1h', '-c', env.configFile], env.env);
    assert.equal(r.code, 0, `run ${run}: ${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /replayed 41 outbox rows/);
    assert.match(r.stdout, run === 1 ? /40 published, 0 already in the stream/ : /0 published, 40 already in the stream/, `run ${run}`);
    assert.match(r.stdout, /1 dead-lettered/);
  }
  const entries = await env.read('fraiseql.order.created');
  // replay's order is the outbox's (created_at, id): oldest first
  const outboxOrder = await env.sql<{ id: string }>(
    `SELECT id::text FROM fraiseql_relay.outbox WHERE NOT headers ? 'body' OR headers IS NULL ORDER BY created_at, id`,
  );
  assert.deepEqual(
    entries.map((e) => e.body['event_id']),
    outboxOrder.map((r) => r.id),
    'each event appended once, oldest first',
  );
  assert.deepEqual(
    entries.map((e) => (e.body['entity'] as { n: number }).n).sort((a, b) => a - b),
    Array.from({ length: 40 }, (_, i) => i + 1),
  );
  const dl = await env.sql<{ id: string; error: string }>(`SELECT id::text, error FROM fraiseql_relay.dead_letter`);
  assert.equal(dl.length, 1);
  assert.match(dl[0]!.error, /header "body" is reserved/);

  // a dead letter that can be appended now: dlq retry appends it to its stream and removes it
  await env.sql(`DELETE FROM fraiseql_relay.dead_letter`);
  await env.sql(
    `INSERT INTO fraiseql_relay.dead_letter (direction, event_id, subject, headers, body, error)
     VALUES ('outbound', '0193a4c0-0000-7000-8000-00000000beef', 'fraiseql.order.retried', '{}', '{"n": 41}', 'Redis was down')`,
  );
  const retry = await runCli(['dlq', 'retry', '--all', '-c', env.configFile], env.env);
  assert.equal(retry.code, 0, retry.stdout + retry.stderr);
  assert.match(retry.stdout, /1 succeeded, 0 still failing/);
  const retried = await env.read('fraiseql.order.retried');
  assert.equal(retried.length, 1);
  assert.deepEqual(retried[0]!.body, { n: 41 });
  assert.equal((await env.sql(`SELECT 1 FROM fraiseql_relay.dead_letter`)).length, 0);

  // reconcile with Redis down: refused before the slot is dropped (it used to drop it, then fail)
  await env.sql(`SELECT fraiseql_relay.emit('fraiseql.order.created', '{"n": 42}')`);
  const before = await slotPosition((q) => env.sql(q));
  await env.redis.stop();
  const down = await runCli(['reconcile', '--yes', '--force', '-c', env.configFile], env.env);
  assert.notEqual(down.code, 0, down.stdout);
  assert.match(down.stderr, /cannot connect to Redis \(\[observers\] redis_url\)/);
  assert.equal(await slotPosition((q) => env.sql(q)), before, 'the slot was not dropped and recreated');

  // with Redis back: the slot recreated and the retained rows re-appended, the known ones dropped by id
  await env.redis.start();
  const up = await runCli(['reconcile', '--yes', '--force', '-c', env.configFile], env.env);
  assert.equal(up.code, 0, up.stdout + up.stderr);
  assert.match(up.stdout, /1 published, 40 already in the stream/);
  assert.notEqual(await slotPosition((q) => env.sql(q)), before, 'the slot is a new one');
  // the test's own client reconnects to the restarted Redis by itself (length() reads 0 until then)
  assert.equal(await env.waitForLength('fraiseql.order.created', 41, 10_000), 41);
});

const POSTGRES_TOML = `
[project]
name = "replay-direct"

[database]
url = "\${DATABASE_URL}"

[observers]
backend = "postgres"

[[observers.subscribe]]
subject = "fraiseql.order.created"
handler = "fn_count"
`;

test('backend = "postgres": replay applies the handler to what it had not applied, and a second replay applies nothing', async (t) => {
  const env = await TestEnv.create({ toml: POSTGRES_TOML });
  t.after(() => env.destroy());
  await env.migrate();
  await env.sql(`
    CREATE TABLE counted (n int NOT NULL);  -- no unique key: a second application would show
    CREATE FUNCTION fn_count(p_event jsonb) RETURNS void LANGUAGE sql AS $$ INSERT INTO counted VALUES ((p_event->'entity'->>'n')::int) $$;`);
  await env.sql(`SELECT fraiseql_relay.emit('fraiseql.order.created', jsonb_build_object('n', g)) FROM generate_series(1, 30) g`);
  // the first ten applied before (by the relay, say): their inbox rows are there
  const consumer = env.config().observers.subscribe[0]!.consumer;
  await env.sql(
    `INSERT INTO fraiseql_relay.inbox (consumer, event_id, subject)
     SELECT $1, id::text, subject FROM fraiseql_relay.outbox WHERE (entity->>'n')::int <= 10`,
    [consumer],
  );

  for (let run = 1; run <= 2; run++) {
    const r = await runCli(['replay', '--since', '1h', '-c', env.configFile], env.env);
    assert.equal(r.code, 0, `run ${run}: ${r.stdout}\n${r.stderr}`);
    assert.match(
      r.stdout,
      run === 1 ? /20 published, 10 already applied \(their inbox rows\)/ : /0 published, 30 already applied/,
      `run ${run}: ${r.stdout}`,
    );
  }
  const counted = await env.sql<{ n: number }>(`SELECT n FROM counted ORDER BY n`);
  assert.deepEqual(
    counted.map((r) => r.n),
    Array.from({ length: 20 }, (_, i) => i + 11),
    'each event not applied before, applied once',
  );
});

const WEBHOOK_TOML = `
[project]
name = "replay-hooks"

[database]
url = "\${DATABASE_URL}"

[observers]
backend = "webhook"

[[observers.publish]]
mutation = "create_order"
subject = "fraiseql.order.created"
[[observers.publish.actions]]
type = "webhook"
url_env = "REPLAY_HOOK_URL"
`;

test('backend = "webhook": replay delivers each retained event again, in order, with its webhook-id', async (t) => {
  const ep = await endpoint(() => 200);
  t.after(() => ep.server.close());
  const env = await TestEnv.create({ toml: WEBHOOK_TOML });
  t.after(() => env.destroy());
  await env.migrate();
  // rows of the mutation (an explicit subject has no webhook action: it would be dead-lettered, as `run` does)
  for (let n = 1; n <= 5; n++) {
    await env.sql(
      `INSERT INTO fraiseql_relay.outbox (mutation, operation, entity) VALUES ('create_order', 'INSERT', jsonb_build_object('n', $1::int))`,
      [n],
    );
  }
  const ids = (await env.sql<{ id: string }>(`SELECT id::text FROM fraiseql_relay.outbox ORDER BY created_at, id`)).map((r) => r.id);
  const r = await runCli(['replay', '--since', '1h', '-c', env.configFile], { ...env.env, REPLAY_HOOK_URL: `${ep.url}/hook` });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /5 published/);
  assert.deepEqual(
    ep.got.map((g) => (JSON.parse(g.body) as { entity: { n: number } }).entity.n),
    [1, 2, 3, 4, 5],
  );
  assert.deepEqual(
    ep.got.map((g) => g.id),
    ids,
    'webhook-id is the event id: a receiver de-duplicates a replay by it',
  );
});
