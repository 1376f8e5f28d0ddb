/**
 * The promise under failure: NATS down, the relay SIGKILLed, PostgreSQL restarted. Each test
 * uses its own servers so one failure cannot leak into the next.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { TestEnv, sleep, type StoredMessage } from './fixture.js';

/** Commits `txns` transactions of `perTxn` emit() events each; returns how many committed. */
async function produce(url: string, first: number, txns: number, perTxn: number, pauseMs = 0): Promise<number> {
  const c = new pg.Client({ connectionString: url });
  // a server restart can end the connection between queries: the next query fails, no crash
  c.on('error', () => {});
  await c.connect();
  try {
    for (let t = 0; t < txns; t++) {
      const from = first + t * perTxn;
      await c.query(
        `SELECT fraiseql_relay.emit('fraiseql.order.load', jsonb_build_object('n', g)) FROM generate_series($1::int, $2::int) g`,
        [from, from + perTxn - 1],
      );
      if (pauseMs > 0) await sleep(pauseMs);
    }
  } finally {
    await c.end();
  }
  return txns * perTxn;
}

function assertExactlyOnce(msgs: StoredMessage[], expected: number): void {
  const ns = msgs.filter((m) => m.subject === 'fraiseql.order.load').map((m) => (m.body['entity'] as { n: number }).n);
  const ids = new Set(msgs.map((m) => m.body['event_id'] as string));
  assert.equal(ids.size, msgs.length, 'no event id twice in the stream');
  assert.equal(ns.length, expected, 'every committed event is in the stream');
  const sorted = [...ns].sort((a, b) => a - b);
  for (let i = 0; i < sorted.length; i++) assert.equal(sorted[i], i, `event ${i} present once`);
}

test('NATS stopped for 10 s while 2,000 events commit: all arrive, none twice', async () => {
  const env = await TestEnv.create();
  const relay = await (async () => {
    await env.migrate();
    return env.startRelay();
  })();
  try {
    await produce(env.dbUrl, 0, 10, 10);
    await env.waitForStreamCount(100);
    await env.nats.stop();
    const t0 = Date.now();
    await produce(env.dbUrl, 100, 190, 10); // 1,900 more while NATS is down: 2,000 with the first 100
    await sleep(Math.max(0, 10_000 - (Date.now() - t0)));
    const [{ n }] = (await env.sql<{ n: string }>(`SELECT count(*)::text AS n FROM fraiseql_relay.outbox`)) as [{ n: string }];
    assert.equal(n, '2000', 'all 2,000 committed while NATS was down');
    await env.nats.start();
    await env.waitForStreamCount(2000, 60_000);
    await sleep(500); // anything extra (a duplicate) would show up now
    const msgs = await env.readStream();
    assert.equal(msgs.length, 2000);
    assertExactlyOnce(msgs, 2000);
  } finally {
    await relay.stop();
    await env.destroy();
  }
});

test('the relay SIGKILLed three times during a 20,000-event load: every event exactly once', async () => {
  const env = await TestEnv.create();
  try {
    await env.migrate();
    let relay = env.spawnRelay('relay-0');
    await relay.waitForLog('relay running');
    const load = produce(env.dbUrl, 0, 2000, 10, 1);
    for (let k = 1; k <= 3; k++) {
      // kill while events are flowing
      const target = k * 4000;
      while ((await env.streamCount()) < target) await sleep(50);
      await relay.kill('SIGKILL');
      await sleep(200 * k); // commits keep landing while no relay runs
      relay = env.spawnRelay(`relay-${k}`);
      await relay.waitForLog('relay running');
    }
    assert.equal(await load, 20_000);
    await env.waitForStreamCount(20_000, 90_000);
    await sleep(500);
    const msgs = await env.readStream();
    assert.equal(msgs.length, 20_000);
    assertExactlyOnce(msgs, 20_000);
    relay.child.kill('SIGTERM');
    assert.equal(await relay.exited, 0);
  } finally {
    await env.destroy();
  }
});

test('PostgreSQL restarted mid-stream: nothing committed is lost', async () => {
  const env = await TestEnv.create();
  await env.migrate();
  const relay = await env.startRelay();
  try {
    let next = 0;
    const c = { stop: false };
    const producer = (async () => {
      while (!c.stop) {
        try {
          await produce(env.dbUrl, next, 1, 10);
          next += 10;
        } catch {
          await sleep(100); // server restarting: try the same batch again (it did not commit)
        }
      }
    })();
    while ((await env.streamCount()) < 500) await sleep(20);
    await env.pg.restart();
    while (next < 3000) await sleep(50);
    c.stop = true;
    await producer;
    const [{ n }] = (await env.sql<{ n: string }>(`SELECT count(*)::text AS n FROM fraiseql_relay.outbox`)) as [{ n: string }];
    const committed = Number(n);
    assert.ok(committed >= 3000);
    await env.waitForStreamCount(committed, 60_000);
    await sleep(500);
    const msgs = await env.readStream();
    const outboxIds = new Set((await env.sql<{ id: string }>(`SELECT id::text FROM fraiseql_relay.outbox`)).map((r) => r.id));
    const streamIds = new Set(msgs.map((m) => m.body['event_id'] as string));
    assert.equal(msgs.length, committed, 'one message per committed event');
    assert.deepEqual(
      [...outboxIds].filter((id) => !streamIds.has(id)),
      [],
      'no committed event missing',
    );
  } finally {
    await relay.stop();
    await env.destroy();
  }
});
