import { test } from 'node:test';
import { endpoint, signedWith, webhookDeadLetter, type Received } from './webhook-endpoint.js';
import assert from 'node:assert/strict';
import { TestEnv, runCli, sleep } from './fixture.js';
import { migrate } from '../src/schema/migrate.js';
import { createLogger } from '../src/util/log.js';
import { Relay } from '../src/relay/relay.js';

const SECRET = 'whsec_' + Buffer.from('a-very-secret-signing-key').toString('base64');

const verifies = (r: Received): boolean => signedWith(SECRET, r);

const SCHEMA = `CREATE TABLE tb_order (id serial PRIMARY KEY, n int NOT NULL, note text)`;

test('backend = "nats": a webhook down for 20 s gets every event once, in order, signed; the slot never waits', async () => {
  const t0 = Date.now();
  let goneBack = false;
  const ep = await endpoint((path) => (path === '/gone' ? (goneBack ? 200 : 410) : Date.now() - t0 < 20_000 ? 503 : 200));
  const env = await TestEnv.create({
    toml: `
[project]
name = "hooks"
[database]
url = "\${DATABASE_URL}"
[observers]
nats_url = "\${NATS_URL}"
[[observers.rules]]
table = "tb_order"
event = "INSERT"
subject = "fraiseql.order.created"
[[observers.rules.actions]]
type = "webhook"
url_env = "ORDER_WEBHOOK_URL"
signing_secret_env = "ORDER_WEBHOOK_SECRET"
headers = { X-Custom = "yes" }
max_attempts = 100
[[observers.rules]]
table = "tb_order"
event = "UPDATE"
[[observers.rules.actions]]
type = "webhook"
url = "${'${GONE_URL}'}"
[relay]
listen = "127.0.0.1:0"
`,
  });
  process.env['ORDER_WEBHOOK_URL'] = `${ep.url}/orders`;
  process.env['ORDER_WEBHOOK_SECRET'] = SECRET;
  process.env['GONE_URL'] = `${ep.url}/gone`;
  let relay: Relay | null = null;
  try {
    await env.sql(SCHEMA);
    await migrate(env.config(), createLogger('silent'));
    relay = await env.startRelay();
    for (let i = 0; i < 20; i++) await env.sql(`INSERT INTO tb_order (n) VALUES ($1)`, [i]);
    // published to JetStream while the endpoint is down: the slot moves on
    await env.waitForStreamCount(40, 15_000); // the subject and the webhook queue
    let lag = Infinity;
    for (const until = Date.now() + 10_000; Date.now() < until && lag > 4096; await sleep(100)) {
      const [r] = await env.sql<{ lag: string }>(
        `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::text AS lag FROM pg_replication_slots`,
      );
      lag = Number(r!.lag);
    }
    assert.ok(lag <= 4096, `slot confirmed while the endpoint is down (lag ${lag})`);
    assert.ok(Date.now() - t0 < 20_000, 'checked during the outage');
    assert.ok(ep.all.length >= 1 && ep.got.length === 0, 'attempts were made and failed');

    // 410: dead-lettered at once, one attempt
    await env.sql(`UPDATE tb_order SET note = 'x' WHERE n = 0`);
    const dl = await webhookDeadLetter(env, 15_000);
    assert.equal(dl.attempts, 1);
    assert.match(dl.error, /410/);
    assert.ok(!dl.error.includes('GONE'), 'no URL secret in the error');
    assert.equal(ep.all.filter((r) => r.path === '/gone').length, 1);

    for (const until = Date.now() + 60_000; ep.got.length < 20 && Date.now() < until;) await sleep(100);
    await sleep(300);
    const orders = ep.got.filter((r) => r.path === '/orders');
    assert.equal(orders.length, 20, 'each event delivered once');
    assert.deepEqual(
      orders.map((r) => (JSON.parse(r.body) as { entity: { n: number } }).entity.n),
      [...Array(20).keys()],
      'in commit order',
    );
    assert.equal(new Set(orders.map((r) => r.id)).size, 20);
    assert.ok(orders.every(verifies), 'every signature verifies');
    assert.ok(
      orders.every((r) => r.custom === 'yes'),
      'configured headers are sent',
    );
    assert.equal(JSON.parse(orders[0]!.body).event_id, orders[0]!.id, 'webhook-id is the event id');

    // the endpoint is back: dlq retry delivers the dead letter straight to it, with its event id, and removes it
    goneBack = true;
    const [letter] = await env.sql<{ event_id: string }>(`SELECT event_id FROM fraiseql_relay.dead_letter`);
    const retry = await runCli(['dlq', 'retry', '--all', '-c', env.configFile], env.env);
    assert.equal(retry.code, 0, retry.stdout + retry.stderr);
    const redelivered = ep.got.filter((r) => r.path === '/gone');
    assert.equal(redelivered.length, 1);
    assert.equal(redelivered[0]!.id, letter!.event_id);
    assert.equal((JSON.parse(redelivered[0]!.body) as { entity: { note: string } }).entity.note, 'x');
    assert.equal(redelivered[0]!.id, ep.all.find((r) => r.path === '/gone')!.id, 'the webhook-id of the first attempt');
    assert.equal(redelivered[0]!.signature, 'undefined', 'that action has no signing secret: unsigned, as run sent it');
    assert.equal((await env.sql(`SELECT 1 FROM fraiseql_relay.dead_letter`)).length, 0);
  } finally {
    await relay?.stop();
    await env.destroy();
    ep.server.close();
  }
});

test('backend = "webhook": no NATS at all; in order, retried, confirmed only after delivery or dead letter', async () => {
  let failFirst = 2;
  const ep = await endpoint((path) => {
    if (path === '/missing') return 404;
    if (failFirst > 0) {
      failFirst--;
      return 500;
    }
    return 200;
  });
  const env = await TestEnv.create({
    toml: `
[project]
name = "hooks-only"
[database]
url = "\${DATABASE_URL}"
[observers]
backend = "webhook"
[[observers.rules]]
table = "tb_order"
event = "INSERT"
[[observers.rules.actions]]
type = "webhook"
url = "${'${HOOK_URL}'}"
signing_secret_env = "ORDER_WEBHOOK_SECRET"
[[observers.rules]]
table = "tb_order"
event = "DELETE"
[[observers.rules.actions]]
type = "webhook"
url = "${'${MISSING_URL}'}"
[relay]
listen = "127.0.0.1:0"
`,
  });
  process.env['HOOK_URL'] = `${ep.url}/hook`;
  process.env['MISSING_URL'] = `${ep.url}/missing`;
  process.env['ORDER_WEBHOOK_SECRET'] = SECRET;
  let relay: Relay | null = null;
  try {
    await env.nats.destroy(); // really no NATS
    await env.sql(SCHEMA);
    await migrate(env.config(), createLogger('silent'));
    relay = new Relay(env.config(), createLogger('silent'), { backoffMinMs: 100, backoffMaxMs: 500 });
    await relay.start();
    for (let i = 0; i < 10; i++) await env.sql(`INSERT INTO tb_order (n) VALUES ($1)`, [i]);
    await env.sql(`DELETE FROM tb_order WHERE n = 9`);
    for (const until = Date.now() + 30_000; ep.got.length < 10 && Date.now() < until;) await sleep(50);
    assert.deepEqual(
      ep.got.map((r) => (JSON.parse(r.body) as { entity: { n: number } }).entity.n),
      [...Array(10).keys()],
    );
    assert.ok(ep.got.every(verifies));
    assert.equal(ep.all.filter((r) => r.path === '/hook').length, 12, 'two 500s retried');
    const dl = await webhookDeadLetter(env, 10_000);
    assert.match(dl.error, /404/);
    let lag = Infinity;
    for (const until = Date.now() + 10_000; Date.now() < until && lag > 4096; await sleep(100)) {
      const [r] = await env.sql<{ lag: string }>(
        `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::text AS lag FROM pg_replication_slots`,
      );
      lag = Number(r!.lag);
    }
    assert.ok(lag <= 4096, `slot confirmed after delivery (lag ${lag})`);
  } finally {
    await relay?.stop();
    await env.destroy();
    ep.server.close();
  }
});
