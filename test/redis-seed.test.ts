/**
 * The seed over backend = "redis", end to end: the order, inventory and notification services,
 * each with its own database and `fraiseql-relay run` process, one redis-server. The order service
 * appends its events to the fraiseql.order.created stream; inventory and notification each read it
 * through their own consumer group (fan-out), exactly once through their inbox.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { RelayProcess, runCli, until } from './fixture.js';
import { LocalPostgres } from '../src/local/postgres.js';
import { LocalRedis } from '../src/local/redis.js';
import { loadConfig } from '../src/config/load.js';
import { migrate } from '../src/schema/migrate.js';
import { createLogger } from '../src/util/log.js';
import { connectRedis, type RedisLink } from '../src/sink/redis-client.js';
import { ORDER_SERVICE_SQL, INVENTORY_SERVICE_SQL } from '../src/commands/demo.js';

const SKUS = ['SKU-1', 'SKU-2', 'SKU-3', 'SKU-4'];
const INVENTORY_GROUP = 'inventory-service-fraiseql_order_created';
const NOTIFICATION_GROUP = 'notification-service-fraiseql_order_created';
const STREAM = 'fraiseql.order.created';

const head = (name: string) => `
[project]
name = "${name}"

[database]
type = "postgresql"
url = "\${DATABASE_URL}"

[observers]
backend = "redis"
redis_url = "\${REDIS_URL}"
`;
const RELAY = `
[relay]
listen = "127.0.0.1:0"
`;

const TOML = {
  order: `${head('order-service')}
[[observers.publish]]
mutation = "create_order"
subject = "${STREAM}"
${RELAY}`,
  inventory: `${head('inventory-service')}
[[observers.subscribe]]
subject = "${STREAM}"
handler = "fn_reserve_inventory"
max_deliver = 3
ack_wait = "2s"
backoff = ["100ms", "200ms"]
concurrency = 2
batch = 10
${RELAY}`,
  notification: `${head('notification-service')}
[[observers.subscribe]]
subject = "${STREAM}"
handler = "fn_notify_customer"
${RELAY}`,
};

/** The demo's reservation, plus a refusal for one customer and a count of committed calls per order. */
const inventoryHandler = (poison: boolean) => `
CREATE OR REPLACE FUNCTION fn_reserve_inventory(p_event jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  ${poison ? `IF p_event->'entity'->>'customer' = 'poison' THEN RAISE EXCEPTION 'cannot reserve order %: customer is blocked', p_event->>'id'; END IF;` : ''}
  INSERT INTO handler_calls (order_id) VALUES ((p_event->>'id')::uuid)
    ON CONFLICT (order_id) DO UPDATE SET calls = handler_calls.calls + 1;
  PERFORM pg_sleep(0.002);
  PERFORM reserve_items(p_event);
END $$;`;

const SERVICE_SQL = {
  order: ORDER_SERVICE_SQL,
  inventory: `${INVENTORY_SERVICE_SQL}
ALTER FUNCTION fn_reserve_inventory(jsonb) RENAME TO reserve_items;
CREATE TABLE handler_calls (order_id uuid PRIMARY KEY, calls integer NOT NULL DEFAULT 1);
${inventoryHandler(true)}
INSERT INTO tb_stock (sku, initial, on_hand) SELECT sku, 100000, 100000 FROM unnest(ARRAY['${SKUS.join("','")}']) AS sku;`,
  notification: `
CREATE TABLE tb_notification (order_id uuid PRIMARY KEY, event_id uuid NOT NULL, calls integer NOT NULL DEFAULT 1);
CREATE FUNCTION fn_notify_customer(p_event jsonb) RETURNS void LANGUAGE sql AS $$
  INSERT INTO tb_notification (order_id, event_id) VALUES ((p_event->>'id')::uuid, (p_event->>'event_id')::uuid)
  ON CONFLICT (order_id) DO UPDATE SET calls = tb_notification.calls + 1
$$;`,
};

type Name = keyof typeof TOML;

class Service {
  readonly pool: pg.Pool;
  relay: RelayProcess | null = null;
  private generation = 0;
  constructor(
    readonly name: Name,
    readonly file: string,
    readonly env: NodeJS.ProcessEnv,
    url: string,
  ) {
    this.pool = new pg.Pool({ connectionString: url, max: 8 });
  }
  async sql<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, params: unknown[] = []): Promise<R[]> {
    return (await this.pool.query<R>(text, params)).rows;
  }
  async count(text: string, params: unknown[] = []): Promise<number> {
    const [row] = await this.sql(text, params);
    return Number(Object.values(row!)[0]);
  }
  async start(): Promise<RelayProcess> {
    const relay = new RelayProcess(join(dir, `${this.name}-${this.generation++}.log`), ['run', '-c', this.file], this.env);
    this.relay = relay;
    await relay.waitForLog('relay running');
    return relay;
  }
}

let pgs: LocalPostgres;
let redis: LocalRedis;
let dir: string;
let client: RedisLink;
let svc: Record<Name, Service>;

async function createOrders(n: number, customer: (i: number) => string, parallel = 4): Promise<string[]> {
  const ids: string[] = new Array(n);
  let next = 0;
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (next < n) {
        const i = next++;
        const items = [SKUS[i % SKUS.length]!, ...(i % 2 === 0 ? [SKUS[(i + 1) % SKUS.length]!] : [])];
        const [r] = await svc.order.sql<{ id: string }>(`SELECT (app.fn_create_order($1, $2::text[])).entity_id::text AS id`, [
          customer(i),
          items,
        ]);
        ids[i] = r!.id;
      }
    }),
  );
  return ids;
}

/** Every committed order reserved (each SKU once) and notified once, except `excluded` for inventory. */
async function assertExact(excluded: Set<string> = new Set()): Promise<void> {
  const orders = new Map(
    (await svc.order.sql<{ id: string; item_ids: string[] }>(`SELECT id::text, item_ids FROM app.tb_order`)).map((r) => [r.id, r.item_ids]),
  );
  const want: string[] = [];
  for (const [id, items] of orders) if (!excluded.has(id)) for (const sku of new Set(items)) want.push(`${id} ${sku}`);
  const got = (await svc.inventory.sql<{ r: string }>(`SELECT order_id::text || ' ' || sku AS r FROM tb_reservation`)).map((x) => x.r);
  assert.deepEqual(got.sort(), want.sort(), 'each order reserved each of its items once');
  const calls = await svc.inventory.sql<{ calls: number }>(`SELECT calls FROM handler_calls`);
  assert.equal(calls.length, orders.size - excluded.size, 'one committed handler call per order');
  assert.equal(calls.filter((c) => c.calls !== 1).length, 0, 'no order applied twice');
  const notes = await svc.notification.sql<{ order_id: string; calls: number }>(`SELECT order_id::text, calls FROM tb_notification`);
  assert.deepEqual(notes.map((n) => n.order_id).sort(), [...orders.keys()].sort(), 'the notification service saw every order');
  assert.equal(notes.filter((n) => n.calls !== 1).length, 0, 'the notification service applied each event once');
}

async function waitForAll(excluded = 0): Promise<void> {
  const counts = async () => ({
    created: await svc.order.count(`SELECT count(*) FROM fraiseql_relay.outbox`),
    inventory: await svc.inventory.count(`SELECT count(*) FROM fraiseql_relay.inbox`),
    notification: await svc.notification.count(`SELECT count(*) FROM fraiseql_relay.inbox`),
  });
  await until(
    'every service to process every event',
    async () => {
      const n = await counts();
      return n.inventory >= n.created - excluded && n.notification >= n.created;
    },
    45_000,
    counts,
  );
}

/** XPENDING's summary of a group: how many entries were delivered and not acknowledged. */
async function pending(group: string): Promise<number> {
  const r = await client.sendCommand<[number, ...unknown[]]>(['XPENDING', STREAM, group]);
  return Number(r[0]);
}

before(async () => {
  [pgs, redis] = await Promise.all([LocalPostgres.start(), LocalRedis.start()]);
  dir = await mkdtemp(join(tmpdir(), 'fraiseql-relay-redis-seed-'));
  client = await connectRedis({ url: redis.url, log: createLogger('silent') });
  const entries = await Promise.all(
    (Object.keys(TOML) as Name[]).map(async (name) => {
      const url = await pgs.createDatabase(name);
      const file = join(dir, `${name}.toml`);
      await writeFile(file, TOML[name]);
      const vars = { ...process.env, DATABASE_URL: url, REDIS_URL: redis.url };
      await migrate(loadConfig(file, vars), createLogger('silent'));
      const s = new Service(name, file, vars, url);
      await s.sql(SERVICE_SQL[name]);
      return [name, s] as const;
    }),
  );
  svc = Object.fromEntries(entries) as typeof svc;
  await Promise.all([svc.order.start(), svc.inventory.start(), svc.notification.start()]);
});

after(async () => {
  for (const s of Object.values(svc ?? {})) {
    if (s.relay && s.relay.child.exitCode === null && s.relay.child.signalCode === null) await s.relay.kill('SIGKILL');
    await s.pool.end();
  }
  client?.destroy();
  await Promise.all([pgs?.destroy(), redis?.destroy()]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('fan-out through consumer groups: each service applies every event once', async () => {
  await createOrders(30, (i) => `customer-${i}`);
  await waitForAll();
  await assertExact();
  // one consumer group per subscription, named as the NATS durable consumer is
  const groups = (await client.sendCommand<string[][]>(['XINFO', 'GROUPS', STREAM])).map((g) => g[1]).sort();
  assert.deepEqual(groups, [INVENTORY_GROUP, NOTIFICATION_GROUP]);
  await until(
    'every entry to be acknowledged',
    async () => (await pending(INVENTORY_GROUP)) === 0 && (await pending(NOTIFICATION_GROUP)) === 0,
    45_000,
  );
});

test('the inventory relay SIGKILLed while 200 orders flow; entries a dead reader held are claimed after ack_wait; nothing applied twice', async () => {
  const before = await svc.inventory.count(`SELECT count(*) FROM handler_calls`);
  const load = createOrders(200, (i) => `load-${i}`);
  await until(
    'the inventory service to apply some of them',
    async () => (await svc.inventory.count(`SELECT count(*) FROM handler_calls`)) >= before + 40,
    45_000,
  );
  assert.equal(await svc.inventory.relay!.kill('SIGKILL'), null, 'killed, not exited');
  await load;
  // with no inventory relay running, another reader of the group takes five entries and dies with them
  const taken = await client.sendCommand<[string, [string, string[]][]][]>([
    'XREADGROUP',
    'GROUP',
    INVENTORY_GROUP,
    'dead-reader',
    'COUNT',
    '5',
    'STREAMS',
    STREAM,
    '>',
  ]);
  assert.equal(taken[0]![1].length, 5, 'entries were left undelivered by the killed relay');
  await svc.inventory.start();
  await waitForAll();
  await assertExact();
  await until('every entry to be acknowledged', async () => (await pending(INVENTORY_GROUP)) === 0, 45_000);
  assert.match(svc.inventory.relay!.output(), /claimed entries pending longer than ack_wait/);
});

test('a handler that raises for one order dead-letters it after max_deliver; the rest flow; dlq retry applies it once', async () => {
  const ids = await createOrders(21, (i) => (i === 10 ? 'poison' : `after-${i}`), 1);
  const poisonId = ids[10]!;
  type Row = { id: string; direction: string; consumer: string; attempts: number; error: string; body: string; event_id: string };
  let dl: Row[] = [];
  await until(
    'the poison order to be dead-lettered',
    async () => {
      dl = await svc.inventory.sql<Row>(
        `SELECT id::text, direction, consumer, attempts, error, body, event_id FROM fraiseql_relay.dead_letter`,
      );
      return dl.length > 0;
    },
    45_000,
  );
  assert.equal(dl.length, 1);
  assert.equal(dl[0]!.direction, 'inbound');
  assert.equal(dl[0]!.consumer, INVENTORY_GROUP);
  assert.equal(dl[0]!.attempts, 3, 'max_deliver attempts (Redis delivery count)');
  assert.match(dl[0]!.error, new RegExp(`cannot reserve order ${poisonId}: customer is blocked`));
  assert.equal(JSON.parse(dl[0]!.body).id, poisonId);
  await waitForAll(1);
  await until('the inventory group to settle', async () => (await pending(INVENTORY_GROUP)) === 0, 45_000);
  assert.equal(await svc.inventory.count(`SELECT count(*) FROM fraiseql_relay.dead_letter`), 1);
  assert.equal(
    await svc.inventory.count(`SELECT count(*) FROM handler_calls WHERE order_id = $1`, [poisonId]),
    0,
    'the failed calls rolled back',
  );
  await assertExact(new Set([poisonId]));

  await svc.inventory.sql(inventoryHandler(false));
  const retry = await runCli(['dlq', 'retry', '--all', '-c', svc.inventory.file], svc.inventory.env);
  assert.equal(retry.code, 0, retry.stderr + retry.stdout);
  assert.match(retry.stdout, /retried 1: 1 succeeded, 0 still failing/);
  assert.equal(await svc.inventory.count(`SELECT count(*) FROM fraiseql_relay.dead_letter`), 0, 'the dead letter is gone');
  await assertExact();
});

test('every relay stops cleanly on SIGTERM', async () => {
  const codes = await Promise.all(Object.values(svc).map((s) => s.relay!.kill('SIGTERM')));
  assert.deepEqual(codes, [0, 0, 0]);
});
