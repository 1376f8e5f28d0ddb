/**
 * SIGTERM stops the relay within `[relay] shutdown_timeout` whatever the broker's state: with NATS
 * down and events waiting for acknowledgements, it stops reading at once, waits at most the bound,
 * closes without confirming what was not acknowledged, and exits 0. Nothing is lost: a relay
 * started after NATS is back publishes every event exactly once.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TestEnv, sleep } from './fixture.js';

const TOML = `
[project]
name = "shutdown"
[database]
url = "\${DATABASE_URL}"
[observers]
nats_url = "\${NATS_URL}"
[[observers.publish]]
mutation = "create_order"
subject = "fraiseql.order.created"
[[observers.subscribe]]
subject = "fraiseql.order.created"
handler = "app.fn_count"
[relay]
listen = "127.0.0.1:0"
shutdown_timeout = "5s"
[relay.stream]
name = "FRAISEQL"
subjects = ["fraiseql.>"]
`;

test('SIGTERM with NATS down exits 0 within shutdown_timeout, and loses nothing', { timeout: 180_000 }, async (t) => {
  const env = await TestEnv.create({ toml: TOML });
  const relays: { kill(s: NodeJS.Signals): Promise<number | null>; child: { exitCode: number | null } }[] = [];
  t.after(async () => {
    for (const r of relays) if (r.child.exitCode === null) await r.kill('SIGKILL');
    await env.destroy();
  });
  await env.migrate();
  await env.sql(`CREATE SCHEMA app; CREATE TABLE app.seen (id text PRIMARY KEY);
    CREATE FUNCTION app.fn_count(p jsonb) RETURNS void LANGUAGE sql AS $$ INSERT INTO app.seen VALUES (p->>'event_id') $$`);
  const emit = (n: number) =>
    env.sql(`SELECT fraiseql_relay.emit('fraiseql.order.created', jsonb_build_object('n', g)) FROM generate_series(1, $1) g`, [n]);

  const first = env.spawnRelay('first');
  relays.push(first);
  await first.waitForLog('relay running');
  await emit(50);
  await env.waitForStreamCount(50, 30_000);

  await env.nats.stop();
  await emit(200); // these wait for NATS: in flight, then held in PostgreSQL
  await sleep(1500);
  const t0 = Date.now();
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([
    first.kill('SIGTERM'),
    new Promise<'hung'>((r) => (timer = setTimeout(() => r('hung'), 20_000))),
  ]).finally(() => clearTimeout(timer));
  const elapsed = Date.now() - t0;
  assert.notEqual(code, 'hung', `no exit within 20 s of SIGTERM:\n${first.output().slice(-3000)}`);
  assert.equal(code, 0, first.output().slice(-3000));
  t.diagnostic(`stopped in ${elapsed} ms with NATS down`);
  assert.ok(elapsed < 5_000 + 1_500, `stopped in ${elapsed} ms with NATS down (shutdown_timeout 5s)`);

  await env.nats.start();
  const second = env.spawnRelay('second');
  relays.push(second);
  await second.waitForLog('relay running');
  await env.waitForStreamCount(250, 60_000);
  await sleep(1000);
  const stored = await env.readStream();
  const ids = new Set(stored.map((m) => m.body['event_id']));
  assert.equal(stored.length, 250, 'every event once in the stream');
  assert.equal(ids.size, 250);
  const deadline = Date.now() + 30_000;
  let seen = 0;
  while (Date.now() < deadline && (seen = (await env.sql(`SELECT 1 FROM app.seen`)).length) < 250) await sleep(100);
  assert.equal(seen, 250, 'every event handled once');
});
