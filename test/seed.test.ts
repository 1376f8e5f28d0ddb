/**
 * The seed, end to end: three services, each with its own database on one PostgreSQL and its own
 * `fraiseql-relay run` process, one NATS. The order service publishes from its mutations; the
 * inventory service reserves stock from fraiseql.order.created; the notification and analytics
 * services consume the same subject independently (fan-out), analytics also fraiseql.order.updated.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { jetstreamManager } from '@nats-io/jetstream';
import { TestEnv, RelayProcess, runCli, until } from './fixture.js';
import { loadConfig } from '../src/config/load.js';
import { migrate } from '../src/schema/migrate.js';
import { createLogger } from '../src/util/log.js';
import { ORDER_SERVICE_SQL, INVENTORY_SERVICE_SQL } from '../src/commands/demo.js';

const SKUS = ['SKU-1', 'SKU-2', 'SKU-3', 'SKU-4', 'SKU-5', 'SKU-6'];
const INITIAL_STOCK = 100_000;
const INVENTORY_CONSUMER = 'inventory-service-fraiseql_order_created';

const head = (name: string) => `
[project]
name = "${name}"

[database]
type = "postgresql"
url = "\${DATABASE_URL}"

[observers]
backend = "nats"
nats_url = "\${NATS_URL}"
`;

const RELAY = `
[relay]
listen = "127.0.0.1:0"

[relay.stream]
name = "FRAISEQL"
subjects = ["fraiseql.>"]
`;

const TOML: Record<string, string> = {
  order: `${head('order-service')}
[[observers.publish]]
mutation = "create_order"
subject = "fraiseql.order.created"

[[observers.publish]]
mutation = "update_order"
subject = "fraiseql.order.updated"
${RELAY}`,
  inventory: `${head('inventory-service')}
[[observers.subscribe]]
subject = "fraiseql.order.created"
handler = "fn_reserve_inventory"
max_deliver = 3
ack_wait = "2s"
backoff = ["100ms", "200ms"]
${RELAY}`,
  notification: `${head('notification-service')}
[[observers.subscribe]]
subject = "fraiseql.order.created"
handler = "fn_notify_customer"
${RELAY}`,
  analytics: `${head('analytics-service')}
[[observers.subscribe]]
subject = "fraiseql.order.created"
handler = "fn_record_order_event"

[[observers.subscribe]]
subject = "fraiseql.order.updated"
handler = "fn_record_order_event"
${RELAY}`,
};

/**
 * The inventory handler under test: the demo's own fn_reserve_inventory (renamed to
 * reserve_items), plus a refusal for one customer and a count of committed calls per order. The
 * reservation logic is idempotent by itself, so `handler_calls.calls` is what shows whether the
 * relay ever applied an event twice.
 */
const inventoryHandler = (poison: boolean) => `
CREATE OR REPLACE FUNCTION fn_reserve_inventory(p_event jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  ${
    poison
      ? `IF p_event->'entity'->>'customer' = 'poison' THEN
    RAISE EXCEPTION 'cannot reserve order %: customer is blocked', p_event->>'id';
  END IF;`
      : '-- fixed: no customer is refused any more'
  }
  INSERT INTO handler_calls (order_id) VALUES ((p_event->>'id')::uuid)
    ON CONFLICT (order_id) DO UPDATE SET calls = handler_calls.calls + 1;
  PERFORM pg_sleep(0.002);  -- a little work, so that a SIGKILL lands while events are in flight
  PERFORM reserve_items(p_event);
END $$;`;

const SERVICE_SQL: Record<string, string> = {
  order: ORDER_SERVICE_SQL,
  inventory: `${INVENTORY_SERVICE_SQL}
ALTER FUNCTION fn_reserve_inventory(jsonb) RENAME TO reserve_items;
CREATE TABLE handler_calls (order_id uuid PRIMARY KEY, calls integer NOT NULL DEFAULT 1);
${inventoryHandler(true)}
INSERT INTO tb_stock (sku, initial, on_hand) SELECT sku, ${INITIAL_STOCK}, ${INITIAL_STOCK} FROM unnest(ARRAY['${SKUS.join("','")}']) AS sku;`,
  notification: `
CREATE TABLE tb_notification (order_id uuid PRIMARY KEY, customer text NOT NULL, event_id uuid NOT NULL, calls integer NOT NULL DEFAULT 1);
CREATE FUNCTION fn_notify_customer(p_event jsonb) RETURNS void LANGUAGE sql AS $$
  INSERT INTO tb_notification (order_id, customer, event_id)
  VALUES ((p_event->>'id')::uuid, p_event->'entity'->>'customer', (p_event->>'event_id')::uuid)
  ON CONFLICT (order_id) DO UPDATE SET calls = tb_notification.calls + 1
$$;`,
  analytics: `
CREATE TABLE tb_order_event (event_id uuid PRIMARY KEY, order_id uuid NOT NULL, operation text NOT NULL, calls integer NOT NULL DEFAULT 1);
CREATE FUNCTION fn_record_order_event(p_event jsonb) RETURNS void LANGUAGE sql AS $$
  INSERT INTO tb_order_event (event_id, order_id, operation)
  VALUES ((p_event->>'event_id')::uuid, (p_event->>'id')::uuid, p_event->>'operation')
  ON CONFLICT (event_id) DO UPDATE SET calls = tb_order_event.calls + 1
$$;`,
};

class Service {
  readonly pool: pg.Pool;
  relay: RelayProcess | null = null;
  private generation = 0;

  constructor(
    readonly name: string,
    readonly file: string,
    readonly env: NodeJS.ProcessEnv,
    url: string,
  ) {
    this.pool = new pg.Pool({ connectionString: url, max: 16 });
  }

  async sql<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, params: unknown[] = []): Promise<R[]> {
    return (await this.pool.query<R>(text, params)).rows;
  }

  async count(text: string, params: unknown[] = []): Promise<number> {
    const [row] = await this.sql(text, params);
    return Number(Object.values(row!)[0]);
  }

  /** Starts `fraiseql-relay run` for this service and waits until it runs. */
  async start(): Promise<RelayProcess> {
    const relay = new RelayProcess(join(env.dir, `${this.name}-${this.generation++}.log`), ['run', '-c', this.file], this.env);
    this.relay = relay;
    await relay.waitForLog('relay running');
    return relay;
  }
}

let env: TestEnv;
let svc: Record<'order' | 'inventory' | 'notification' | 'analytics', Service>;

/** Polls until `fn` returns true; fails with `what` and the last `detail()` when it does not. */

/** Creates orders concurrently (up to `parallel` at once); returns their ids in creation order. */
async function createOrders(orders: { customer: string; items: string[] }[], parallel = 8): Promise<string[]> {
  const ids: string[] = new Array(orders.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (next < orders.length) {
        const i = next++;
        const [r] = await svc.order.sql<{ id: string }>(`SELECT (app.fn_create_order($1, $2::text[])).entity_id::text AS id`, [
          orders[i]!.customer,
          orders[i]!.items,
        ]);
        ids[i] = r!.id;
      }
    }),
  );
  return ids;
}

/** The items of the i-th test order: one to three distinct SKUs, sometimes listed twice. */
function itemsOf(i: number): string[] {
  const items = [SKUS[i % SKUS.length]!];
  if (i % 2 === 0) items.push(SKUS[(i * 7 + 3) % SKUS.length]!);
  if (i % 5 === 0) items.push(SKUS[(i + 2) % SKUS.length]!, items[0]!);
  return items;
}

/** What the order service committed: every created order with its items, every event id. */
async function committed(): Promise<{ orders: Map<string, string[]>; created: string[]; updated: string[] }> {
  const orders = new Map(
    (await svc.order.sql<{ id: string; item_ids: string[] }>(`SELECT id::text, item_ids FROM app.tb_order`)).map((r) => [r.id, r.item_ids]),
  );
  const events = await svc.order.sql<{ id: string; mutation: string }>(`SELECT id::text, mutation FROM fraiseql_relay.outbox`);
  return {
    orders,
    created: events.filter((e) => e.mutation === 'create_order').map((e) => e.id),
    updated: events.filter((e) => e.mutation === 'update_order').map((e) => e.id),
  };
}

/**
 * The inventory service reserved each item of each order (except `excluded`) exactly once, with
 * one committed handler call per order, one inbox row per order, and stock down by exactly the
 * number of orders containing each SKU.
 */
async function assertInventoryExact(orders: Map<string, string[]>, excluded: Set<string> = new Set()): Promise<void> {
  const want: string[] = [];
  const perSku = new Map<string, number>(SKUS.map((s) => [s, 0]));
  for (const [id, items] of orders) {
    if (excluded.has(id)) continue;
    for (const sku of new Set(items)) {
      want.push(`${id} ${sku}`);
      perSku.set(sku, perSku.get(sku)! + 1);
    }
  }
  const got = (await svc.inventory.sql<{ r: string }>(`SELECT order_id::text || ' ' || sku AS r FROM tb_reservation`)).map((x) => x.r);
  assert.deepEqual(got.sort(), want.sort(), 'each order reserved each of its items once');
  const stock = await svc.inventory.sql<{ sku: string; used: number }>(`SELECT sku, initial - on_hand AS used FROM tb_stock ORDER BY sku`);
  assert.deepEqual(
    stock,
    SKUS.map((sku) => ({ sku, used: perSku.get(sku) })),
    'stock decremented exactly by the number of orders containing the SKU',
  );
  const calls = await svc.inventory.sql<{ order_id: string; calls: number }>(`SELECT order_id::text, calls FROM handler_calls`);
  assert.equal(calls.length, orders.size - excluded.size, 'one committed handler call per order');
  assert.deepEqual(
    calls.filter((c) => c.calls !== 1),
    [],
    'no order applied twice',
  );
  assert.equal(
    await svc.inventory.count(`SELECT count(*) FROM fraiseql_relay.inbox WHERE consumer = $1`, [INVENTORY_CONSUMER]),
    orders.size - excluded.size,
  );
}

/** Notification saw every created order once; analytics saw every created and updated event once. */
async function assertFanOut(orders: Map<string, string[]>, created: string[], updated: string[]): Promise<void> {
  const notes = await svc.notification.sql<{ order_id: string; event_id: string; calls: number }>(
    `SELECT order_id::text, event_id::text, calls FROM tb_notification`,
  );
  assert.deepEqual(notes.map((n) => n.order_id).sort(), [...orders.keys()].sort(), 'the notification service saw every order');
  assert.deepEqual(notes.map((n) => n.event_id).sort(), [...created].sort(), 'the notification service saw every create_order event');
  assert.deepEqual(
    notes.filter((n) => n.calls !== 1),
    [],
    'the notification service applied each event once',
  );
  const seen = await svc.analytics.sql<{ event_id: string; operation: string; calls: number }>(
    `SELECT event_id::text, operation, calls FROM tb_order_event`,
  );
  assert.deepEqual(
    seen
      .filter((e) => e.operation === 'INSERT')
      .map((e) => e.event_id)
      .sort(),
    [...created].sort(),
    'analytics saw every created event',
  );
  assert.deepEqual(
    seen
      .filter((e) => e.operation === 'UPDATE')
      .map((e) => e.event_id)
      .sort(),
    [...updated].sort(),
    'analytics saw every updated event',
  );
  assert.equal(seen.length, created.length + updated.length);
  assert.deepEqual(
    seen.filter((e) => e.calls !== 1),
    [],
    'analytics applied each event once',
  );
}

/** Waits until every service has processed everything the order service committed. */
async function waitForAll(excluded: Set<string> = new Set()): Promise<Awaited<ReturnType<typeof committed>>> {
  const c = await committed();
  const counts = async () => ({
    inventory: await svc.inventory.count(`SELECT count(*) FROM fraiseql_relay.inbox`),
    notification: await svc.notification.count(`SELECT count(*) FROM fraiseql_relay.inbox`),
    analytics: await svc.analytics.count(`SELECT count(*) FROM fraiseql_relay.inbox`),
    want: { inventory: c.created.length - excluded.size, notification: c.created.length, analytics: c.created.length + c.updated.length },
  });
  await until(
    'every service to process every event',
    async () => {
      const n = await counts();
      return n.inventory >= n.want.inventory && n.notification >= n.want.notification && n.analytics >= n.want.analytics;
    },
    45_000,
    counts,
  );
  return c;
}

async function consumerInfo(name: string) {
  const nc = await env.natsClient();
  try {
    return await (await jetstreamManager(nc)).consumers.info('FRAISEQL', name);
  } finally {
    await nc.close();
  }
}

before(async () => {
  env = await TestEnv.create();
  const entries = await Promise.all(
    Object.keys(TOML).map(async (name) => {
      const url = await env.pg.createDatabase(name);
      const file = join(env.dir, `${name}.toml`);
      await writeFile(file, TOML[name]!);
      const vars = { ...process.env, DATABASE_URL: url, NATS_URL: env.nats.url };
      await migrate(loadConfig(file, vars), createLogger('silent'));
      const s = new Service(name, file, vars, url);
      await s.sql(SERVICE_SQL[name]!);
      return [name, s] as const;
    }),
  );
  svc = Object.fromEntries(entries) as typeof svc;
  // the order service first: its relay creates the stream the others' consumers attach to
  await svc.order.start();
  await Promise.all([svc.inventory.start(), svc.notification.start(), svc.analytics.start()]);
});

after(async () => {
  for (const s of Object.values(svc ?? {})) {
    if (s.relay && s.relay.child.exitCode === null && s.relay.child.signalCode === null) await s.relay.kill('SIGKILL');
    await s.pool.end();
  }
  await env?.destroy();
});

test('only the order service holds a replication slot', async () => {
  const slots = await svc.order.sql<{ slot_name: string; database: string }>(`SELECT slot_name, database FROM pg_replication_slots`);
  // [project] name "order-service" in database "order": the default name is fraiseql_relay_<service>_<database>
  assert.deepEqual(slots, [{ slot_name: 'fraiseql_relay_order_service_order', database: 'order' }]);
});

test('fan-out: each service sees every event once; each order reserves each item once', async () => {
  const ids = await createOrders(Array.from({ length: 30 }, (_, i) => ({ customer: `customer-${i}`, items: itemsOf(i) })));
  for (const id of ids.filter((_, i) => i % 3 === 0)) {
    const [r] = await svc.order.sql<{ succeeded: boolean; state_changed: boolean }>(
      `SELECT (r).succeeded, (r).state_changed FROM app.fn_update_order($1, 'shipped') r`,
      [id],
    );
    assert.deepEqual(r, { succeeded: true, state_changed: true });
  }
  const c = await waitForAll();
  assert.equal(c.orders.size, 30);
  assert.equal(c.created.length, 30);
  assert.equal(c.updated.length, 10);
  await assertInventoryExact(c.orders);
  await assertFanOut(c.orders, c.created, c.updated);
  // fan-out is by durable consumer: one per service and subject
  for (const name of [
    'inventory-service-fraiseql_order_created',
    'notification-service-fraiseql_order_created',
    'analytics-service-fraiseql_order_created',
  ]) {
    assert.equal((await consumerInfo(name)).delivered.stream_seq > 0, true, `${name} exists and delivered`);
  }
  assert.equal((await consumerInfo('analytics-service-fraiseql_order_updated')).config.filter_subject, 'fraiseql.order.updated');
});

test('the inventory relay SIGKILLed twice while 360 orders are created concurrently: nothing applied twice', async () => {
  const before = await committed();
  const deliveredBefore = (await consumerInfo(INVENTORY_CONSUMER)).delivered.consumer_seq;
  const total = 360;
  const load = createOrders(Array.from({ length: total }, (_, i) => ({ customer: `load-${i}`, items: itemsOf(i + 1000) })));
  for (let k = 1; k <= 2; k++) {
    // kill while the inventory service is partway through the new orders
    const target = before.orders.size + k * 90;
    await until(
      `the inventory service to apply ${target} orders`,
      async () => (await svc.inventory.count(`SELECT count(*) FROM handler_calls`)) >= target,
    );
    const inFlight = (await committed()).created.length - (await svc.inventory.count(`SELECT count(*) FROM handler_calls`));
    assert.ok(inFlight > 0, `orders are still waiting for the inventory service when it is killed (${inFlight})`);
    assert.equal(await svc.inventory.relay!.kill('SIGKILL'), null, 'killed, not exited');
    await svc.inventory.start();
  }
  const ids = await load;
  assert.equal(new Set(ids).size, total);
  const c = await waitForAll();
  assert.equal(c.orders.size, before.orders.size + total);
  await assertInventoryExact(c.orders);
  await assertFanOut(c.orders, c.created, c.updated);
  // the kills left delivered-but-unacknowledged messages behind, and JetStream delivered them again
  const info = await consumerInfo(INVENTORY_CONSUMER);
  assert.ok(
    info.delivered.consumer_seq - deliveredBefore > total,
    `redeliveries after the kills (${info.delivered.consumer_seq - deliveredBefore} deliveries of ${total} messages)`,
  );
  assert.ok(!svc.inventory.relay!.output().includes('updated durable consumer'), 'a restart finds the consumer as configured (no drift)');
});

test('a handler that raises for one order dead-letters it after max_deliver; the rest flow; dlq retry applies it once', async () => {
  const batch = Array.from({ length: 21 }, (_, i) => ({ customer: i === 10 ? 'poison' : `after-${i}`, items: itemsOf(i + 5000) }));
  const ids = await createOrders(batch, 1); // in order: the poison order sits in the middle
  const poisonId = ids[10]!;
  const dl = await (async () => {
    type Row = {
      id: string;
      direction: string;
      consumer: string;
      handler: string;
      attempts: number;
      error: string;
      body: string;
      event_id: string;
    };
    let rows: Row[] = [];
    await until('the poison order to be dead-lettered', async () => {
      rows = await svc.inventory.sql<Row>(
        `SELECT id::text, direction, consumer, handler, attempts, error, body, event_id FROM fraiseql_relay.dead_letter`,
      );
      return rows.length > 0;
    });
    return rows;
  })();
  assert.equal(dl.length, 1);
  assert.equal(dl[0]!.direction, 'inbound');
  assert.equal(dl[0]!.consumer, INVENTORY_CONSUMER);
  assert.equal(dl[0]!.handler, 'fn_reserve_inventory');
  assert.equal(dl[0]!.attempts, 3, 'max_deliver attempts');
  assert.match(dl[0]!.error, new RegExp(`cannot reserve order ${poisonId}: customer is blocked`));
  assert.equal(JSON.parse(dl[0]!.body).id, poisonId);
  const c = await waitForAll(new Set([poisonId]));
  // terminated: the consumer has nothing pending or in flight, and the dead letter is still the only one
  await until(
    'the inventory consumer to settle',
    async () => {
      const info = await consumerInfo(INVENTORY_CONSUMER);
      return info.num_pending === 0 && info.num_ack_pending === 0 && info.num_redelivered === 0;
    },
    30_000,
    async () => consumerInfo(INVENTORY_CONSUMER).then((i) => [i.num_pending, i.num_ack_pending, i.num_redelivered]),
  );
  assert.equal(await svc.inventory.count(`SELECT count(*) FROM fraiseql_relay.dead_letter`), 1);
  assert.equal(
    await svc.inventory.count(`SELECT count(*) FROM handler_calls WHERE order_id = $1`, [poisonId]),
    0,
    'the failed calls rolled back',
  );
  assert.equal(await svc.inventory.count(`SELECT count(*) FROM fraiseql_relay.inbox WHERE event_id = $1`, [dl[0]!.event_id]), 0);
  // every other order, before and after the poison one, was reserved; the other services saw it too
  await assertInventoryExact(c.orders, new Set([poisonId]));
  await assertFanOut(c.orders, c.created, c.updated);
  for (const s of [svc.order, svc.notification, svc.analytics])
    assert.equal(await s.count(`SELECT count(*) FROM fraiseql_relay.dead_letter`), 0, `${s.name}: no dead letters`);

  // fix the handler, re-drive the dead letter: applied exactly once, the dead letter gone
  await svc.inventory.sql(inventoryHandler(false));
  const list = await runCli(['dlq', 'list', '-c', svc.inventory.file], svc.inventory.env);
  assert.equal(list.code, 0, list.stderr);
  assert.match(list.stdout, new RegExp(`^${dl[0]!.id}\\s+inbound\\s+fraiseql\\.order\\.created\\s+fn_reserve_inventory\\s+3\\s`, 'm'));
  const retry = await runCli(['dlq', 'retry', '--all', '-c', svc.inventory.file], svc.inventory.env);
  assert.equal(retry.code, 0, retry.stderr + retry.stdout);
  assert.match(retry.stdout, /retried 1: 1 succeeded, 0 still failing/);
  assert.equal(await svc.inventory.count(`SELECT count(*) FROM fraiseql_relay.dead_letter`), 0, 'the dead letter is gone');
  const again = await runCli(['dlq', 'retry', '--all', '-c', svc.inventory.file], svc.inventory.env);
  assert.equal(again.code, 0, again.stderr + again.stdout);
  assert.match(again.stdout, /retried 0: 0 succeeded/);
  await assertInventoryExact(c.orders);
  assert.deepEqual(
    await svc.inventory.sql(`SELECT calls FROM handler_calls WHERE order_id = $1`, [poisonId]),
    [{ calls: 1 }],
    'the re-driven order was applied once',
  );
});

test('every relay stops cleanly on SIGTERM', async () => {
  const codes = await Promise.all(Object.values(svc).map((s) => s.relay!.kill('SIGTERM')));
  assert.deepEqual(codes, [0, 0, 0, 0]);
});
