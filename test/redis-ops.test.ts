/**
 * backend = "redis" for operators: `check` on the server's persistence, `up{target="redis"}` and
 * `/readyz` following the connection, `status` with the consumer groups.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RedisEnv, REDIS_TOML } from './redis-fixture.js';
import { runCli, until } from './fixture.js';
import { startDaemon } from '../src/daemon.js';
import { createLogger } from '../src/util/log.js';
import { redisGroups } from '../src/inbound/redis.js';

test('check warns when Redis persistence is off, and says what an acknowledged append means when it is on', async () => {
  const off = await RedisEnv.create({ redis: { persistence: false } });
  const on = await RedisEnv.create();
  try {
    await Promise.all([off.migrate(), on.migrate()]);
    const a = await runCli(['check', '-c', off.configFile], off.env);
    assert.equal(a.code, 0, a.stdout + a.stderr);
    assert.match(a.stdout, /^ok\s+redis\s+connected, server \d+\.\d+/m);
    assert.match(a.stdout, /^warn\s+redis persistence\s+persistence is off \(appendonly no\)/m);
    const b = await runCli(['check', '-c', on.configFile], on.env);
    assert.equal(b.code, 0, b.stdout + b.stderr);
    assert.match(b.stdout, /^ok\s+redis persistence\s+appendonly yes, appendfsync always/m);
    // a key of the wrong type where a stream goes fails the check
    const c = await on.client();
    await c.sendCommand(['SET', 'fraiseql.order.created', 'x']);
    const bad = await runCli(['check', '-c', on.configFile], on.env);
    assert.equal(bad.code, 1);
    assert.match(bad.stdout, /^FAIL\s+redis stream\s+key "fraiseql\.order\.created" holds a string, not a stream/m);
    // Redis down: a clear failure, at once
    await on.redis.stop();
    const down = await runCli(['check', '-c', on.configFile], on.env);
    assert.equal(down.code, 1);
    assert.match(down.stdout, /^FAIL\s+redis\s+cannot connect \(\[observers\] redis_url\)/m);
  } finally {
    await Promise.all([off.destroy(), on.destroy()]);
  }
});

test('up{target="redis"} and /readyz follow the Redis connection; status lists the consumer groups', async () => {
  const env = await RedisEnv.create({
    toml: `${REDIS_TOML}
[[observers.subscribe]]
subject = "fraiseql.order.created"
handler = "fn_seen"
`,
  });
  try {
    await env.migrate();
    await env.sql(
      `CREATE TABLE seen (id text PRIMARY KEY); CREATE FUNCTION fn_seen(p jsonb) RETURNS void LANGUAGE sql AS $$ INSERT INTO seen VALUES (p->>'event_id') $$`,
    );
    const daemon = await startDaemon(env.config(), createLogger('silent'), { backoffMinMs: 100, backoffMaxMs: 500 });
    const base = `http://127.0.0.1:${daemon.port}`;
    try {
      const metric = async () => /^fraiseql_relay_up\{target="redis"\} (\d)/m.exec(await (await fetch(`${base}/metrics`)).text())?.[1];
      await until('up{target="redis"} 1', async () => (await metric()) === '1', 20_000);
      const text = await (await fetch(`${base}/metrics`)).text();
      assert.doesNotMatch(text, /fraiseql_relay_up\{target="nats"\}/, 'no NATS series with backend = "redis"');
      await until('ready', async () => (await fetch(`${base}/readyz`)).status === 200, 20_000);
      // an event goes through the stream and the consumer group to the handler
      await env.sql(`SELECT fraiseql_relay.emit('fraiseql.order.created', '{"a":1}')`);
      await until('the handler to run', async () => (await env.sql(`SELECT 1 FROM seen`)).length === 1, 20_000);
      const status = await runCli(['status', '--json', '-c', env.configFile], env.env);
      assert.equal(status.code, 0, status.stderr);
      assert.equal(daemon.relay.inboundStats.applied, 1);
      const groups = await daemon.relay.consumers();
      assert.deepEqual(groups, [
        { consumer: 'test-service-fraiseql_order_created', stream: 'fraiseql.order.created', pending: 0, redelivered: 0 },
      ]);

      await env.redis.stop();
      await until('up{target="redis"} 0', async () => (await metric()) === '0', 20_000);
      const r = await fetch(`${base}/readyz`);
      assert.equal(r.status, 503);
      assert.match(JSON.stringify(await r.json()), /Redis is unreachable/);
      assert.match(await (await fetch(`${base}/metrics`)).text(), /^fraiseql_relay_reconnects_total\{target="redis"\} [1-9]/m);
      await env.redis.start();
      await until('up again', async () => (await metric()) === '1' && (await fetch(`${base}/readyz`)).status === 200, 20_000);
    } finally {
      await daemon.stop();
    }
  } finally {
    await env.destroy();
  }
});

test('status reads each consumer group: not delivered yet (lag), in progress (pending list), redelivered; missing streams and Redis down as errors', async () => {
  const env = await RedisEnv.create({
    toml: `${REDIS_TOML}
[[observers.subscribe]]
subject = "fraiseql.order.created"
handler = "fn_seen"

[[observers.subscribe]]
subject = "fraiseql.order.shipped"
handler = "fn_seen"
consumer = "shipping"
`,
  });
  const group = 'test-service-fraiseql_order_created';
  const status = async () => {
    const r = await runCli(['status', '--json', '-c', env.configFile], env.env);
    assert.equal(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as { consumers: Record<string, unknown>[] }).consumers;
  };
  try {
    await env.migrate();
    let consumers = await status();
    assert.equal(consumers.length, 2);
    assert.match(String(consumers[0]!['error']), /^stream "fraiseql\.order\.created" does not exist yet/);
    assert.equal(consumers[0]!['pending'], null);

    const c = await env.client();
    await c.sendCommand(['XGROUP', 'CREATE', 'fraiseql.order.created', 'other-group', '0', 'MKSTREAM']);
    consumers = await status();
    assert.match(
      String(consumers[0]!['error']),
      /^no consumer group test-service-fraiseql_order_created on stream "fraiseql\.order\.created" yet/,
    );

    // 5 entries; a reader took 2 (in progress); one of them was claimed by another reader (delivered twice)
    await c.sendCommand(['XGROUP', 'CREATE', 'fraiseql.order.created', group, '0']);
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await c.sendCommand<string>(['XADD', 'fraiseql.order.created', '*', 'body', `{"n":${i}}`]));
    await c.sendCommand(['XREADGROUP', 'GROUP', group, 'reader-1', 'COUNT', '2', 'STREAMS', 'fraiseql.order.created', '>']);
    await c.sendCommand(['XCLAIM', 'fraiseql.order.created', group, 'reader-2', '0', ids[0]!]);
    consumers = await status();
    assert.deepEqual(consumers, [
      {
        consumer: group,
        subject: 'fraiseql.order.created',
        stream: 'fraiseql.order.created',
        pending: 3,
        ack_pending: 2,
        redelivered: 1,
        error: null,
      },
      {
        consumer: 'shipping',
        subject: 'fraiseql.order.shipped',
        stream: 'fraiseql.order.shipped',
        pending: null,
        ack_pending: null,
        redelivered: null,
        error: 'stream "fraiseql.order.shipped" does not exist yet',
      },
    ]);
    const text = await runCli(['status', '-c', env.configFile], env.env);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /^consumer test-service-fraiseql_order_created\s+3 pending, 2 in progress, 1 redelivered$/m);
    assert.match(text.stdout, /^consumer shipping\s+error: stream "fraiseql\.order\.shipped" does not exist yet$/m);
    // what /metrics samples (consumer_pending_messages, consumer_redelivered_messages): the same group, not delivered + in progress
    assert.deepEqual(await redisGroups(c, env.config()), [
      { consumer: group, stream: 'fraiseql.order.created', pending: 5, redelivered: 1 },
    ]);

    // acknowledged: nothing in progress any more
    await c.sendCommand(['XACK', 'fraiseql.order.created', group, ids[0]!, ids[1]!]);
    consumers = await status();
    assert.deepEqual([consumers[0]!['pending'], consumers[0]!['ack_pending'], consumers[0]!['redelivered']], [3, 0, 0]);

    await env.redis.stop();
    consumers = await status();
    assert.equal(consumers.length, 2);
    for (const x of consumers) {
      assert.match(String(x['error']), /^cannot connect to Redis \(\[observers\] redis_url\)/);
      assert.equal(x['pending'], null);
    }
  } finally {
    await env.destroy();
  }
});
