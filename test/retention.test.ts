import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TestEnv, BASE_TOML, sleep } from './fixture.js';

test('published outbox rows older than retention are deleted, and the deletes are not published', async () => {
  const env = await TestEnv.create({ toml: BASE_TOML.replace('retention = "24h"', 'retention = "1s"') });
  await env.migrate();
  const relay = await env.startRelay();
  try {
    await env.sql(`SELECT fraiseql_relay.emit('fraiseql.order.kept', jsonb_build_object('n', g)) FROM generate_series(1, 2500) g`);
    await env.waitForStreamCount(2500);
    let left = -1;
    for (const until = Date.now() + 20_000; Date.now() < until; await sleep(200)) {
      left = Number((await env.sql<{ n: string }>(`SELECT count(*)::text AS n FROM fraiseql_relay.outbox`))[0]!.n);
      if (left === 0) break;
    }
    assert.equal(left, 0, 'every published row past retention was deleted (in batches of 1,000)');
    await env.sql(`SELECT fraiseql_relay.emit('fraiseql.marker', '{}')`);
    await env.waitForStreamCount(2501);
    await sleep(300);
    assert.equal(await env.streamCount(), 2501, 'deletes produced no messages');
  } finally {
    await relay.stop();
    await env.destroy();
  }
});

test('rows not yet published are never deleted, however old', async () => {
  const env = await TestEnv.create({ toml: BASE_TOML.replace('retention = "24h"', 'retention = "1s"') });
  await env.migrate();
  try {
    // committed while no relay runs: the slot has not passed them
    await env.sql(`SELECT fraiseql_relay.emit('fraiseql.order.pending', jsonb_build_object('n', g)) FROM generate_series(1, 10) g`);
    const { OutboxRetention } = await import('../src/outbound/retention.js');
    const { createLogger } = await import('../src/util/log.js');
    const r = new OutboxRetention(env.dbUrl, 'fraiseql_relay', 1, () => 0n, createLogger('silent'));
    await sleep(20);
    assert.equal(await r.tick(), 0);
    await sleep(20);
    assert.equal(await r.tick(), 0, 'confirmed position 0/0 proves nothing published');
    await r.stop();
    const left = Number((await env.sql<{ n: string }>(`SELECT count(*)::text AS n FROM fraiseql_relay.outbox`))[0]!.n);
    assert.equal(left, 10);
  } finally {
    await env.destroy();
  }
});
