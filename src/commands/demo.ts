import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as natsConnect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { parseConfig } from '../config/load.js';
import { createLogger } from '../util/log.js';
import { migrate } from '../schema/migrate.js';
import { Relay } from '../relay/relay.js';
import { LocalPostgres } from '../local/postgres.js';
import { LocalNats } from '../local/nats.js';
import { LocalRedis } from '../local/redis.js';
import { connectRedis } from '../sink/redis-client.js';
import { withClient } from '../util/db.js';
import { sleep } from '../util/sleep.js';

export interface DemoOptions {
  logLevel: string;
  /** orders per phase (before, during and after the broker outage) */
  orders: number;
  outageSeconds: number;
  /** default "nats": the broker started and stopped (Redis Streams with "redis") */
  backend?: 'nats' | 'redis';
}

/** The throwaway broker the demo runs on, and how it reads back what arrived. */
interface DemoBroker {
  /** "NATS" or "Redis", and where the events are stored ("JetStream", "Redis") */
  readonly name: string;
  readonly store: string;
  readonly url: string;
  /** the `[observers]` keys that point a service at it */
  readonly observers: string;
  stop(): Promise<void>;
  start(): Promise<void>;
  destroy(): Promise<void>;
  /** waits until `total` events are stored, then counts them by order id */
  countOrders(total: number): Promise<Map<string, number>>;
}

async function natsBroker(): Promise<DemoBroker> {
  const nats = await LocalNats.start();
  return {
    name: 'NATS',
    store: 'JetStream',
    url: nats.url,
    observers: `backend = "nats"\nnats_url = "${nats.url}"`,
    stop: () => nats.stop(),
    start: () => nats.start(),
    destroy: () => nats.destroy(),
    async countOrders(total) {
      const nc = await natsConnect({ servers: nats.url });
      const counts = new Map<string, number>();
      try {
        const jsm = await jetstreamManager(nc);
        await waitFor('every order to reach JetStream', 90_000, async () => {
          try {
            return (await jsm.streams.info('FRAISEQL')).state.messages >= total;
          } catch {
            return false;
          }
        });
        const stored = (await jsm.streams.info('FRAISEQL')).state.messages;
        const js = jetstream(nc);
        const consumer = await js.consumers.get('FRAISEQL');
        const iter = await consumer.fetch({ max_messages: stored, expires: 5000 });
        let read = 0;
        for await (const m of iter) {
          const body = m.json<{ id: string }>();
          counts.set(body.id, (counts.get(body.id) ?? 0) + 1);
          if (++read >= stored) break;
        }
      } finally {
        await nc.close();
      }
      return counts;
    },
  };
}

async function redisBroker(log: ReturnType<typeof createLogger>): Promise<DemoBroker> {
  const redis = await LocalRedis.start();
  const key = 'fraiseql.order.created';
  return {
    name: 'Redis',
    store: 'Redis',
    url: redis.url,
    observers: `backend = "redis"\nredis_url = "${redis.url}"`,
    stop: () => redis.stop(),
    start: () => redis.start(),
    destroy: () => redis.destroy(),
    async countOrders(total) {
      const c = await connectRedis({ url: redis.url, log, name: 'demo' });
      const counts = new Map<string, number>();
      try {
        await waitFor('every order to reach Redis', 90_000, async () => (await c.sendCommand<number>(['XLEN', key])) >= total);
        let from = '-';
        for (;;) {
          const page = await c.sendCommand<[string, string[]][]>(['XRANGE', key, from, '+', 'COUNT', '1000']);
          for (const [, flat] of page) {
            const i = flat.indexOf('body');
            const body = JSON.parse(flat[i + 1] ?? 'null') as { id: string };
            counts.set(body.id, (counts.get(body.id) ?? 0) + 1);
          }
          if (page.length < 1000) break;
          from = '(' + page.at(-1)![0];
        }
      } finally {
        c.destroy();
      }
      return counts;
    },
  };
}

/**
 * The order service of the seed: a table, the v2 mutation_response, and two mutations that emit
 * (`create_order` → fraiseql.order.created, `update_order` → fraiseql.order.updated).
 */
export const ORDER_SERVICE_SQL = `
CREATE SCHEMA IF NOT EXISTS app;
DO $$ BEGIN
  CREATE TYPE app.mutation_response AS (
    succeeded boolean, state_changed boolean, error_class text, status_detail text, http_status smallint,
    message text, entity_id uuid, entity_type text, entity jsonb, updated_fields text[], cascade jsonb,
    error_detail jsonb, metadata jsonb);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
CREATE TABLE IF NOT EXISTS app.tb_order (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  customer text NOT NULL,
  item_ids text[] NOT NULL,
  status text NOT NULL DEFAULT 'new',
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION app.fn_create_order(p_customer text, p_item_ids text[])
RETURNS app.mutation_response LANGUAGE plpgsql AS $$
DECLARE
  v_order app.tb_order;
  v_result app.mutation_response;
BEGIN
  INSERT INTO app.tb_order (customer, item_ids) VALUES (p_customer, p_item_ids) RETURNING * INTO v_order;
  v_result := ROW(true, true, NULL, 'created', 201, 'order created', v_order.id, 'Order',
                  to_jsonb(v_order), NULL, NULL, NULL, jsonb_build_object('item_ids', to_jsonb(p_item_ids)));
  RETURN fraiseql_relay.emit_mutation('create_order', v_result);
END $$;
CREATE OR REPLACE FUNCTION app.fn_update_order(p_id uuid, p_status text)
RETURNS app.mutation_response LANGUAGE plpgsql AS $$
DECLARE
  v_order app.tb_order;
  v_result app.mutation_response;
BEGIN
  UPDATE app.tb_order SET status = p_status WHERE id = p_id AND status IS DISTINCT FROM p_status RETURNING * INTO v_order;
  IF NOT FOUND THEN  -- unknown order or nothing changed: a no-op, which records no event
    RETURN ROW(true, false, NULL, 'noop', 200, 'order unchanged', p_id, 'Order', NULL, NULL, NULL, NULL, NULL);
  END IF;
  v_result := ROW(true, true, NULL, 'updated', 200, 'order updated', v_order.id, 'Order',
                  to_jsonb(v_order), ARRAY['status'], NULL, NULL, jsonb_build_object('item_ids', to_jsonb(v_order.item_ids)));
  RETURN fraiseql_relay.emit_mutation('update_order', v_result);
END $$;
`;

/**
 * The inventory service of the seed, in its own database: stock per SKU, one reservation per
 * (order, item), and the handler `[[observers.subscribe]]` calls for fraiseql.order.created.
 * The handler is idempotent by order id on its own as well: stock moves only for the
 * reservations this call created.
 */
export const INVENTORY_SERVICE_SQL = `
CREATE TABLE IF NOT EXISTS tb_stock (
  sku text PRIMARY KEY,
  initial integer NOT NULL,
  on_hand integer NOT NULL
);
CREATE TABLE IF NOT EXISTS tb_reservation (
  order_id uuid NOT NULL,
  sku text NOT NULL REFERENCES tb_stock,
  reserved_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (order_id, sku)
);
CREATE OR REPLACE FUNCTION fn_reserve_inventory(p_event jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  WITH fresh AS (
    INSERT INTO tb_reservation (order_id, sku)
    SELECT DISTINCT (p_event->>'id')::uuid, item
      FROM jsonb_array_elements_text(p_event->'metadata'->'item_ids') AS item
    ON CONFLICT (order_id, sku) DO NOTHING
    RETURNING sku
  )
  UPDATE tb_stock s SET on_hand = s.on_hand - 1 FROM fresh WHERE s.sku = fresh.sku;
END $$;
`;

/** The stock the demo's inventory service starts with. */
const DEMO_STOCK: [string, number][] = [
  ['SKU-1', 120],
  ['SKU-2', 80],
  ['SKU-3', 100],
  ['SKU-4', 60],
  ['SKU-5', 90],
];

/** The items of the demo's i-th order in a phase: one SKU, every third order a second one. */
function demoItems(i: number): string[] {
  const items = [`SKU-${1 + (i % 5)}`];
  if (i % 3 === 0) items.push(`SKU-${1 + ((i + 2) % 5)}`);
  return items;
}

const orderToml = (pgUrl: string, observers: string) => `# written by fraiseql-relay demo
[project]
name = "order-service"

[database]
type = "postgresql"
url = "${pgUrl}"

[observers]
${observers}

[[observers.publish]]
mutation = "create_order"
subject = "fraiseql.order.created"

[relay]
listen = "127.0.0.1:0"

[relay.stream]
name = "FRAISEQL"
duplicate_window = "10m"
`;

const inventoryToml = (pgUrl: string, observers: string) => `# written by fraiseql-relay demo
[project]
name = "inventory-service"

[database]
type = "postgresql"
url = "${pgUrl}"

[observers]
${observers}

[[observers.subscribe]]
subject = "fraiseql.order.created"
handler = "fn_reserve_inventory"
max_deliver = 5
backoff = ["200ms", "1s"]

[relay]
listen = "127.0.0.1:0"
`;

const out = (s: string) => process.stdout.write(s + '\n');

async function waitFor(what: string, timeoutMs: number, fn: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await fn()) return;
    await sleep(200);
  }
  throw new Error(`demo: timed out waiting for ${what}`);
}

/**
 * Throwaway PostgreSQL and NATS (or Redis, `backend: 'redis'`), the order service and its relay,
 * the inventory service (its own database) and its relay; orders before, during and after a
 * broker outage; then a table showing that every committed order reached the broker exactly once, and a stock table showing that
 * every order reserved its items in the inventory service exactly once.
 */
export async function runDemo(opts: DemoOptions): Promise<number> {
  const log = createLogger(opts.logLevel);
  const n = Math.max(1, Math.floor(opts.orders));
  const redis = opts.backend === 'redis';
  out(`fraiseql-relay demo: starting a throwaway PostgreSQL and ${redis ? 'Redis' : 'NATS JetStream'}…`);
  const pg = await LocalPostgres.start();
  let broker: DemoBroker | null = null;
  const relays: Relay[] = [];
  const dir = await mkdtemp(join(tmpdir(), 'fraiseql-relay-demo-'));
  try {
    broker = redis ? await redisBroker(log) : await natsBroker();
    const b = broker;
    const ordersUrl = await pg.createDatabase('orders');
    const inventoryUrl = await pg.createDatabase('inventory');
    const orderFile = join(dir, 'order-service.toml');
    const inventoryFile = join(dir, 'inventory-service.toml');
    await writeFile(orderFile, orderToml(ordersUrl, b.observers));
    await writeFile(inventoryFile, inventoryToml(inventoryUrl, b.observers));
    const orderConfig = parseConfig(orderToml(ordersUrl, b.observers), orderFile);
    const inventoryConfig = parseConfig(inventoryToml(inventoryUrl, b.observers), inventoryFile);
    out(`  PostgreSQL on port ${pg.port}, ${b.name} on ${b.url}, configs in ${dir}`);

    await migrate(orderConfig, log);
    await withClient(ordersUrl, (c) => c.query(ORDER_SERVICE_SQL).then(() => undefined));
    await migrate(inventoryConfig, log);
    await withClient(inventoryUrl, async (c) => {
      await c.query(INVENTORY_SERVICE_SQL);
      for (const [sku, qty] of DEMO_STOCK) await c.query(`INSERT INTO tb_stock (sku, initial, on_hand) VALUES ($1, $2, $2)`, [sku, qty]);
    });
    out('  order service     (database orders):    fn_create_order → outbox → relay → fraiseql.order.created');
    out('  inventory service (database inventory): fraiseql.order.created → relay → fn_reserve_inventory(jsonb)');

    const relayOpts = { publishTimeoutMs: 2000, backoffMinMs: 200, backoffMaxMs: 2000 };
    for (const config of [orderConfig, inventoryConfig]) {
      const relay = new Relay(config, log.child({ service: config.project.name }), relayOpts);
      relays.push(relay);
      await relay.start();
    }
    out('  both relays running\n');

    const phases: { name: string; orders: { id: string; items: string[] }[] }[] = [];
    const createOrders = async (phase: string) => {
      const orders: { id: string; items: string[] }[] = [];
      await withClient(ordersUrl, async (c) => {
        for (let i = 0; i < n; i++) {
          const items = demoItems(i);
          const r = await c.query<{ entity_id: string }>(`SELECT entity_id::text FROM app.fn_create_order($1, $2::text[])`, [
            `customer-${phase}-${i}`,
            items,
          ]);
          orders.push({ id: r.rows[0]!.entity_id, items });
        }
      });
      phases.push({ name: phase, orders });
      out(`  committed ${n} orders (${phase})`);
    };

    await createOrders(`${b.name} up`);
    await b.stop();
    out(`  ${b.name} stopped: the relays wait and retry; the order service keeps committing`);
    await createOrders(`${b.name} down`);
    await sleep(opts.outageSeconds * 1000);
    await b.start();
    out(`  ${b.name} restarted after ${opts.outageSeconds}s`);
    await createOrders(`${b.name} back`);

    const all = phases.flatMap((p) => p.orders);
    const total = all.length;
    const counts = await b.countOrders(total);

    out('');
    out(`  phase        committed   ${`in ${b.store}`.padStart(12)}   exactly once`);
    out('  ───────────  ─────────   ────────────   ────────────');
    let ok = true;
    for (const p of phases) {
      const arrived = p.orders.filter((o) => (counts.get(o.id) ?? 0) > 0).length;
      const once = p.orders.filter((o) => counts.get(o.id) === 1).length;
      if (once !== p.orders.length) ok = false;
      out(
        `  ${p.name.padEnd(11)}  ${String(p.orders.length).padStart(9)}   ${String(arrived).padStart(12)}   ${String(once).padStart(12)}`,
      );
    }
    const once = all.filter((o) => counts.get(o.id) === 1).length;
    out(
      `  ${'total'.padEnd(11)}  ${String(total).padStart(9)}   ${String(all.filter((o) => counts.has(o.id)).length).padStart(12)}   ${String(once).padStart(12)}`,
    );
    out('');
    out(
      ok
        ? `  ✔ every committed order arrived in ${b.store} exactly once, including the ${n} committed while ${b.name} was down`
        : `  ✘ some orders are missing from ${b.store} or duplicated`,
    );

    // the inventory service: wait until its consumer has processed every order, then compare
    const consumerName = inventoryConfig.observers.subscribe[0]!.consumer;
    const processed = async () =>
      withClient(inventoryUrl, async (c) =>
        Number(
          (await c.query<{ n: string }>(`SELECT count(*)::text AS n FROM fraiseql_relay.inbox WHERE consumer = $1`, [consumerName]))
            .rows[0]!.n,
        ),
      );
    let seen = 0;
    await waitFor('the inventory service to process every order', 30_000, async () => (seen = await processed()) >= total).catch(() => {});
    const inv = await withClient(inventoryUrl, async (c) => ({
      stock: (
        await c.query<{ sku: string; initial: number; on_hand: number; reserved: string }>(
          `SELECT s.sku, s.initial, s.on_hand, (SELECT count(*) FROM tb_reservation r WHERE r.sku = s.sku)::text AS reserved
           FROM tb_stock s ORDER BY s.sku`,
        )
      ).rows,
      reservations: (await c.query<{ order_id: string; sku: string }>(`SELECT order_id::text, sku FROM tb_reservation`)).rows,
      deadLetters: Number((await c.query<{ n: string }>(`SELECT count(*)::text AS n FROM fraiseql_relay.dead_letter`)).rows[0]!.n),
    }));
    const expected = new Map<string, number>();
    for (const o of all) for (const sku of new Set(o.items)) expected.set(sku, (expected.get(sku) ?? 0) + 1);
    const byOrder = new Map<string, string[]>();
    for (const r of inv.reservations) byOrder.set(r.order_id, [...(byOrder.get(r.order_id) ?? []), r.sku]);
    const exact = all.filter((o) => {
      const got = (byOrder.get(o.id) ?? []).sort();
      const want = [...new Set(o.items)].sort();
      return got.length === want.length && got.every((s, i) => s === want[i]);
    }).length;

    out('');
    out('  inventory service stock (tb_stock, changed only by fn_reserve_inventory)');
    out('  SKU      initial   reserved   now');
    out('  ───────  ───────   ────────   ───');
    let stockOk = true;
    for (const s of inv.stock) {
      const reserved = Number(s.reserved);
      if (reserved !== (expected.get(s.sku) ?? 0) || s.initial - reserved !== s.on_hand) stockOk = false;
      out(`  ${s.sku.padEnd(7)}  ${String(s.initial).padStart(7)}   ${String(reserved).padStart(8)}   ${String(s.on_hand).padStart(3)}`);
    }
    const reservedOk =
      seen === total &&
      exact === total &&
      inv.reservations.length === [...expected.values()].reduce((a, b) => a + b, 0) &&
      stockOk &&
      inv.deadLetters === 0;
    out('');
    out(
      reservedOk
        ? `  ✔ every order reserved its items exactly once in the inventory service (${total} orders, ${inv.reservations.length} reservations), including those committed while ${b.name} was down`
        : `  ✘ inventory mismatch: ${seen} of ${total} orders processed, ${exact} reserved exactly their items, ` +
            `stock ${stockOk ? 'matches' : 'does not match'} the reservations, ${inv.deadLetters} dead letters`,
    );
    return ok && reservedOk ? 0 : 1;
  } finally {
    for (const r of relays.reverse()) await r.stop().catch(() => {});
    await broker?.destroy().catch(() => {});
    await pg.destroy().catch(() => {});
    await rm(dir, { recursive: true, force: true }).catch(() => {});
  }
}
