import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { headers as natsHeaders } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { TestEnv, sleep, waitForRows, runCli } from './fixture.js';
import type { Relay } from '../src/relay/relay.js';

const TOML = `
[project]
name = "inventory-service"

[database]
url = "\${DATABASE_URL}"

[observers]
nats_url = "\${NATS_URL}"

[[observers.subscribe]]
subject = "fraiseql.order.created"
handler = "app.fn_reserve"
max_deliver = 3
backoff = ["100ms", "200ms"]

[[observers.subscribe]]
subject = "fraiseql.order.bulk"
handler = "app.fn_count"
consumer = "bulk-counter"
concurrency = 8

[relay]
listen = "127.0.0.1:0"
`;

const HANDLERS = `
CREATE SCHEMA app;
CREATE TABLE app.reserved (order_id text PRIMARY KEY, n int NOT NULL DEFAULT 1, payload jsonb);
CREATE TABLE app.calls (event jsonb);
CREATE TABLE app.poison (order_id text PRIMARY KEY);
CREATE FUNCTION app.fn_reserve(p_event jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO app.calls VALUES (p_event);
  IF EXISTS (SELECT 1 FROM app.poison WHERE order_id = p_event->>'id') THEN
    RAISE EXCEPTION 'cannot reserve order %', p_event->>'id';
  END IF;
  INSERT INTO app.reserved (order_id, payload) VALUES (p_event->>'id', p_event)
    ON CONFLICT (order_id) DO UPDATE SET n = app.reserved.n + 1;
END $$;
CREATE TABLE app.counted (n int);
CREATE FUNCTION app.fn_count(p_event jsonb) RETURNS void LANGUAGE sql AS $$ INSERT INTO app.counted VALUES ((p_event->>'n')::int) $$;
`;

let env: TestEnv;
let relay: Relay;

async function publish(subject: string, body: string, eventId?: string): Promise<void> {
  const nc = await env.natsClient();
  try {
    const h = natsHeaders();
    if (eventId) h.set('Fraiseql-Event-Id', eventId);
    await jetstream(nc).publish(subject, body, eventId ? { headers: h, msgID: `${eventId}:${subject}` } : { headers: h });
  } finally {
    await nc.close();
  }
}

before(async () => {
  env = await TestEnv.create({ toml: TOML });
  await env.migrate();
  await env.sql(HANDLERS);
  // the stream is someone else's (the order service's relay); this service only consumes
  const nc = await env.natsClient();
  await (await jetstreamManager(nc)).streams.add({ name: 'FRAISEQL', subjects: ['fraiseql.>'] });
  await nc.close();
  relay = await env.startRelay();
});

after(async () => {
  await relay?.stop();
  await env?.destroy();
});

test('a subscriber-only service has no replication slot', async () => {
  const slots = await env.sql(`SELECT slot_name FROM pg_replication_slots`);
  assert.deepEqual(slots, []);
});

test('the handler runs once per event, even when the event is delivered again', async () => {
  await publish('fraiseql.order.created', JSON.stringify({ event_id: 'e-1', id: 'order-1', metadata: { item_ids: ['SKU-1'] } }), 'e-1');
  await waitForRows(() => env.sql(`SELECT 1 FROM app.reserved WHERE order_id = 'order-1'`));
  // the same event again under another message id (JetStream stores it): the inbox absorbs it.
  // The count is read before it is sent: the relay may apply it before publish() returns
  const before = relay.inboundStats.duplicates;
  const nc = await env.natsClient();
  const h = natsHeaders();
  h.set('Fraiseql-Event-Id', 'e-1');
  await jetstream(nc).publish('fraiseql.order.created', JSON.stringify({ event_id: 'e-1', id: 'order-1' }), {
    headers: h,
    msgID: 'other-id',
  });
  await nc.close();
  for (const until = Date.now() + 10_000; relay.inboundStats.duplicates === before && Date.now() < until;) await sleep(20);
  assert.equal(relay.inboundStats.duplicates, before + 1);
  const [r] = await env.sql<{ n: number; payload: { metadata: unknown } }>(
    `SELECT n, payload FROM app.reserved WHERE order_id = 'order-1'`,
  );
  assert.equal(r!.n, 1, 'applied once');
  assert.deepEqual(r!.payload.metadata, { item_ids: ['SKU-1'] }, 'the handler receives the message body as jsonb');
  const inbox = await env.sql(`SELECT consumer, event_id, subject FROM fraiseql_relay.inbox WHERE event_id = 'e-1'`);
  assert.deepEqual(inbox, [{ consumer: 'inventory-service-fraiseql_order_created', event_id: 'e-1', subject: 'fraiseql.order.created' }]);
});

test('a failing handler is retried up to max_deliver, then dead-lettered; others keep flowing', async () => {
  await env.sql(`INSERT INTO app.poison VALUES ('order-bad')`);
  await publish('fraiseql.order.created', JSON.stringify({ event_id: 'e-bad', id: 'order-bad' }), 'e-bad');
  await publish('fraiseql.order.created', JSON.stringify({ event_id: 'e-2', id: 'order-2' }), 'e-2');
  const dl = await waitForRows(
    () =>
      env.sql<{
        direction: string;
        consumer: string;
        handler: string;
        attempts: number;
        error: string;
        body: string;
        headers: Record<string, string>;
      }>(`SELECT direction, consumer, handler, attempts, error, body, headers FROM fraiseql_relay.dead_letter WHERE event_id = 'e-bad'`),
    20_000,
  );
  assert.equal(dl.length, 1);
  assert.equal(dl[0]!.direction, 'inbound');
  assert.equal(dl[0]!.handler, 'app.fn_reserve');
  assert.equal(dl[0]!.attempts, 3);
  assert.match(dl[0]!.error, /cannot reserve order order-bad/);
  assert.equal(dl[0]!.headers['Fraiseql-Event-Id'], 'e-bad');
  assert.equal(JSON.parse(dl[0]!.body).id, 'order-bad');
  const calls = await env.sql<{ n: string }>(`SELECT count(*)::text AS n FROM app.calls WHERE event->>'id' = 'order-bad'`);
  assert.equal(calls[0]!.n, '0', 'failed calls rolled back with their transaction');
  assert.equal((await waitForRows(() => env.sql(`SELECT 1 FROM app.reserved WHERE order_id = 'order-2'`))).length, 1);
  await sleep(500);
  assert.equal(
    (await env.sql(`SELECT 1 FROM fraiseql_relay.dead_letter WHERE event_id = 'e-bad'`)).length,
    1,
    'terminated: not delivered again',
  );

  // fix the handler's input, re-drive it: applied exactly once, dead letter gone
  await env.sql(`DELETE FROM app.poison`);
  const list = await runCli(['dlq', 'list', '-c', env.configFile], env.env);
  assert.equal(list.code, 0);
  assert.match(list.stdout, /app\.fn_reserve/);
  const [{ id }] = (await env.sql<{ id: string }>(`SELECT id::text FROM fraiseql_relay.dead_letter WHERE event_id = 'e-bad'`)) as [
    { id: string },
  ];
  const retry = await runCli(['dlq', 'retry', id, '-c', env.configFile], env.env);
  assert.equal(retry.code, 0, retry.stderr + retry.stdout);
  assert.match(retry.stdout, /1 succeeded/);
  const again = await runCli(['dlq', 'retry', id, '-c', env.configFile], env.env);
  assert.equal(again.code, 2, 'the dead letter is gone');
  const r = await env.sql<{ n: number }>(`SELECT n FROM app.reserved WHERE order_id = 'order-bad'`);
  assert.deepEqual(r, [{ n: 1 }]);
});

test('a body that is not JSON is dead-lettered at once', async () => {
  await publish('fraiseql.order.created', '{not json', 'e-garbage');
  const dl = await waitForRows(() =>
    env.sql<{ attempts: number; error: string }>(`SELECT attempts, error FROM fraiseql_relay.dead_letter WHERE event_id = 'e-garbage'`),
  );
  assert.equal(dl.length, 1);
  assert.equal(dl[0]!.attempts, 1);
  assert.match(dl[0]!.error, /not JSON/);
  const purge = await runCli(['dlq', 'purge', '--yes', '-c', env.configFile], env.env);
  assert.equal(purge.code, 0);
  assert.equal((await env.sql(`SELECT 1 FROM fraiseql_relay.dead_letter`)).length, 0);
});

test('concurrency 8 processes every event once', async () => {
  const nc = await env.natsClient();
  const js = jetstream(nc);
  const pubs: Promise<unknown>[] = [];
  for (let i = 0; i < 2000; i++) {
    const h = natsHeaders();
    h.set('Fraiseql-Event-Id', `bulk-${i}`);
    pubs.push(js.publish('fraiseql.order.bulk', JSON.stringify({ n: i }), { headers: h }));
  }
  await Promise.all(pubs);
  await nc.close();
  let n = 0;
  for (const until = Date.now() + 60_000; n < 2000 && Date.now() < until; await sleep(100)) {
    n = Number((await env.sql<{ n: string }>(`SELECT count(*)::text AS n FROM app.counted`))[0]!.n);
  }
  const distinct = Number((await env.sql<{ n: string }>(`SELECT count(DISTINCT n)::text AS n FROM app.counted`))[0]!.n);
  assert.equal(n, 2000);
  assert.equal(distinct, 2000);
});

test('a consumer whose configuration drifted is updated explicitly', async () => {
  const nc = await env.natsClient();
  const jsm = await jetstreamManager(nc);
  await jsm.consumers.update('FRAISEQL', 'bulk-counter', { max_deliver: 42 });
  await nc.close();
  await relay.stop();
  relay = await env.startRelay();
  const nc2 = await env.natsClient();
  const info = await (await jetstreamManager(nc2)).consumers.info('FRAISEQL', 'bulk-counter');
  await nc2.close();
  assert.equal(info.config.max_deliver, -1, 'the worker, not the server, enforces max_deliver');
});
