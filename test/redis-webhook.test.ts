/**
 * backend = "redis" with webhook actions: a rule's events are appended to its Redis stream and its
 * webhook action is delivered in line from the slot (as with backend = "webhook"): retried while
 * the endpoint fails, the slot held until the 2xx or the dead letter, each delivery once.
 */
import { test } from 'node:test';
import { type Received, endpoint, orderHookRules, signedWith, webhookDeadLetter } from './webhook-endpoint.js';
import assert from 'node:assert/strict';
import { RedisEnv } from './redis-fixture.js';
import { until } from './fixture.js';
import type { Relay } from '../src/relay/relay.js';

const SECRET = 'whsec_' + Buffer.from('redis-webhook-signing-key').toString('base64');

const verifies = (r: Received): boolean => signedWith(SECRET, r);

const TOML = `
[project]
name = "redis-hooks"

[database]
url = "\${DATABASE_URL}"

[observers]
backend = "redis"
redis_url = "\${REDIS_URL}"

${orderHookRules('REDIS')}
[relay]
listen = "127.0.0.1:0"
`;

test('backend = "redis": rule events land in the stream and each webhook is delivered once, in order, retried, the slot held until then', async () => {
  let failing = true;
  const ep = await endpoint((path) => (path === '/broken' ? 500 : failing ? 503 : 200));
  process.env['REDIS_HOOK_URL'] = `${ep.url}/orders`;
  process.env['REDIS_BROKEN_HOOK_URL'] = `${ep.url}/broken`;
  process.env['REDIS_HOOK_SECRET'] = SECRET;
  const env = await RedisEnv.create({ toml: TOML });
  let relay: Relay | null = null;
  try {
    await env.sql(`CREATE TABLE tb_order (id serial PRIMARY KEY, n int NOT NULL)`);
    await env.migrate();
    relay = await env.startRelay();

    await env.sql(`INSERT INTO tb_order (n) VALUES (0)`);
    const afterFirst = await env.walInsertLsn();
    for (let i = 1; i < 10; i++) await env.sql(`INSERT INTO tb_order (n) VALUES ($1)`, [i]);

    // the appends do not wait for the endpoint; the slot does
    await env.waitForLength('fraiseql.order.created', 10, 20_000);
    await until('two failed attempts of the first webhook', () => ep.all.filter((r) => r.path === '/orders').length >= 2);
    assert.ok(await env.slotConfirmedBefore(afterFirst), 'the slot is not confirmed past an undelivered webhook');
    assert.ok(
      ep.all.every((r) => r.path !== '/orders' || JSON.parse(r.body).entity.n === 0),
      'the webhooks behind the failing one wait for it',
    );
    assert.equal(relay.webhookStats.delivered, 0);

    failing = false;
    await until('ten webhooks delivered', () => relay!.webhookStats.delivered === 10);
    const afterAll = await env.walInsertLsn();
    await until('the slot confirmed past the last insert', async () => !(await env.slotConfirmedBefore(afterAll)));

    // max_attempts spent: dead-lettered, and the slot moves on
    await env.sql(`DELETE FROM tb_order WHERE n = 9`);
    const dl = await webhookDeadLetter(env, 20_000);
    assert.equal(dl.attempts, 2);
    assert.match(dl.error, /500/);
    await env.waitForLength('fraiseql.order.deleted', 1, 20_000);
    const afterDelete = await env.walInsertLsn();
    await until('the slot confirmed past the dead-lettered webhook', async () => !(await env.slotConfirmedBefore(afterDelete)));

    // a clean stop: nothing more can arrive, so what the endpoint got is final
    await relay.stop();
    relay = null;

    const stream = await env.read('fraiseql.order.created');
    assert.deepEqual(
      stream.map((e) => (e.body['entity'] as { n: number }).n),
      [...Array(10).keys()],
      'every rule event in the Redis stream once, in commit order',
    );
    const delivered = ep.all.filter((r) => r.path === '/orders' && r.status === 200);
    assert.deepEqual(
      delivered.map((r) => (JSON.parse(r.body) as { entity: { n: number } }).entity.n),
      [...Array(10).keys()],
      'each webhook received once, in commit order',
    );
    assert.deepEqual(
      delivered.map((r) => r.id),
      stream.map((e) => e.body['event_id']),
      'the webhook carries the same event as the stream entry (webhook-id is its event id)',
    );
    assert.deepEqual(
      delivered.map((r) => JSON.parse(r.body) as unknown),
      stream.map((e) => e.body),
      'the webhook body is the message appended to the stream',
    );
    assert.ok(delivered.every(verifies), 'every delivery is signed');
    const retried = ep.all.filter((r) => r.path === '/orders' && r.status !== 200);
    assert.ok(retried.length >= 2);
    assert.ok(
      retried.every((r) => r.id === delivered[0]!.id),
      'the failed attempts were the first event, retried with the same webhook-id',
    );
    assert.equal(ep.all.filter((r) => r.path === '/broken').length, 2, 'max_attempts = 2: two attempts, then the dead letter');
    // the webhook queues are not Redis streams
    const c = await env.client();
    assert.deepEqual(await c.sendCommand(['KEYS', 'fraiseql.webhook.*']), []);
  } finally {
    await relay?.stop();
    await env.destroy();
    ep.server.close();
  }
});
