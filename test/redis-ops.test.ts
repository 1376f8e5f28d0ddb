/**
 * backend = "redis" for operators: `check` on the server's persistence, `up{target="redis"}` and
 * `/readyz` following the connection, `status` with the consumer groups.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RedisEnv, REDIS_TOML } from './redis-fixture.js';
import { runCli, sleep } from './fixture.js';
import { startDaemon } from '../src/daemon.js';
import { createLogger } from '../src/util/log.js';

async function until(what: string, fn: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await fn()) return;
    await sleep(100);
  }
  assert.fail(`timed out waiting for ${what}`);
}

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
      await until('up{target="redis"} 1', async () => (await metric()) === '1');
      const text = await (await fetch(`${base}/metrics`)).text();
      assert.doesNotMatch(text, /fraiseql_relay_up\{target="nats"\}/, 'no NATS series with backend = "redis"');
      await until('ready', async () => (await fetch(`${base}/readyz`)).status === 200);
      // an event goes through the stream and the consumer group to the handler
      await env.sql(`SELECT fraiseql_relay.emit('fraiseql.order.created', '{"a":1}')`);
      await until('the handler to run', async () => (await env.sql(`SELECT 1 FROM seen`)).length === 1);
      const status = await runCli(['status', '--json', '-c', env.configFile], env.env);
      assert.equal(status.code, 0, status.stderr);
      assert.equal(daemon.relay.inboundStats.applied, 1);
      const groups = await daemon.relay.consumers();
      assert.deepEqual(groups, [
        { consumer: 'test-service-fraiseql_order_created', stream: 'fraiseql.order.created', pending: 0, redelivered: 0 },
      ]);

      await env.redis.stop();
      await until('up{target="redis"} 0', async () => (await metric()) === '0');
      const r = await fetch(`${base}/readyz`);
      assert.equal(r.status, 503);
      assert.match(JSON.stringify(await r.json()), /Redis is unreachable/);
      assert.match(await (await fetch(`${base}/metrics`)).text(), /^fraiseql_relay_reconnects_total\{target="redis"\} [1-9]/m);
      await env.redis.start();
      await until('up again', async () => (await metric()) === '1' && (await fetch(`${base}/readyz`)).status === 200);
    } finally {
      await daemon.stop();
    }
  } finally {
    await env.destroy();
  }
});
