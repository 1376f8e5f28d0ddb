/**
 * backend = "postgres": no broker. The seed's order service (fn_create_order, publishing
 * fraiseql.order.created) and its inventory service (fn_reserve_inventory, subscribed to it) share
 * ONE database and one relay; the handler is applied straight from the slot's stream through the
 * inbox. NATS is started by the fixture and never used: the configuration names no NATS URL.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { TestEnv, runCli, sleep, type RelayProcess, until } from './fixture.js';
import { endpoint, orderHookRules, signedWith, webhookDeadLetter } from './webhook-endpoint.js';
import { ORDER_SERVICE_SQL, INVENTORY_SERVICE_SQL } from '../src/commands/demo.js';
import { startDaemon, type Daemon } from '../src/daemon.js';
import { createLogger } from '../src/util/log.js';

const SKUS = ['SKU-1', 'SKU-2', 'SKU-3', 'SKU-4', 'SKU-5'];
const INVENTORY_CONSUMER = 'inventory-service-fraiseql_order_created';

const TOML = `
[project]
name = "inventory-service"

[database]
type = "postgresql"
url = "\${DATABASE_URL}"

[observers]
backend = "postgres"

[[observers.publish]]
mutation = "create_order"
subject = "fraiseql.order.created"

[[observers.publish]]
mutation = "update_order"
subject = "fraiseql.order.updated"

[[observers.subscribe]]
subject = "fraiseql.order.created"
handler = "fn_reserve_inventory"
max_deliver = 3
backoff = ["100ms", "200ms"]

[[observers.subscribe]]
subject = "fraiseql.order.>"
handler = "fn_record_order_event"
consumer = "order-log"

[relay]
listen = "127.0.0.1:0"
`;

/**
 * The seed's two services in one database: the demo's fn_reserve_inventory (renamed reserve_items)
 * wrapped by a handler that also records each committed call in a table without a unique key, so a
 * second application of one event would show as a second row; a refusal for one customer; and a
 * second subscription (a wildcard) that logs every order event.
 */
const SCHEMA_SQL = `
${ORDER_SERVICE_SQL}
${INVENTORY_SERVICE_SQL}
ALTER FUNCTION fn_reserve_inventory(jsonb) RENAME TO reserve_items;
CREATE TABLE applications (order_id uuid NOT NULL, event_id uuid NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE order_log (event_id uuid NOT NULL, operation text NOT NULL, subject_status text);
CREATE TABLE blocked (customer text PRIMARY KEY);
CREATE FUNCTION fn_reserve_inventory(p_event jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT FROM blocked WHERE customer = p_event->'entity'->>'customer') THEN
    RAISE EXCEPTION 'cannot reserve order %: customer is blocked', p_event->>'id';
  END IF;
  INSERT INTO applications (order_id, event_id) VALUES ((p_event->>'id')::uuid, (p_event->>'event_id')::uuid);
  PERFORM pg_sleep(0.003);  -- a little work, so that the SIGKILL and the restart land mid-stream
  PERFORM reserve_items(p_event);
END $$;
CREATE FUNCTION fn_record_order_event(p_event jsonb) RETURNS void LANGUAGE sql AS $$
  INSERT INTO order_log (event_id, operation, subject_status) VALUES ((p_event->>'event_id')::uuid, p_event->>'operation', p_event->'entity'->>'status')
$$;
INSERT INTO tb_stock (sku, initial, on_hand) SELECT sku, 100000, 100000 FROM unnest(ARRAY['${SKUS.join("','")}']) AS sku;
`;

async function prepare(): Promise<TestEnv> {
  const env = await TestEnv.create({ toml: TOML });
  try {
    await env.migrate();
    await env.sql(SCHEMA_SQL);
    return env;
  } catch (err) {
    await env.destroy();
    throw err;
  }
}

async function count(env: TestEnv, sql: string): Promise<number> {
  for (;;) {
    try {
      return Number((await env.sql<{ n: string }>(sql))[0]!.n);
    } catch {
      await sleep(100); // PostgreSQL restarting
    }
  }
}

test('backend = "postgres": the seed\'s inventory handler applied exactly once from the same database\'s outbox, across a relay SIGKILL and a PostgreSQL restart', async () => {
  const env = await prepare();
  let relay: RelayProcess | null = null;
  const stop = { now: false };
  let producer: Promise<void> | null = null;
  try {
    relay = env.spawnRelay('relay-1');
    await relay.waitForLog('replication connected');

    // orders commit all along, five per transaction; a batch that fails while PostgreSQL restarts
    // did not commit (or did: the orders table says which) and is simply tried again
    const TOTAL = 1500;
    let attempts = 0;
    producer = (async () => {
      const pool = new pg.Pool({ connectionString: env.dbUrl, max: 2 });
      pool.on('error', () => {});
      try {
        while (!stop.now) {
          const n = Number(
            (await pool.query<{ n: string }>('SELECT count(*)::text AS n FROM app.tb_order').catch(() => ({ rows: [{ n: '-1' }] })))
              .rows[0]!.n,
          );
          if (n >= TOTAL) return;
          if (n < 0) {
            await sleep(100);
            continue;
          }
          try {
            attempts++;
            await pool.query(
              `SELECT app.fn_create_order('customer-' || $1::int || '-' || g, ARRAY['SKU-' || (1 + g % 5), 'SKU-' || (1 + (g + 2) % 5)])
                 FROM generate_series(1, 5) g`,
              [attempts],
            );
          } catch {
            await sleep(100);
          }
          await sleep(5);
        }
      } finally {
        await pool.end();
      }
    })();

    const applied = () => count(env, 'SELECT count(*)::text AS n FROM applications');
    const orders = () => count(env, 'SELECT count(*)::text AS n FROM app.tb_order');

    // 1. the relay SIGKILLed while events are being applied
    await until('the first applications', async () => (await applied()) >= 150, 60_000);
    await relay.kill('SIGKILL');
    const atKill = await applied();
    const committedAtKill = await orders();
    assert.ok(committedAtKill > atKill, `orders committed but not applied when the relay was killed (${committedAtKill} > ${atKill})`);
    relay = env.spawnRelay('relay-2');
    await relay.waitForLog('replication connected');

    // 2. PostgreSQL restarted under the running relay, with a backlog
    await until('applications after the restart', async () => (await applied()) >= atKill + 300, 60_000);
    const beforeRestart = await applied();
    await env.pg.restart();
    await relay.waitForLog('outbound stream interrupted', 30_000);
    assert.equal(relay.child.exitCode, null, 'the relay survives the PostgreSQL restart');

    await producer;
    producer = null;
    const committed = await orders();
    assert.ok(committed >= TOTAL);
    assert.ok(beforeRestart < committed, 'events were still to apply when PostgreSQL restarted');
    await until(`${committed} orders applied`, async () => (await applied()) >= committed, 120_000);
    // nothing more comes: give a duplicate the time to show
    await sleep(1000);

    const twice = await env.sql<{ order_id: string; n: string }>(
      `SELECT order_id::text, count(*)::text AS n FROM applications GROUP BY order_id HAVING count(*) <> 1 LIMIT 5`,
    );
    assert.deepEqual(twice, [], 'no order applied twice');
    const missing = await env.sql<{ id: string }>(
      `SELECT id::text FROM app.tb_order o WHERE NOT EXISTS (SELECT FROM applications a WHERE a.order_id = o.id) LIMIT 5`,
    );
    assert.deepEqual(missing, [], 'every committed order applied');
    assert.equal(await applied(), committed, 'one application per committed order');
    // the handler's own effect: two items reserved per order, each moving stock once
    const [stock] = await env.sql<{ moved: string; reserved: string }>(
      `SELECT (SELECT sum(initial - on_hand) FROM tb_stock)::text AS moved, (SELECT count(*) FROM tb_reservation)::text AS reserved`,
    );
    assert.equal(Number(stock!.moved), committed * 2);
    assert.equal(Number(stock!.reserved), committed * 2);
    // the inbox holds each event once per subscription
    const inbox = await env.sql<{ consumer: string; n: string }>(
      `SELECT consumer, count(*)::text AS n FROM fraiseql_relay.inbox GROUP BY consumer ORDER BY consumer`,
    );
    assert.deepEqual(
      inbox.map((r) => [r.consumer, Number(r.n)]),
      [
        [INVENTORY_CONSUMER, committed],
        ['order-log', committed],
      ],
    );
    assert.equal(await count(env, 'SELECT count(*)::text AS n FROM fraiseql_relay.dead_letter'), 0);
    // the slot is confirmed past everything applied
    await until(
      'the slot confirmed to the end',
      async () =>
        (
          await env.sql<{ caught: boolean }>(
            `SELECT confirmed_flush_lsn >= (SELECT max(lsn) FROM (SELECT pg_current_wal_insert_lsn() AS lsn) x) - 1024*1024 AS caught
               FROM pg_replication_slots WHERE slot_name LIKE 'fraiseql_relay%'`,
          )
        )[0]?.caught === true,
      30_000,
    );

    const code = await relay.kill('SIGTERM');
    relay = null;
    assert.equal(code, 0, 'stops cleanly on SIGTERM');
  } finally {
    stop.now = true;
    await producer?.catch(() => {});
    await relay?.kill('SIGKILL');
    await env.destroy();
  }
});

test('backend = "postgres": wildcard subscriptions, unsubscribed subjects acknowledged, a failing handler retried then dead-lettered, dlq retry, metrics and /readyz without NATS', async () => {
  const env = await prepare();
  let daemon: Daemon | null = null;
  try {
    await env.sql(`INSERT INTO blocked VALUES ('poison')`);
    daemon = await startDaemon(env.config(), createLogger(process.env['TEST_LOG_LEVEL'] ?? 'silent'), {
      backoffMinMs: 100,
      backoffMaxMs: 1000,
    });
    const base = `http://127.0.0.1:${daemon.port}`;

    const [good] = await env.sql<{ id: string }>(`SELECT entity_id::text AS id FROM app.fn_create_order('alice', ARRAY['SKU-1'])`);
    const [bad] = await env.sql<{ id: string }>(`SELECT entity_id::text AS id FROM app.fn_create_order('poison', ARRAY['SKU-2'])`);
    await env.sql(`SELECT app.fn_update_order($1::uuid, 'shipped')`, [good!.id]);
    // a subject no subscription matches: acknowledged, not applied, not an error
    await env.sql(`SELECT fraiseql_relay.emit('audit.login', '{"user":"alice"}')`);
    const [after] = await env.sql<{ id: string }>(`SELECT entity_id::text AS id FROM app.fn_create_order('bob', ARRAY['SKU-3'])`);

    // the failing event is tried max_deliver (3) times, dead-lettered, and the stream moves on
    await until(
      'the order after the poison one applied',
      async () => (await count(env, `SELECT count(*)::text AS n FROM applications WHERE order_id = '${after!.id}'`)) === 1,
      30_000,
    );
    const dl = await env.sql<{ direction: string; consumer: string; handler: string; attempts: number; error: string; subject: string }>(
      `SELECT direction, consumer, handler, attempts, error, subject FROM fraiseql_relay.dead_letter`,
    );
    assert.equal(dl.length, 1);
    assert.equal(dl[0]!.direction, 'inbound');
    assert.equal(dl[0]!.consumer, INVENTORY_CONSUMER);
    assert.equal(dl[0]!.handler, 'fn_reserve_inventory');
    assert.equal(dl[0]!.subject, 'fraiseql.order.created');
    assert.equal(dl[0]!.attempts, 3);
    assert.match(dl[0]!.error, /customer is blocked/);
    // commit order: the good order applied before the later one, the poison one not at all
    const seq = await env.sql<{ order_id: string }>(`SELECT order_id::text FROM applications ORDER BY at`);
    assert.deepEqual(
      seq.map((r) => r.order_id),
      [good!.id, after!.id],
    );
    // the wildcard subscription saw every order event (the poison order's too: its own handler did not fail), in commit order
    const log = await env.sql<{ operation: string; subject_status: string }>(`SELECT operation, subject_status FROM order_log`);
    assert.deepEqual(
      log.map((r) => `${r.operation}:${r.subject_status}`),
      ['INSERT:new', 'INSERT:new', 'UPDATE:shipped', 'INSERT:new'],
    );

    // metrics: handler outcomes counted, the unsubscribed event counted unrouted, no NATS or Redis series
    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert.match(metrics, new RegExp(`fraiseql_relay_handler_calls_total\\{consumer="${INVENTORY_CONSUMER}",outcome="applied"\\} 2`));
    assert.match(metrics, new RegExp(`fraiseql_relay_handler_calls_total\\{consumer="${INVENTORY_CONSUMER}",outcome="failed"\\} 3`));
    assert.match(metrics, new RegExp(`fraiseql_relay_handler_calls_total\\{consumer="${INVENTORY_CONSUMER}",outcome="dead_lettered"\\} 1`));
    assert.match(metrics, /fraiseql_relay_handler_calls_total\{consumer="order-log",outcome="applied"\} 4/);
    assert.match(metrics, /fraiseql_relay_events_unrouted_total 1\b/);
    assert.doesNotMatch(metrics, /target="(nats|redis)"/);
    // up is sampled once a second: it says 1 by the next sample after the connection
    await until(
      'up{target="postgres"} 1',
      async () => /fraiseql_relay_up\{target="postgres"\} 1/.test(await (await fetch(`${base}/metrics`)).text()),
      5_000,
    );
    await until('ready', async () => (await fetch(`${base}/readyz`)).status === 200, 30_000);
    const ready = (await (await fetch(`${base}/readyz`)).json()) as Record<string, unknown>;
    assert.doesNotMatch(JSON.stringify(ready), /nats|redis/i);

    // the handler is fixed; dlq retry applies the dead letter exactly once, through the inbox
    await env.sql(`DELETE FROM blocked`);
    const retry = await runCli(['dlq', 'retry', '--all', '-c', env.configFile], env.env);
    assert.equal(retry.code, 0, retry.stderr + retry.stdout);
    assert.equal(await count(env, `SELECT count(*)::text AS n FROM applications WHERE order_id = '${bad!.id}'`), 1);
    assert.equal(await count(env, 'SELECT count(*)::text AS n FROM fraiseql_relay.dead_letter'), 0);
    const again = await runCli(['dlq', 'retry', '--all', '-c', env.configFile], env.env);
    assert.equal(again.code, 0);
    assert.equal(await count(env, `SELECT count(*)::text AS n FROM applications WHERE order_id = '${bad!.id}'`), 1, 'not applied twice');

    // check and status know the backend: no NATS probed, the slot streamed
    const check = await runCli(['check', '-c', env.configFile], env.env);
    assert.equal(check.code, 0, check.stdout + check.stderr);
    assert.doesNotMatch(check.stdout, /nats/i);
    assert.match(check.stdout, /ok\s+backend\s+postgres: no broker; 2 subscription\(s\) applied from this database's slot/);
    const status = await runCli(['status', '--json', '-c', env.configFile], env.env);
    assert.equal(status.code, 0, status.stderr);
    const report = JSON.parse(status.stdout) as { slot: { name: string } | null; consumers: unknown[] };
    assert.ok(report.slot, 'status shows the slot');
  } finally {
    await daemon?.stop();
    await env.destroy();
  }
});

const HOOK_SECRET = 'whsec_' + Buffer.from('postgres-backend-signing-key').toString('base64');

const HOOK_TOML = `
[project]
name = "pg-hooks"

[database]
url = "\${DATABASE_URL}"

[observers]
backend = "postgres"

${orderHookRules('PG')}
[[observers.subscribe]]
subject = "fraiseql.order.created"
handler = "fn_count_order"
consumer = "counter"

[relay]
listen = "127.0.0.1:0"
`;

test('backend = "postgres" with webhook actions: each delivered once, in commit order, signed; the slot and the handlers after it wait for the 2xx, across a restart; max_attempts dead-letters', async () => {
  let failing = true;
  const ep = await endpoint((path) => (path === '/broken' ? 500 : failing ? 503 : 200));
  process.env['PG_HOOK_URL'] = `${ep.url}/orders`;
  process.env['PG_BROKEN_HOOK_URL'] = `${ep.url}/broken`;
  process.env['PG_HOOK_SECRET'] = HOOK_SECRET;
  const env = await TestEnv.create({ toml: HOOK_TOML });
  const log = createLogger(process.env['TEST_LOG_LEVEL'] ?? 'silent');
  let daemon: Daemon | null = null;
  try {
    await env.sql(`
      CREATE TABLE tb_order (id serial PRIMARY KEY, n int NOT NULL);
      CREATE TABLE counted (n int NOT NULL);  -- no unique key: a second application would show
      CREATE FUNCTION fn_count_order(p_event jsonb) RETURNS void LANGUAGE sql AS
        $$ INSERT INTO counted (n) VALUES ((p_event->'entity'->>'n')::int) $$;`);
    await env.migrate();
    const counted = async () => (await env.sql<{ n: number }>(`SELECT n FROM counted ORDER BY n`)).map((r) => r.n);

    daemon = await startDaemon(env.config(), log);
    await env.sql(`INSERT INTO tb_order (n) VALUES (0)`);
    const afterFirst = await env.walInsertLsn();
    for (let i = 1; i < 10; i++) await env.sql(`INSERT INTO tb_order (n) VALUES ($1)`, [i]);

    await until('two failed attempts of the first webhook', () => ep.all.filter((r) => r.path === '/orders').length >= 2, 30_000);
    assert.ok(await env.slotConfirmedBefore(afterFirst), 'the slot is not confirmed past an undelivered webhook');
    assert.ok(
      ep.all.every((r) => JSON.parse(r.body).entity.n === 0),
      'the webhooks behind the failing one wait for it',
    );
    // one message at a time in commit order: no handler call of a later transaction runs before the webhook's 2xx
    assert.ok(
      (await counted()).every((n) => n === 0),
      'no later transaction applied',
    );

    // stopped while the endpoint fails: the next relay reads the same transactions again
    await daemon.stop();
    daemon = null;
    const attemptsBefore = ep.all.length;
    failing = false;
    daemon = await startDaemon(env.config(), log);
    await until('ten webhooks delivered', () => daemon!.relay.webhookStats.delivered === 10, 30_000);
    const afterAll = await env.walInsertLsn();
    await until('the slot confirmed past the last insert', async () => !(await env.slotConfirmedBefore(afterAll)), 30_000);
    assert.deepEqual(await counted(), [...Array(10).keys()], 'each handler applied once, across the restart (the inbox)');
    assert.ok(ep.all.length > attemptsBefore);

    // max_attempts spent: dead-lettered, and the stream moves on
    await env.sql(`DELETE FROM tb_order WHERE n = 9`);
    await env.sql(`INSERT INTO tb_order (n) VALUES (10)`);
    const dl = await webhookDeadLetter(env, 20_000);
    assert.equal(dl.attempts, 2);
    assert.match(dl.error, /500/);
    await until('the insert after the dead letter delivered', () => daemon!.relay.webhookStats.delivered === 11, 30_000);
    const afterDelete = await env.walInsertLsn();
    await until('the slot confirmed past the dead-lettered webhook', async () => !(await env.slotConfirmedBefore(afterDelete)), 30_000);
    await daemon.stop();
    daemon = null;

    const delivered = ep.got.filter((r) => r.path === '/orders');
    assert.deepEqual(
      delivered.map((r) => (JSON.parse(r.body) as { entity: { n: number } }).entity.n),
      [...Array(11).keys()],
      'each webhook answered 2xx once, in commit order',
    );
    assert.ok(
      delivered.every((r) => signedWith(HOOK_SECRET, r)),
      'every delivery is signed',
    );
    assert.equal(new Set(delivered.map((r) => r.id)).size, 11, 'eleven distinct webhook-ids');
    const retried = ep.all.filter((r) => r.path === '/orders' && r.status !== 200);
    assert.ok(
      retried.every((r) => r.id === delivered[0]!.id),
      'the failed attempts, before and after the restart, were the first event with the same webhook-id',
    );
    assert.equal(ep.all.filter((r) => r.path === '/broken').length, 2, 'max_attempts = 2: two attempts, then the dead letter');
    assert.deepEqual(await counted(), [...Array(11).keys()]);
  } finally {
    await daemon?.stop();
    await env.destroy();
    ep.server.close();
  }
});

const BATCH_TOML = `
[project]
name = "pg-batches"

[database]
url = "\${DATABASE_URL}"

[observers]
backend = "postgres"

[[observers.subscribe]]
subject = "fraiseql.item.>"
handler = "fn_apply"
consumer = "items"
max_deliver = 2
backoff = ["50ms"]
batch = 100

[relay]
listen = "127.0.0.1:0"
`;

test('backend = "postgres" applies a backlog in batches (one transaction each), in commit order, exactly once across a SIGKILL; a failing event dead-letters alone', async () => {
  const env = await TestEnv.create({ toml: BATCH_TOML });
  let relay: RelayProcess | null = null;
  try {
    await env.migrate();
    await env.sql(`
      CREATE TABLE applied (seq bigserial PRIMARY KEY, n int NOT NULL, tx xid8 NOT NULL DEFAULT pg_current_xact_id());
      CREATE FUNCTION fn_apply(p_event jsonb) RETURNS void LANGUAGE plpgsql AS $$
      BEGIN
        IF (p_event->'entity'->>'n')::int = 777 THEN RAISE EXCEPTION 'item 777 is poison'; END IF;
        INSERT INTO applied (n) VALUES ((p_event->'entity'->>'n')::int);
      END $$;`);
    // a backlog committed before the relay starts, 100 events per transaction
    const TOTAL = 6000;
    for (let from = 1; from <= TOTAL; from += 100) {
      await env.sql(
        `SELECT fraiseql_relay.emit('fraiseql.item.' || (g % 3), jsonb_build_object('n', g)) FROM generate_series($1::int, $1::int + 99) g`,
        [from],
      );
    }
    const applied = () => count(env, 'SELECT count(*)::text AS n FROM applied');

    relay = env.spawnRelay('batches-1');
    await until('a third applied', async () => (await applied()) >= TOTAL / 3, 60_000);
    await relay.kill('SIGKILL');
    const atKill = await applied();
    assert.ok(atKill < TOTAL - 1, `killed with events still to apply (${atKill})`);
    relay = env.spawnRelay('batches-2');
    await until('every good event applied', async () => (await applied()) >= TOTAL - 1, 120_000);
    await sleep(500); // nothing more comes: give a duplicate the time to show

    // commit order (emit's order), each once, the poison event left out
    const rows = await env.sql<{ n: number }>(`SELECT n FROM applied ORDER BY seq`);
    assert.deepEqual(
      rows.map((r) => r.n),
      Array.from({ length: TOTAL }, (_, i) => i + 1).filter((n) => n !== 777),
    );
    // batched: far fewer transactions than events
    const [{ txs }] = (await env.sql<{ txs: string }>(`SELECT count(DISTINCT tx)::text AS txs FROM applied`)) as [{ txs: string }];
    assert.ok(Number(txs) <= TOTAL / 10, `${txs} transactions for ${TOTAL - 1} events`);
    const dl = await env.sql<{ error: string; attempts: number; body: string }>(
      `SELECT error, attempts, body FROM fraiseql_relay.dead_letter`,
    );
    assert.equal(dl.length, 1);
    assert.match(dl[0]!.error, /item 777 is poison/);
    assert.equal(dl[0]!.attempts, 2);
    assert.equal((JSON.parse(dl[0]!.body) as { entity: { n: number } }).entity.n, 777);
    const [{ inbox }] = (await env.sql<{ inbox: string }>(`SELECT count(*)::text AS inbox FROM fraiseql_relay.inbox`)) as [
      { inbox: string },
    ];
    assert.equal(Number(inbox), TOTAL - 1);
    const code = await relay.kill('SIGTERM');
    relay = null;
    assert.equal(code, 0);
  } finally {
    await relay?.kill('SIGKILL');
    await env.destroy();
  }
});
