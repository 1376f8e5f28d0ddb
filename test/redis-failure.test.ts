/**
 * backend = "redis" under failure: Redis killed or frozen under load, the relay SIGKILLed. Each
 * test has its own servers. Redis runs with appendfsync always: what it acknowledged survives.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RedisEnv, LOAD, produce, assertExactlyOnce } from './redis-fixture.js';
import { sleep } from './fixture.js';

test('Redis SIGKILLed and gone for 10 s while 2,000 events commit: all arrive, none twice', async () => {
  const env = await RedisEnv.create();
  await env.migrate();
  const relay = await env.startRelay();
  try {
    await produce(env.dbUrl, 0, 10, 10);
    await env.waitForLength(LOAD, 100);
    await env.redis.kill();
    const t0 = Date.now();
    await produce(env.dbUrl, 100, 190, 10, 20); // 1,900 more while Redis is gone, spread over the outage
    await sleep(Math.max(0, 10_000 - (Date.now() - t0)));
    assert.ok(Date.now() - t0 >= 10_000);
    const [{ n }] = (await env.sql<{ n: string }>(`SELECT count(*)::text AS n FROM fraiseql_relay.outbox`)) as [{ n: string }];
    assert.equal(n, '2000', 'all 2,000 committed while Redis was down');
    assert.ok(relay.stats.published < 2000, 'the outage held the events back');
    await env.redis.start();
    await env.waitForLength(LOAD, 2000, 60_000);
    await sleep(500); // anything extra (a duplicate) would show up now
    const entries = await env.read(LOAD);
    assert.equal(entries.length, 2000);
    assertExactlyOnce(entries, 2000);
  } finally {
    await relay.stop();
    await env.destroy();
  }
});

test('Redis frozen (SIGSTOP) for 10 s under load: appends time out, nothing is lost or appended twice, commit order kept', async () => {
  const env = await RedisEnv.create();
  await env.migrate();
  const relay = await env.startRelay();
  try {
    await produce(env.dbUrl, 0, 10, 10);
    await env.waitForLength(LOAD, 100);
    env.redis.pause();
    const t0 = Date.now();
    await produce(env.dbUrl, 100, 190, 10, 20);
    await sleep(Math.max(0, 10_000 - (Date.now() - t0)));
    env.redis.resume();
    await env.waitForLength(LOAD, 2000, 60_000);
    await sleep(500);
    const entries = await env.read(LOAD);
    assertExactlyOnce(entries, 2000);
    const ns = entries.map((e) => (e.body['entity'] as { n: number }).n);
    for (let i = 0; i < ns.length; i++) assert.equal(ns[i], i, `event ${i} out of order`);
  } finally {
    env.redis.resume();
    await relay.stop();
    await env.destroy();
  }
});

test('the relay SIGKILLed three times during a 20,000-event load: every event exactly once', async () => {
  const env = await RedisEnv.create();
  try {
    await env.migrate();
    let relay = env.spawnRelay('relay-0');
    await relay.waitForLog('relay running');
    const load = produce(env.dbUrl, 0, 2000, 10, 1);
    for (let k = 1; k <= 3; k++) {
      const target = k * 4000;
      while ((await env.length(LOAD)) < target) await sleep(50);
      await relay.kill('SIGKILL');
      await sleep(200 * k); // commits keep landing while no relay runs
      relay = env.spawnRelay(`relay-${k}`);
      await relay.waitForLog('relay running');
    }
    assert.equal(await load, 20_000);
    await env.waitForLength(LOAD, 20_000, 90_000);
    await sleep(500);
    const entries = await env.read(LOAD);
    assert.equal(entries.length, 20_000);
    assertExactlyOnce(entries, 20_000);
    relay.child.kill('SIGTERM');
    assert.equal(await relay.exited, 0);
  } finally {
    await env.destroy();
  }
});
